"""What decides a run, recorded with every checkpoint and compared when the run is resumed.

`--resume` claims to continue a run; it can only if what decided that run is unchanged. Each kind of change has
one answer, decided by what it would do to the run:

- the model's shape or its tokenizer: the checkpoint's weights cannot be continued as another model: refused;
- the data (each file's size, time and digest; the column read as text; a dataset's configuration), what cuts and
  orders the batches (seed, batch and block size, gradient accumulation, processes, streaming, assistant-only
  loss), the arithmetic (mixed precision), the
  optimizer's settings and the validation sample (`--eval-tokens`, which best-model choices compare on): the run
  would no longer be the one it continues: refused, unless `--accept-changes`, which continues with the change
  applied and says so;
- the run's length (`--max-steps`, `--epochs`): resuming to extend or shorten a run is what it is for: continued,
  with a note; its bookkeeping (evaluation and checkpoint intervals, samples, compile, logging): continued.

A file touched but not changed (same bytes, new time) continues with a note. An option the resume's command line
leaves out is the run's own, from the checkpoint (`continued`): only what is given again can differ.

What computes the numbers (pocketlm's own code, transformers' and torch's releases, the device, the CPU's instruction
set and threads) does not change what the run is, but it can change the order in which a matrix product adds, and so
the last bits: a resume under another continues, with a note that it may not be bitwise what the uninterrupted run
would have been. pocketlm's code is known by a digest of its source, not its version number: an edited checkout,
or an upgrade between a kill and the resume, keeps the number and changes the code.
"""

import collections
import dataclasses
import functools
import hashlib
import importlib.metadata
from pathlib import Path

import torch
import transformers

from .data.blocks import tokenizer_digest
from .data.formats import find_data_files
from .errors import UsageError
from .sources import all_code

SHAPE = ("model_type", "model_size", "model_config", "vocab_size")
# What no LSTM reads: a run started before they were refused may have recorded any value (model_size large).
NOT_THE_LSTMS = ("model_size", "vocab_size")
DECIDING = ("seed", "batch_size", "block_size", "grad_accum", "streaming", "assistant_only_loss", "mixed_precision",
            "lr", "weight_decay", "warmup_steps", "min_lr_ratio", "grad_clip", "eval_tokens", "text_column",
            "dataset_config")
LENGTH = ("max_steps", "epochs")


# Options of this invocation, never taken from the run it resumes.
NOT_CONTINUED = ("resume", "overwrite", "auto_resume", "accept_changes", "output_dir", "init_from", "device")


def continued(options, given: set[str]):
    """`options` for a resume: those `given` on the command line, and the run's own, from its newest trusted
    checkpoint, for every other, so that `train.py --resume --output-dir RUN` continues the run as it was started
    (nanoGPT's init_from='resume') instead of comparing it with the defaults. A given one that differs is a change,
    refused or accepted by the resume as any is. Without a trusted checkpoint there is nothing to take: the resume
    itself says why."""
    from .checkpoints import CheckpointManager
    from .run_folder import RunFolder, default_output_dir

    folder = RunFolder(options.output_dir or default_output_dir(options.model_type or "transformer",
                                                                options.model_size))
    try:
        recorded = CheckpointManager(folder.checkpoints, accelerator=None).newest_trusted()[1]["options"]
    except (UsageError, OSError, KeyError, ValueError):
        return options
    if "model_type" in given and options.model_type != recorded.get("model_type"):
        return options  # another family's run: nothing of it applies, and the resume refuses it
    skipped = {*given, *NOT_CONTINUED, *(NOT_THE_LSTMS if recorded.get("model_type") == "lstm" else ())}
    if options.tokenizer or recorded.get("tokenizer"):
        # The vocabulary is the tokenizer's: the recipe's size, recorded beside it, would read as a contradictory
        # --vocab-size (every resume of a --tokenizer run was refused so).
        skipped.add("vocab_size")
    taken = {name: recorded[name] for name in (spec.name for spec in dataclasses.fields(options))
             if name in recorded and name not in skipped}
    if "model_config" in given:  # fields named again on top of the run's
        taken["model_config"] = {**recorded.get("model_config", {}), **options.model_config}
    return dataclasses.replace(options, **taken)


def fingerprint(options, num_processes: int, device: torch.device) -> dict:
    """What decides a run of resolved `options` in `num_processes` processes on `device`, but its tokenizer
    (`with_tokenizer`)."""
    return {"options": {name: getattr(options, name) for name in (*SHAPE, *DECIDING, *LENGTH)},
            "num_processes": num_processes,
            "data": _data_fingerprint(options.data, options.dataset),
            "validation_data": (_files(options.validation_data, flag="--validation-data") if options.validation_data
                                else None),
            "arithmetic": arithmetic(device)}


