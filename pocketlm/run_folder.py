"""The output folder of a training run, and the one owner of its layout:

    <output-dir>/
        model.safetensors, config.json, generation_config.json, ...   the best model so far (save_pretrained)
        tokenizer.json, tokenizer_config.json, chat_template.jinja       its tokenizer
        metrics.jsonl, loss_curve.png, training_summary.json             the run's records
        checkpoints/step-N/                                              resumable training state (checkpoints.py)
        .lock                                                            held by the run under way
        .tokenizer/, .saving/                                            a run's tokenizer until it has finished; a
                                                                         model being written
        .tokenizer.writing/                                              a new run's, until it has passed its checks

Every other module asks this one for a path, a record or a write; no file name of the folder is spelled anywhere
else. Every write lands whole or not at all (whole_writes.py: a hidden temporary place first, then a rename), but
for metrics.jsonl, which grows a line at a time: a run killed mid-save leaves the previous model, checkpoint or
record as it was.
"""

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from tokenization import save_tokenizer

from .errors import UsageError, full_disk_says
from .whole_writes import check_writable, make_folder, readable_by_others, remove_empty, write_whole
from .wording import a_family

# The files of a save_pretrained folder (transformers' names), which a model folder of either family holds.
MODEL_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # where weights saved in shards (max_shard_size) are listed
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CARD_FILE = "README.md"  # a Hub repository's model card, which hub_upload.py writes from the run's record
# The run's own records beside the model.
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
SUMMARY_FILE = "training_summary.json"
CHECKPOINTS_DIR = "checkpoints"
EXPORT_RECORD = ".pocketlm-export.json"  # export.py's list of what it wrote (hidden: a web host serves it harmlessly)
WEB_PAGE_FILE = "pocketlm.json"  # what export.py's web page runs (its model folder beside it)
LOCK_FILE = ".lock"
RUN_TOKENIZER_DIR = ".tokenizer"  # a run's tokenizer until a finished run leaves it beside the model
SAVING_DIR = ".saving"  # a model being written
MODELS_DIR = Path("models")  # where runs go unless --output-dir says otherwise
# What any run leaves in its folder from its first moment (the lock) to its end: a folder without one of these is
# not a run's. A model alone (config and weights) is not one: an export, a Hub folder, a download.
RUN_MARKERS = {LOCK_FILE, RUN_TOKENIZER_DIR, SAVING_DIR, CHECKPOINTS_DIR, METRICS_FILE, SUMMARY_FILE}


def default_output_dir(family: str, model_size: str = "small") -> Path:
    """The folder a run of `family` (and, for the Transformer, `model_size`) goes to by default: models/lstm or
    models/transformer-<size>; the chat looks there too."""
    return MODELS_DIR / ("lstm" if family == "lstm" else f"transformer-{model_size}")


def tuned_output_dir(base_name: str) -> Path:
    """The folder a run started from the model named `base_name` (`loading.model_name`: a folder's name, a Hub
    id) goes to by default: models/<name>-tuned, never the preset's folder, which may hold that model itself."""
    return MODELS_DIR / f"{Path(base_name).name}-tuned"


def trained_models(folder: Path = MODELS_DIR) -> list[Path]:
    """The models train.py left in `folder` (models/, where runs go by default): the exports and Hub folders
    beside them, models no run wrote, left out."""
    return sorted(config.parent for config in folder.glob(f"*/{CONFIG_FILE}")
                  if {entry.name for entry in config.parent.iterdir()} & RUN_MARKERS)


