"""Resumable training state and the output folder's model files, both written so a kill never corrupts them.

Every write goes to a hidden temporary folder first and is then renamed into place: a rename is atomic, so
a run killed mid-save leaves the previous checkpoint and model as they were.
"""

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from accelerate import Accelerator

from tokenization import save_tokenizer

STATE_FILE = "trainer_state.json"


class CheckpointManager:
    """`<output-dir>/checkpoints/step-<N>/`: accelerate's full state plus pocketlm's step counters, newest few kept."""

    def __init__(self, folder: Path, accelerator: Accelerator, keep: int = 3):
        self.folder = Path(folder)
        self.accelerator = accelerator
        self.keep = keep

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
        self.accelerator.save_state(str(temporary))
        # save_state returns once this process has written its share (each writes its own RNG state file), so
        # the folder may be renamed only when every process has: else a slower one writes into a folder that is
        # gone, or into a new one left behind.
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            record = {**state, "num_processes": self.accelerator.num_processes, "options": asdict(options)}
            (temporary / STATE_FILE).write_text(json.dumps(record, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)
            for old in self.all()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def load_latest(self) -> dict:
        """Restore every process's state from the newest checkpoint; returns pocketlm's step counters."""
        latest = self.latest()
        self.accelerator.load_state(str(latest))
        record = json.loads((latest / STATE_FILE).read_text())
        return {key: record[key] for key in ("step", "best_val_loss", "best_val_bpc", "tokens")}

    def remove_all(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def replace_model_files(model, tokenizer, out: Path, state_dict: dict | None = None) -> None:
    """Write a `save_pretrained` folder (model, generation config, tokenizer) into `out`, file by file atomically.

    `state_dict`, when given, holds the weights to write (gathered from every process under FSDP or DeepSpeed).
    """
    temporary = out / ".saving"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary, state_dict=state_dict)
    save_tokenizer(tokenizer, temporary)
    for path in sorted(temporary.iterdir()):
        os.replace(path, out / path.name)
    temporary.rmdir()
