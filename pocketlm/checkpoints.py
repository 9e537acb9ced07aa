"""Resumable training state and the output folder's model files, both written so a kill never corrupts them.

Every write goes to a hidden temporary folder first and is then renamed into place: a rename is atomic, so
a run killed mid-save leaves the previous checkpoint and model as they were.

A checkpoint holds accelerate's optimizer and RNG files, which are pickles, and unpickling runs code. So pocketlm
signs what it writes: each checkpoint gets a manifest of its files' SHA-256 digests, authenticated with a key kept
in the user's home (HMAC), and `--resume` loads only a checkpoint whose manifest and files check out. One that
fails (damaged, changed, or written elsewhere) is skipped with a warning for the newest one that passes.
"""

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path

from accelerate import Accelerator

from tokenization import save_tokenizer

from .errors import UsageError

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "pocketlm-manifest.json"
# The signing key: per user, created on first use, readable by its owner only.
KEY_FILE = Path(os.environ.get("POCKETLM_HOME", Path.home() / ".cache" / "pocketlm")) / "checkpoint-key"
MODEL_FILE = "model.safetensors"
LOCK_FILE = ".lock"


class CheckpointManager:
    """`<output-dir>/checkpoints/step-<N>/`: accelerate's full state plus pocketlm's step counters, newest few kept."""

    def __init__(self, folder: Path, accelerator: Accelerator, keep: int = 3):
        self.folder = Path(folder)
        self.accelerator = accelerator
        self.keep = keep
        self.expected_bytes = 0  # what a checkpoint will take, for the full-disk message before the first exists

    def all(self) -> list[Path]:
        found = [p for p in self.folder.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(self, step: int, state: dict, options) -> Path:
        """Save model, optimizer, schedule, RNG states and `state` (step, best loss) as checkpoint `step`."""
        final = self.folder / f"step-{step}"
        temporary = self.folder / f".tmp-step-{step}"
        if self.accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        try:
            with full_disk_says(self.folder, self._size_hint()):
                self.accelerator.save_state(str(temporary))
                # save_state returns once this process has written its share (each writes its own RNG state file),
                # so the folder may be renamed only when every process has: else a slower one writes into a folder
                # that is gone, or into a new one left behind.
                self.accelerator.wait_for_everyone()
                if self.accelerator.is_main_process:
                    record = {**state, "num_processes": self.accelerator.num_processes, "options": asdict(options)}
                    (temporary / STATE_FILE).write_text(json.dumps(record, indent=2))
                    sign(temporary)
        except UsageError:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        if self.accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)
            for old in self.all()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def _size_hint(self) -> int:
        """Bytes a checkpoint takes: the newest one's, or the expected size before there is one."""
        latest = self.latest()
        return sum(p.stat().st_size for p in latest.iterdir() if p.is_file()) if latest else self.expected_bytes

    def load_latest(self) -> dict:
        """Restore every process's state from the newest checkpoint that checks out; returns pocketlm's step
        counters. Newer ones that do not are skipped with a warning; if none does, a UsageError says why."""
        problems = []
        for checkpoint in reversed(self.all()):
            problem = verify(checkpoint)
            if problem is None:
                for skipped, why in problems:
                    logger.warning("skipped checkpoint %s (%s); resuming from %s", skipped, why, checkpoint.name)
                self.accelerator.load_state(str(checkpoint))
                record = json.loads((checkpoint / STATE_FILE).read_text())
                return {key: record.get(key)
                        for key in ("step", "best_val_loss", "best_val_bpc", "best_val_assistant_bpc", "tokens")}
            problems.append((checkpoint, problem))
        newest, why = problems[0]
        raise UsageError(
            f"--resume: no checkpoint pocketlm can trust in {self.folder} (the newest, {newest.name}: {why}); its "
            "optimizer and RNG files are pickles, loaded only when pocketlm wrote them: start over with --overwrite."
        )

    def remove_all(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# -------------------------------------------------------------------------------------------------- signing


def _key() -> bytes:
    if not KEY_FILE.exists():
        KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        temporary = KEY_FILE.with_name(f".{KEY_FILE.name}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(32))
        os.replace(temporary, KEY_FILE)  # two processes creating it at once: one key wins, both read it
    return KEY_FILE.read_bytes()


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _files_of(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _digest(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}


def sign(folder: Path) -> None:
    """Write the folder's manifest: every file's digest, authenticated with this user's key."""
    files = _files_of(folder)
    body = json.dumps(files, sort_keys=True).encode()
    mac = hmac.new(_key(), body, hashlib.sha256).hexdigest()
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files, "hmac": mac}, indent=1))


