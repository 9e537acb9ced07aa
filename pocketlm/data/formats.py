"""Data files: which files `--data` names, what each holds and how to open it.

A file's format is told by its name (`.jsonl`, `.json`, `.csv`, `.tsv`, `.parquet`, or plain text), its compression
by its first bytes (gzip, bzip2, xz), and whether it can be read at all by looking inside: the encoding of its text,
the columns of its table, the decompressor's verdict. `reading` turns the files found readable into documents.
"""

import bz2
import codecs
import csv
import glob
import gzip
import logging
import lzma
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import WEB_ADDRESS, UsageError
from ..adapters import ADAPTER_CONFIG_FILE
from ..run_folder import CONFIG_FILE, EXPORT_RECORD
from ..wording import counted, listed

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"
# Files of records, each a `text` string or a conversation (CSV and TSV: a `text` column, as
# transformers' run_clm.py reads them). Any other file given by name is read as plain text.
RECORD_SUFFIXES = (JSONL_SUFFIX, ".json", ".csv", ".tsv", ".parquet")
# Beside `messages`, the layouts other tools give a conversation (reading.chat_messages): TRL's prompt and
# completion, Alpaca's instruction, input and output, ShareGPT's conversations.
CHAT_LAYOUTS = ("prompt", "completion", "instruction", "input", "output", "conversations")
RECORD_COLUMNS = ("text", "messages", *CHAT_LAYOUTS)
RECORD_KINDS = "'text', 'messages', 'prompt'+'completion', 'instruction'+'output' or 'conversations'"
# A CSV or TSV row holds strings: a `text`, or one of the layouts of a conversation whose parts are strings.
TABLE_COLUMNS = ("text", "prompt", "completion", "instruction", "input", "output")
# The layouts made of two string parts, each part useless without the other.
STRING_PAIRS = (("prompt", "completion"), ("instruction", "output"))
TABLE_KINDS = (("text",), *STRING_PAIRS)
# Compressed files are opened through Python's own decompressors. Which one is told by the file's first bytes, not
# its name, so a renamed file reads too; the name's inner suffix says what the decompressed file holds.
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")
DECOMPRESSORS = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}
# Other binary files a user may point at by mistake, and the way to their text.
OTHER_BINARIES = {
    b"PK\x03\x04": "a zip archive: unzip it and pass the folder",
    b"(\xb5/\xfd": "compressed with zstd, which Python cannot read: decompress it (zstd -d) or recompress it with gzip",
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive: unpack it and pass the folder",
    b"%PDF": "a PDF: save its text as a .txt file",
}
BINARY = "binary or not UTF-8 or UTF-16 text: convert it to UTF-8 text"


def _name_inside(path: Path) -> str:
    """The file's name, lower case, without a .gz, .bz2 or .xz ending: what the decompressed file holds."""
    name = path.name.lower()
    for ending in COMPRESSED_SUFFIXES:
        name = name.removesuffix(ending)
    return name


def data_format(path: Path) -> str:
    """What a file holds, told by its name inside any compression: one of RECORD_SUFFIXES, or "text"."""
    suffix = Path(_name_inside(path)).suffix
    return suffix if suffix in RECORD_SUFFIXES else "text"


def _is_data_file(path: Path) -> bool:
    return _name_inside(path).endswith((*TEXT_SUFFIXES, *RECORD_SUFFIXES))


def _hidden(path: Path, folder: Path) -> bool:
    """Under a hidden or private folder, or hidden itself (`.venv/`, `.git/`, `__pycache__/`, `.notes.txt`): a folder's
    search skips them, as datasets' own search of a folder does, so `--data .` never reads a virtualenv's files."""
    return any(part.startswith((".", "__")) for part in path.relative_to(folder).parts)


def _model_folder(path: Path) -> bool:
    """A folder holding a model, whose files are not text to train on: what save_pretrained wrote (a config and
    weights), a PEFT adapter, or what export.py wrote (its record says so: ONNX graphs, a GGUF file, a web page,
    whose notices and settings read as a .txt and a .json)."""
    if (path / EXPORT_RECORD).is_file():
        return True
    configured = (path / CONFIG_FILE).is_file() or (path / ADAPTER_CONFIG_FILE).is_file()
    return configured and any(path.glob("*.safetensors"))


