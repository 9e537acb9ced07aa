"""A character-level tokenizer for the LSTM: one token per character seen in training, `<unk>` for the rest."""

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .special_tokens import SPECIAL_TOKENS, wrap

UNKNOWN = "<unk>"


def train_char_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Build the vocabulary from every character in `texts` (sorted, after the special tokens)."""
    characters: set[str] = set()
    for text in texts:
        characters.update(text)
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, UNKNOWN, *sorted(characters)])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNKNOWN))
    # Splitting on the empty pattern isolates every character; special tokens are matched before this step.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(""), behavior="isolated")
    # Fuse joins the characters back without the spaces WordLevel's default decoding would insert.
    tokenizer.decoder = decoders.Fuse()
    return wrap(tokenizer, unk_token=UNKNOWN)
