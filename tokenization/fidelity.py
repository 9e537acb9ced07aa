"""Whether a tokenizer gives back the text it reads, character for character.

pocketlm's own tokenizers do (bytes, or every character of the training text); one from elsewhere may not: a
WordPiece lowercases and drops spaces, a whitespace-split BPE drops them too, an unknown character becomes [UNK].
A model learns and writes only what its tokenizer keeps, and bits per character divide its loss by every character
of the text, so a tokenizer that drops some scores a model lower than one that keeps them all would.
"""

from collections import Counter
from collections.abc import Iterable

SAMPLE_CHARACTERS = 100_000  # enough text to meet a tokenizer's every habit, checked in well under a second
CONTEXT = 24  # characters shown of each stretch, half of them before the first change
# Characters counted for those a tokenizer has no token for: a stream's first ones are read for it alone, so well
# under a second's worth (Counter counted 32 million a second on a 2-core machine).
COUNTED_CHARACTERS = 10_000_000


def first_change(tokenizer, texts: Iterable[str], characters: int = SAMPLE_CHARACTERS) -> tuple[str, str] | None:
    """The first stretch of `texts` (their first `characters` in all) that `tokenizer` does not give back as it
    was, and what it gives back instead; None when every character comes back. A character outside the vocabulary,
    given back as the unknown token, is not a change: the model is charged for it as for any other character (a
    character tokenizer meets one a training text never held); a tokenizer that lowercases or drops spaces
    changes the text."""
    for text in texts:
        text = text[:characters]
        back = tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids)
        where = _first_difference(text, back, tokenizer.unk_token)
        if where is not None:
            (i, j), before = where, CONTEXT // 2
            return text[max(0, i - before):i + CONTEXT - before], back[max(0, j - before):j + CONTEXT - before]
        characters -= len(text)
        if characters <= 0:
            break
    return None


def _first_difference(text: str, back: str, unknown: str | None) -> tuple[int, int] | None:
    """Where `back` first parts from `text` (an offset into each), reading the unknown token as any one character."""
    i = j = 0
    while i < len(text) and j < len(back):
        if unknown and back.startswith(unknown, j) and not text.startswith(unknown, i):
            i, j = i + 1, j + len(unknown)
        elif text[i] == back[j]:
            i, j = i + 1, j + 1
        else:
            return i, j
    return None if (i, j) == (len(text), len(back)) else (i, j)


def characters_without_a_token(tokenizer, texts: Iterable[str], characters: int = COUNTED_CHARACTERS
                               ) -> tuple[dict[str, int], int]:
    """The characters of `texts` (their first `characters` in all) that `tokenizer` reads as its unknown token, each
    with how often it occurs, and how many characters were read. A character model's vocabulary is the characters of
    the text it was trained on: fine-tuned on another text, it reads each character it never saw as the unknown
    token, and never writes one."""
    if tokenizer.unk_token_id is None:  # a byte-level BPE has a token for every byte
        return {}, 0
    counts = Counter()
    for text in texts:
        counts.update(text[:characters])
        characters -= len(text)
        if characters <= 0:
            break
    distinct = list(counts)
    encoded = tokenizer(distinct, add_special_tokens=False).input_ids if distinct else []
    unknown = {character: counts[character] for character, ids in zip(distinct, encoded)
               if ids == [tokenizer.unk_token_id]}
    return unknown, counts.total()
