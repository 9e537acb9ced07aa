"""What a tokenizer is, in a reader's words, read from its `tokenizers` definition."""

import json

BYTE_LEVEL_BPE = "byte-level BPE"
CHARACTER_LEVEL = "character-level"


def tokenizer_kind(tokenizer) -> str:
    """"byte-level BPE" (pocketlm's for the Transformer, GPT-2's), "character-level" (pocketlm's for the LSTM: a BPE
    without merges), else the name of the tokenizer's model ("BPE", "WordPiece", "Unigram"), for one from elsewhere
    given to `train.py --tokenizer`."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    pre_kinds = {pre.get("type"), *(part.get("type") for part in pre.get("pretokenizers") or [])}
    model = spec.get("model") or {}
    if model.get("type") == "BPE" and "ByteLevel" in pre_kinds:
        return BYTE_LEVEL_BPE
    if model.get("type") == "BPE" and not model.get("merges"):
        return CHARACTER_LEVEL
    return model.get("type") or "custom"
