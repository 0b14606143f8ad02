"""The shipped default model is a loadable HatLLM checkpoint made by the documented recipe."""

import json

from hatllm.core.item_codes import ItemCodes
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
