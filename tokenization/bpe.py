"""Byte-level BPE for the Transformer: every Unicode string encodes, and decodes back unchanged."""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .special_tokens import SPECIAL_TOKENS, wrap

BYTE_ALPHABET = pre_tokenizers.ByteLevel.alphabet()
MIN_VOCAB_SIZE = len(BYTE_ALPHABET) + len(SPECIAL_TOKENS)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 5000, min_frequency: int = 2, length: int | None = None,
    show_progress: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens (256 bytes, the special tokens, then merges) on `texts`.

    `length` is the number of texts, if known; it only drives the progress bar that `show_progress` prints.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE: it needs at least {MIN_VOCAB_SIZE} "
            f"({len(BYTE_ALPHABET)} bytes + {len(SPECIAL_TOKENS)} special tokens); pass a larger --vocab-size."
        )
    tokenizer = Tokenizer(models.BPE())
    # No prefix space: decode(encode(text)) must give back exactly the user's text.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=BYTE_ALPHABET,  # every byte stays encodable even if training never saw it
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    return wrap(tokenizer)