def verify(folder: Path) -> str | None:
    """None when `folder` holds exactly the files pocketlm signed there, unchanged; else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files, mac = manifest["files"], manifest["hmac"]
    except FileNotFoundError:
        return "it has no pocketlm manifest, so pocketlm did not write it"
    except (ValueError, KeyError, TypeError):
        return "its pocketlm manifest is damaged"
    body = json.dumps(files, sort_keys=True).encode()
    if not hmac.compare_digest(mac, hmac.new(_key(), body, hashlib.sha256).hexdigest()):
        return "its manifest was not signed by pocketlm for this user"
    found = _files_of(folder)
    changed = sorted(set(files) ^ set(found) | {name for name in files if found.get(name) not in (None, files[name])})
    if changed:
        return f"{changed[0]} is damaged, missing or was changed since it was saved"
    return None


# ----------------------------------------------------------------------------------------------- the lock


class FolderLock:
    """One training run per output folder: an exclusive lock on `<folder>/.lock`.

    The kernel drops the lock when its process ends, however it ends (SIGKILL included), so a lock left by a
    killed run never blocks the next; the file only says who holds it.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self.handle = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(f"{self.path.parent} is in use by another training run ({holder}): wait for it to end, "
                             "or pick another --output-dir.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{' '.join(sys.argv) or 'python'}\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.truncate(0)
            self.handle.close()  # closing drops the lock
            self.handle = None


# ---------------------------------------------------------------------------------------------- the model


def replace_model_files(model, tokenizer, out: Path, state_dict: dict | None = None) -> None:
    """Write a `save_pretrained` folder (model, generation config, tokenizer) into `out`, file by file atomically.

    The weights go last: a run killed in between leaves either the previous model or, on the first save, no
    weights file at all, never weights beside files they do not fit. `state_dict`, when given, holds the weights
    to write (gathered from every process under FSDP or DeepSpeed).
    """
    temporary = out / ".saving"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        with full_disk_says(out, _bytes_of(out / MODEL_FILE)):
            model.save_pretrained(temporary, state_dict=state_dict)
            save_tokenizer(tokenizer, temporary)
    except UsageError:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    old_config = out / "config.json"
    if old_config.exists() and old_config.read_bytes() != (temporary / "config.json").read_bytes():
        # Another model's weights (an --overwrite of another family or shape) must not outlive its config.
        (out / MODEL_FILE).unlink(missing_ok=True)
    for path in sorted(temporary.iterdir(), key=lambda p: p.name == MODEL_FILE):
        os.replace(path, out / path.name)
    temporary.rmdir()


def _bytes_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


@contextlib.contextmanager
def full_disk_says(folder: Path, needed: int = 0):
    """Turns a full disk into one line naming the folder and about how much space the write needs."""
    try:
        yield
    except UsageError:
        raise  # already said (by a save that knew its size)
    except Exception as error:
        if not _caused_by_full_disk(error):
            raise
        need = f"about {needed / 1e6:,.1f} MB" if needed else "more space"
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
        raise UsageError(
            f"no space left in {folder} (a save needs {need}, {free / 1e6:,.1f} MB are free): free some space "
            "and resume with --resume; the last good model and checkpoint are intact."
        ) from None


def _caused_by_full_disk(error: BaseException | None) -> bool:
    """A full disk anywhere in the exception's chain (safetensors and torch wrap the OSError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
