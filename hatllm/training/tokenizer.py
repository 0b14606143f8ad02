"""A byte-level BPE tokenizer trained on the catalog's titles, saved in HF format next to the model.

Item boundaries are special tokens, so a title can never merge with a delimiter or a neighbour: each
item is tokenized on its own (see `prompt.PromptBuilder`), never as part of a longer string.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ITEM_OPEN, ITEM_CLOSE = "<|item|>", "<|/item|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, ITEM_OPEN, ITEM_CLOSE]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, code_tokens: list[str] = ()) -> PreTrainedTokenizerFast:
    """Train BPE on `texts` (titles and the instruction). Byte-level, so no text is ever unknown.
    `code_tokens` (item codes) are appended as special tokens: no text ever encodes to them."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    bpe.add_special_tokens(list(code_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[ITEM_OPEN, ITEM_CLOSE],
    )
