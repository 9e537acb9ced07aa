"""Splitting: documents in, a `Corpus` out, deduplicated and split so that validation text never appears in training.

One rule decides both (`HoldOut`): the first copy of each distinct text is kept, and about a tenth of the
distinct documents are held out for validation, chosen by a seeded hash of their text. The Arrow path, a stream
and `--validation-data` all call it, so a document lands on the same side wherever it is read.
"""

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import datasets

from ..errors import UsageError
from .reading import DOCUMENT_FEATURES, ReadReport, keep_readable_records, load_documents, public_name

logger = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1
SMALL_CORPUS_CHARS = 10_000  # below this, models mostly memorise: warn, as the old guide did
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
    report: ReadReport = None  # every record read: kept, a duplicate, or skipped and why
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


# ----------------------------------------------------------------------------------------------- the rule


def _hash(text: str, seed: int = 0) -> int:
    # 7 bytes: fits Arrow's int64 columns.
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=7).digest(), "big")


class HoldOut:
    """The one rule that splits a corpus: drop exact duplicates, hold out about `fraction` of the rest.

    `place` answers, document by document in reading order, "train", "validation", or None for a copy of a text
    already placed (or of one in `drop`, or a blank one). A document's side depends only on its text and the seed,
    so it is the same on every run, every process and every path; `fraction` 0 trains on everything, 1 validates
    on everything.
    """

    def __init__(self, seed: int = 0, fraction: float = VALIDATION_FRACTION, drop: Iterable[int] = ()):
        self.seed = seed
        self.threshold = fraction * 2**56  # keys are 7 bytes
        self.seen = set(drop)
        self.duplicates = 0

    def keys(self, text: str) -> tuple[int, int]:
        """The text's identity (what makes two documents copies) and its seeded key (what places it)."""
        return _hash(text), _hash(text, self.seed)

    def place(self, identity: int, key: int, blank: bool = False) -> str | None:
        if blank or identity in self.seen:
            self.duplicates += not blank
            return None
        self.seen.add(identity)
        return "validation" if key < self.threshold else "train"

    def place_text(self, text: str) -> str | None:
        return self.place(*self.keys(text), blank=not text.strip())


def split(documents: datasets.Dataset, rule: HoldOut, report: ReadReport | None = None
          ) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The training and validation documents `rule` makes of an Arrow dataset, duplicates counted into `report`.

    The keys are computed in one batched pass (cached by datasets), so only two integers per document are ever
    held in memory, not the text.
    """
    if len(documents) == 0:
        return [], []
    keys = documents.map(
        lambda batch: {"identity": [_hash(t) for t in batch["text"]],
                       "key": [_hash(t, rule.seed) for t in batch["text"]],
                       "blank": [not t.strip() for t in batch["text"]]},
        batched=True, remove_columns=documents.column_names, desc="finding duplicates",
    )
    rows = {"train": [], "validation": []}
    for row, (identity, key, blank) in enumerate(zip(keys["identity"], keys["key"], keys["blank"])):
        side = rule.place(identity, key, blank)
        if side is not None:
            rows[side].append((key, row))
    if report is not None:
        report.duplicates += rule.duplicates
    return rows["train"], rows["validation"]


def deduplicate_and_split(
    documents: datasets.Dataset, seed: int = 0, validation_fraction: float = VALIDATION_FRACTION,
    report: ReadReport | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Drop exact duplicate documents, then hold out about `validation_fraction` of them (`HoldOut`)."""
    train_rows, validation_rows = split(documents, HoldOut(seed, validation_fraction), report)
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


def deduplicate(documents: datasets.Dataset, drop: Iterable[int] = (), report: ReadReport | None = None
                ) -> datasets.Dataset:
    """Keep the first copy of each distinct text, and none whose identity is in `drop` (counted as duplicates)."""
    train_rows, _ = split(documents, HoldOut(fraction=0.0, drop=drop), report)
    return documents.select([row for _, row in train_rows])


def identities(documents: datasets.Dataset) -> set[int]:
    return {_hash(text) for text in documents["text"]}


# ----------------------------------------------------------------------------------------------- corpora


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
        validation = deduplicate(keep_readable_records(held_out, report), drop=identities(train), report=report)
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
        train = stream_split(documents, seed, "all", drop=identities(validation))
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
    documents: datasets.IterableDataset, seed: int, part: str, drop: Iterable[int] = ()
) -> datasets.IterableDataset:
    """One part ("train", "validation" or "all") of a streamed corpus, by the same `HoldOut` rule as the Arrow
    path, without exact duplicates, unusable records, or texts whose identity is in `drop`.

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
    rule = HoldOut(seed, fraction=0.0 if part == "all" else VALIDATION_FRACTION, drop=drop)
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
        side = rule.place_text(row["text"])
        if side is None:
            if report is not None:
                report.duplicates += 1
            continue
        if part == "all" or side == part:
            yield row

