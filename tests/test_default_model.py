"""The shipped default model is a loadable HatLLM checkpoint trained with the documented command."""

import json

from hatllm import default_model
from hatllm.modeling import load_model


def test_default_model_is_shipped_and_loads():
    path = default_model.ensure_default_model()  # must not retrain: the checkpoint is in the repo
    model = load_model(path)
    assert model.config.hat_layer_types == ["IN", "IN", "OR", "OR", "CR", "CR"]
    assert json.loads((path / "config.json").read_text())["architectures"] == ["HatLlamaForCausalLM"]
    training = json.loads((path / "training.json").read_text())
    args = training["args"]
    assert [args["schedule"], args["size"], str(args["epochs"]).rstrip("0").rstrip("."), str(args["seed"])] == \
        default_model.TRAIN_ARGS[1::2]
