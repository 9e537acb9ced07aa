"""Reading: the user's files, a `datasets` dataset or the built-in dialogs, as rows of documents.

Every record read becomes a row (`text`, `is_chat`, `ends`, `origin`, `problem`), the unusable ones with the
reason in `problem`, so each is counted and reported (`ReadReport`). Plain files are read line by line and cut
into documents; the records of JSONL, JSON, CSV, TSV and Parquet files and dataset rows hold a `text` string or
a conversation (`messages`, or another tool's layout of one). Any file but Parquet may be compressed (gzip, bzip2, xz: found by its first bytes). The
rows are a `datasets` dataset: Arrow-backed and memory-mapped, or, when streamed, an `IterableDataset` read afresh
on every pass, so a corpus larger than memory never has to fit in it.
"""

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from tokenization import END_OF_TURN, ROLE_TOKENS, message_text, render_chat

from ..errors import UsageError
from ..home import HOME, unusable
from ..sources import cache_key, data_code
from ..whole_writes import write_folder_whole
from ..wording import counted
from .formats import (JSONL_SUFFIX, RECORD_COLUMNS, RECORD_KINDS, STRING_PAIRS, TABLE_COLUMNS, DataFile, data_format,
                      delimiter, find_data_files, inspect_file, open_data, saved_dataset)

logger = logging.getLogger(__name__)

# A dataset's size is not known before it is read: its long records are cut as a large corpus's are.
DATASET_TARGET = 4000
DEFAULT_CORPUS_NAME = "chatterbot-corpus (English dialogs)"
DOCUMENT_FEATURES = datasets.Features({
    "text": datasets.Value("string"), "is_chat": datasets.Value("bool"), "ends": datasets.Value("bool"),
    "origin": datasets.Value("string"), "problem": datasets.Value("string"),
})


@dataclass
class ReadReport:
    """Every record read, accounted for: kept, an exact duplicate, or skipped with the reason and where.

    A record is a JSONL line, a row of a `--dataset`, or a piece of a plain text file (see `split_into_documents`);
    a line or row longer than a piece is counted as its pieces (see `_pieces`).
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
            parts.append(f"{counted(self.duplicates, 'exact duplicate')} dropped")
        parts += [f"{count:,} skipped ({reason}, first at {self.first_at[reason]})" for reason, count in self.skipped.items()]
        parts += [f"{name} not read ({why})" for name, why in self.skipped_files.items()]
        scope = "read so far" if self.streamed else "read"
        return f"{counted(self.records, 'record')} {scope}: " + ", ".join(parts)

    def summary(self) -> dict:
        return {"records_read": self.records, "kept": self.kept, "duplicates_dropped": self.duplicates,
                "skipped": dict(self.skipped), "first_skipped_at": dict(self.first_at),
                "files_not_read": dict(self.skipped_files), "streamed": self.streamed}


# --------------------------------------------------------------------------------------------- readable files


def readable_files(files: list[Path], report: ReadReport, text_column: str | None = None) -> list[DataFile]:
    """Each readable file; binary, damaged and column-less files are reported and left out."""
    good, refused = [], []
    for path in files:
        found = inspect_file(path, text_column)
        if isinstance(found, DataFile):
            good.append(found)
            continue
        report.skipped_files[str(path)] = found
        refused.append(f"{path}: {found}")
        logger.warning("skipping %s: %s", path, found)
    if not good:
        raise UsageError(f"no readable text: {'; '.join(refused[:3])}{' ...' if len(refused) > 3 else ''}.")
    return good


def _signature(path: str) -> str:
    """Size and modification time: what tells a file that changed apart (and keys the Arrow cache)."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


# ------------------------------------------------------------------------------------------ reading documents


