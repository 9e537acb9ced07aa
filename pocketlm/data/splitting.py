"""Splitting: documents in, a `Corpus` out, deduplicated and split so that validation text never appears in training.

One rule decides both (`HoldOut`): the first copy of each distinct text is kept, and about a tenth of the
distinct documents are held out for validation, chosen by a seeded hash of their text. The Arrow path, a stream
and `--validation-data` all call it, so a document lands on the same side wherever it is read.

Reading has already cut long texts into pieces of at most a few thousand characters, so a one-line file or a huge
record arrives as many documents. Where the documents are still too few (under 20) or so uneven that the hashed
tenth holds under half or over twice its share of the characters, the text is split as nanoGPT splits it: the
last tenth of the characters, in reading order, is validation (`tail_split`). Either way nothing is on both sides.
"""

import hashlib
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import datasets

from ..errors import UsageError
from .reading import (DOCUMENT_FEATURES, ReadReport, column, keep_readable_records, load_documents, public_name,
                      text_lengths)

logger = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1
SMALL_CORPUS_CHARS = 10_000  # below this, models mostly memorise: warn, as the old guide did
# A streamed corpus is never held whole: validation keeps the first this many characters of held-out documents.
STREAMING_VALIDATION_CHARS = 1_000_000
# A BPE learns its merges from at most this many characters: a sample spread over an Arrow corpus, the first ones
# of a stream. Learning them from all of a gigabyte took most of the ten minutes before the first step and held
# every text in memory; 50M characters hold each common word thousands of times, which is what merges count.
TOKENIZER_CHARS = 50_000_000


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
    validation_rule: str = ""  # how validation was chosen: HASHED, TAIL or GIVEN
    train_characters: int = 0  # characters of the training text (0 for a stream, which is never counted)

    @property
    def streaming(self) -> bool:
        return isinstance(self.train, datasets.IterableDataset)

    def tokenizer_texts(self, every_character: bool = False) -> tuple[Iterable[str], int | None]:
        """The training texts a tokenizer learns from, and how many there are (None for a stream): the first
        `TOKENIZER_CHARS` characters of a stream; of an Arrow corpus all its texts when they hold at most that
        (or with `every_character`, for a character tokenizer, where a sample could leave a rare one unknown),
        else evenly spaced documents holding about that, so that every file has its say. Read a thousand at a
        time: a gigabyte's text is never all in memory at once."""
        if self.streaming:
            return _first_characters((row["text"] for row in self.train), TOKENIZER_CHARS), None
        step = 1 if every_character else max(1, math.ceil(self.train_characters / TOKENIZER_CHARS))
        sample = self.train.select(range(0, len(self.train), step)) if step > 1 else self.train
        return (text for batch in sample.iter(batch_size=1000) for text in batch["text"]), len(sample)


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


def split(documents: datasets.Dataset, rule: HoldOut, report: ReadReport | None = None) -> dict[str, list[tuple]]:
    """The rows `rule` places on each side of an Arrow dataset, as (key, row, length) in reading order, duplicates
    counted into `report`.

    The keys are computed in one batched pass (cached by datasets), so only three integers per document are ever
    held in memory, not the text.
    """
    placed = {"train": [], "validation": []}
    if len(documents) == 0:
        return placed
    keys = documents.map(
        lambda batch: {"identity": [_hash(t) for t in batch["text"]],
                       "key": [_hash(t, rule.seed) for t in batch["text"]],
                       "blank": [not t.strip() for t in batch["text"]],
                       "length": [len(t) for t in batch["text"]]},
        batched=True, remove_columns=documents.column_names, desc="finding duplicates",
    )
    for row, (identity, key, blank, length) in enumerate(zip(*(column(keys, name) for name in
                                                               ("identity", "key", "blank", "length")))):
        side = rule.place(identity, key, blank)
        if side is not None:
            placed[side].append((key, row, length))
    if report is not None:
        report.duplicates += rule.duplicates
    return placed


MIN_DOCUMENTS = 20  # fewer distinct documents than this, and a hashed tenth is too coarse: split the text instead


