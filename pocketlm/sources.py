"""Digests of pocketlm's own source: what a checkpoint records of the code that computed it, and what keys the data
caches. Not the version number, which an edited checkout or a development install keeps while the code changes."""

import functools
import hashlib
from pathlib import Path

import tokenization


@functools.cache
def source_digest(*folders: Path) -> str:
    """A digest of every Python file under `folders`, names included (a file moved is other code)."""
    digest = hashlib.blake2b(digest_size=4)
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            digest.update(str(path.relative_to(folder.parent)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def all_code() -> str:
    """All of pocketlm's source: the library, the models' and the tokenizers' code."""
    import modeling  # here, not above: reading data needs no models

    return source_digest(Path(__file__).parent, Path(modeling.__file__).parent, Path(tokenization.__file__).parent)


def data_code() -> str:
    """What turns files into documents and documents into tokens (pocketlm.data, and tokenization, whose template
    renders conversations; and the releases of datasets, which parses the record files, and tokenizers, which trains
    and runs the tokenizers): part of every key under which datasets caches their output. datasets fingerprints a
    transform by the names of the functions it calls, not by their code, and a schema number bumped by hand was
    once left behind: a fix to reading served a run the reading it had cached before the fix."""
    import datasets
    import tokenizers

    code = source_digest(Path(__file__).parent / "data", Path(tokenization.__file__).parent)
    return f"{code} datasets {datasets.__version__} tokenizers {tokenizers.__version__}"


def cache_key(*parts) -> str:
    """A datasets fingerprint for data pocketlm derives: the same inputs and the same `data_code` give the same key,
    so a second run on unchanged data (and tokenizer, and block size) reads the first run's Arrow files instead of
    computing them, and other code computes them anew."""
    return hashlib.blake2b("|".join(map(str, (data_code(), *parts))).encode(), digest_size=8).hexdigest()
