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


TRICKY_TITLES = [
    "Heat (1995)", "Schindler's List (1993)", "City of God (Cidade de Deus) (2002)", "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
    "Se7en  (1995)", " Leading space", "Trailing space ", "Tab\tinside", "Line\nbreak", "Non\xa0breaking", "WALL·E (2008)",
    "x", "2001: A Space Odyssey (1968)", "...And Justice for All (1979)", "Heat (1995)", "東京物語 (1953)", "a  b   c",
]


def whole_titles(builder, titles):
    return [list(builder.tokenizer.encode(t, add_special_tokens=False)) for t in titles]


def split_batch(tokens, lengths):
    starts = [0, *lengths.cumsum()[:-1].tolist()]
    return [tokens[s:s + n].tolist() for s, n in zip(starts, lengths.tolist())]


def test_a_batch_tokenizes_each_title_as_alone(builder):
    """Words tokenized once and joined give each title's own tokens, including titles that are not single-spaced
    words (tokenized whole) and repeated titles."""
    import random

    rng = random.Random(0)
    words = [w for t in (*TITLES.values(), *TRICKY_TITLES) for w in t.split()]
    titles = TRICKY_TITLES + [" ".join(rng.choices(words, k=rng.randint(1, 6))) for _ in range(3000)]
    assert builder._splits_at_spaces()  # the recipe's byte-level BPE: words are joined
    tokens, lengths = builder.title_tokens_batch(titles)
    assert split_batch(tokens, lengths) == whole_titles(builder, titles)
    assert builder._splits_at_spaces()  # the sample agreed


def test_a_tokenizer_whose_words_do_not_join_tokenizes_whole_titles():
    """Byte-level BPE without the regex split learns merges across spaces ("Toy Story" as one token), so a
    title is not its words' tokens joined: not taken for one that splits at spaces, and when forced to join
    words, the check on a sample finds the difference and the batch tokenizes whole titles."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hatllm.core.prompt import PromptBuilder
    from hatllm.training.tokenizer import ITEM_CLOSE, ITEM_OPEN

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.train_from_iterator(list(TITLES.values()) * 20, trainers.BpeTrainer(
        vocab_size=600, special_tokens=[ITEM_OPEN, ITEM_CLOSE], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe)
    builder = PromptBuilder(tokenizer, *tokenizer.convert_tokens_to_ids([ITEM_OPEN, ITEM_CLOSE]))
    titles = list(TITLES.values())
    assert not builder._splits_at_spaces()
    builder._spaces_split = True  # as if it did: the sample check must catch it
    assert builder._by_words(titles) is None and builder._spaces_split is False
    tokens, lengths = builder.title_tokens_batch(titles)
    assert split_batch(tokens, lengths) == whole_titles(builder, titles)


def test_a_llama3_style_tokenizer_joins_words_too():
    """The regex split before a byte-level step (Llama 3, Qwen 2) is recognised, and the joined words equal
    whole titles on it as well."""
    import random

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hatllm.core.prompt import PromptBuilder
    from hatllm.training.tokenizer import ITEM_CLOSE, ITEM_OPEN

    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
              r"\s+(?!\S)|\s+")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(llama3), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    titles = [*TITLES.values(), *TRICKY_TITLES]
    bpe.train_from_iterator(titles, trainers.BpeTrainer(
        vocab_size=500, special_tokens=[ITEM_OPEN, ITEM_CLOSE], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe)
    builder = PromptBuilder(tokenizer, *tokenizer.convert_tokens_to_ids([ITEM_OPEN, ITEM_CLOSE]))
    rng = random.Random(1)
    words = [w for t in titles for w in t.split()]
    titles += [" ".join(rng.choices(words, k=rng.randint(1, 6))) for _ in range(2000)]
    assert builder._splits_at_spaces()
    tokens, lengths = builder.title_tokens_batch(titles)
    assert split_batch(tokens, lengths) == whole_titles(builder, titles)
    assert builder._splits_at_spaces()


def test_the_title_cache_drops_the_least_recently_used_title(tokenizer, monkeypatch):
    """A bounded cache that keeps the titles histories come back to, not one that empties when full."""
    from hatllm.core import prompt
    from hatllm.training.tokenizer import ITEM_CLOSE, ITEM_OPEN

    monkeypatch.setattr(prompt, "TITLE_CACHE_SIZE", 2)
    builder = prompt.PromptBuilder(tokenizer, *tokenizer.convert_tokens_to_ids([ITEM_OPEN, ITEM_CLOSE]))
    encoded = []
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text, **kw: encoded.append(text) or encode(text, **kw))
    heat, casino, jumanji = "Heat (1995)", "Casino (1995)", "Jumanji (1995)"
    for title in (heat, casino, heat, jumanji, heat, casino):
        assert builder.title_tokens(title) == tuple(encode(title, add_special_tokens=False))
    assert encoded == [heat, casino, jumanji, casino]  # jumanji pushed out casino, the least recently used
