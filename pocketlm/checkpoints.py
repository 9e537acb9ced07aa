"""Resumable training state: `<output-dir>/checkpoints/step-N/`, written so that a kill never corrupts one.

A checkpoint is accelerate's full state (model, optimizer, schedule, every process's RNG state) plus pocketlm's
record of the run (`trainer_state.json`: step counters, best results, options), signed (`signing.py`). It is
written to a hidden temporary folder, then renamed into place: a run killed mid-save leaves the previous one.
"""

import json
import logging
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

from .errors import UsageError, full_disk_says
from .signing import sign, verify
from .whole_writes import readable_by_others

logger = logging.getLogger(__name__)


class _TiedHeadNote(logging.Filter):
    """accelerate warns at every checkpoint that a tied output head is saved once ("Removed shared tensor
    {'lm_head.weight'} while saving ... check ... that you don't receive any warning while reloading"): expected for
    models whose head shares the embedding's weights, and a resume loads it tied (tested), so not news. Training from
    Python printed it at every checkpoint."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedHeadNote())

STATE_FILE = "trainer_state.json"
TEMPORARY_PREFIX = ".tmp-"  # a checkpoint being written: `.tmp-step-N`, renamed `step-N` once whole
STATE_KEYS = ("step", "best_val_loss", "best_val_bpc", "best_val_assistant_bpc", "tokens")


def checkpoint_folders(folder: Path) -> list[Path]:
    """The checkpoints in a run's checkpoints/ `folder` (`step-N`, whole: a checkpoint being written has another
    name), oldest first."""
    found = [p for p in Path(folder).glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


class CheckpointManager:
    """The newest `keep` checkpoints of a run in `folder`, saved and restored by every process together."""

    def __init__(self, folder: Path, accelerator: Accelerator, keep: int = 3):
        self.folder = Path(folder)
        self.accelerator = accelerator
        self.keep = keep
        self.expected_bytes = 0  # what a checkpoint will take, for the full-disk message before the first exists

    def all(self) -> list[Path]:
        return checkpoint_folders(self.folder)

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def has(self, step: int) -> bool:
        return (self.folder / f"step-{step}").exists()

    def discard_from(self, step: int) -> list[str]:
        """Remove checkpoint `step` and any later one, whose weights a diverged run found to compute inf or NaN (a
        resume from one would only diverge again); the names of those removed, on every process."""
        doomed = [path for path in self.all() if int(path.name[5:]) >= step]
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            for path in doomed:
                shutil.rmtree(path, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return [path.name for path in doomed]

    def save(self, step: int, state: dict, record: dict) -> Path:
        """Save every process's training state and `state` (step counters, best results) as checkpoint `step`;
        `record` (the run's options and what decides it) goes beside them."""
        final = self.folder / f"step-{step}"
        temporary = self.folder / f"{TEMPORARY_PREFIX}step-{step}"
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
                    contents = {**state, "num_processes": self.accelerator.num_processes, **record}
                    (temporary / STATE_FILE).write_text(json.dumps(contents, indent=2))
                    readable_by_others(temporary)  # a checkpoint loads as a model too (chat.py RUN/checkpoints/...)
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

    def newest_trusted(self) -> tuple[Path, dict]:
        """The newest checkpoint that checks out, and its record. Newer ones that do not are skipped with a warning;
        if none does, a UsageError says why."""
        problems = []
        for checkpoint in reversed(self.all()):
            problem = verify(checkpoint)
            if problem is None:
                for skipped, why in problems:
                    logger.warning("skipped checkpoint %s (%s); resuming from %s", skipped, why, checkpoint.name)
                return checkpoint, json.loads((checkpoint / STATE_FILE).read_text())
            problems.append((checkpoint, problem))
        if not problems:
            raise UsageError(f"--resume: no checkpoint in {self.folder}; drop --resume to start a new run.")
        newest, why = problems[0]
        raise UsageError(
            f"--resume: no checkpoint pocketlm can trust in {self.folder} (the newest, {newest.name}: {why}); its "
            "optimizer and RNG files are pickles, loaded only when pocketlm wrote them: start over with --overwrite, "
            f"or keep its weights (safetensors, no pickles) in a new run: --init-from {newest} --output-dir NEW_FOLDER."
        )

    def load(self, checkpoint: Path, record: dict) -> dict:
        """Restore every process's state from `checkpoint` (found by `newest_trusted`); returns the step counters."""
        self.accelerator.load_state(str(checkpoint))
        return {key: record.get(key) for key in STATE_KEYS}