def whole_documents_hold_out(documents: int, validation_chars: int, total_chars: int,
                             fraction: float = VALIDATION_FRACTION) -> bool:
    """Whether holding out the hashed documents is a fair validation set: enough of them, and their share of the
    characters within a factor of two of `fraction`. Otherwise the text's last `fraction` is held out."""
    share = validation_chars / max(1, total_chars)
    return documents >= MIN_DOCUMENTS and fraction / 2 <= share <= fraction * 2


HASHED, TAIL, GIVEN = "hashed documents", "the text's last tenth", "--validation-data"  # how validation was chosen


def deduplicate_and_split(
    documents: datasets.Dataset, seed: int = 0, validation_fraction: float = VALIDATION_FRACTION,
    report: ReadReport | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Drop exact duplicate documents, then hold out about `validation_fraction` of them (`HoldOut`), or, when they
    are too few or too uneven for that, the last `validation_fraction` of the text (`tail_split`)."""
    train, validation, _ = _hold_out(documents, seed, validation_fraction, report)
    return train, validation


def _hold_out(documents: datasets.Dataset, seed: int, fraction: float, report: ReadReport | None
              ) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    placed = split(documents, HoldOut(seed, fraction), report)
    train_rows, validation_rows = placed["train"], placed["validation"]
    distinct = sorted(train_rows + validation_rows, key=lambda placed_row: placed_row[1])
    total = sum(length for _, _, length in distinct)
    if whole_documents_hold_out(len(distinct), sum(length for _, _, length in validation_rows), total, fraction):
        logger.info("validation: %d of %d documents, chosen by a seeded hash of their text", len(validation_rows),
                    len(distinct))
        return (documents.select([row for _, row, _ in train_rows]),
                documents.select([row for _, row, _ in validation_rows]), HASHED)
    return *tail_split(documents, [(row, length) for _, row, length in distinct], fraction), TAIL


def tail_split(documents: datasets.Dataset, rows: list[tuple[int, int]], fraction: float = VALIDATION_FRACTION
               ) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Training and validation from the distinct `rows` (row, length) in reading order: validation is the last
    `fraction` of their characters, the document it starts in cut at a line break or space near the mark."""
    total = sum(length for _, length in rows)
    wanted = max(1, round(total * fraction))
    held = 0
    for at in range(len(rows) - 1, -1, -1):
        row, length = rows[at]
        if held + length >= wanted:
            break
        held += length
    boundary = documents[row]
    head, tail = _cut_near(boundary["text"], length - (wanted - held))
    if not head.strip() and at == 0 or not tail.strip() and at == len(rows) - 1:
        raise UsageError(f"not enough text to hold out validation: {total} characters; add more text (a few KB at "
                         "least).")
    train = _with_row(documents.select([r for r, _ in rows[:at]]), {**boundary, "text": head, "ends": False}
                      if "ends" in boundary else {**boundary, "text": head}, last=True)
    validation = _with_row(documents.select([r for r, _ in rows[at + 1 :]]), {**boundary, "text": tail}, last=False)
    logger.info("validation: the last %.0f%% of the text (%d of %d characters), as the documents are too few or "
                "too uneven to hold whole ones out", 100 * fraction, held + len(tail), total)
    return train, validation


def _with_row(documents: datasets.Dataset, row: dict, last: bool) -> datasets.Dataset:
    """`documents` with `row` added at the end (`last`) or the start, unless its text is blank."""
    if not row["text"].strip():
        return documents
    added = datasets.Dataset.from_list([row], features=documents.features)
    return datasets.concatenate_datasets([documents, added] if last else [added, documents])


def _cut_near(text: str, mark: int) -> tuple[str, str]:
    """`text` cut at the line break or space nearest before `mark` (within a tenth of it), else at `mark`."""
    mark = min(max(mark, 1), len(text) - 1) if len(text) > 1 else len(text)
    for separator in ("\n", " "):
        at = text.rfind(separator, max(0, mark - max(1, mark // 10)), mark)
        if at >= 0:
            return text[: at + 1], text[at + 1 :]
    return text[:mark], text[mark:]


def deduplicate(documents: datasets.Dataset, drop: Iterable[int] = (), report: ReadReport | None = None
                ) -> datasets.Dataset:
    """Keep the first copy of each distinct text, and none whose identity is in `drop` (counted as duplicates)."""
    placed = split(documents, HoldOut(fraction=0.0, drop=drop), report)
    return documents.select([row for _, row, _ in placed["train"]])


def identities(documents: datasets.Dataset) -> set[int]:
    return {_hash(text) for batch in documents.iter(batch_size=1000) for text in batch["text"]}


# ----------------------------------------------------------------------------------------------- corpora


def load_corpus(
    data: list[str] | None = None,
    dataset: str | None = None,
    seed: int = 0,
    validation_data: list[str] | None = None,
    streaming: bool = False,
    text_column: str | None = None,
    dataset_config: str | None = None,
) -> Corpus:
    """Read, deduplicate and split the user's text (or the built-in dialog corpus when neither is given).

    With `validation_data`, those files are the validation set and the training text is not split; text in
    both is dropped from validation (or, when streaming, from training). With `streaming`, training documents
    are read afresh on every pass and never held in memory (see `stream_split`). Every record read is accounted
    for in the corpus's `report`. `text_column` (--text-column) names the records' column that holds the text,
    in the training and the validation data alike; `dataset_config` (--dataset-config) the configuration of
    `dataset` to read.
    """
    if streaming:
        return _streamed_corpus(data, dataset, seed, validation_data, text_column, dataset_config)
    report = ReadReport()
    documents, source = load_documents(data, dataset, report=report, text_column=text_column,
                                       dataset_config=dataset_config)
    documents = keep_readable_records(documents, report)
    if len(documents) == 0:
        raise UsageError(f"{source}: holds no usable text ({report.describe()}); point --data at files with text in them.")
    if validation_data:
        train = deduplicate(documents, report=report)
        held_out, _ = load_documents(validation_data, report=report, flag="--validation-data",
                                      text_column=text_column)
        validation = deduplicate(keep_readable_records(held_out, report), drop=identities(train), report=report)
        if len(validation) == 0:
            raise UsageError("--validation-data holds no text that is not also in the training data.")
        _warn_of_shared_lines(train, validation)
        rule = GIVEN
    else:
        train, validation, rule = _hold_out(documents, seed, VALIDATION_FRACTION, report)
    train_characters = int(text_lengths(train).sum())  # counted once: the tokenizer's sample is sized by it too
    _warn_if_small(train_characters + int(text_lengths(validation).sum()))
    return Corpus(train=train, validation=validation, source=source, is_chat=any(column(documents, "is_chat")),
                  report=report, name=public_name(data, dataset, dataset_config), validation_rule=rule,
                  train_characters=train_characters)


SHARED_LINE_CHARS = 40  # shorter lines ("Thank you.", a speaker's name) recur in any two texts by themselves


def _lines(documents: datasets.Dataset) -> Iterator[str]:
    for batch in documents.select_columns(["text"]).iter(batch_size=1000):
        for text in batch["text"]:
            yield from (line for line in map(str.strip, text.split("\n")) if len(line) >= SHARED_LINE_CHARS)


def _warn_of_shared_lines(train: datasets.Dataset, validation: datasets.Dataset) -> None:
    """Say how much of --validation-data the training text holds line for line (a chapter copied into both, a
    validation file cut from an older training file): whole documents in both are dropped, but a partial copy
    would make validation flatter the model in silence. Memory is the validation side's; training is one pass."""
    held_out = {hash(line) for line in _lines(validation)}
    if not held_out:
        return
    shared = {key for key in map(hash, _lines(train)) if key in held_out}
    if shared:
        logger.warning("%d of the %d distinct long lines of --validation-data (%d+ characters) are also in the training "
                       "text: validation scores text the model trained on; remove them from one side", len(shared),
                       len(held_out), SHARED_LINE_CHARS)


def _warn_if_small(total_chars: int) -> None:
    if total_chars < SMALL_CORPUS_CHARS:
        logger.warning(
            "only %d characters of text: under 10 KB a model mostly memorises; add more text if you can", total_chars
        )


def _streamed_corpus(data, dataset, seed: int, validation_data, text_column: str | None,
                     dataset_config: str | None) -> Corpus:
    report = ReadReport(streamed=True)
    documents, source = load_documents(data, dataset, streaming=True, report=report, text_column=text_column,
                                       dataset_config=dataset_config)
    # The opening 10 KB stand for the whole stream in the checks that need no more: empty, small, chat or not.
    opening = list(_first_characters((row for row in documents if not row["problem"]), SMALL_CORPUS_CHARS,
                                     length=lambda row: len(row["text"])))
    if not any(row["text"].strip() for row in opening):
        raise UsageError(f"{source}: holds no usable text; point --data at files with text in them.")
    _warn_if_small(sum(len(row["text"]) for row in opening))
    if validation_data:
        held_out, _ = load_documents(validation_data, report=report, flag="--validation-data",
                                      text_column=text_column)
        validation = deduplicate(keep_readable_records(held_out, report), report=report)
        train = stream_split(documents, seed, "all", drop=identities(validation))
        rule = GIVEN
    else:
        held, tail = _stream_validation(documents, seed, report, source)
        validation = datasets.Dataset.from_list(held, features=DOCUMENT_FEATURES)
        train = stream_split(documents, seed, "all", drop=tail) if tail else stream_split(documents, seed, "train")
        rule = TAIL if tail else HASHED
    return Corpus(train=train, validation=validation, source=source, is_chat=any(row["is_chat"] for row in opening),
                  report=report, name=public_name(data, dataset, dataset_config), validation_rule=rule)


def _stream_validation(documents: datasets.IterableDataset, seed: int, report: ReadReport, source: str
                       ) -> tuple[list[dict], frozenset[int]]:
    """The validation documents of a stream, and the identities training must then drop (none when they were
    chosen by the hash, which training applies itself).

    The stream is read until the hashed validation documents hold `STREAMING_VALIDATION_CHARS`, or to its end. A
    stream read to its end is judged as the Arrow path judges a corpus (`whole_documents_hold_out`); where that
    fails, validation is the stream's last documents, whole, holding at least a tenth of its characters.
    """
    held, distinct, held_chars = [], [], 0
    for side, row in _placed_stream(documents, seed, report=report):
        distinct.append((_hash(row["text"]), len(row["text"])))
        if side == "validation":
            held.append(row)
            held_chars += len(row["text"])
            if held_chars >= STREAMING_VALIDATION_CHARS:
                return held, frozenset()
    total = sum(length for _, length in distinct)
    if whole_documents_hold_out(len(distinct), held_chars, total):
        return held, frozenset()
    tail, tail_chars = set(), 0
    for identity, length in reversed(distinct):
        if tail_chars >= total * VALIDATION_FRACTION:
            break
        tail.add(identity)
        tail_chars += length
    if len(tail) == len(distinct):
        raise UsageError(f"{source}: too little text to stream ({total:,} characters in {len(distinct)} "
                         "document(s)); drop --streaming for data this small, or pass --validation-data.")
    logger.info("validation: the stream's last %d documents (%d of %d characters), as its documents are too few "
                "or too uneven to hold out hashed ones", len(tail), tail_chars, total)
    rows = [row for _, row in _placed_stream(documents, seed) if _hash(row["text"]) in tail]
    return rows, frozenset(tail)


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


def _split_stream(documents: Iterable[dict], seed: int, part: str, drop: frozenset = frozenset()):
    fraction = 0.0 if part == "all" else VALIDATION_FRACTION
    for side, row in _placed_stream(documents, seed, fraction, drop):
        if part == "all" or side == part:
            yield row


def _placed_stream(documents: Iterable[dict], seed: int, fraction: float = VALIDATION_FRACTION,
                   drop: frozenset = frozenset(), report: ReadReport | None = None) -> Iterator[tuple[str, dict]]:
    """(side, row) for each distinct usable document of a stream, in reading order, by the `HoldOut` rule;
    every record counted into `report`."""
    rule = HoldOut(seed, fraction=fraction, drop=drop)
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
        yield side, row
