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
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import yaml

from tokenization import END_OF_TEXT, END_OF_TURN, ROLE_TOKENS, SPECIAL_TOKENS, render_chat
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
DOCUMENT_SCHEMA = 4
# Every record read becomes a row, the unusable ones with a `problem` (else ""), so each is counted and reported;
# `origin` says where it came from ("notes.jsonl:12").
DOCUMENT_FEATURES = datasets.Features({
    "text": datasets.Value("string"), "is_chat": datasets.Value("bool"), "ends": datasets.Value("bool"),
    "origin": datasets.Value("string"), "problem": datasets.Value("string"),
})
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
    source: str  # what the user asked for, in words, for logs
    is_chat: bool  # documents are conversations rendered through the chat template
    report: "ReadReport" = None  # every record read: kept, a duplicate, or skipped and why
    name: str = ""  # the data's public name: file and folder names, never a path (the model card shows it)

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


@dataclass
class ReadReport:
    """Every record read, accounted for: kept, an exact duplicate, or skipped with the reason and where.

    A record is a JSONL line, a row of a `--dataset`, or a piece of a plain text file (see `split_into_documents`).
    """

    records: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records skipped for it
    first_at: dict[str, str] = field(default_factory=dict)  # reason -> where its first record was
    skipped_files: dict[str, str] = field(default_factory=dict)  # file -> why none of it was read
    streamed: bool = False  # a stream is never read whole: counts cover what preparation read

    @property
    def kept(self) -> int:
        return self.records - self.duplicates - sum(self.skipped.values())

    def skip(self, reason: str, origin: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        self.first_at.setdefault(reason, origin)

    def describe(self) -> str:
        """One line for the screen: what was read and what became of it."""
        parts = [f"{self.kept:,} kept"]
        if self.duplicates:
            parts.append(f"{self.duplicates:,} exact duplicates dropped")
        parts += [f"{count:,} skipped ({reason}, first at {self.first_at[reason]})" for reason, count in self.skipped.items()]
        parts += [f"{name} not read ({why})" for name, why in self.skipped_files.items()]
        scope = "read so far" if self.streamed else "read"
        return f"{self.records:,} records {scope}: " + ", ".join(parts)

    def summary(self) -> dict:
        return {"records_read": self.records, "kept": self.kept, "duplicates_dropped": self.duplicates,
                "skipped": dict(self.skipped), "first_skipped_at": dict(self.first_at),
                "files_not_read": dict(self.skipped_files), "streamed": self.streamed}


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


def text_encoding(path: Path) -> str | None:
    """The encoding `path` reads in: UTF-8 (a BOM is dropped), or UTF-16 with its BOM (as Windows Notepad saves);
    None for binary or undecodable files."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                # UTF-8 text holds no NUL bytes; binary files usually do.
                if "\x00" in decoder.decode(chunk):
                    return None
            decoder.decode(b"", final=True)
    except (UnicodeDecodeError, OSError):
        return None
    return encoding


def readable_files(files: list[Path], report: ReadReport) -> list[tuple[Path, str]]:
    """Each readable file with its encoding; binary and undecodable files are reported and left out."""
    good = []
    for path in files:
        encoding = text_encoding(path)
        if encoding is None:
            report.skipped_files[str(path)] = "binary, or not UTF-8 or UTF-16 text"
            logger.warning("skipping %s: binary, or not UTF-8 or UTF-16 text; convert it to UTF-8 to train on it", path)
        else:
            good.append((path, encoding))
    if not good:
        names = ", ".join(str(p) for p in files[:3]) + (" ..." if len(files) > 3 else "")
        raise UsageError(f"no readable text in {names}: the files are binary or not UTF-8; convert them to UTF-8 text.")
    return good


def _signature(path: str) -> str:
    """Size and modification time: what tells a file that changed apart (and keys the Arrow cache)."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


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


def _row(text: str = "", origin: str = "", problem: str = "", is_chat: bool = False, ends: bool = True) -> dict:
    return {"text": text, "is_chat": is_chat, "ends": ends, "origin": origin, "problem": problem}


def _text_file_documents(path: Path, encoding: str):
    with open(path, encoding=encoding) as handle:
        pieces = split_into_documents(handle, os.path.getsize(path))
        previous = next(pieces, None)
        if previous is None:
            yield _row(origin=str(path), problem="empty, or only whitespace")
            return
        for piece in pieces:
            yield _row(previous, str(path), ends=False)
            previous = piece
        # Pieces of one file are one text: only its last piece ends with the end-of-text token.
        yield _row(previous, str(path), ends=True)


def document_from_record(record, origin: str) -> dict:
    """The document a JSONL line or dataset row holds (a `text` string, or a `messages` conversation), or a row
    that says what is wrong with it."""
    if not isinstance(record, dict):
        return _row(origin=origin, problem="not a JSON object")
    if "text" in record and record["text"] is not None:
        if not isinstance(record["text"], str):
            return _row(origin=origin, problem="'text' is not a string")
        if not record["text"].strip():
            return _row(origin=origin, problem="empty 'text'")
        return _row(record["text"], origin)
    messages = record.get("messages")
    if messages is None:
        return _row(origin=origin, problem="no 'text' string or 'messages' list")
    if not isinstance(messages, list) or not messages:
        return _row(origin=origin, problem="'messages' is not a non-empty list")
    for message in messages:
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            return _row(origin=origin, problem="a message lacks a 'role' or 'content' string")
        if message["role"] not in ROLE_TOKENS:
            return _row(origin=origin, problem=f"unknown role {message['role']!r} (use system, user or assistant)")
    if not any(message["content"].strip() for message in messages):
        return _row(origin=origin, problem="every message is empty")
    return _row(render_chat(messages), origin, is_chat=True)


def _jsonl_documents(path: Path, encoding: str):
    with open(path, encoding=encoding) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            origin = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                yield _row(origin=origin, problem="not valid JSON")
                continue
            yield document_from_record(record, origin)


def _file_documents(files: list[str], encodings: list[str], signature: list[str] | None = None,
                    schema: int = DOCUMENT_SCHEMA):
    """Generator for `from_generator`; `signature` (sizes, times) and `schema` only key the Arrow cache."""
    for name, encoding in zip(files, encodings):
        path = Path(name)
        read = _jsonl_documents if path.suffix.lower() == JSONL_SUFFIX else _text_file_documents
        yield from read(path, encoding)


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
    for number, messages in enumerate(default_conversations(), 1):
        yield _row(render_chat(messages), f"{DEFAULT_CORPUS_NAME} #{number}", is_chat=True)


def _dataset_documents(name: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    try:
        loaded = datasets.load_dataset(name, streaming=streaming)
    except Exception as error:  # datasets raises many types; the user needs the name and the reason
        raise UsageError(f"--dataset {name}: could not be loaded ({error}); pass a local path or a cached dataset name.")
    split = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    columns = split.column_names or list(next(iter(split), {}))  # a stream may not declare its columns
    if "text" not in columns and "messages" not in columns:
        raise UsageError(f"--dataset {name}: needs a 'text' or 'messages' column, found {', '.join(columns)}.")

    def to_documents(rows, indices):
        records = [dict(zip(rows, values)) for values in zip(*rows.values())]
        documents = [document_from_record(record, f"{name} row {index + 1}") for record, index in zip(records, indices)]
        return {key: [document[key] for document in documents] for key in DOCUMENT_FEATURES}

    return split.map(to_documents, batched=True, with_indices=True, remove_columns=columns, features=DOCUMENT_FEATURES)


def load_documents(
    data: list[str] | None = None, dataset: str | None = None, streaming: bool = False,
    report: ReadReport | None = None,
) -> tuple[datasets.Dataset | datasets.IterableDataset, str]:
    """Every record read, as rows with `text`, `is_chat`, `ends`, `origin` and `problem`, and a description of their
    source. Unreadable files go into `report`.

    With `streaming`, an IterableDataset that reads the files (or the dataset) afresh on every pass.
    """
    report = report if report is not None else ReadReport()
    if dataset:
        return _dataset_documents(dataset, streaming), dataset
    if not data:
        generate = datasets.IterableDataset.from_generator if streaming else datasets.Dataset.from_generator
        return generate(_default_documents, gen_kwargs={"schema": DOCUMENT_SCHEMA},
                        features=DOCUMENT_FEATURES), DEFAULT_CORPUS_NAME
    files = readable_files(find_data_files(data), report)
    names, encodings = [str(path) for path, _ in files], [encoding for _, encoding in files]
    source = ", ".join(str(p) for p in data)
    if streaming:
        return datasets.IterableDataset.from_generator(
            _file_documents, gen_kwargs={"files": names, "encodings": encodings}, features=DOCUMENT_FEATURES
        ), source
    # Keyed by absolute paths, sizes and times: the same text is read once, a changed file again.
    signature = [f"{Path(name).resolve()}|{_signature(name)}" for name in names]
    documents = datasets.Dataset.from_generator(
        _file_documents, features=DOCUMENT_FEATURES,
        gen_kwargs={"files": names, "encodings": encodings, "signature": signature, "schema": DOCUMENT_SCHEMA},
    )
    changed = [name for name, before in zip(names, signature) if f"{Path(name).resolve()}|{_signature(name)}" != before]
    if changed:
        raise UsageError(f"{changed[0]} changed while it was being read: run again once it is complete.")
    return documents, source


def public_name(data: list[str] | None, dataset: str | None) -> str:
    """What the model card may say the data was: file and folder names, or a dataset's name, never a local path."""
    if dataset:
        return dataset if not Path(dataset).expanduser().exists() else Path(dataset).resolve().name
    if not data:
        return DEFAULT_CORPUS_NAME
    return ", ".join(Path(path).expanduser().resolve().name for path in data)


def keep_readable_records(documents: datasets.Dataset, report: ReadReport) -> datasets.Dataset:
    """Count every record into `report`, warn once per kind of problem, and keep the usable ones."""
    problems = documents["problem"]
    report.records += len(problems)
    bad = [row for row, problem in enumerate(problems) if problem]
    if not bad:
        return documents
    found = ReadReport()
    for row, origin in zip(bad, documents.select(bad)["origin"]):
        found.skip(problems[row], origin)
    for reason, count in found.skipped.items():
        report.skip(reason, found.first_at[reason], count)
        logger.warning("skipped %d record%s (%s), the first at %s", count, "s" * (count != 1), reason,
                       found.first_at[reason])
    return documents.select(sorted(set(range(len(problems))) - set(bad)))


# -------------------------------------------------------------------------------------- cleaning and splitting


def _hash(text: str, seed: int = 0) -> int:
    # 7 bytes: fits Arrow's int64 columns.
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=7).digest(), "big")


