"""The shipped default model is a loadable HatLLM checkpoint made by the documented recipe."""

import json

import pytest

from hatllm.core.item_codes import ItemCodes
from hatllm.evaluation import evaluate
from hatllm.reference.modeling import load_model
from hatllm.sasrec import SASRecRanker, load_fusion
from hatllm.training import default_model


def test_default_model_is_shipped_and_loads():
    path = default_model.ensure_default_model()  # must not retrain: the checkpoint is in the repo
    model = load_model(path)
    assert model.config.hat_layer_types == ["IN", "OR", "OR", "CR"]
    assert json.loads((path / "config.json").read_text())["architectures"] == ["HatLlamaForCausalLM"]
    training = json.loads((path / "training.json").read_text())
    assert training["args"]["schedule"] == "hat" and training["args"]["teacher"] and training["args"]["teacher_init"]
    codes = ItemCodes.load(path)
    assert len(codes) == 9742 and len(set(codes.codes.values())) == 9742
    weight = json.loads((path / "fusion.json").read_text())["weight"]
    assert weight == json.loads((path / "recipe.json").read_text())["fusion_weight"]
    assert (load_fusion(path) is None) == (weight == 0)  # weight 0: validation found the LLM alone best
    assert len(SASRecRanker.load(path / "teacher").item_ids) == 9742


def documented_row(method_prefix: str) -> dict[str, float]:
    """HR/NDCG@1/5/10 of a method in docs/results.md's ml-latest-small test table."""
    section = (default_model.ROOT / "docs" / "results.md").read_text().split("### ml-latest-small (610 users)")[1]
    row = next(line for line in section.splitlines() if line.startswith(f"| {method_prefix}"))
    cells = [cell.strip().strip("*") for cell in row.split("|")[2:8]]
    return dict(zip(["HR@1", "HR@5", "HR@10", "NDCG@1", "NDCG@5", "NDCG@10"], map(float, cells)))


def test_default_model_ranks_the_whole_test_set_as_documented_and_above_its_teacher():
    """What the product promises: on all 610 test users the served pipeline recommends only catalog items, beats
    the SASRec it learned from, and scores what docs/results.md says. The tolerance is one or two users' hits:
    another CPU's float rounding may reorder near-ties."""
    path = default_model.ensure_default_model()
    data = ["--data", str(default_model.DEFAULT_DATA)]
    llm = evaluate.main([*data, "--method", "llm", "--model", str(path)])
    sasrec = evaluate.main([*data, "--method", "sasrec", "--model", str(path / "teacher")])
    assert llm["users"] == sasrec["users"] == 610 and llm["invalid_outputs"] == 0 and llm["short_lists"] == 0
    assert llm["NDCG@10"] > sasrec["NDCG@10"] and llm["HR@10"] > sasrec["HR@10"]
    for measured, documented in ((llm, documented_row("**HatLLM recipe**")), (sasrec, documented_row("SASRec (fixed)"))):
        assert {m: measured[m] for m in documented} == pytest.approx(documented, abs=0.004), measured["method"]
