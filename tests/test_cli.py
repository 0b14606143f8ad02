"""Training and evaluation CLIs end to end on a tiny dataset (seconds)."""

import json

import pytest

from hatllm import evaluate, train
from hatllm.baselines import sasrec
from hatllm.modeling import load_model


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    train.main(["--data", str(tiny_dataset), "--out", str(out), "--size", "tiny", "--layers", "3",
                "--schedule", "hat", "--epochs", "3", "--batch-size", "4", "--vocab-size", "300"])
    return out


def test_checkpoint_carries_its_masks(trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["architectures"] == ["HatLlamaForCausalLM"]
    assert config["hat_layer_types"] == ["IN", "OR", "CR"]
    assert {"hat_item_open_token_id", "hat_item_close_token_id", "hat_instruction"} <= config.keys()
    assert load_model(trained).config.hat_layer_types == ["IN", "OR", "CR"]
    history = json.loads((trained / "training.json").read_text())["history"]
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert (trained / "training.png").stat().st_size > 0


def test_load_refuses_config_without_schedule(trained, tmp_path):
    import shutil

    shutil.copytree(trained, tmp_path / "m", dirs_exist_ok=True)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["hat_layer_types"] = ["IN", "XX", "CR"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown layer types"):
        load_model(tmp_path / "m")


def test_evaluate_llm_and_popular(trained, tiny_dataset, tmp_path):
    out = tmp_path / "llm.json"
    llm = evaluate.main(["--data", str(tiny_dataset), "--method", "llm", "--model", str(trained), "--k", "3",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == llm
    assert llm["invalid_outputs"] == 0 and llm["users"] == 12 and llm["short_lists"] == 0
    assert 0.0 <= llm["NDCG@5"] <= llm["HR@5"] <= 1.0  # at most 3 of 8 items are left after the history
    pop = evaluate.main(["--data", str(tiny_dataset), "--method", "popular", "--k", "5"])
    assert pop["invalid_outputs"] == 0 and pop["HR@1"] <= pop["HR@5"] <= pop["HR@10"]


def test_sasrec_trains_and_ranks(tiny_dataset, tmp_path):
    sasrec.main(["--data", str(tiny_dataset), "--out", str(tmp_path), "--epochs", "5"])
    result = evaluate.main(["--data", str(tiny_dataset), "--method", "sasrec", "--model", str(tmp_path), "--k", "5"])
    assert result["invalid_outputs"] == 0 and result["users"] == 12


def test_sensitivity_table_reads_schedule_and_loss_from_the_checkpoint(trained, tiny_dataset, tmp_path):
    from hatllm import sensitivity

    evaluate.main(["--data", str(tiny_dataset), "--method", "llm", "--model", str(trained), "--k", "3",
                   "--out", str(tmp_path / "hat.json")])
    table = sensitivity.main([str(tmp_path)])
    loss = json.loads((trained / "training.json").read_text())["final_valid_loss"]
    assert "| IN,OR,CR | 1 | 1 | 1 | 0 |" in table and "| tiny |" in table and f"| {loss:.3f} |" in table
    assert (tmp_path / "table.md").read_text().strip() == table
    assert (tmp_path / "sensitivity.png").stat().st_size > 0
