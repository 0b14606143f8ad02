"""Prompt layout and per-item tokenization."""

from hatllm.core.masks import first_item_position, item_starts
from tests.helpers import TITLES


def test_prompt_layout(builder, tokenizer):
    ids = builder.prompt(["Heat (1995)", "Casino (1995)"])
    prefix = builder.prefix()
    assert ids[0] == tokenizer.bos_token_id
    assert ids[: len(prefix)] == prefix
    rest = ids[len(prefix):]
    assert rest == builder.item_tokens("Heat (1995)") + builder.item_tokens("Casino (1995)") + [builder.item_open_id]
    assert tokenizer.decode(builder.title_tokens("Heat (1995)")) == "Heat (1995)"


def test_item_tokens_identical_in_history_and_generated(builder):
    # A title's tokens do not depend on its neighbours: tokenized per item, never across items.
    for title in TITLES.values():
        history = builder.prompt([title, "Jumanji (1995)"])
        start = len(builder.prefix()) + 1
        assert tuple(history[start : start + len(builder.title_tokens(title))]) == builder.title_tokens(title)


def test_training_sequence_targets(builder):
    ids, predicts = builder.training_sequence(["Heat (1995)", "Casino (1995)"])
    p = len(builder.prefix())
    targets = [ids[i + 1] for i, flag in enumerate(predicts) if flag]
    expected = list(builder.title_tokens("Heat (1995)")) + [builder.item_close_id]
    expected += list(builder.title_tokens("Casino (1995)")) + [builder.item_close_id]
    assert targets == expected
    assert not any(predicts[:p])


def test_prompt_segments(builder):
    import torch

    ids = torch.tensor([builder.prompt(["Heat (1995)"])])
    p = len(builder.prefix())
    assert first_item_position(ids, builder.item_open_id).item() == p
    starts = item_starts(ids, builder.item_open_id, builder.item_close_id)[0].tolist()
    n = len(builder.item_tokens("Heat (1995)"))
    assert starts[p : p + n] == [p] * n  # one item, delimiters included
    assert starts[-1] == p + n  # the open delimiter of the item to generate starts a new item