def piece_target(total_chars: int) -> int:
    """The length a long text is cut to: about a fiftieth of the whole (50 to 4,000 characters), so that even one
    long line or one huge record becomes enough pieces to hold some out for validation."""
    return max(50, min(4000, total_chars // 50))


def cut_text(lines: Iterable[str], target: int) -> Iterator[str]:
    """Cut one text, given line by line (lines of any length, or pieces of a line), into pieces of about `target`
    characters: at a blank line once a piece is long enough, and once it has grown to four times that, at the end
    of a line, or, in text without line breaks (a log on one line, minified code), at the last space."""
    current, size = [], 0
    for line in lines:
        current.append(line)
        size += len(line)
        if (size >= target and not line.strip()) or size >= 4 * target:
            text, carried = _at_a_space("".join(current)) if size >= 4 * target else ("".join(current), "")
            if text.strip():
                yield text
            current, size = ([carried], len(carried)) if carried else ([], 0)
    text = "".join(current)
    if text.strip():
        yield text


def _at_a_space(text: str) -> tuple[str, str]:
    """`text` cut after its last line break or, failing that, its last space in the second half; the rest is
    carried into the next piece. Text with neither (a base64 blob) is cut where it stands."""
    for separator in ("\n", " "):
        at = text.rfind(separator, len(text) // 2)
        if at >= 0:
            return text[: at + 1], text[at + 1 :]
    return text, ""


def split_into_documents(lines: Iterable[str], total_chars: int) -> Iterator[str]:
    """Cut a text file of `total_chars`, given line by line, into documents (`cut_text`). A book or a chat log
    arrives as one file; cutting it lets validation hold out whole passages, and reading it in bounded pieces means
    neither the file nor any one line of it has to fit in memory.
    """
    return cut_text(lines, piece_target(total_chars))


def _bounded_lines(handle, limit: int) -> Iterator[str]:
    """The lines of an open text file, a line longer than `limit` characters given in pieces of at most that."""
    return iter(lambda: handle.readline(limit), "")


def _row(text: str = "", origin: str = "", problem: str = "", is_chat: bool = False, ends: bool = True) -> dict:
    return {"text": text, "is_chat": is_chat, "ends": ends, "origin": origin, "problem": problem}


def _text_file_documents(path: Path, encoding: str, total: int, text_column: str | None):
    del text_column  # plain text has no columns: all of it is text
    with open_data(path, "rt", encoding=encoding) as handle:
        pieces = split_into_documents(_bounded_lines(handle, piece_target(total)), total)
        previous = next(pieces, None)
        if previous is None:
            yield _row(origin=str(path), problem="empty, or only whitespace")
            return
        for piece in pieces:
            yield _row(previous, str(path), ends=False)
            previous = piece
        # Pieces of one file are one text: only its last piece ends with the end-of-text token.
        yield _row(previous, str(path), ends=True)


# ShareGPT's speakers, as the chat template names them.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "model": "assistant", "system": "system"}


def chat_messages(record: dict) -> list | None:
    """The conversation a record holds in another tool's layout, as `messages`, or None for none of them: TRL's
    `prompt` and `completion` (strings: the user's turn and the reply; lists of messages: the conversation's two
    parts), Alpaca's `instruction`, optional `input` and `output` (the instruction and input are the user's turn),
    and ShareGPT's `conversations` of `from`/`value` turns. A malformed one comes back as messages the checks
    that follow refuse, naming what is wrong."""
    prompt, completion = record.get("prompt"), record.get("completion")
    if prompt is not None and completion is not None:
        if isinstance(prompt, list) and isinstance(completion, list):
            return prompt + completion
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    instruction, output = record.get("instruction"), record.get("output")
    if instruction is not None and output is not None:
        extra = record.get("input")
        asked = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        return [{"role": "user", "content": asked}, {"role": "assistant", "content": output}]
    turns = record.get("conversations")
    if isinstance(turns, list):
        return [{"role": SHAREGPT_ROLES.get(str(turn.get("from")).lower(), str(turn.get("from"))),
                 "content": turn.get("value")} if isinstance(turn, dict) else turn for turn in turns]
    return None


def document_from_record(record, origin: str, text_column: str | None = None) -> dict:
    """The document a JSONL line or dataset row holds (a `text` string, or a conversation: `messages`, or another
    tool's layout, `chat_messages`), or a row that says what is wrong with it. With `text_column` (--text-column),
    that key alone holds the text, or a conversation as a list of messages."""
    if not isinstance(record, dict):
        return _row(origin=origin, problem="not a JSON object")
    if text_column is not None:
        value = record.get(text_column)
        if text_column not in record:
            keys = ", ".join(sorted(map(str, record))[:5]) or "none"
            return _row(origin=origin, problem=f"no '{text_column}' (--text-column); its keys: {keys}")
        if value is None:  # the column is there, this record's value is not: a short CSV row, a null
            return _row(origin=origin, problem=f"no value for '{text_column}' (--text-column)")
        return _conversation_row(value, origin) if isinstance(value, list) else _text_row(value, text_column, origin)
    if "text" in record and record["text"] is not None:
        return _text_row(record["text"], "text", origin)
    messages = record.get("messages")
    if messages is None:
        messages = chat_messages(record)
    if messages is None:
        for first, second in STRING_PAIRS:
            if (record.get(first) is None) != (record.get(second) is None):  # half a layout
                has, lacks = (first, second) if record.get(first) is not None else (second, first)
                return _row(origin=origin, problem=f"'{has}' without '{lacks}'")
        present = [f"'{key}'" for key in ("text", "messages", "conversations") if key in record]
        if present:  # the column is there, this record's value is not: a short CSV row, a null
            return _row(origin=origin, problem=f"no value for {' or '.join(present)}")
        keys = ", ".join(sorted(map(str, record))[:5]) or "none"  # the key that holds the text is most often here
        return _row(origin=origin, problem=f"no {RECORD_KINDS}; its keys: {keys}; name the one holding the text "
                                           "with --text-column")
    return _conversation_row(messages, origin)


def _text_row(text, key: str, origin: str) -> dict:
    if not isinstance(text, str):
        return _row(origin=origin, problem=f"'{key}' is not a string")
    if not text.strip():
        return _row(origin=origin, problem=f"empty '{key}'")
    return _row(text, origin)


# Tool use, as OpenAI's fine-tuning layout (an assistant's `tool_calls`, a `tool` message with the result), Llama 3's
# (`ipython`) and ShareGPT's tool datasets (`function_call`, `observation`) write it. The chat template holds text
# turns of system, user and assistant only: a call read as its reply's text alone would be lost in silence.
TOOL_ROLES = ("tool", "function", "ipython", "function_call", "observation")
TOOL_USE = ("pocketlm's chat template holds text turns of system, user and assistant only: leave such records out, "
            "or write the call and its result into the turns' text")


def _conversation_row(messages, origin: str) -> dict:
    if not isinstance(messages, list) or not messages:
        return _row(origin=origin, problem="'messages' is not a non-empty list")
    texts = []
    for message in messages:
        if isinstance(message, dict) and (message.get("tool_calls") or message.get("function_call")):
            return _row(origin=origin, problem=f"a message calls a tool ('tool_calls'), and {TOOL_USE}")
        if isinstance(message, dict) and message.get("role") in TOOL_ROLES:
            return _row(origin=origin, problem=f"a {message['role']!r} message holds a tool's result, and {TOOL_USE}")
        text = message_text(message.get("content")) if isinstance(message, dict) else None
        if text is None or not isinstance(message.get("role"), str):
            return _row(origin=origin, problem=_content_problem(message))
        if message["role"] not in ROLE_TOKENS:
            return _row(origin=origin, problem=f"unknown role {message['role']!r} (use system, user or assistant)")
        texts.append(text)
    if not any(text.strip() for text in texts):
        return _row(origin=origin, problem="every message is empty")
    return _row(render_chat(messages), origin, is_chat=True)


def _content_problem(message) -> str:
    """What is wrong with a message that has no role or whose text `message_text` could not read."""
    content = message.get("content") if isinstance(message, dict) and isinstance(message.get("role"), str) else None
    if isinstance(content, list):
        kinds = sorted({str(part.get("type")) for part in content if isinstance(part, dict)} - {"text"})
        if kinds:  # an image or audio part: the record is about something the model cannot see
            return f"a message holds a part of type {kinds[0]!r}, and pocketlm models learn text only"
        if content:
            return "a message's content list holds a part that is not {'type': 'text', 'text': '...'}"
    return "a message lacks a 'role' or 'content' string"


def _pieces(row: dict, target: int) -> Iterator[dict]:
    """A usable record longer than four times `target` as several rows, cut as a text file is (a conversation
    only between turns, so each piece keeps whole replies); only the last piece ends the record's text."""
    if row["problem"] or len(row["text"]) < 4 * target:
        yield row
        return
    lines = re.split(f"(?<={re.escape(END_OF_TURN)})", row["text"]) if row["is_chat"] else \
        row["text"].splitlines(keepends=True)
    pieces = [piece for line in lines for piece in ([line] if row["is_chat"] else _bounded(line, target))]
    texts = cut_text(pieces, target) if not row["is_chat"] else _whole_turns(pieces, target)
    previous = next(texts)
    for text in texts:
        yield {**row, "text": previous, "ends": False}
        previous = text
    yield {**row, "text": previous}


def _bounded(line: str, limit: int) -> list[str]:
    return [line[start : start + limit] for start in range(0, len(line), limit)] or [line]


def _whole_turns(turns: list[str], target: int) -> Iterator[str]:
    """Turns of a rendered conversation gathered into pieces of at least four times `target` characters."""
    current, size = [], 0
    for turn in turns:
        current.append(turn)
        size += len(turn)
        if size >= 4 * target:
            yield "".join(current)
            current, size = [], 0
    if current:
        yield "".join(current)


def _jsonl_documents(path: Path, encoding: str, size: int, text_column: str | None):
    with open_data(path, "rt", encoding=encoding) as handle:
        yield from _json_lines(handle, path, piece_target(size), text_column)


def _json_lines(lines: Iterable[str], path: Path, target: int, text_column: str | None):
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        origin = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            yield _row(origin=origin, problem="not valid JSON")
            continue
        yield from _pieces(document_from_record(record, origin, text_column), target)


def _json_documents(path: Path, encoding: str, size: int, text_column: str | None):
    """A .json file: a list of records, an object holding one list of them (as `{"data": [...]}`), one record, or
    JSON Lines under a .json name, as many exports are. Read whole, as JSON has no line to stop at."""
    with open_data(path, "rt", encoding=encoding) as handle:
        text = handle.read()
    target = piece_target(size)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # a whole value, then another: JSON Lines
            yield from _json_lines(io.StringIO(text), path, target, text_column)
        else:
            yield _row(origin=f"{path}:{error.lineno}:{error.colno}", problem="not valid JSON")
        return
    if isinstance(value, dict) and not set(value) & {*RECORD_COLUMNS, text_column}:
        lists = [item for item in value.values() if isinstance(item, list)]
        value = lists[0] if len(lists) == 1 else value
    for number, record in enumerate(value if isinstance(value, list) else [value], 1):
        yield from _pieces(document_from_record(record, f"{path} record {number}", text_column), target)


def _table_documents(path: Path, encoding: str, size: int, text_column: str | None):
    """A .csv or .tsv file whose header row names a `text` column, or a conversation's (`prompt` and `completion`,
    `instruction` and `output`), or --text-column's: each row is a record (a field may span lines, as CSV quotes
    them)."""
    target = piece_target(size)
    read = (text_column,) if text_column else TABLE_COLUMNS  # the columns a record is made of
    csv.field_size_limit(2**31 - 1)  # the default, 128 KiB, would refuse a long text
    with open_data(path, "rt", encoding=encoding, newline="") as handle:
        rows = csv.DictReader(handle, delimiter=delimiter(path, encoding, text_column))
        while True:
            line = rows.line_num + 1  # where the record starts; a quoted field can run over several lines
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error:
                yield _row(origin=f"{path}:{line}", problem="not valid CSV")
                continue
            record = {name: value for name, value in row.items() if name in read}
            yield from _pieces(document_from_record(record, f"{path}:{line}", text_column), target)


def _parquet_documents(path: Path, encoding: str, size: int, text_column: str | None):
    """A Parquet file's `text` or `messages` column (or --text-column's), read a batch of rows at a time."""
    target = piece_target(size)
    table = pq.ParquetFile(path)
    columns = [text_column] if text_column else [name for name in RECORD_COLUMNS if name in table.schema_arrow.names]
    number = 0
    for batch in table.iter_batches(batch_size=1024, columns=columns):
        for record in batch.to_pylist():
            number += 1
            yield from _pieces(document_from_record(record, f"{path} row {number}", text_column), target)


READERS = {"text": _text_file_documents, JSONL_SUFFIX: _jsonl_documents, ".json": _json_documents,
           ".csv": _table_documents, ".tsv": _table_documents, ".parquet": _parquet_documents}


def _file_documents(files: list[str], encodings: list[str], sizes: list[int], text_column: str | None = None,
                    signature: list[str] | None = None, code: str = ""):
    """Generator for `from_generator`; `signature` (sizes, times) and `code` (`data_code`) only key the Arrow
    cache."""
    for name, encoding, size in zip(files, encodings, sizes):
        path = Path(name)
        yield from READERS[data_format(path)](path, encoding, size, text_column)


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


def _default_documents(code: str):
    for number, messages in enumerate(default_conversations(), 1):
        yield _row(render_chat(messages), f"{DEFAULT_CORPUS_NAME} #{number}", is_chat=True)


# Datasets handed to the Python API as objects, saved once by their fingerprint beside pocketlm's other caches.
IN_MEMORY_DATASETS = HOME / "datasets"


def dataset_on_disk(dataset: datasets.Dataset | datasets.DatasetDict) -> str:
    """The folder `--dataset` takes for a Dataset or DatasetDict given to the Python API as an object: the run
    records its data as a path (its options, the resume's check of the data, the card), so the object is saved
    once into pocketlm's cache under datasets' fingerprint of its content and transforms, and the same dataset
    built again, for a resume, finds the same folder."""
    if isinstance(dataset, datasets.IterableDataset | datasets.IterableDatasetDict):
        raise UsageError("dataset= got an IterableDataset, which is read once and cannot be read again for a "
                         "resume: pass its name or folder as dataset= with streaming=True.")
    if not isinstance(dataset, datasets.Dataset | datasets.DatasetDict):
        raise UsageError(f"dataset= takes a dataset's name, a folder or a datasets.Dataset, not a "
                         f"{type(dataset).__name__}: for files of text, pass data=[paths].")
    splits = dataset.values() if isinstance(dataset, datasets.DatasetDict) else [dataset]
    fingerprint = "-".join(split._fingerprint for split in splits)
    named = next((split.info.dataset_name for split in splits if split.info.dataset_name), "dataset")
    folder = IN_MEMORY_DATASETS / re.sub(r"[^\w.-]", "_", f"{named}-{fingerprint}")[:120]
    if not folder.is_dir():
        try:
            write_folder_whole(folder, lambda scratch: dataset.save_to_disk(str(scratch)))
        except OSError as error:
            raise unusable(IN_MEMORY_DATASETS, error, "the dataset handed to train()") from None
    return str(folder)


def _dataset_documents(name: str, streaming: bool, text_column: str | None, config: str | None
                       ) -> datasets.Dataset | datasets.IterableDataset:
    if Path(name).expanduser().is_file():  # datasets takes a folder or a Hub name, and looks a file up on the Hub
        raise UsageError(f"--dataset {name} is a file: pass it as --data {name}, which reads text and the records of "
                         ".jsonl, .json, .csv, .tsv and .parquet files.")
    if not Path(name).expanduser().exists():
        _check_dataset_name(name)
    saved = saved_dataset(Path(name).expanduser())
    if saved and config is not None:
        raise UsageError(f"--dataset-config picks one of a dataset's configurations, and {name}, saved with "
                         "save_to_disk, has none: drop --dataset-config.")
    try:
        if saved:  # load_dataset refuses these, naming load_from_disk
            loaded = datasets.load_from_disk(str(Path(name).expanduser()))
        else:
            loaded = datasets.load_dataset(name, config, streaming=streaming)
    except Exception as error:  # datasets raises many types; the user needs the name and the reason
        cause = error.__cause__ or error
        lines = str(cause).strip().splitlines() or [type(cause).__name__]
        reason = lines[0]
        if reason.startswith("Config name is missing") or "BuilderConfig" in reason:  # none given, or an unknown one
            available = re.search(r"configs?: (\[.*?\])|Available: (\[.*?\])", str(cause))
            among = f" among {available.group(1) or available.group(2)}" if available else ""
            what = (f"has no configuration {config!r}" if config is not None else "has several configurations")
            raise UsageError(f"--dataset {name} {what}: pick one with --dataset-config{among}.")
        if Path(name).expanduser().is_dir():  # datasets reads a folder as one table of its commonest file type
            raise UsageError(f"--dataset {name}: datasets could not read the folder as one table ({reason[:200]}); "
                             f"pass it as --data {name}, which reads each text and record file in it on its own.")
        raise UsageError(f"--dataset {name}: could not be loaded ({reason[:300]}); pass a local folder or a cached "
                         "dataset name.")
    if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):
        split = loaded
    else:
        split = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    if streaming and isinstance(split, datasets.Dataset):  # a saved dataset, read a shard at a time
        split = split.to_iterable_dataset()
    columns = split.column_names or list(next(iter(split), {}))  # a stream may not declare its columns
    if text_column is not None and text_column not in columns:
        raise UsageError(f"--dataset {name}: no '{text_column}' column (--text-column), found {', '.join(columns)}.")
    if not set(columns) & {*RECORD_COLUMNS, text_column}:
        raise UsageError(f"--dataset {name}: needs a {RECORD_KINDS} column, found {', '.join(columns)}: name the "
                         "one that holds the text with --text-column.")

    def to_documents(rows, indices):
        records = [dict(zip(rows, values)) for values in zip(*rows.values())]
        documents = [piece for record, index in zip(records, indices)
                     for piece in _pieces(document_from_record(record, f"{name} row {index + 1}", text_column),
                                          DATASET_TARGET)]
        return {key: [document[key] for document in documents] for key in DOCUMENT_FEATURES}

    read = {"batched": True, "with_indices": True, "remove_columns": columns, "features": DOCUMENT_FEATURES}
    if isinstance(split, datasets.IterableDataset):  # read afresh on every pass: nothing is cached
        return split.map(to_documents, **read)
    return split.map(to_documents, **read, new_fingerprint=cache_key("documents", split._fingerprint, text_column))


# datasets' readers of one file type, as load_dataset takes their names, and the suffix --data reads such files by.
FILE_READERS = {"text": "txt", "json": "jsonl", "csv": "csv", "parquet": "parquet"}


def _check_dataset_name(name: str) -> None:
    """Refuse a --dataset that is neither a folder here nor a dataset's name: a reader of one file type (`text`),
    which given no files reads every file of the folder one is in, and a path that is not there, which datasets
    looks up on the Hub ("Couldn't reach './mine' on the Hub")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES as READERS
    except ImportError:  # a datasets release that keeps them elsewhere: the ones of text and records at least
        READERS = FILE_READERS

    if name in READERS:
        example = f" (--data FILE.{FILE_READERS[name]})" if name in FILE_READERS else ""
        raise UsageError(f"--dataset {name} names datasets' reader of {name} files, not a dataset: with no files "
                         f"named it reads every file of the folder you are in; pass your files with --data{example}, "
                         "which reads text and the records of .jsonl, .json, .csv, .tsv and .parquet files.")
    try:
        validate_repo_id(name)
        shaped_like_a_name = not name.startswith((".", "/", "~"))
    except HFValidationError:  # a Hub name is NAME or OWNER/NAME, of letters, digits, '-', '_' and '.'
        shaped_like_a_name = False
    if not shaped_like_a_name:
        raise UsageError(f"--dataset {name}: no such folder; pass a folder (datasets' save_to_disk, or one of data "
                         "files), a dataset's name on the Hub, or your files with --data.")


def _check_datasets_cache() -> None:
    """datasets keeps what it reads in its cache folder, streams included, and stopped with a traceback where that
    folder could not be made or written: one line instead, naming the folder and how to move it."""
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    fix = "set HF_DATASETS_CACHE (or HF_HOME) to a folder you can write"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise unusable(cache, error, "datasets' cache", fix) from None
    if not os.access(cache, os.W_OK):
        raise unusable(cache, "not writable", "datasets' cache", fix)


def load_documents(
    data: list[str] | None = None, dataset: str | None = None, streaming: bool = False,
    report: ReadReport | None = None, flag: str = "--data", text_column: str | None = None,
    dataset_config: str | None = None,
) -> tuple[datasets.Dataset | datasets.IterableDataset, str]:
    """Every record read, as rows with `text`, `is_chat`, `ends`, `origin` and `problem`, and a description of their
    source. Unreadable files go into `report`; `flag` is the option `data` came from, for the errors; `text_column`
    is --text-column's, the column or key of the records that holds their text; `dataset_config` --dataset-config's,
    the configuration of `dataset` to read (wikitext's wikitext-2-raw-v1).

    With `streaming`, an IterableDataset that reads the files (or the dataset) afresh on every pass.
    """
    report = report if report is not None else ReadReport()
    _check_datasets_cache()
    if dataset:
        return _dataset_documents(dataset, streaming, text_column, dataset_config), with_config(dataset, dataset_config)
    if not data:
        generate = datasets.IterableDataset.from_generator if streaming else datasets.Dataset.from_generator
        return generate(_default_documents, gen_kwargs={"code": data_code()},
                        features=DOCUMENT_FEATURES), DEFAULT_CORPUS_NAME
    files = readable_files(find_data_files(data, flag), report, text_column)
    names = [str(file.path) for file in files]
    read = {"files": names, "encodings": [file.encoding for file in files], "sizes": [file.size for file in files],
            "text_column": text_column}
    source = ", ".join(str(p) for p in data)
    if streaming:
        return datasets.IterableDataset.from_generator(_file_documents, gen_kwargs=read,
                                                       features=DOCUMENT_FEATURES), source
    # Keyed by absolute paths, sizes and times: the same text is read once, a changed file again.
    signature = [f"{Path(name).resolve()}|{_signature(name)}" for name in names]
    documents = datasets.Dataset.from_generator(
        _file_documents, features=DOCUMENT_FEATURES,
        gen_kwargs={**read, "signature": signature, "code": data_code()},
    )
    changed = [name for name, before in zip(names, signature) if f"{Path(name).resolve()}|{_signature(name)}" != before]
    if changed:
        raise UsageError(f"{changed[0]} changed while it was being read: run again once it is complete.")
    return documents, source


def with_config(dataset: str, dataset_config: str | None) -> str:
    """A dataset's name as pocketlm says it, with the configuration read where one was picked: `wikitext
    (wikitext-2-raw-v1)`."""
    return f"{dataset} ({dataset_config})" if dataset_config else dataset


def public_name(data: list[str] | None, dataset: str | None, dataset_config: str | None = None) -> str:
    """What the model card may say the data was: file and folder names, or a dataset's name (and configuration),
    never a local path."""
    if dataset:
        return with_config(dataset if not Path(dataset).expanduser().exists() else Path(dataset).resolve().name,
                           dataset_config)
    if not data:
        return DEFAULT_CORPUS_NAME
    return ", ".join(Path(path).expanduser().resolve().name for path in data)


def column(documents: datasets.Dataset, name: str) -> list:
    """A column's values as a list, read by Arrow at once: `documents[name]` is a lazy column that reads row by row
    (3 s for 50,000 integers, where this takes 0.05 s)."""
    return documents.with_format("arrow")[name].to_pylist()


def text_lengths(documents: datasets.Dataset) -> np.ndarray:
    """Each document's length in characters, counted by Arrow in batches: a gigabyte's text is never all in Python
    strings at once."""
    batches = documents.select_columns(["text"]).with_format("arrow").iter(batch_size=10_000)
    return np.concatenate([np.zeros(0, dtype=np.int64),
                           *(pc.utf8_length(batch["text"]).to_numpy(zero_copy_only=False) for batch in batches)])


def keep_readable_records(documents: datasets.Dataset, report: ReadReport) -> datasets.Dataset:
    """Count every record into `report`, warn once per kind of problem, and keep the usable ones."""
    problems = column(documents, "problem")
    report.records += len(problems)
    bad = [row for row, problem in enumerate(problems) if problem]
    if not bad:
        return documents
    found = ReadReport()
    for row, origin in zip(bad, column(documents.select(bad), "origin")):
        found.skip(problems[row], origin)
    for reason, count in found.skipped.items():
        report.skip(reason, found.first_at[reason], count)
        logger.warning("skipped %d record%s (%s), the first at %s", count, "s" * (count != 1), reason,
                       found.first_at[reason])
    return documents.select(sorted(set(range(len(problems))) - set(bad)))