def arithmetic(device: torch.device) -> dict:
    """What computes the run's numbers on `device`, in the words a resume's note uses."""
    found = {"pocketlm": source_version(), "transformers": transformers.__version__, "torch": torch.__version__,
             "device": device.type}
    if device.type == "cuda":
        found.update({"GPU": torch.cuda.get_device_name(device), "CUDA": torch.version.cuda})
    elif device.type == "cpu":
        found.update({"CPU instructions": torch.backends.cpu.get_cpu_capability(),
                      "CPU threads": torch.get_num_threads()})
    return found


@functools.cache
def source_version() -> str:
    """pocketlm's version and a digest of the Python source it runs: "0.1.0 (source 3fa2c19d)"."""
    from . import __version__

    return f"{__version__} (source {all_code()})"


def with_tokenizer(record: dict, tokenizer) -> dict:
    """`record` with the digest of `tokenizer`, whose vocabulary the model's embedding rows are indexed by."""
    return {**record, "tokenizer": tokenizer_digest(tokenizer)}


def _data_fingerprint(data: list[str] | None, dataset: str | None) -> dict:
    if dataset:
        local = Path(dataset).expanduser()
        # A Hub dataset is known by its name only (offline, its files are datasets' cache).
        return {"dataset": dataset, **({"files": _files([str(local)], every_file=True)} if local.exists() else {})}
    if data:
        return {"files": _files(data)}
    return {"built-in": f"chatterbot-corpus {importlib.metadata.version('chatterbot-corpus')}"}


def _files(paths: list[str], every_file: bool = False, flag: str = "--data") -> dict[str, dict]:
    found = (sorted(p for p in Path(paths[0]).rglob("*") if p.is_file() and not _datasets_cache(p)) if every_file
             else find_data_files(paths, flag, quiet=True))
    return {str(path.resolve()): _file(path) for path in found}


def _datasets_cache(path: Path) -> bool:
    """A file datasets writes beside a saved dataset's own when a run reads it (`cache-<fingerprint>.arrow`, its
    map's result): the first run adds them, and a resume counted them as data added since the checkpoint."""
    return path.name.startswith("cache-") and path.suffix == ".arrow"


def _file(path: Path) -> dict:
    stat = path.stat()
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "blake2b").hexdigest()[:32]
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "digest": digest}


# ------------------------------------------------------------------------------------------------ comparing


def compare(recorded: dict | None, current: dict, step: int, accept_changes: bool) -> list[str]:
    """The notes a resume prints, having compared the checkpoint's `recorded` fingerprint with the `current` one;
    a change that stops the resume raises a UsageError naming every such change and the way on."""
    if recorded is None:
        return ["the checkpoint predates pocketlm's record of what decides a run: nothing was compared"]
    old, new = recorded["options"], current["options"]
    ignored = NOT_THE_LSTMS if new["model_type"] == "lstm" else ()
    shape = [_flag_change(name, old.get(name), new[name]) for name in SHAPE
             if old.get(name) != new[name] and name not in ignored]
    if recorded.get("tokenizer") and current.get("tokenizer") and recorded["tokenizer"] != current["tokenizer"]:
        shape.append("the tokenizer is not the one the run trained with")
    if shape:
        raise UsageError(f"--resume: {'; '.join(shape)}, and the checkpoint's weights belong to the run's own model: "
                         "continue it with the run's options, or start a new run with --overwrite or another "
                         "--output-dir.")
    deciding = [_flag_change(name, old.get(name), new[name]) for name in DECIDING if old.get(name) != new[name]]
    if recorded.get("num_processes") != current["num_processes"]:
        deciding.append(f"{current['num_processes']} process(es) here, {recorded.get('num_processes')} in the run")
    notes = []
    for part in ("data", "validation_data"):
        changed, same_bytes = _data_changes(recorded.get(part), current[part], part)
        deciding += changed
        notes += same_bytes
    notes += [_flag_change(name, old.get(name), new[name]) + ": the schedule now runs to the new end"
              for name in LENGTH if old.get(name) != new[name]]
    if deciding and not accept_changes:
        raise UsageError(f"--resume: since the checkpoint at step {step}, {'; '.join(deciding)}, so this would not "
                         "continue the run it claims to: undo the change, or pass --accept-changes to continue "
                         "with it.")
    if deciding:
        notes.insert(0, f"continuing with changes (--accept-changes): {'; '.join(deciding)}")
    notes += _arithmetic_changes(recorded.get("arithmetic"), current.get("arithmetic"))
    return notes


