"""Text in, token blocks out: find the user's files, read them through `datasets`, clean, split and tokenize.

Data flows one way: files or a `datasets` name -> documents (one `text` column) -> deduplicated train and
validation documents -> token blocks for the training loop. Everything past the file scan is a `datasets`
dataset: Arrow-backed and memory-mapped by default, or, with `streaming=True`, an `IterableDataset` read
document by document, so a corpus larger than memory or disk cache trains without being loaded.
"""

import codecs
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import datasets
import yaml

from tokenization import END_OF_TEXT, SPECIAL_TOKENS, render_chat
from tokenization.char import UNKNOWN

from .errors import UsageError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"
SMALL_CORPUS_CHARS = 10_000  # below this, models mostly memorise: warn, as the old guide did
VALIDATION_FRACTION = 0.1
DEFAULT_CORPUS_NAME = "chatterbot-corpus (English dialogs)"
# Part of every Arrow cache key: datasets may reuse a cached generator result across code changes, so bump
# this whenever the document columns or their meaning change.
DOCUMENT_SCHEMA = 3
DOCUMENT_FEATURES = datasets.Features(
    {"text": datasets.Value("string"), "is_chat": datasets.Value("bool"), "ends": datasets.Value("bool")}
)
# A streamed corpus is never held whole: validation keeps the first this many characters of held-out documents,
# and the tokenizer is trained on the first this many characters of training documents.
STREAMING_VALIDATION_CHARS = 1_000_000
STREAMING_TOKENIZER_CHARS = 50_000_000


@dataclass
class Corpus:
    """Deduplicated documents split by document: validation text never appears in training.

    `train` is an IterableDataset when the corpus is streamed; `validation` is always a (bounded) Dataset.
    """

    train: datasets.Dataset | datasets.IterableDataset
    validation: datasets.Dataset
    source: str  # what the user asked for, in words, for logs and the model card
    is_chat: bool  # documents are conversations rendered through the chat template

    @property
    def streaming(self) -> bool:
        return isinstance(self.train, datasets.IterableDataset)

    def tokenizer_texts(self) -> Iterable[str]:
        """The training text a tokenizer learns from: all of it, or the first 50M characters of a stream."""
        if not self.streaming:
            return self.train["text"]
        return _first_characters((row["text"] for row in self.train), STREAMING_TOKENIZER_CHARS)


def _first_characters(items: Iterable, limit: int, length=len) -> Iterator:
    """`items` until `limit` characters (as `length` counts them) have gone by, the one crossing it included."""
    seen = 0
    for item in items:
        if seen >= limit:
            return
        seen += length(item)
        yield item


# ---------------------------------------------------------------------------------------------- finding files


def find_data_files(paths: list[str]) -> list[Path]:
    """Every .txt, .md and .jsonl file under `paths` (files or directories, searched recursively), sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UsageError(f"--data {raw}: no such file or directory; check the path.")
        if path.is_file():
            found.append(path)
            continue
        matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (*TEXT_SUFFIXES, JSONL_SUFFIX))
        if not matches:
            raise UsageError(f"--data {raw}: the directory holds no .txt, .md or .jsonl files; add some or point elsewhere.")
        found.extend(matches)
    return found


def _is_readable_text(path: Path) -> bool:
    """True when the file decodes as UTF-8 and holds no NUL bytes (binary files usually do)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                if b"\x00" in chunk:
                    return False
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except (UnicodeDecodeError, OSError):
        return False
    return True


def readable_files(files: list[Path]) -> list[Path]:
    """Drop binary and undecodable files with a warning; refuse when none is left."""
    good = [path for path in files if _is_readable_text(path)]
    for path in sorted(set(files) - set(good)):
        logger.warning("skipping %s: not UTF-8 text", path)
    if not good:
        names = ", ".join(str(p) for p in files[:3]) + (" ..." if len(files) > 3 else "")
        raise UsageError(f"no readable text in {names}: the files are binary or not UTF-8; convert them to UTF-8 text.")
    return good


# ------------------------------------------------------------------------------------------ reading documents


