"""What a tokenizer is, in a reader's words, read from its `tokenizers` definition (tokenizer.json's), and the
steps each part of that definition is made of."""

import json

BYTE_LEVEL_BPE = "byte-level BPE"
CHARACTER_LEVEL = "character-level"


def tokenizer_kind(tokenizer) -> str:
    """"byte-level BPE" (pocketlm's for the Transformer, GPT-2's), "character-level" (pocketlm's for the LSTM: a BPE
    without merges), else the name of the tokenizer's model ("BPE", "WordPiece", "Unigram"), for one from elsewhere
    given to `train.py --tokenizer`."""
    spec = definition(tokenizer)
    pre_kinds = {step.get("type") for step in steps(spec.get("pre_tokenizer"))}
    model = spec.get("model") or {}
    if model.get("type") == "BPE" and "ByteLevel" in pre_kinds:
        return BYTE_LEVEL_BPE
    if model.get("type") == "BPE" and not model.get("merges"):
        return CHARACTER_LEVEL
    return model.get("type") or "custom"


def definition(tokenizer) -> dict:
    """`tokenizer`'s `tokenizers` definition, as its tokenizer.json holds it."""
    return json.loads(tokenizer.backend_tokenizer.to_str())


def steps(part: dict | None) -> list[dict]:
    """The steps of one part of a definition (its normalizer, pre-tokenizer, decoder or post-processor), in order."""
    if not part:
        return []
    return part[_sequence_key(part)] if part.get("type") == "Sequence" else [part]


def with_steps(part: dict | None, kept: list[dict]) -> dict | None:
    """`part` holding only `kept` (some of its own steps): several as the Sequence it was, one as itself, none as
    no part."""
    if len(kept) > 1:
        return {**part, _sequence_key(part): kept}
    return kept[0] if kept else None


def _sequence_key(sequence: dict) -> str:
    return next(key for key in ("normalizers", "pretokenizers", "decoders", "processors") if key in sequence)
