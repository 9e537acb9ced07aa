"""Run a pocketlm model without pocketlm: `export(model, formats, output_dir)` writes it in the formats of other
runtimes, each proven there by the tests (the same greedy tokens as the model itself).

- `transformers`: the GPT as a stock GPT-2 folder (`gpt2.py`), loaded without remote code;
- `onnx`: both families as ONNX graphs, float32 and int8 (`onnx.py`), beside their config and tokenizer;
- `gguf`: the GPT as one GGUF file for llama.cpp (`gguf.py`);
- `web`: a static page that chats with the model in the reader's browser (`web.py`), both families.

The chat template goes only into the exports of a model that learned conversations: other runtimes take a template
as the way to talk to a model (llama.cpp's `llama-cli` turns to conversation when a file has one, transformers'
pipelines and servers apply it to messages), and a model trained on plain text never saw its role tokens; without
one, they continue the text they are given, as pocketlm's own text mode does.

An export is built in a hidden folder beside its destination and moved into place when whole, so a failed one
leaves nothing behind. It lists what it wrote in a hidden EXPORT_RECORD, and --overwrite replaces an existing
destination only when that list holds everything there: an export's folder, never the user's own files.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

from tokenization import PLAIN_CHAT_TEMPLATE, save_tokenizer

from ..choices import EXPORT_FORMATS, GGUF_BY_LLAMA_CPP, GGUF_PRECISIONS, WEB_PRECISIONS
from ..errors import UsageError, full_disk_says, require_extra
from ..loading import load_pretrained, model_family, model_name, trained_on_chat
from ..run_folder import CHAT_TEMPLATE_FILE, EXPORT_RECORD, TOKENIZER_CONFIG_FILE
from ..whole_writes import build_folder, check_writable

# What each family can become: transformers has no LSTM language-model architecture, and llama.cpp no LSTM.
FORMATS = {"transformer": ("transformers", "onnx", "gguf", "web"), "lstm": ("onnx", "web")}
ALL_FORMATS = tuple(EXPORT_FORMATS)
WEB_DIR = "web"  # where the page goes when other formats share the output folder


def split_formats(text: str) -> list[str]:
    """The format names of a `--format`/`--formats` value: joined by commas, in any case (GGUF, ONNX), each once
    (`gguf,GGUF` named the default folder `MODEL-gguf-gguf`)."""
    return list(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))


def formats_for(family: str, asked: list[str], offered: tuple[str, ...] = ALL_FORMATS) -> list[str]:
    """The formats to write for `asked` ("all" is every format of the family among `offered`); one a family lacks,
    or one not offered here, is refused in one line naming the ones that are."""
    kinds = [name for name in FORMATS[family] if name in offered]
    choices = ", ".join(kinds) + " or all"
    if not asked:  # `--format ,` or `--format ""`: an empty export folder would read as done
        raise UsageError(f"no format named: choose {choices}.")
    for name in asked:
        if name not in (*offered, "all"):
            raise UsageError(f"unknown format {name!r}: choose {choices}.")
    if "all" in asked:
        return kinds
    for name in asked:
        if name not in kinds:
            raise UsageError(f"the {family} cannot be exported as {name} (transformers and llama.cpp have no LSTM "
                             f"language model): choose {choices}.")
    return list(dict.fromkeys(asked))


def packages_for(family: str, formats: list[str]) -> tuple[str, ...]:
    """What writing `formats` of a `family` model imports beyond the base install, all from setup.cfg's `export`
    extra: the ONNX graphs go through torch.onnx (the GPT's exporter, torch.export, writes with onnxscript; the
    LSTM's, TorchScript, does not) and onnx, their int8 form through onnxruntime's quantizer; GGUF through gguf."""
    graphs = ("onnx", *(("onnxscript",) if family == "transformer" else ()), "onnxruntime")
    needed = {"onnx": graphs, "web": graphs, "gguf": ("gguf",)}
    return tuple(dict.fromkeys(package for name in formats for package in needed.get(name, ())))


def require_packages(family: str, formats: list[str], flag: str = "--format") -> None:
    """Refuse, in one line before any work, `formats` whose packages are not installed (`packages_for`)."""
    missing = {package for package in packages_for(family, formats) if importlib.util.find_spec(package) is None}
    lacking = [name for name in formats if missing & set(packages_for(family, [name]))]
    if lacking:
        require_extra("export", packages_for(family, lacking), f"{flag} {','.join(lacking)}")


def formats_the_tokenizer_takes(formats: list[str], asked: list[str], tokenizer) -> list[str]:
    """`formats` less GGUF when llama.cpp's vocabulary cannot hold the tokenizer: refused in one line when GGUF was
    named, left out with a line on standard error when "all" picked it (all: every format this model takes)."""
    from .gguf import vocabulary_problem

    why = vocabulary_problem(tokenizer) if "gguf" in formats else None
    if why is None:
        return formats
    others = [name for name in formats if name != "gguf"]
    if "gguf" in asked or not others:
        raise UsageError(f"{why}: export {', '.join(others) or 'transformers, onnx or web'} instead; nothing was "
                         "written.")
    print(f"left out gguf: {why}.", file=sys.stderr)
    return others


# What a file an export writes is named like: an --output-dir so named was meant as the file, not its folder.
FILE_SUFFIXES = (".gguf", ".onnx", ".safetensors", ".html", ".bin", ".pt")


def export_name(model_path: str) -> str:
    """What an export calls the model (files, the GGUF's name, the default folder): its folder's or repo's name, a
    checkpoint's with its run's."""
    return model_name(model_path.rstrip("/")).rsplit("/", 1)[-1]


def export(model_path: str, formats: str | list[str], output_dir: str | Path, overwrite: bool = False,
           web_precision: str = WEB_PRECISIONS[0], gguf_precisions: str | tuple[str, ...] = GGUF_PRECISIONS[0]
           ) -> list[Path]:
    """Write the model at `model_path` (a folder or Hub id of either family) in `formats` into `output_dir`;
    returns the files written. `web_precision` is the web page's graph: int8 (about a quarter of the bytes) or
    float32; `gguf_precisions` the GGUF files' weights, one file each (GGUF_PRECISIONS)."""
    model_path = os.fspath(model_path)  # a Path from the Python API reads as the string the command line gives
    # Formats and precisions as the command line spells them ("onnx,gguf") or as a list, checked before any work:
    # a string was read letter by letter ("unknown format 'o'").
    formats = split_formats(formats if isinstance(formats, str) else ",".join(formats))
    gguf_precisions = split_gguf_precisions(gguf_precisions if isinstance(gguf_precisions, str) else
                                            ",".join(gguf_precisions))
    family = model_family(model_path, adapters=True)
    asked, formats = formats, formats_for(family, formats)
    require_packages(family, formats)
    target = Path(output_dir).expanduser()
    # An export replaces its folder whole: never the one the model is read from, or the one the user is in.
    whole, source = target.resolve(), Path(model_path).expanduser().resolve()
    if source.is_dir() and (whole == source or whole in source.parents):
        raise UsageError(f"--output-dir {output_dir} holds the model being exported, {model_path}: choose another "
                         "folder.")
    if whole == Path.cwd() or whole in Path.cwd().parents:
        raise UsageError(f"--output-dir {output_dir} is the folder you are in, or holds it, and an export replaces its "
                         "folder whole: choose a new folder.")
    if target.exists() and not target.is_dir():
        raise UsageError(f"--output-dir {output_dir} is a file: choose a folder.")
    if target.suffix.lower() in FILE_SUFFIXES and not target.is_dir():
        # `--output-dir model.gguf` made a folder of that name holding `<name>-f32.gguf`: not what was meant.
        raise UsageError(f"--output-dir {output_dir} is named like a file, but an export is a folder (its files "
                         f"are named after the model): name a folder, such as --output-dir "
                         f"{target.with_name(target.stem)}-{'-'.join(formats)}; nothing was written.")
    check_writable(target)  # a link on its way to a folder that is missing is named too
    # Built beside its folder, which by default is beside the model: in a shared, read-only folder, say.
    check_writable(whole.parent, shown=target)
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise UsageError(f"{target} already exists: pass --overwrite to replace it, or choose another --output-dir.")
        _check_replaceable(target)
    model, tokenizer = load_pretrained(model_path)
    formats = formats_the_tokenizer_takes(formats, asked, tokenizer)
    name = export_name(model_path)
    is_chat = trained_on_chat(model_path)
    written = []

    def write(building: Path) -> None:
        with full_disk_says(building.parent, afterwards="export again; an earlier export there is intact"):
            write_formats(model, tokenizer, family, formats, building, name, web_precision, gguf_precisions,
                          is_chat=is_chat)
            written.extend(_files_in(building))
            # The model it came from, as a path that still holds from another folder (loading.export_record).
            origin = str(source) if source.is_dir() else model_path
            (building / EXPORT_RECORD).write_text(json.dumps({"model": origin, "formats": formats,
                                                              "files": written}, indent=1) + "\n")

    build_folder(target, write)  # a link the user named keeps pointing at the new export
    return [target / file for file in written]


def _files_in(folder: Path) -> list[str]:
    """The files under `folder`, as paths relative to it, leaving out the export's record."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.is_file() and path.name != EXPORT_RECORD)


def _check_replaceable(target: Path) -> None:
    """Refuse to replace a folder holding anything an export did not write there (`--output-dir ~/site
    --overwrite`, or a file added to an earlier export): --overwrite replaces an export, never the user's files."""
    try:
        written = set(json.loads((target / EXPORT_RECORD).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        written = set()
    others = [file for file in _files_in(target) if file not in written]
    if others or not written:
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "") if others else "no export's record"
        raise UsageError(f"--overwrite replaces only a folder an export wrote, and {target} holds files it did not "
                         f"write ({shown}): choose a new or empty --output-dir; nothing there was touched.")


def write_formats(model, tokenizer, family: str, formats: list[str], folder: Path, name: str,
                  web_precision: str = WEB_PRECISIONS[0], gguf_precisions: tuple[str, ...] = GGUF_PRECISIONS[:1], *,
                  is_chat: bool) -> None:
    """Write `model` in each of `formats` into `folder`: the stock GPT-2 and the ONNX export's config and tokenizer
    at its top (they are the same files), the graphs in onnx/, a GGUF file for each of `gguf_precisions` as
    `<name>-<precision>.gguf`, the web page at the top when it is alone, else in web/. The chat template goes in
    only when `is_chat` (the model learned conversations, loading.trained_on_chat); the page reads the mode. Each
    is said on standard error as it starts: the large preset's formats take half a minute on two cores."""
    for format_name in formats:
        if format_name == "transformers":
            from .gpt2 import write_gpt2

            _say("a stock transformers GPT-2")
            write_gpt2(model, tokenizer, folder, is_chat=is_chat)
        elif format_name == "onnx":
            _say("the ONNX graphs, float32 and int8")
            write_onnx_model(model, tokenizer, family, folder, is_chat=is_chat)
        elif format_name == "gguf":
            from .gguf import write_gguf

            for precision in gguf_precisions:
                _say(gguf_name(name, precision))
                write_gguf(model, tokenizer, folder / gguf_name(name, precision), name, precision, is_chat=is_chat)
        elif format_name == "web":
            from .web import write_web

            _say(f"the web page, its graph {web_precision}")
            write_web(model, tokenizer, family, folder if formats == ["web"] else folder / WEB_DIR, name,
                      web_precision)


def _say(what: str) -> None:
    print(f"writing {what} ...", file=sys.stderr, flush=True)


def gguf_name(name: str, precision: str = GGUF_PRECISIONS[0]) -> str:
    return f"{name}-{precision}.gguf"


def split_gguf_precisions(text: str) -> tuple[str, ...]:
    """The precisions a `--gguf-precision` value names, joined by commas, each once (`q8_0` or `f16,q8_0`); a k-quant
    without llama.cpp's quantizer installed is refused here, before any work."""
    named = tuple(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    unknown = [name for name in named if name not in GGUF_PRECISIONS]
    if unknown or not named:
        raise UsageError(f"unknown --gguf-precision {unknown[0] if unknown else text!r}: choose "
                         f"{', '.join(GGUF_PRECISIONS)}, or several joined by commas.")
    by_llama_cpp = [name for name in named if name in GGUF_BY_LLAMA_CPP]
    if by_llama_cpp and importlib.util.find_spec("llama_cpp") is None:
        raise UsageError(f"--gguf-precision {by_llama_cpp[0]} is made by llama.cpp's own quantizer, which comes with "
                         "llama-cpp-python, not installed: pip install llama-cpp-python (it builds llama.cpp, some "
                         "minutes), or write f16 and run llama.cpp's llama-quantize on it; nothing was written.")
    return named


def write_onnx_model(model, tokenizer, family: str, folder: Path, *, is_chat: bool) -> None:
    """The graphs in onnx/ and what an ONNX runtime reads beside them: the config (GPT-2's, for the GPT, as
    transformers.js runs it), the generation settings and the tokenizer."""
    from .onnx import write_onnx

    if family == "transformer":
        from .gpt2 import write_gpt2

        write_gpt2(model, tokenizer, folder, with_weights=False, is_chat=is_chat)
    else:
        model.config.save_pretrained(folder)
        model.generation_config.save_pretrained(folder)
        save_export_tokenizer(tokenizer, folder, is_chat)
    write_onnx(model, family, folder)


def save_export_tokenizer(tokenizer, folder: Path, is_chat: bool) -> None:
    """The tokenizer, for runtimes outside pocketlm: with a chat model's template inside tokenizer_config.json as
    well, without transformers' {% generation %} marker (transformers.js reads it only there; Python's
    transformers prefers chat_template.jinja); with no template at all for a model trained on plain text."""
    save_tokenizer(tokenizer, folder)
    config_file = folder / TOKENIZER_CONFIG_FILE
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if is_chat:
        config["chat_template"] = PLAIN_CHAT_TEMPLATE
    else:
        config.pop("chat_template", None)
        (folder / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
