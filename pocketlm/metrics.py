"""metrics.jsonl, TensorBoard scalars and the loss-curve image of a training run."""

import json
import logging
import math
from pathlib import Path

from accelerate import Accelerator

from .whole_writes import write_whole

logger = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON record per line to `path`; only the main process writes."""

    def __init__(self, path: Path, accelerator: Accelerator):
        self.path = Path(path)
        self.accelerator = accelerator

    def write(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        self.accelerator.log(values, step=record["step"])

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        records, torn = [], 0
        for line in filter(str.strip, self.path.read_text().splitlines()):
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut short by a full disk, say: the rest of the record is still good
                torn += 1
        if torn:
            logger.warning("%s: skipped %d damaged line(s)", self.path, torn)
        return records

    def truncate_after(self, step: int) -> None:
        """Forget records past `step`: a resumed run rewrites them, so the log reads like one uninterrupted run."""
        if self.accelerator.is_main_process and self.path.exists():
            kept = "".join(json.dumps(r) + "\n" for r in self.records() if r["step"] <= step)
            write_whole(self.path, lambda path: path.write_text(kept))

    def plot(self, target: Path) -> Path:
        """Train and validation loss against step, drawn into `target` (a PNG)."""
        import matplotlib

        matplotlib.use("Agg")  # no display on servers, and none needed for a file
        import matplotlib.pyplot as plt

        records = self.records()
        figure, axes = plt.subplots(figsize=(7, 4))
        for key, label in (("train_loss", "train"), ("val_loss", "validation")):
            points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
            if points:
                axes.plot(*zip(*points), marker="o" if key == "val_loss" else None, markersize=3, label=label)
        axes.set_xlabel("step")
        axes.set_ylabel("loss (nats per token)")
        axes.set_title("pocketlm training loss")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        write_whole(target, lambda path: figure.savefig(path, dpi=100, format="png"))
        plt.close(figure)
        return target