def saved_dataset(path: Path) -> bool:
    """`path` is a folder datasets' `save_to_disk` wrote, a Dataset's or a DatasetDict's: Arrow files and JSON
    metadata, read whole with `load_from_disk` (`--dataset`), not file by file."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file()
                              or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()))


def saved_dataset_of(path: Path) -> Path | None:
    """The save_to_disk folder file `path` is part of (a DatasetDict's rather than its split's), or None."""
    found = None
    for folder in (path.parent, path.parent.parent):
        found = folder if saved_dataset(folder) else found
    return found


def find_data_files(paths: list[str], flag: str = "--data", quiet: bool = False) -> list[Path]:
    """Every file `paths` name or match (a pattern such as `notes/**/*.md`), and under the directories among them
    (searched recursively, hidden ones left out) every text and record file (see TEXT_SUFFIXES, RECORD_SUFFIXES),
    compressed or not. `flag` is the option they came from, for the errors; `quiet` leaves out saying which model
    folders the search left out (said once, when the files are read)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists() and any(sign in raw for sign in "*?["):  # a pattern the shell was not given to expand
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise UsageError(f"{flag} {raw}: the pattern matches no file or folder; check it.")
            found.extend(find_data_files(matches, flag, quiet))  # files as given, folders searched
            continue
        if not path.exists() and WEB_ADDRESS.match(raw):  # datasets would fetch it; pocketlm reads what is on the disk
            raise UsageError(f"{flag} {raw} is a web address, and {flag} reads files on this machine: download it "
                             "first (curl -LO ADDRESS) and pass the file, or a Hub dataset's name with --dataset.")
        if not path.exists() and raw == "-":  # the shell's way of naming standard input
            raise UsageError(f"{flag} -: pocketlm reads text from files, not standard input, as a resume reads it "
                             "again: save the text to a file and pass that.")
        if not path.exists():
            raise UsageError(f"{flag} {raw}: no such file or directory; check the path.")
        if path.is_file():
            found.append(path)
            continue
        if not path.is_dir():  # a pipe (`--data <(zcat ...)`) or a device: read once, nothing to record for a resume
            raise UsageError(f"{flag} {raw} is a pipe or a device, not a file or folder: save the text to a file and "
                             "pass that.")
        if saved_dataset(path):  # its metadata would read as JSON records without text, its Arrow files not at all
            fix = (f"pass it as --dataset {raw}" if flag == "--data" else
                   "write its rows to a file (Dataset.to_json) and pass that")
            raise UsageError(f"{flag} {raw} is a dataset saved with datasets' save_to_disk: {fix}.")
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
        matches = [p for p in files if _is_data_file(p)]
        models = sorted({p.parent for p in matches if _model_folder(p.parent)})
        for model in models if not quiet else []:  # `--data .` in a project that keeps its models under models/
            logger.warning("leaving out %s: a model folder, not text", model)
        matches = [p for p in matches if not any(model in p.parents for model in models)]
        # Text by another name (code, .rst, .tex, a README): a folder's search takes .txt, .md and records only, so
        # `--data myproject/` read its one README and left out the code, without a word.
        other = [p for p in files if not _is_data_file(p) and not any(model in p.parents for model in models)]
        # Looked into only where it is said: the quiet search runs first, and the data is searched again when read.
        other_text = [p for p in other[:OTHER_FILES_LOOKED_AT] if _reads_as_text(p)] if not matches or not quiet else []
        if not matches:
            held = (f", only {_kinds(other_text)} that read as text: to train on them, match them with a quoted "
                    f"pattern: {flag} '{_pattern_for(raw, other_text)}'" if other_text else
                    "; add some or point elsewhere")
            raise UsageError(f"{flag} {raw}: the directory holds no text (.txt, .md) or records (.jsonl, .json, .csv, "
                             f".tsv, .parquet){held}.")
        if other_text and not quiet:
            logger.warning("leaving out %s in %s: they read as text, but a folder's search takes .txt, .md and "
                           "records only; to train on them too, add a quoted pattern: %s '%s'", _kinds(other_text),
                           raw, flag, _pattern_for(raw, other_text))
        found.extend(matches)
    return found