class RunFolder:
    """A training run's output folder: where each file goes, and the writes that must never be seen half done."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.model_file = self.path / MODEL_FILE
        self.config_file = self.path / CONFIG_FILE
        self.metrics_file = self.path / METRICS_FILE
        self.loss_curve = self.path / LOSS_CURVE_FILE
        self.summary_file = self.path / SUMMARY_FILE
        self.checkpoints = self.path / CHECKPOINTS_DIR
        self.run_tokenizer = self.path / RUN_TOKENIZER_DIR
        self.staged_tokenizer = self.path / f"{RUN_TOKENIZER_DIR}.writing"

    # ------------------------------------------------------------------------------------------------ checks

    def check_writable(self) -> None:
        """Refuse a folder that cannot be created or written, before anything is read or trained."""
        check_writable(self.path)

    def check_is_a_run_folder(self) -> None:
        """Refuse an existing folder that holds files but none of a run's (`--output-dir notes`, or `.` in a
        project): the model would be written among the user's files, and a later `--data` of the folder would read
        the model's JSON files as records. --overwrite replaces a run, never the user's own files."""
        entries = sorted(entry.name for entry in self.path.iterdir()) if self.path.is_dir() else []
        if entries and not set(entries) & RUN_MARKERS and {CONFIG_FILE, EXPORT_RECORD} & set(entries):
            # Written into, with --overwrite, it kept what training does not write (an export's GGUF and record, a
            # card) beside a model they no longer describe.
            raise UsageError(f"--output-dir {self.path} holds a model that no training run wrote there (an export, a "
                             "Hub folder, a download): training writes only into its own folders, even with "
                             "--overwrite; choose a new or empty --output-dir (--init-from starts from a pocketlm "
                             "model); nothing there was touched.")
        if entries and not set(entries) & RUN_MARKERS:
            shown = ", ".join(entries[:3]) + (" ..." if len(entries) > 3 else "")
            raise UsageError(f"--output-dir {self.path} holds files that are not a training run's ({shown}): choose "
                             "a new or empty folder; nothing there was touched.")

    def check_reusable(self, family: str, model_types: dict[str, str], resume: bool, overwrite: bool) -> None:
        """Refuse to clobber another family's model (`model_types`: what config.json names each family's model) or
        an earlier run's checkpoints unless asked to, and a --resume with nothing to resume."""
        model_type = model_types[family]
        if self.config_file.exists() and not overwrite:
            try:
                found = json.loads(self.config_file.read_text()).get("model_type")
            except (ValueError, AttributeError):
                raise UsageError(f"{self.config_file} is not a model's config: pick another --output-dir, or pass "
                                 "--overwrite to replace what is there.")
            held = a_family(next((name for name, kind in model_types.items() if kind == found), found))
            if found != model_type and resume:  # --overwrite would throw away the run that was to continue
                raise UsageError(f"{self.path} holds {held}, not {a_family(family)}: to resume its run, drop "
                                 "--model-type (a resume takes the run's own), or pick another --output-dir.")
            if found != model_type:
                raise UsageError(f"{self.path} holds {held}, not {a_family(family)}: pick another --output-dir or "
                                 "pass --overwrite to replace it.")
        has_checkpoints = self.has_checkpoints()
        if resume and not has_checkpoints:
            raise UsageError(f"--resume: no checkpoint in {self.checkpoints}; drop --resume to start a new run.")
        if has_checkpoints and not resume and not overwrite:
            raise UsageError(f"{self.path} has checkpoints of an earlier run: pass --resume to continue it or "
                             "--overwrite to start over.")

    def has_checkpoints(self) -> bool:
        return any(self.checkpoints.glob("step-*"))

    def has_model(self) -> bool:
        return self.model_file.exists()

    # ----------------------------------------------------------------------------------------------- writes

    def stage_run_tokenizer(self, tokenizer) -> None:
        """A new run's tokenizer, written aside, where every process of the run loads it from: it becomes the
        run's own (`start_new_run`) only once the run has passed every check, so a run refused on the way (its
        text too short, say) leaves an earlier run's tokenizer as it was."""
        self.discard_staged_tokenizer()
        save_tokenizer(tokenizer, self.staged_tokenizer)

    def discard_staged_tokenizer(self) -> None:
        shutil.rmtree(self.staged_tokenizer, ignore_errors=True)

    def start_new_run(self, overwrite: bool) -> None:
        """A new run, past every check, takes the folder: with --overwrite the earlier run's checkpoints and records
        go (its model stays until a new one replaces it), and the staged tokenizer becomes the run's, which a
        resume loads. Until here a refused run, --overwrite or not, has changed nothing of an earlier one."""
        if overwrite:
            shutil.rmtree(self.checkpoints, ignore_errors=True)
            self.metrics_file.unlink(missing_ok=True)
            self.loss_curve.unlink(missing_ok=True)
        shutil.rmtree(self.run_tokenizer, ignore_errors=True)  # an earlier run's, which nothing resumes now
        os.replace(self.staged_tokenizer, self.run_tokenizer)

    def write_model(self, model, tokenizer, state_dict: dict | None = None) -> None:
        """Write a `save_pretrained` folder (model, generation config, tokenizer) into the folder, file by file
        atomically.

        The weights go last: a run killed in between leaves either the previous model or, on the first save, no
        weights file at all, never weights beside files they do not fit. `state_dict`, when given, holds the weights
        to write (gathered from every process under FSDP or DeepSpeed).
        """
        temporary = self.path / SAVING_DIR
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            with full_disk_says(self.path, _bytes_of(self.model_file)):
                model.save_pretrained(temporary, state_dict=state_dict)
                save_tokenizer(tokenizer, temporary)
        except UsageError:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        readable_by_others(temporary)
        if self.config_file.exists() and self.config_file.read_bytes() != (temporary / CONFIG_FILE).read_bytes():
            # Another model's weights (an --overwrite of another family or shape) must not outlive its config.
            self.model_file.unlink(missing_ok=True)
        for path in sorted(temporary.iterdir(), key=lambda p: p.name == MODEL_FILE):
            os.replace(path, self.path / path.name)
        temporary.rmdir()

    def forget_run_tokenizer(self) -> None:
        """A finished run's tokenizer is the one beside its model. Moved away before it is removed: a run killed
        while removing it must not leave half a tokenizer where a resume would load it."""
        leaving = self.path / f"{RUN_TOKENIZER_DIR}.removing"
        shutil.rmtree(leaving, ignore_errors=True)
        if self.run_tokenizer.exists():
            os.replace(self.run_tokenizer, leaving)
            shutil.rmtree(leaving)

    def tokenizer_to_resume(self) -> Path:
        """Where a resumed run's tokenizer is: its own, until a finished run left it beside the model."""
        return self.run_tokenizer if self.run_tokenizer.exists() else self.path

    # ---------------------------------------------------------------------------------------------- records

    def write_summary(self, summary: dict) -> None:
        write_whole(self.summary_file, lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))

    @staticmethod
    def holding_checkpoint(folder: Path) -> "RunFolder | None":
        """The run whose checkpoint `folder` is (`<run>/checkpoints/step-N`: weights, no config or tokenizer), or
        None for any other folder."""
        folder = folder.expanduser().resolve()
        if (folder.parent.name != CHECKPOINTS_DIR or not (folder / MODEL_FILE).is_file()
                or (folder / CONFIG_FILE).exists()):
            return None
        return RunFolder(folder.parent.parent)

    def model_files_beside(self, weights: Path) -> dict[str, Path]:
        """A model folder's files (by name) made of this run's config, code and tokenizer and the weights file
        `weights`: one of its checkpoints seen as a model. Empty while the run has saved no model yet."""
        if not self.config_file.is_file():
            return {}
        files = {}
        for folder in (self.path, self.tokenizer_to_resume()):  # a run under way keeps its tokenizer aside
            files.update({p.name: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")})
        return {**files, MODEL_FILE: weights}

    def read_summary(self) -> dict:
        """What the run recorded (data, options, results); {} for a folder without a record, such as a Hub model."""
        if not self.summary_file.is_file():
            return {}
        try:
            summary = json.loads(self.summary_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise UsageError(f"{self.summary_file} is not valid JSON: delete it to go on without the training "
                             "record, or train again.")
        return summary if isinstance(summary, dict) else {}

    # ------------------------------------------------------------------------------------------------- lock

    def lock(self) -> "FolderLock":
        return FolderLock(self.path / LOCK_FILE)


def _bytes_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


class FolderLock:
    """One training run per output folder: an exclusive lock on `<folder>/.lock`, taken as a context manager.

    The kernel drops the lock when its process ends, however it ends (SIGKILL included), so a lock left by a
    killed run never blocks the next; the file only says who holds it.
    """

    def __init__(self, path: Path):
        self.path = path
        self.handle = None
        self.made = []  # the lock file and the folders acquiring made, innermost first

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        folder = self.path.parent.absolute()
        self.made = [] if self.path.exists() else [self.path]
        self.made += make_folder(folder)
        while True:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise UsageError(f"{self.path.parent} is in use by another training run ({holder}): wait for it to "
                                 "end, or pick another --output-dir.") from None
            # A run that ended before writing anything removes its lock file (`release`): one that opened that
            # file before and locked it after holds a lock on a name no longer there, and takes the new one.
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{' '.join(sys.argv) or 'python'}\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        """Drop the lock. A run that wrote nothing beside it (refused before its first file: data without text, a
        full disk) leaves no trace: the lock file, and the folders taking it made, go again (empty folders left
        behind by a refused command read as runs to the next one)."""
        if self.handle is None:
            return
        self.handle.truncate(0)
        if self.made and self.made[0] == self.path and [*self.path.parent.iterdir()] == [self.path]:
            self.path.unlink()  # while still locked: a run waiting on this file fails to lock it, and says so
            remove_empty(self.made[1:])
        self.handle.close()  # closing drops the lock
        self.handle = None
