"""The minutes before the first training step, made visible: each preparation stage says what it starts, what it
produced and how long it took, and the times go into training_summary.json.

On a 52 MB corpus, reading, training the tokenizer and tokenizing took about 100 seconds with nothing on screen;
a user with a larger corpus needs to know what is happening and how long it will take.
"""

import contextlib
import time
from collections.abc import Iterator

import datasets
from tqdm.auto import tqdm


class Stages:
    """Times named stages; the main process prints a line as each starts and ends (others stay quiet)."""

    def __init__(self, show: bool = True):
        self.show = show
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, starting: str) -> Iterator[dict]:
        """Run the body as stage `name`. The body may set `result["done"]` to say what it produced."""
        if self.show:
            tqdm.write(f"{starting} ...")
        result: dict = {}
        started = time.perf_counter()
        with _datasets_progress(self.show):
            yield result
        self.seconds[name] = round(time.perf_counter() - started, 2)
        if self.show:
            tqdm.write(f"{name}: {result.get('done', 'done')} ({_duration(self.seconds[name])})")


@contextlib.contextmanager
def _datasets_progress(show: bool):
    """datasets' own bars (rows read, documents tokenized, with rate and time left) during a stage, if shown."""
    was_enabled = datasets.is_progress_bar_enabled()
    if show:
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