# How many of a folder's other files are looked into for text: enough to name what a folder of code holds.
OTHER_FILES_LOOKED_AT = 10_000


def _reads_as_text(path: Path) -> bool:
    """Whether a file's first 4 KiB read as UTF-8 text: no NUL byte, nothing undecodable (a character cut at the
    end is fine). Pictures, archives and other binaries do not."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except (OSError, UnicodeDecodeError):
        return False
    return b"\x00" not in head


def _kinds(paths: list[Path]) -> str:
    """What `paths` are, by suffix, the commonest first: "12 .py files, 3 .c files and 1 file without a suffix"."""
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.suffix.lower()] = counts.get(path.suffix.lower(), 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    named = [counted(number, f"{suffix} file" if suffix else "file") + ("" if suffix else " without a suffix")
             for suffix, number in ranked[:3]]
    return listed(named + ([f"{counted(sum(n for _, n in ranked[3:]), 'other')}"] if len(ranked) > 3 else []))


def _pattern_for(raw: str, paths: list[Path]) -> str:
    """A quoted pattern that matches the commonest kind of `paths` under the folder `raw`, or the first file."""
    suffixes = [path.suffix.lower() for path in paths if path.suffix]
    if not suffixes:
        return str(paths[0])
    return f"{raw.rstrip('/')}/**/*{max(set(suffixes), key=suffixes.count)}"


def compression(path: Path) -> str | None:
    """The decompressor `path` needs (a key of DECOMPRESSORS), told by its first bytes; None for a plain file."""
    with open(path, "rb") as handle:
        head = handle.read(10)
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    # "BZh", the block size, then the magic of a first block or of the end of an empty stream: text may start "BZh".
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bzip2"
    return None


def open_data(path: Path, mode: str = "rb", **text_options):
    """`path` opened as `open` would, through its decompressor when it is compressed."""
    kind = compression(path)
    return (DECOMPRESSORS[kind] if kind else open)(path, mode, **text_options)


def text_encoding(path: Path) -> tuple[str | None, int]:
    """The encoding `path` reads in, decompressed: UTF-8 (a BOM is dropped), or UTF-16 with its BOM (as Windows
    Notepad saves), or None for binary or undecodable files; and its size in bytes, decompressed. A damaged
    compressed file raises its decompressor's error (OSError, EOFError, lzma.LZMAError)."""
    with open_data(path) as handle:
        head = handle.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"
    decoder, size = codecs.getincrementaldecoder(encoding)(), 0
    try:
        with open_data(path) as handle:
            while chunk := handle.read(1 << 20):
                size += len(chunk)
                # UTF-8 text holds no NUL bytes; binary files usually do.
                if "\x00" in decoder.decode(chunk):
                    return None, size
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return None, size
    return encoding, size


def _why_not_text(path: Path) -> str:
    """Why a file `text_encoding` could not read is not text: binary (a NUL byte), or, for a file that is not
    UTF-8 throughout (one saved by a Windows editor, or with such a byte pasted in), the first line where it stops
    being UTF-8, and the command that converts it where all of it reads as Windows-1252, the single-byte encoding
    such files are in. "binary or not UTF-8" alone sent a user through a megabyte of text after one byte. Read a
    line at a time: only a file that failed comes here."""
    first, beyond_ascii, single_byte = None, False, True
    with open_data(path) as handle:
        for number, line in enumerate(handle, 1):
            if b"\x00" in line:
                return BINARY
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                first = first or (number, line, error.start)
                text = line.decode("utf-8", "ignore")
            beyond_ascii = beyond_ascii or not text.isascii()
            try:
                line.decode("cp1252")
            except UnicodeDecodeError:
                single_byte = False
    if first is None:
        return BINARY
    number, line, at = first
    shown = line[max(0, at - 30):at + 10].decode("utf-8", "backslashreplace").splitlines()[0]
    where = f"not UTF-8 text from line {number:,} on ('{shown}')"
    # Reading all of it as Windows-1252 gives its text only where none of it is UTF-8 beyond ASCII: converting a
    # file that mixes both would garble the UTF-8 part.
    if beyond_ascii:
        return f"{where}: it mixes UTF-8 with another encoding; fix that line, or convert it to UTF-8 text"
    if not single_byte:
        return f"{where}: convert it to UTF-8 text"
    converted = shlex.quote(path.stem + ".utf8" + path.suffix)
    return (f"{where}; if it was saved as Windows-1252 or Latin-1, convert it: iconv -f cp1252 -t utf-8 "
            f"{shlex.quote(str(path))} > {converted}")


