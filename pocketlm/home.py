"""pocketlm's folder on this machine: `POCKETLM_HOME`, else `~/.cache/pocketlm`.

It holds the key that signs this user's checkpoints, which a run cannot do without, and caches that can be rebuilt
(trained tokenizers, ONNX exports, the web page's npm packages, datasets handed to the Python API, checkpoints seen
as model folders). Every module that keeps something there names its place from HOME.
"""

import os
from pathlib import Path

from .errors import UsageError

# An empty POCKETLM_HOME is unset, not the working directory.
HOME = Path(os.environ.get("POCKETLM_HOME") or Path.home() / ".cache" / "pocketlm").expanduser()


# What a user does about it, said after each such line.
MOVE_HOME = "set POCKETLM_HOME to a folder you can write, where pocketlm keeps its checkpoint key and caches"


def unusable(path: Path, error: OSError | str, what: str, fix: str = MOVE_HOME) -> UsageError:
    """The one line for `what` that could not be kept at `path`: in pocketlm's home, or (with its own `fix`) in a
    library's cache."""
    reason = error if isinstance(error, str) else error.strerror or str(error)
    return UsageError(f"cannot keep {what} at {path} ({reason}): {fix}.")