def _arithmetic_changes(before: dict | None, here: dict | None) -> list[str]:
    """The note for a resume computing with something other than the run did, if it does."""
    if not before or not here:
        return []
    # A name the run did not record (a checkpoint written before pocketlm recorded it) is not known to differ.
    differing = [f"{name} {here.get(name, 'none')} here, {before[name]} in the run"
                 for name in before if before[name] != here.get(name)]
    if not differing:
        return []
    return [f"the numbers are computed differently ({'; '.join(differing)}): the run continues, but its last bits "
            "may differ from what the uninterrupted run would have computed"]


def _flag_change(name: str, before, after) -> str:
    flag = "--" + name.replace("_", "-")
    return f"{flag} is {_shown(after)} here, {_shown(before)} in the run"


def _shown(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "none"
    return "not set" if value is None else str(value)


def _data_changes(before: dict | None, after: dict | None, part: str) -> tuple[list[str], list[str]]:
    """What changed between two data fingerprints, in words, and the notes for what changed without changing the
    bytes read (files touched, or the same files read from other paths)."""
    flag = "--validation-data" if part == "validation_data" else "the data"
    if before == after:
        return [], []
    old, new = (before or {}).get("files", {}), (after or {}).get("files", {})
    named = _short_names(set(old) | set(new))
    if old and new and before.keys() == after.keys() and \
            (old.keys() != new.keys() or before.get("dataset") != after.get("dataset")) and \
            [f["digest"] for f in old.values()] == [f["digest"] for f in new.values()]:
        # The same bytes read in the same order from other paths (a project folder or a saved dataset moved or
        # renamed, a job started again where the data is mounted elsewhere): the same documents, the same batches.
        then, now = (fingerprint["dataset"] if "dataset" in fingerprint else ", ".join(named[name] for name in files)
                     for fingerprint, files in ((before, old), (after, new)))
        return [], [f"{flag} was read from {then} and now from {now}: the same bytes in the same order"]
    if before is None or after is None or set(before) - {"files"} != set(after) - {"files"} or \
            any(before[key] != after[key] for key in before if key != "files"):
        return [f"{flag} is {_data_name(after)} here, {_data_name(before)} in the run"], []
    changed, touched = [], []
    for name in sorted(set(old) | set(new)):
        short = named[name]
        if name not in new:
            changed.append(f"{short} is gone")
        elif name not in old:
            changed.append(f"{short} was added")
        elif old[name]["digest"] != new[name]["digest"]:
            changed.append(f"{short} changed ({old[name]['size']:,} bytes then, {new[name]['size']:,} now)")
        elif old[name]["mtime_ns"] != new[name]["mtime_ns"]:
            touched.append(f"{short} was touched but holds the same bytes")
    return changed, touched


def _short_names(paths: set[str]) -> dict[str, str]:
    """Each file as the resume's notes name it: by its name alone, or by its whole path where another file of the
    same name is named too ("notes/d.txt is gone; d.txt was added" read as a contradiction)."""
    counts = collections.Counter(Path(path).name for path in paths)
    return {path: Path(path).name if counts[Path(path).name] == 1 else path for path in paths}


def _data_name(fingerprint: dict | None) -> str:
    if not fingerprint:
        return "not set"
    if "dataset" in fingerprint:
        return f"the dataset {fingerprint['dataset']}"
    if "built-in" in fingerprint:
        return f"the built-in {fingerprint['built-in']}"
    return ", ".join(Path(name).name for name in fingerprint.get("files", {})) or "no files"


def apply_accepted(optimizer, schedule, recorded: dict | None, options) -> None:
    """Give the optimizer and the schedule restored from a checkpoint an accepted new --lr or --weight-decay: both
    live in their saved state, which would otherwise quietly win over the command line."""
    old = (recorded or {}).get("options", {})
    if old.get("lr", options.lr) != options.lr:
        schedule.base_lrs = [options.lr for _ in optimizer.param_groups]
        factor = schedule.lr_lambdas[0](schedule.last_epoch)
        for group in optimizer.param_groups:
            group["lr"] = options.lr * factor
    if old.get("weight_decay", options.weight_decay) != options.weight_decay:
        optimizer.param_groups[0]["weight_decay"] = options.weight_decay  # the matrices' group (make_optimizer)