@dataclass(frozen=True)
class DataFile:
    """A file to read: its encoding ("" for Parquet, which is not text) and its size in bytes once decompressed,
    which sets the length its long texts are cut to, so that a compressed file reads as the file itself."""

    path: Path
    encoding: str
    size: int


def inspect_file(path: Path, text_column: str | None = None) -> DataFile | str:
    """The file to read, or why `path` cannot be read and what to do; `text_column` is --text-column's column, the
    one a table must then have."""
    if saved := saved_dataset_of(path):
        return f"part of a dataset saved with datasets' save_to_disk: pass {saved} as --dataset"
    kind = compression(path)
    form = data_format(path)
    try:
        if form == ".parquet":
            if kind:
                return f"a {kind}-compressed Parquet file: decompress it (Parquet compresses its own columns)"
            columns = pq.ParquetFile(path).schema_arrow.names
            if text_column is not None and text_column not in columns:
                return f"no '{text_column}' column (--text-column; its columns: {', '.join(columns)})"
            if text_column is None and not set(columns) & set(RECORD_COLUMNS):
                return (f"no {RECORD_KINDS} column (its columns: {', '.join(columns)}): name the one that holds "
                        "the text with --text-column")
            return DataFile(path, "", os.path.getsize(path))
        if kind is None:
            with open(path, "rb") as handle:
                head = handle.read(8)
            for magic, why in OTHER_BINARIES.items():
                if head.startswith(magic):
                    return why
        encoding, size = text_encoding(path)
        if encoding is None:
            return _why_not_text(path)
        if form in (".csv", ".tsv") and delimiter(path, encoding, text_column) is None:
            with open_data(path, "rt", encoding=encoding) as handle:
                header = handle.readline().strip()
            if text_column is not None:
                return f"no '{text_column}' column (--text-column) in its header row ({header[:200]!r})"
            return (f"no 'text' column (nor 'prompt'+'completion' or 'instruction'+'output') in its header row "
                    f"({header[:200]!r}): name the column that holds the text with --text-column")
        return DataFile(path, encoding, size)
    except (OSError, EOFError, lzma.LZMAError, pa.ArrowException, csv.Error) as error:
        what = f"a damaged {kind} file" if kind else "not a Parquet file" if form == ".parquet" else "unreadable"
        return f"{what} ({error})"


# A .csv file from a spreadsheet in a locale whose decimal mark is a comma separates its fields with semicolons.
DELIMITERS = {".csv": (",", ";", "\t", "|"), ".tsv": ("\t",)}


def delimiter(path: Path, encoding: str, text_column: str | None = None) -> str | None:
    """The field separator of a .csv or .tsv file: the first of DELIMITERS whose header row names a `text` column, or
    the columns of a conversation's layout (TABLE_KINDS), or `text_column` where --text-column names one."""
    kinds = [(text_column,)] if text_column is not None else TABLE_KINDS
    for delimiter in DELIMITERS[data_format(path)]:
        with open_data(path, "rt", encoding=encoding, newline="") as handle:
            header = next(csv.reader(handle, delimiter=delimiter), [])
            if any(set(kind) <= set(header) for kind in kinds):
                return delimiter
    return None