def deduplicate_and_split(
    documents: datasets.Dataset, seed: int = 0, validation_fraction: float = VALIDATION_FRACTION,
    report: ReadReport | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Drop exact duplicate documents, then hold out about `validation_fraction` of them, chosen by a seeded hash.

    The choice depends only on the text and the seed, so it is the same on every run and every process. The
    duplicates dropped are counted into `report`.
    """
    documents = documents.filter(lambda row: bool(row["text"].strip()), desc="dropping empty documents")
    keys = documents.map(
        lambda batch: {"key": [_hash(t, seed) for t in batch["text"]], "identity": [_hash(t) for t in batch["text"]]},
        batched=True,
        remove_columns=documents.column_names,
        desc="finding duplicates",
    )
    seen: set[int] = set()
    train_rows, validation_rows = [], []
    threshold = validation_fraction * 2**56
    for row, (key, identity) in enumerate(zip(keys["key"], keys["identity"])):
        if identity in seen:
            continue
        seen.add(identity)
        (validation_rows if key < threshold else train_rows).append((key, row))
    if report is not None:
        report.duplicates += len(documents) - len(seen)
    if len(train_rows) + len(validation_rows) < 2:
        found = f" ({report.describe()})" if report is not None else ""
        raise UsageError(
            f"not enough text to hold out validation: the data holds one distinct document{found}; "
            "add more text (a few KB at least)."
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


def deduplicate(documents: datasets.Dataset, drop: set[int] = frozenset(), report: ReadReport | None = None
                ) -> datasets.Dataset:
    """Keep the first copy of each distinct text, and none whose hash is in `drop` (counted as duplicates)."""
    seen, keep = set(drop), []
    for row, text in enumerate(documents["text"]):
        identity = _hash(text)
        if text.strip() and identity not in seen:
            seen.add(identity)
            keep.append(row)
    if report is not None:
        report.duplicates += len(documents) - len(keep)
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
    are read afresh on every pass and never held in memory (see `stream_split`). Every record read is accounted
    for in the corpus's `report`.
    """
    if streaming:
        return _streamed_corpus(data, dataset, seed, validation_data)
    report = ReadReport()
    documents, source = load_documents(data, dataset, report=report)
    documents = keep_readable_records(documents, report)
    if len(documents) == 0:
        raise UsageError(f"{source}: holds no usable text ({report.describe()}); point --data at files with text in them.")
    if validation_data:
        train = deduplicate(documents, report=report)
        held_out, _ = load_documents(validation_data, report=report)
        held_out = keep_readable_records(held_out, report)
        validation = deduplicate(held_out, drop={_hash(t) for t in train["text"]}, report=report)
        if len(validation) == 0:
            raise UsageError("--validation-data holds no text that is not also in the training data.")
    else:
        train, validation = deduplicate_and_split(documents, seed, report=report)
    total_chars = sum(len(t) for t in train["text"]) + sum(len(t) for t in validation["text"])
    _warn_if_small(total_chars)
    return Corpus(train=train, validation=validation, source=source, is_chat=any(documents["is_chat"]),
                  report=report, name=public_name(data, dataset))


def _warn_if_small(total_chars: int) -> None:
    if total_chars < SMALL_CORPUS_CHARS:
        logger.warning(
            "only %d characters of text: under 10 KB a model mostly memorises; add more text if you can", total_chars
        )


def _streamed_corpus(data, dataset, seed: int, validation_data) -> Corpus:
    report = ReadReport(streamed=True)
    documents, source = load_documents(data, dataset, streaming=True, report=report)
    # The opening 10 KB stand for the whole stream in the checks that need no more: empty, small, chat or not.
    opening = list(_first_characters((row for row in documents if not row["problem"]), SMALL_CORPUS_CHARS,
                                     length=lambda row: len(row["text"])))
    if not any(row["text"].strip() for row in opening):
        raise UsageError(f"{source}: holds no usable text; point --data at files with text in them.")
    _warn_if_small(sum(len(row["text"]) for row in opening))
    if validation_data:
        held_out, _ = load_documents(validation_data, report=report)
        validation = deduplicate(keep_readable_records(held_out, report), report=report)
        train = stream_split(documents, seed, "all", drop={_hash(t) for t in validation["text"]})
    else:
        rows = _first_characters(_split_stream(documents, seed, "validation", report=report),
                                 STREAMING_VALIDATION_CHARS, length=lambda row: len(row["text"]))
        validation = datasets.Dataset.from_list(list(rows), features=DOCUMENT_FEATURES)
        if len(validation) == 0:
            raise UsageError(
                f"{source}: too few documents to hold one out for validation (about 1 in 10 is); add text "
                "or pass --validation-data."
            )
        train = stream_split(documents, seed, "train")
    return Corpus(train=train, validation=validation, source=source, is_chat=any(row["is_chat"] for row in opening),
                  report=report, name=public_name(data, dataset))


def stream_split(
    documents: datasets.IterableDataset, seed: int, part: str, drop: set[int] = frozenset()
) -> datasets.IterableDataset:
    """One part ("train", "validation" or "all") of a streamed corpus, by the same seeded hash as
    `deduplicate_and_split`, without exact duplicates, unusable records, or texts whose hash is in `drop`.

    Duplicates are dropped as they are met, so each pass keeps one 7-byte hash per distinct document in memory
    (about 100 bytes in Python): the one part of a streamed corpus that grows with its size.
    """
    return datasets.IterableDataset.from_generator(
        _split_stream,
        gen_kwargs={"documents": documents, "seed": seed, "part": part, "drop": frozenset(drop)},
        features=DOCUMENT_FEATURES,
    )


_warned_origins: set[str] = set()  # a stream is read on every pass: warn about each unusable record once


def _split_stream(documents: Iterable[dict], seed: int, part: str, drop: frozenset = frozenset(),
                  report: ReadReport | None = None):
    seen = set(drop)
    threshold = VALIDATION_FRACTION * 2**56
    for row in documents:
        if report is not None:
            report.records += 1
        if row["problem"]:
            if report is not None:
                report.skip(row["problem"], row["origin"])
            if row["origin"] not in _warned_origins:
                _warned_origins.add(row["origin"])
                logger.warning("skipped %s: %s", row["origin"], row["problem"])
            continue
        text = row["text"]
        identity = _hash(text)
        if identity in seen or not text.strip():
            if report is not None:
                report.duplicates += 1
            continue
        seen.add(identity)
        held_out = _hash(text, seed) < threshold
        if part == "all" or held_out == (part == "validation"):
            yield row


# ------------------------------------------------------------------------------------------------- tokenizing


def count_characters(text: str) -> int:
    """Characters of `text`, counting each special token as one (it stands for one separator, not its spelling)."""
    return len(text) - sum(text.count(token) * (len(token) - 1) for token in (*SPECIAL_TOKENS, UNKNOWN))


_ASSISTANT_TURN = re.compile(re.escape(ROLE_TOKENS["assistant"]) + "(.*?)" + re.escape(END_OF_TURN), re.DOTALL)


def count_assistant_characters(text: str) -> int:
    """Characters of the assistant's replies in a rendered conversation, each reply's end-of-turn token as one: what
    a chat model is asked to write, so its loss on them per character says how well it answers."""
    return sum(count_characters(reply) + 1 for reply in _ASSISTANT_TURN.findall(text))


def assistant_mask(ids: list[int], assistant_id: int, end_id: int) -> list[int]:
    """1 for each token of an assistant's reply and the end-of-turn token closing it, 0 elsewhere: exactly what the
    chat template's {% generation %} block marks, read from the token ids (role tokens are single tokens)."""
    mask, inside = [], False
    for token in ids:
        mask.append(int(inside))
        if token == assistant_id:
            inside = True
        elif token == end_id:
            inside = False
    return mask


def tokenize(documents: datasets.Dataset | datasets.IterableDataset, tokenizer, num_proc: int | None = None,
             with_assistant_mask: bool = False):
    """Token ids of every document, each whole document followed by the end-of-text token (lazily, if streamed);
    with `with_assistant_mask`, also an `assistant_mask` column marking the assistant's replies."""
    assistant_id, end_id = tokenizer.convert_tokens_to_ids([ROLE_TOKENS["assistant"], END_OF_TURN])

    def encode(batch):
        texts = [t + END_OF_TEXT if ends else t for t, ends in zip(batch["text"], batch["ends"])]
        # Documents are cut into blocks afterwards, so one longer than the model's window is expected: verbose=False
        # keeps transformers from warning that it "will result in indexing errors".
        ids = tokenizer(texts, verbose=False)["input_ids"]
        if not with_assistant_mask:
            return {"input_ids": ids}
        return {"input_ids": ids, "assistant_mask": [assistant_mask(row, assistant_id, end_id) for row in ids]}

    if isinstance(documents, datasets.IterableDataset):
        return documents.map(encode, batched=True, remove_columns=list(DOCUMENT_FEATURES))
    # Worker processes cost seconds to start: worth it only for large corpora.
    if num_proc is None:
        num_proc = min(4, os.cpu_count() or 1) if len(documents) > 20_000 else None
    return documents.map(encode, batched=True, remove_columns=documents.column_names, num_proc=num_proc,
                         desc="tokenizing")


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


TOKEN_COLUMNS = ("input_ids", "assistant_mask")  # cut into blocks side by side, so a mask stays with its tokens


def training_blocks(token_ids: datasets.Dataset | datasets.IterableDataset, block_size: int,
                    with_assistant_mask: bool = False):
    """Training blocks, cut from the concatenated documents a thousand at a time (a partial tail is dropped)."""
    columns = TOKEN_COLUMNS if with_assistant_mask else TOKEN_COLUMNS[:1]

    def group(batch):
        return {name: blocks_from_ids([value for row in batch[name] for value in row], block_size, pad_id=0,
                                      keep_partial=False) for name in columns}

    if isinstance(token_ids, datasets.IterableDataset):
        return token_ids.map(group, batched=True, batch_size=1000, remove_columns=columns)
    return token_ids.map(group, batched=True, batch_size=1000, remove_columns=columns, desc="cutting blocks")


def validation_blocks(token_ids: datasets.Dataset, block_size: int, pad_id: int) -> tuple[dict[str, list], int]:
    """Every validation token in blocks (the last padded), its assistant mask's blocks when it has one, and the
    number of real tokens in them."""
    blocks = {}
    for name in TOKEN_COLUMNS:
        if name in token_ids.column_names:
            stream = [value for row in token_ids[name] for value in row]
            blocks[name] = blocks_from_ids(stream, block_size, pad_id if name == "input_ids" else 0, keep_partial=True)
            length = len(stream) if name == "input_ids" else length
    return blocks, length
