"""Training and evaluation CLIs end to end on a tiny dataset (seconds)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from hatllm.core.item_codes import ItemCodes
from hatllm.evaluation import evaluate
from hatllm.reference.modeling import load_model
from hatllm.training import sasrec, train

TINY = ["--size", "tiny", "--layers", "3", "--schedule", "hat", "--batch-size", "4", "--vocab-size", "300", "--lr", "1e-2"]


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    train.main(["--data", str(tiny_dataset), "--out", str(out), *TINY, "--epochs", "3", "--patience", "5"])
    return out


@pytest.fixture(scope="module")
def teacher(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("sasrec")
    sasrec.main(["--data", str(tiny_dataset), "--out", str(out), "--max-epochs", "5"])
    return out


def losses(folder):
    return [row["loss"] for row in json.loads((folder / "training.json").read_text())["log"]]


def test_checkpoint_carries_its_masks(trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["architectures"] == ["HatLlamaForCausalLM"]
    assert config["hat_layer_types"] == ["IN", "OR", "CR"]
    assert {"hat_item_open_token_id", "hat_item_close_token_id", "hat_instruction"} <= config.keys()
    assert load_model(trained).config.hat_layer_types == ["IN", "OR", "CR"]
    assert losses(trained)[-1] < losses(trained)[0]
    assert (trained / "training.png").stat().st_size > 0
    codes = ItemCodes.load(trained)  # one code token per catalog item, all distinct
    assert len(codes) == 8 and len({c for c in codes.codes.values()}) == 8


def test_titles_only_recipe_learns(tiny_dataset, tmp_path):
    train.main(["--data", str(tiny_dataset), "--out", str(tmp_path), *TINY, "--epochs", "3", "--no-item-codes"])
    assert ItemCodes.load(tmp_path) is None
    assert losses(tmp_path)[-1] < losses(tmp_path)[0]


def test_resumed_training_ends_with_the_same_model(tiny_dataset, tmp_path):
    args = ["--data", str(tiny_dataset), *TINY, "--epochs", "3", "--patience", "9"]
    train.main([*args, "--out", str(tmp_path / "straight")])
    train.main([*args, "--out", str(tmp_path / "resumed"), "--stop-after", "1"])
    assert len(losses(tmp_path / "resumed")) == 1
    train.main([*args, "--out", str(tmp_path / "resumed"), "--resume"])
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    straight, resumed = (torch.load(tmp_path / d / train.STATE_FILE, weights_only=False)["model"] for d in ("straight", "resumed"))
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_teacher_targets_are_the_teachers_scores_in_code_order(tiny_dataset, teacher, tmp_path):
    from hatllm.data import leave_one_out, load_dataset
    from hatllm.sasrec import SASRecRanker

    ranker = SASRecRanker.load(teacher)
    codes = ItemCodes({item: (100 + n,) for n, item in enumerate(sorted(ranker.item_ids, reverse=True))})
    item_ids = sorted(codes.codes, key=lambda i: codes.codes[i])
    objective = train.CodeObjective(codes, item_ids, ranker)
    window = list(leave_one_out(load_dataset(tiny_dataset)).train["u1"])
    targets = objective.teacher_scores([window])
    assert targets.shape == (len(window) - 1, len(item_ids))  # one row per predicted item, one column per code
    # Row j: the teacher's scores after window[: j + 1], as SASRec scores every position of a training window.
    seqs = sasrec.left_pad([[ranker.index[i] for i in window[:-1]]], ranker.model.max_len)
    with torch.no_grad():
        per_position = ranker.model.scores(ranker.model(seqs)[0, -(len(window) - 1):])
    assert torch.allclose(targets, per_position[:, [ranker.index[i] - 1 for i in item_ids]], atol=1e-5)
    assert torch.equal(targets[-1].argmax(), torch.tensor(item_ids.index(ranker.item_ids[per_position[-1].argmax()])))
    train.main(["--data", str(tiny_dataset), "--out", str(tmp_path), *TINY, "--epochs", "2", "--teacher", str(teacher),
                "--teacher-init"])
    assert losses(tmp_path)[-1] < losses(tmp_path)[0]


def test_the_teachers_prior_rows_are_its_log_softmax_over_one_shared_item_tuple(teacher):
    from hatllm.sasrec import NO_OPINION, SASRecRanker

    ranker = SASRecRanker.load(teacher)
    known = tuple(ranker.item_ids[:3])
    first, second, unknown = ranker.log_probs_batch([known, known[:1], ("never-trained",)])
    assert first.items is second.items and list(first.items) == ranker.item_ids  # positions looked up once
    expected = ranker.score_batch([known]).log_softmax(-1)[0].double().numpy()
    # Equal up to the GEMM's summation order, which may differ between a batch of three and one of one.
    assert np.allclose(first.values, expected, rtol=0, atol=1e-5) and first.values.dtype == np.float64
    assert unknown is NO_OPINION and len(NO_OPINION.values) == 0


def test_teacher_init_copies_the_teachers_item_geometry(teacher, tiny_dataset):
    from hatllm.sasrec import SASRecRanker

    args = train.parse_args(["--data", str(tiny_dataset), "--out", "unused", *TINY])
    titles = {i: f"title {i}" for i in sorted(SASRecRanker.load(teacher).item_ids)}
    _, _, codes, model = train.build_model(args, titles, sorted(titles))
    ranker = SASRecRanker.load(teacher)
    objective = train.CodeObjective(codes, sorted(titles), ranker)
    objective.init_codes_from_teacher(model)
    student = model.get_input_embeddings().weight[objective.code_ids, :64].detach()
    source = ranker.model.item_vectors[objective.teacher_order].detach()
    assert torch.allclose(student / student.norm(dim=1, keepdim=True), source / source.norm(dim=1, keepdim=True), atol=1e-5)
    assert torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)  # tied: scoring uses them too


def test_load_refuses_config_without_schedule(trained, tmp_path):
    import shutil

    shutil.copytree(trained, tmp_path / "m", dirs_exist_ok=True)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["hat_layer_types"] = ["IN", "XX", "CR"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown layer types"):
        load_model(tmp_path / "m")


def test_evaluate_refuses_a_beam_narrower_than_k(tiny_dataset, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(tiny_dataset), "--method", "llm", "--model", "unused", "--k", "10", "--beam-width", "5"])
    assert "--beam-width 5 is below --k 10" in capsys.readouterr().err


def test_evaluate_llm_and_popular(trained, tiny_dataset, tmp_path):
    out = tmp_path / "llm.json"
    llm = evaluate.main(["--data", str(tiny_dataset), "--method", "llm", "--model", str(trained), "--k", "3",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == llm
    assert llm["invalid_outputs"] == 0 and llm["users"] == 12 and llm["short_lists"] == 0
    assert 0.0 <= llm["NDCG@5"] <= llm["HR@5"] <= 1.0  # at most 3 of 8 items are left after the history
    pop = evaluate.main(["--data", str(tiny_dataset), "--method", "popular", "--k", "5"])
    assert pop["invalid_outputs"] == 0 and pop["HR@1"] <= pop["HR@5"] <= pop["HR@10"]


@pytest.fixture(scope="module")
def fused(trained, teacher, tmp_path_factory):
    """The trained model with the SASRec teacher fused into its search at weight 2."""
    from hatllm.sasrec import save_fusion

    out = tmp_path_factory.mktemp("fused") / "model"
    shutil.copytree(trained, out)
    save_fusion(out, teacher, 2.0)
    return out


def test_a_fused_ranker_at_weight_0_is_the_llm_alone_and_shares_its_forward(fused, tiny_dataset, monkeypatch):
    from hatllm.data import leave_one_out, load_dataset
    from hatllm.evaluation.metrics import evaluate_ranker, evaluate_rankers
    from hatllm.sasrec import SASRecRanker

    dataset = load_dataset(tiny_dataset)
    split = leave_one_out(dataset, 50)
    histories, excludes = [ex.history for ex in split.test], [set(ex.seen) for ex in split.test]
    load = lambda fusion: evaluate.LLMRanker.load(fused, dataset.catalog.titles, split.popularity(), fusion=fusion)  # noqa: E731
    ranker, alone = load(True), load(False)
    assert ranker.fusion_weight == 2.0 and alone.prior is None
    assert ranker.with_weight(0.0).rank_batch(histories, 3, excludes) == alone.rank_batch(histories, 3, excludes)
    assert ranker.rank_batch(histories, 3, excludes) != alone.rank_batch(histories, 3, excludes)  # the prior counts

    forwards = []
    real = evaluate.prompt_logits_batch
    monkeypatch.setattr(evaluate, "prompt_logits_batch", lambda *a: forwards.append(len(a[1])) or real(*a))
    one = evaluate_ranker(load(True), split.test, dataset.catalog.titles, 3, batch_size=5)
    assert sum(forwards) == len(split.test)
    forwards.clear()
    scored = []
    real_prior = SASRecRanker.log_probs_batch
    monkeypatch.setattr(SASRecRanker, "log_probs_batch", lambda self, h: scored.append(len(h)) or real_prior(self, h))
    fresh = load(True)
    rankings = evaluate_rankers([fresh, fresh.with_weight(1.0), fresh.with_weight(0.0)], split.test,
                                dataset.catalog.titles, 3, batch_size=5)
    assert sum(forwards) == len(split.test)  # one forward per user for all three rankings
    assert sum(scored) == len(split.test)  # and one prior scoring for both fused ones
    assert {**rankings[0], "seconds": 0} == {**one, "seconds": 0}


def test_evaluate_writes_the_fused_and_the_alone_result_from_one_pass(fused, tiny_dataset, tmp_path, capsys):
    common = ["--data", str(tiny_dataset), "--method", "llm", "--model", str(fused), "--k", "3"]
    separate = [evaluate.main(common), evaluate.main([*common, "--no-fusion"])]
    evaluate.main([*common, "--name", "f", "--out", str(tmp_path / "f.json"), "--alone-name", "a",
                   "--alone-out", str(tmp_path / "a.json")])
    both = [json.loads((tmp_path / name).read_text()) for name in ("f.json", "a.json")]
    assert [r["method"] for r in both] == ["f", "a"] and [r["fusion_weight"] for r in both] == [2.0, None]
    for one_pass, alone_run in zip(both, separate):
        assert {**one_pass, "seconds": 0, "method": ""} == {**alone_run, "seconds": 0, "method": ""}
    with pytest.raises(SystemExit):
        evaluate.main([*common, "--no-fusion", "--alone-out", str(tmp_path / "x.json")])
    assert "--alone-out compares" in capsys.readouterr().err


def test_evaluate_refuses_alone_out_for_a_checkpoint_that_serves_the_llm_alone(trained, tiny_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(tiny_dataset), "--method", "llm", "--model", str(trained), "--k", "3",
                       "--alone-out", str(tmp_path / "x.json")])
    assert "does not fuse a prior" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_sasrec_trains_and_ranks(tiny_dataset, tmp_path):
    sasrec.main(["--data", str(tiny_dataset), "--out", str(tmp_path), "--max-epochs", "30", "--patience", "3"])
    info = json.loads((tmp_path / "training.json").read_text())
    assert info["epochs_run"] - info["best_epoch"] == 3 or info["epochs_run"] == 30  # stops on patience
    assert info["best_valid_ndcg@10"] == max(row["valid_ndcg@10"] for row in info["log"])
    result = evaluate.main(["--data", str(tiny_dataset), "--method", "sasrec", "--model", str(tmp_path), "--k", "5"])
    assert result["invalid_outputs"] == 0 and result["users"] == 12


def test_sensitivity_table_reads_schedule_and_loss_from_the_checkpoint(trained, tiny_dataset, tmp_path):
    from hatllm.evaluation import sensitivity

    evaluate.main(["--data", str(tiny_dataset), "--method", "llm", "--model", str(trained), "--k", "3",
                   "--out", str(tmp_path / "hat.json")])
    table = sensitivity.main([str(tmp_path)])
    ndcg = json.loads((trained / "training.json").read_text())["best_valid_ndcg"]
    assert "| IN,OR,CR | 1 | 1 | 1 | 0 |" in table and "| tiny |" in table and f"| {ndcg:.4f} |" in table
    assert (tmp_path / "table.md").read_text().strip() == table
    assert (tmp_path / "sensitivity.png").stat().st_size > 0


def test_the_budget_plans_the_epochs_and_the_schedule_ends_with_them():
    assert train.planned_epochs(10, 0.0, 0, 1.0) == 10 and train.planned_epochs(10, 1e9, 5, None) == 10
    assert train.planned_epochs(10, 40.0, 2, 1.0) == 3  # 20 s epochs: the third ends at 60 s, within a minute
    assert train.planned_epochs(10, 42.0, 2, 1.0) == 2  # 21 s epochs: the third would end at 63 s
    assert train.planned_epochs(4, 40.0, 2, 10.0) == 4  # the budget fits 30, --epochs says 4
    assert train.planned_epochs(10, 90.0, 2, 1.0) == 2  # already past the budget: stop, never plan fewer than done
    assert train.warmup_cosine(0, 10, 100) == 0.1 * 0.5 * (1 + math.cos(0.0))
    assert train.warmup_cosine(9, 10, 100) > 0.98 > train.warmup_cosine(50, 10, 100) == pytest.approx(0.5)
    assert train.warmup_cosine(100, 10, 100) == train.warmup_cosine(120, 10, 100) == 0.0


def test_recipe_trains_teacher_student_and_fusion(tiny_dataset, tmp_path):
    from hatllm.sasrec import load_fusion
    from hatllm.training import recipe

    out = tmp_path / "recipe"
    args = ["--data", str(tiny_dataset), "--out", str(out), "--tune-users", "12", "--device", "cpu", "--",
            "--size", "tiny", "--vocab-size", "300", "--batch-size", "4", "--epochs", "2"]
    recipe.main(args)
    record = json.loads((out / "recipe.json").read_text())
    assert record["total_minutes"] < 5 and record["fusion_weight"] >= 0
    prior, weight = load_fusion(out)
    assert weight == record["fusion_weight"] and prior.item_ids == sorted(prior.item_ids)
    assert ItemCodes.load(out) is not None and (out / "teacher" / "sasrec.pt").is_file()
    teacher_trained = (out / "teacher" / "sasrec.pt").stat().st_mtime
    # As after a 7-minute student killed before the record was written: the rerun still counts its minutes.
    (out / "recipe.json").unlink()
    state = torch.load(out / train.STATE_FILE, weights_only=False)
    torch.save(state | {"seconds": 420.0}, out / train.STATE_FILE)
    recipe.main(args)  # a rerun reuses the teacher and resumes the (finished) student
    assert (out / "teacher" / "sasrec.pt").stat().st_mtime == teacher_trained
    assert len(losses(out)) == 2
    assert json.loads((out / "recipe.json").read_text())["student_minutes"] == 7.0
    result = evaluate.main(["--data", str(tiny_dataset), "--method", "llm", "--model", str(out), "--k", "3"])
    assert result["invalid_outputs"] == 0 and result["fusion_weight"] == weight


def test_report_groups_seeds_into_mean_and_sd(tmp_path):
    from hatllm.evaluation import report

    base = {m: 0.0 for m in report.METRICS} | {"users": 10}
    for seed, ndcg in enumerate((0.1, 0.2, 0.3)):
        (tmp_path / f"h{seed}.json").write_text(json.dumps(base | {"method": f"hatllm s{seed}", "NDCG@10": ndcg}))
    (tmp_path / "p.json").write_text(json.dumps(base | {"method": "popular", "NDCG@10": 0.05}))
    table = report.main([str(tmp_path)])
    assert "| hatllm | 3 |" in table and "0.2000 ± 0.1000" in table and "| popular | 1 |" in table
    assert (tmp_path / "metrics.png").stat().st_size > 0


def test_learning_curves_read_run_folders_and_kept_logs(trained, tmp_path):
    from hatllm.evaluation import learning_curves

    kept = tmp_path / "hat-s0.json"  # scripts/experiments.sh keeps each student's log under this name
    kept.write_text((trained / "training.json").read_text())
    learning_curves.main([str(tmp_path / "curves.png"), str(trained), str(kept)])
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_bf16_defaults_to_what_the_device_computes_natively(tiny_dataset):
    required = ["--data", str(tiny_dataset), "--out", "o"]
    assert train.parse_args(required).bf16 is train.native_bf16("cpu")  # resolved, so training.json records it
    assert train.parse_args([*required, "--bf16"]).bf16 is True
    assert train.parse_args([*required, "--no-bf16"]).bf16 is False
