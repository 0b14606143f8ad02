"""Shared fixtures: a tiny dataset, tokenizer and randomly initialised HatLLM model (seconds to build)."""

from pathlib import Path

import pytest
import torch

from hatllm.core.item_codes import ItemCodes
from hatllm.core.prompt import DEFAULT_INSTRUCTION, PromptBuilder
from hatllm.reference.modeling import save_model
from hatllm.sasrec import SASRec, SASRecRanker, save_fusion
from hatllm.training.tokenizer import ITEM_CLOSE, ITEM_OPEN, train_tokenizer
from tests.helpers import CODE_TOKENS, TITLES, tiny_model


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """`-q` hides pytest-randomly's header: a failed run still says how to repeat its order."""
    seed = getattr(config.option, "randomly_seed", None)
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED) and isinstance(seed, int):
        terminalreporter.write_line(f"tests ran in a random order: repeat it with --randomly-seed={seed}")


@pytest.fixture(scope="session")
def tokenizer():
    """Title BPE plus one code token per item, as the training recipe builds it."""
    return train_tokenizer([*TITLES.values(), DEFAULT_INSTRUCTION], vocab_size=300, code_tokens=CODE_TOKENS)


@pytest.fixture(scope="session")
def item_codes(tokenizer) -> ItemCodes:
    return ItemCodes({item: (code,) for item, code in zip(sorted(TITLES), tokenizer.convert_tokens_to_ids(CODE_TOKENS))})


@pytest.fixture(scope="session")
def builder(tokenizer):
    open_id, close_id = tokenizer.convert_tokens_to_ids([ITEM_OPEN, ITEM_CLOSE])
    return PromptBuilder(tokenizer, open_id, close_id, DEFAULT_INSTRUCTION)


@pytest.fixture(scope="session")
def hat_model(tokenizer, builder):
    return tiny_model(tokenizer, builder, "IN,OR,CR")


@pytest.fixture(scope="session")
def hat_checkpoint(tokenizer, builder, item_codes, tmp_path_factory) -> Path:
    """The tiny HatLLM model saved as a checkpoint vLLM can serve, as the recipe ships one: with item codes
    and a (random) SASRec prior fused into its search."""
    path = tmp_path_factory.mktemp("hat-checkpoint") / "hat"
    save_model(tiny_model(tokenizer, builder, "IN,OR,CR", seed=1), tokenizer, path)
    item_codes.save(path)
    torch.manual_seed(2)
    (path / "teacher").mkdir()
    SASRecRanker(SASRec(len(TITLES), max_len=8), sorted(TITLES)).save(path / "teacher", {"hparams": {"max_len": 8}})
    save_fusion(path, path / "teacher", 1.5)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A canonical-format dataset with enough users for a split and a short training run."""
    root = tmp_path_factory.mktemp("tiny-dataset")
    items = "item_id,title\n" + "".join(f'{i},"{t}"\n' for i, t in TITLES.items())
    rows = []
    for user in range(12):
        seq = [str(1 + (user + step * (1 + user % 3)) % len(TITLES)) for step in range(6)]
        rows += [f"u{user},{item},{t}\n" for t, item in enumerate(seq)]
    (root / "items.csv").write_text(items)
    (root / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "".join(rows))
    return root