def split_into_documents(lines: Iterable[str], total_chars: int) -> Iterator[str]:
    """Cut one long text, given line by line, into documents at blank lines, about a fiftieth of the text each
    (200 to 4,000 characters). A book or a chat log arrives as one file; splitting it lets validation hold out
    whole passages, and reading it by lines means a file never has to fit in memory.
    """
    target = max(200, min(4000, total_chars // 50))
    current, size = [], 0
    for line in lines:
        current.append(line)
        size += len(line)
        # Prefer a blank line as the cut; cut anywhere once a document has grown far past the target.
        if (size >= target and not line.strip()) or size >= 4 * target:
            document = "".join(current)
            if document.strip():
                yield document
            current, size = [], 0
    document = "".join(current)
    if document.strip():
        yield document


def _text_file_documents(path: Path):
    with open(path, encoding="utf-8") as handle:
        pieces = split_into_documents(handle, os.path.getsize(path))
        previous = next(pieces, None)
        for piece in pieces:
            yield {"text": previous, "is_chat": False, "ends": False}
            previous = piece
        if previous is not None:
            # Pieces of one file are one text: only its last piece ends with the end-of-text token.
            yield {"text": previous, "is_chat": False, "ends": True}


def _jsonl_documents(path: Path):
    skipped = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                yield {"text": record["text"], "is_chat": False, "ends": True}
            elif isinstance(record, dict) and isinstance(record.get("messages"), list):
                yield {"text": render_chat(record["messages"]), "is_chat": True, "ends": True}
            else:
                skipped += 1
    if skipped:
        logger.warning("%s: skipped %d lines without a 'text' string or 'messages' list", path, skipped)


def _file_documents(files: list[str], signature: list[str] | None = None, schema: int = DOCUMENT_SCHEMA):
    """Generator for `from_generator`; `signature` (sizes, times) and `schema` only key the Arrow cache."""
    for name in files:
        path = Path(name)
        yield from _jsonl_documents(path) if path.suffix.lower() == JSONL_SUFFIX else _text_file_documents(path)


def default_conversations() -> list[list[dict]]:
    """The English dialogs of the chatterbot-corpus package, each as alternating user/assistant messages."""
    import chatterbot_corpus

    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    conversations = []
    for path in sorted(folder.glob("*.yml")):
        for turns in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            texts = [str(turn).strip() for turn in turns if str(turn).strip()]
            if len(texts) >= 2:
                roles = ["user", "assistant"]
                conversations.append([{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)])
    return conversations


def _default_documents(schema: int):
    for messages in default_conversations():
        yield {"text": render_chat(messages), "is_chat": True, "ends": True}


def _dataset_documents(name: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    try:
        loaded = datasets.load_dataset(name, streaming=streaming)
    except Exception as error:  # datasets raises many types; the user needs the name and the reason
        raise UsageError(f"--dataset {name}: could not be loaded ({error}); pass a local path or a cached dataset name.")
    split = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    columns = split.column_names or list(next(iter(split), {}))  # a stream may not declare its columns
    if "text" in columns:
        to_document = lambda row: {"text": row["text"], "is_chat": False, "ends": True}  # noqa: E731
    elif "messages" in columns:
        to_document = lambda row: {"text": render_chat(row["messages"]), "is_chat": True, "ends": True}  # noqa: E731
    else:
        raise UsageError(f"--dataset {name}: needs a 'text' or 'messages' column, found {', '.join(columns)}.")
    if streaming:
        return split.map(to_document, remove_columns=columns, features=DOCUMENT_FEATURES)
    return split.map(to_document, remove_columns=columns)


def load_documents(
    data: list[str] | None = None, dataset: str | None = None, streaming: bool = False
) -> tuple[datasets.Dataset | datasets.IterableDataset, str]:
    """All documents, with `text`, `is_chat` and `ends` columns, and a description of their source.

    With `streaming`, an IterableDataset that reads the files (or the dataset) afresh on every pass.
    """
    if dataset:
        return _dataset_documents(dataset, streaming), dataset
    if data:
        files = readable_files(find_data_files(data))
        names = [str(p.resolve()) for p in files]
        source = ", ".join(str(p) for p in data)
        if streaming:
            return datasets.IterableDataset.from_generator(
                _file_documents, gen_kwargs={"files": names}, features=DOCUMENT_FEATURES
            ), source
        signature = [f"{os.path.getsize(n)}:{os.path.getmtime(n)}" for n in names]
        documents = datasets.Dataset.from_generator(
            _file_documents, gen_kwargs={"files": names, "signature": signature, "schema": DOCUMENT_SCHEMA}
        )
        return documents, source
    if streaming:
        return datasets.IterableDataset.from_generator(
            _default_documents, gen_kwargs={"schema": DOCUMENT_SCHEMA}, features=DOCUMENT_FEATURES
        ), DEFAULT_CORPUS_NAME
    documents = datasets.Dataset.from_generator(_default_documents, gen_kwargs={"schema": DOCUMENT_SCHEMA})
    return documents, DEFAULT_CORPUS_NAME


# -------------------------------------------------------------------------------------- cleaning and splitting


def _hash(text: str, seed: int = 0) -> int:
    # 7 bytes: fits Arrow's int64 columns.
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=7).digest(), "big")


def deduplicate_and_split(
    documents: datasets.Dataset, seed: int = 0, validation_fraction: float = VALIDATION_FRACTION
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Drop exact duplicate documents, then hold out about `validation_fraction` of them, chosen by a seeded hash.

    The choice depends only on the text and the seed, so it is the same on every run and every process.
    """
    documents = documents.filter(lambda row: bool(row["text"].strip()))
    keys = documents.map(
        lambda batch: {"key": [_hash(t, seed) for t in batch["text"]], "identity": [_hash(t) for t in batch["text"]]},
        batched=True,
        remove_columns=documents.column_names,
    )
    seen: set[int] = set()
    train_rows, validation_rows = [], []
    threshold = validation_fraction * 2**56
    for row, (key, identity) in enumerate(zip(keys["key"], keys["identity"])):
        if identity in seen:
            continue
        seen.add(identity)
        (validation_rows if key < threshold else train_rows).append((key, row))
    if len(train_rows) + len(validation_rows) < 2:
        raise UsageError(
            "not enough text to hold out validation: the data is one short document; add more text (a few KB at least)."
        )
    # Small corpora can draw no validation document, or only validation documents: move the extreme one over.
    if not validation_rows:
        validation_rows.append(train_rows.pop(min(range(len(train_rows)), key=lambda i: train_rows[i][0])))
    if not train_rows:
        train_rows.append(validation_rows.pop(max(range(len(validation_rows)), key=lambda i: validation_rows[i][0])))
    return (
        documents.select(sorted(row for _, row in train_rows)),
        documents.select(sorted(row for _, row in validation_rows)),
    )


def deduplicate(documents: datasets.Dataset, drop: set[int] = frozenset()) -> datasets.Dataset:
    """Keep the first copy of each distinct text, and none whose hash is in `drop`."""
    seen, keep = set(drop), []
    for row, text in enumerate(documents["text"]):
        identity = _hash(text)
        if text.strip() and identity not in seen:
            seen.add(identity)
            keep.append(row)
    return documents.select(keep)


def load_corpus(
    data: list[str] | None = None,
    dataset: str | None = None,
    seed: int = 0,
    validation_data: list[str] | None = None,
    streaming: bool = False,
) -> Corpus:
    """Read, deduplicate and split the user's text (or the built-in dialog corpus when neither is given).

    With `validation_data`, those files are the validation set and the training text is not split; text in
    both is dropped from validation (or, when streaming, from training). With `streaming`, training documents
    are read afresh on every pass and never held in memory (see `stream_split`).
    """
    if streaming:
        return _streamed_corpus(data, dataset, seed, validation_data)
    documents, source = load_documents(data, dataset)
    if len(documents) == 0:
        raise UsageError(f"{source}: holds no text; point --data at files with some text in them.")
    if validation_data:
        train = deduplicate(documents)
        held_out, _ = load_documents(validation_data)
        validation = deduplicate(held_out, drop={_hash(t) for t in train["text"]})
        if len(validation) == 0:
            raise UsageError("--validation-data holds no text that is not also in the training data.")
    else:
        train, validation = deduplicate_and_split(documents, seed)
    total_chars = sum(len(t) for t in train["text"]) + sum(len(t) for t in validation["text"])
    _warn_if_small(total_chars)
    return Corpus(train=train, validation=validation, source=source, is_chat=any(documents["is_chat"]))


def _warn_if_small(total_chars: int) -> None:
    if total_chars < SMALL_CORPUS_CHARS:
        logger.warning(
            "only %d characters of text: under 10 KB a model mostly memorises; add more text if you can", total_chars
        )


def _streamed_corpus(data, dataset, seed: int, validation_data) -> Corpus:
    documents, source = load_documents(data, dataset, streaming=True)
    # The opening 10 KB stand for the whole stream in the checks that need no more: empty, small, chat or not.
    opening = list(_first_characters(documents, SMALL_CORPUS_CHARS, length=lambda row: len(row["text"])))
    if not any(row["text"].strip() for row in opening):
        raise UsageError(f"{source}: holds no text; point --data at files with some text in them.")
    _warn_if_small(sum(len(row["text"]) for row in opening))
    if validation_data:
        held_out, _ = load_documents(validation_data)
        validation = deduplicate(held_out)
        train = stream_split(documents, seed, "all", drop={_hash(t) for t in validation["text"]})
    else:
        rows = _first_characters(_split_stream(documents, seed, "validation"), STREAMING_VALIDATION_CHARS,
                                 length=lambda row: len(row["text"]))
        validation = datasets.Dataset.from_list(list(rows), features=DOCUMENT_FEATURES)
        if len(validation) == 0:
            raise UsageError(
                f"{source}: too few documents to hold one out for validation (about 1 in 10 is); add text "
                "or pass --validation-data."
            )
        train = stream_split(documents, seed, "train")
    return Corpus(train=train, validation=validation, source=source, is_chat=any(row["is_chat"] for row in opening))


def stream_split(
    documents: datasets.IterableDataset, seed: int, part: str, drop: set[int] = frozenset()
) -> datasets.IterableDataset:
    """One part ("train", "validation" or "all") of a streamed corpus, by the same seeded hash as
    `deduplicate_and_split`, without exact duplicates or texts whose hash is in `drop`.

    Duplicates are dropped as they are met, so each pass keeps one 7-byte hash per distinct document in memory
    (about 100 bytes in Python): the one part of a streamed corpus that grows with its size.
    """
    return datasets.IterableDataset.from_generator(
        _split_stream,
        gen_kwargs={"documents": documents, "seed": seed, "part": part, "drop": frozenset(drop)},
        features=DOCUMENT_FEATURES,
    )


def _split_stream(documents: Iterable[dict], seed: int, part: str, drop: frozenset = frozenset()):
    seen = set(drop)
    threshold = VALIDATION_FRACTION * 2**56
    for row in documents:
        text = row["text"]
        identity = _hash(text)
        if identity in seen or not text.strip():
            continue
        seen.add(identity)
        held_out = _hash(text, seed) < threshold
        if part == "all" or held_out == (part == "validation"):
            yield row


# ------------------------------------------------------------------------------------------------- tokenizing


def count_characters(text: str) -> int:
    """Characters of `text`, counting each special token as one (it stands for one separator, not its spelling)."""
    return len(text) - sum(text.count(token) * (len(token) - 1) for token in (*SPECIAL_TOKENS, UNKNOWN))


def tokenize(documents: datasets.Dataset | datasets.IterableDataset, tokenizer, num_proc: int | None = None):
    """Token ids of every document, each whole document followed by the end-of-text token (lazily, if streamed)."""

    def encode(batch):
        texts = [t + END_OF_TEXT if ends else t for t, ends in zip(batch["text"], batch["ends"])]
        # Documents are cut into blocks afterwards, so one longer than the model's window is expected: verbose=False
        # keeps transformers from warning that it "will result in indexing errors".
        return {"input_ids": tokenizer(texts, verbose=False)["input_ids"]}

    if isinstance(documents, datasets.IterableDataset):
        return documents.map(encode, batched=True, remove_columns=list(DOCUMENT_FEATURES))
    # Worker processes cost seconds to start: worth it only for large corpora.
    if num_proc is None:
        num_proc = min(4, os.cpu_count() or 1) if len(documents) > 20_000 else None
    return documents.map(encode, batched=True, remove_columns=documents.column_names, num_proc=num_proc)


def blocks_from_ids(ids: list[int], block_size: int, pad_id: int, keep_partial: bool) -> list[list[int]]:
    """Cut a token stream into blocks of `block_size` that overlap by one token.

    The model predicts token i+1 from tokens up to i inside a block, so overlapping by one makes every token
    but the very first a target exactly once. A partial last block is padded with `pad_id` when kept.
    """
    stride = block_size - 1
    blocks = []
    for start in range(0, max(len(ids) - 1, 0), stride):
        block = ids[start : start + block_size]
        if len(block) < block_size:
            if not keep_partial:
                break
            block = block + [pad_id] * (block_size - len(block))
        blocks.append(block)
    return blocks


def training_blocks(token_ids: datasets.Dataset | datasets.IterableDataset, block_size: int):
    """Training blocks, cut from the concatenated documents a thousand at a time (a partial tail is dropped)."""

    def group(batch):
        stream = [token for ids in batch["input_ids"] for token in ids]
        return {"input_ids": blocks_from_ids(stream, block_size, pad_id=0, keep_partial=False)}

    return token_ids.map(group, batched=True, batch_size=1000, remove_columns=["input_ids"])


def validation_blocks(token_ids: datasets.Dataset, block_size: int, pad_id: int) -> tuple[list[list[int]], int]:
    """Every validation token in blocks (the last padded), and the number of real tokens in them."""
    stream = [token for ids in token_ids["input_ids"] for token in ids]
    return blocks_from_ids(stream, block_size, pad_id, keep_partial=True), len(stream)
