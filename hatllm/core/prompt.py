"""The item-delimited prompt, built at token level: one builder for training, evaluation and serving.

Layout (token ids):  [BOS] instruction  <item> code_1 title_1 </item> ... <item> code_n title_n </item>  <item>
The prompt ends with the open delimiter of the next item, so the model's next tokens are that item's
code, title and close delimiter. Nothing but items follows the first item (see `masks`). Codes are the
optional collaborative item tokens of `item_codes` (empty for a model trained without them).

Each title is tokenized alone, with no special tokens, and cached: a title has exactly the same tokens
in a history, in a training target, and in the decoding trie (which tokenizes a whole catalog at once,
`title_tokens_batch`, uncached).

A catalog's titles share most of their words, so a batch tokenizes each distinct word once and joins
the words' tokens, where that gives the title's own tokens: for a tokenizer that never merges across a
space (no normalizer or NFC, and a byte-level pre-tokenizer, whose pieces begin at a space at the latest:
GPT-2's, and Llama 3's and Qwen 2's regex split before it), and for titles whose words are separated by
single spaces. Every batch checks a sample of its titles against whole-title tokenization and tokenizes
whole titles if one differs. A million titles: 21 -> 6 s (session 17, 2 cores).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from itertools import chain
from typing import Sequence

import numpy as np

from hatllm.core.arrays import run_starts, select_rows

TITLE_CACHE_SIZE = 100_000
BATCH_CHUNK = 50_000  # titles tokenized per call of a batch
WORD_CHECK_SAMPLE = 1_000  # titles of a batch tokenized whole to check the joined words' tokens
DEFAULT_INSTRUCTION = "A user interacted with these items in order. Predict the next item."


@dataclass
class PromptBuilder:
    tokenizer: object  # any HF tokenizer
    item_open_id: int
    item_close_id: int
    instruction: str = DEFAULT_INSTRUCTION
    _spaces_split: bool | None = field(default=None, repr=False)  # no token spans a space (`_splits_at_spaces`)

    def __post_init__(self) -> None:
        self._special_ids = frozenset(self.tokenizer.all_special_ids)
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        self._prefix = tuple(bos + self.tokenizer.encode(self.instruction, add_special_tokens=False))  # every prompt's
        # Least recently used out: a service sees the titles of a catalog without bound, and histories keep
        # coming back to the popular ones.
        self._cached_title_tokens = functools.lru_cache(maxsize=TITLE_CACHE_SIZE)(self._tokenize_title)

    @classmethod
    def from_model_config(cls, tokenizer, config) -> "PromptBuilder":
        """The builder a checkpoint was trained with: delimiters and instruction come from config.json."""
        return cls(
            tokenizer,
            config.hat_item_open_token_id,
            config.hat_item_close_token_id,
            getattr(config, "hat_instruction", DEFAULT_INSTRUCTION),
        )

    @classmethod
    def from_checkpoint(cls, path) -> "PromptBuilder":
        from transformers import AutoConfig, AutoTokenizer  # tokenizer and config only, no model code

        return cls.from_model_config(AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path))

    def title_tokens(self, title: str) -> tuple[int, ...]:
        return self._cached_title_tokens(title)

    def _tokenize_title(self, title: str) -> tuple[int, ...]:
        tokens = tuple(self.tokenizer.encode(title, add_special_tokens=False))
        self._check(title, tokens)
        return tokens

    def title_tokens_batch(self, titles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every title's tokens at once, as (tokens of all titles concatenated, tokens per title): a
        million titles in seconds, so no Python object per token outlives its chunk."""
        titles = list(titles)
        joined = self._by_words(titles) if self._splits_at_spaces() else None
        tokens, lengths = joined if joined is not None else self._encode_batch(titles)
        bad = np.flatnonzero(lengths == 0)
        if not len(bad):
            special = np.isin(tokens, np.fromiter(self._special_ids, np.int64))
            bad = np.unique(np.repeat(np.arange(len(titles)), lengths)[special])
        if len(bad):
            self._check(titles[bad[0]], self.tokenizer.encode(titles[bad[0]], add_special_tokens=False))
        return tokens, lengths

    def _encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Whole-text tokenization, in chunks: (tokens concatenated, tokens per text)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)  # a fast tokenizer: batch in Rust, no offsets
        parts, lengths = [], []
        for start in range(0, len(texts), BATCH_CHUNK):
            chunk = list(texts[start:start + BATCH_CHUNK])
            if backend is not None and hasattr(backend, "encode_batch_fast"):
                encoded = [e.ids for e in backend.encode_batch_fast(chunk, add_special_tokens=False)]
            else:
                encoded = self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
            lengths.append(np.fromiter(map(len, encoded), np.int64, len(encoded)))
            parts.append(np.fromiter(chain.from_iterable(encoded), np.int32, int(lengths[-1].sum())))
        return (np.concatenate(parts) if parts else np.zeros(0, np.int32),
                np.concatenate(lengths) if lengths else np.zeros(0, np.int64))

    def _splits_at_spaces(self) -> bool:
        """Whether no token can span a space (module docstring): the tokenizer's normalizer and pre-tokenizer."""
        if self._spaces_split is None:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            spec = json.loads(backend.to_str()) if backend is not None else {}
            pre = spec.get("pre_tokenizer") or {}
            steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
            kinds = [step.get("type") for step in steps]
            byte_level = (kinds == ["ByteLevel"] and steps[0].get("use_regex", True)) or (
                kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True))
            self._spaces_split = bool(byte_level and not steps[-1].get("add_prefix_space", False)
                                      and (spec.get("normalizer") or {}).get("type", "NFC") == "NFC")
        return self._spaces_split

    def _by_words(self, titles: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Titles' tokens joined from their words' ("A", " B", " C"), each distinct word tokenized once;
        titles not made of single-spaced words whole. None if a sample disagrees with whole titles."""
        simple = np.fromiter((t.isprintable() and "  " not in t and t[:1] != " " and t[-1:] != " " for t in titles),
                             bool, len(titles))
        word_ids: dict[str, int] = {}
        word_of_title, words_per_title = [], np.zeros(len(titles), np.int64)
        for start in range(0, len(titles), BATCH_CHUNK):
            in_chunk = simple[start:start + BATCH_CHUNK]
            chunk = [t for t, ok in zip(titles[start:start + BATCH_CHUNK], in_chunk) if ok]
            if not chunk:
                continue
            words_per_title[start:start + BATCH_CHUNK][in_chunk] = np.fromiter((t.count(" ") + 1 for t in chunk), np.int64, len(chunk))
            words = "\n".join(chunk).replace(" ", "\n ").split("\n")  # "A B C" -> "A", " B", " C"; one call per chunk
            new = [w for w in dict.fromkeys(words) if w not in word_ids]
            word_ids.update(zip(new, range(len(word_ids), len(word_ids) + len(new))))
            word_of_title.append(np.fromiter(map(word_ids.__getitem__, words), np.int64, len(words)))
        word_tokens, tokens_per_word = self._encode_batch(list(word_ids))
        words = np.concatenate(word_of_title) if word_of_title else np.zeros(0, np.int64)
        lengths = np.zeros(len(titles), np.int64)
        lengths[simple] = np.add.reduceat(tokens_per_word[words], run_starts(words_per_title[simple])) if len(words) else 0
        joined, _ = select_rows(word_tokens, tokens_per_word, words)
        whole_tokens, whole_lengths = self._encode_batch([t for t, ok in zip(titles, simple) if not ok])
        lengths[~simple] = whole_lengths
        tokens = np.empty(int(lengths.sum()), np.int32)
        in_simple = np.repeat(simple, lengths)
        tokens[in_simple], tokens[~in_simple] = joined, whole_tokens
        sample = np.flatnonzero(simple)[:: max(1, int(simple.sum()) // WORD_CHECK_SAMPLE)]
        if not all(map(np.array_equal, self._encode_batch([titles[i] for i in sample]), select_rows(tokens, lengths, sample))):
            self._spaces_split = False
            return None
        return tokens, lengths

    def _check(self, title: str, tokens: Sequence[int]) -> None:
        if not tokens:
            raise ValueError(f"title {title!r} has no tokens")
        if not self._special_ids.isdisjoint(tokens):
            raise ValueError(f"title {title!r} contains a special token (item delimiter or code)")

    def item_tokens(self, title: str, code: Sequence[int] = ()) -> list[int]:
        return [self.item_open_id, *code, *self.title_tokens(title), self.item_close_id]

    def prefix(self) -> list[int]:
        return list(self._prefix)

    def items(self, titles: Sequence[str], codes: Sequence[Sequence[int]] | None) -> list[int]:
        ids = []
        for title, code in zip(titles, codes if codes is not None else [()] * len(titles), strict=True):
            ids += self.item_tokens(title, code)
        return ids

    def prompt(self, history_titles: Sequence[str], codes: Sequence[Sequence[int]] | None = None) -> list[int]:
        """Prompt for recommending the item after `history_titles` (oldest first), with their codes."""
        return self.prefix() + self.items(history_titles, codes) + [self.item_open_id]

    def training_sequence(self, titles: Sequence[str], codes: Sequence[Sequence[int]] | None = None) -> tuple[list[int], list[bool]]:
        """Token ids of a whole sequence of items and, per position, whether its *next* token is a
        training target (codes, title tokens and close delimiters of every item; the open delimiters
        are given by the prompt, never generated)."""
        ids = self.prefix() + self.items(titles, codes)
        predicts = [nxt != self.item_open_id for nxt in ids[1:]] + [False]
        first = len(self.prefix())
        predicts[: first] = [False] * first  # positions before the first item's open token
        return ids, predicts
