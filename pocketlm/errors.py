"""Every exception pocketlm raises for a person to read; the one place where a full disk becomes one, where a
missing optional package does (`require_extra`), and where a web address given for a path is recognised.

The command lines (`pocketlm/cli.py`) print each as one line: a UsageError, input the user can fix, exits with
status 2; a run that diverged or a Hub that refused exits with 1. This module imports nothing heavy, so a command
can know these types before it loads torch.
"""

import contextlib
import errno
import re
import shutil
from pathlib import Path


class UsageError(Exception):
    """Bad input at the edge of pocketlm: the message names the problem and the fix."""


class TrainingDiverged(RuntimeError):
    """The loss stayed non-finite: the run stopped, the last good checkpoint and model are untouched."""


class HubError(RuntimeError):
    """The Hub refused or could not be reached; the message says which and what to do."""


def require_extra(extra: str, packages: tuple[str, ...], needed_by: str) -> None:
    """Refuse, before any work, what `needed_by` (a flag, say) does when some of `packages`, from setup.cfg's
    optional `extra`, are not installed: one line naming them and the install, as the README installs pocketlm."""
    import importlib.util

    from .wording import listed

    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        verbs = "is not installed, and comes" if len(missing) == 1 else "are not installed, and come"
        raise UsageError(f"{needed_by}: {listed(missing)} {verbs} with the optional extra {extra}: "
                         f"pip install -e '.[{extra}]'.")


# A web or cloud address (https://, s3://, hf://): pocketlm reads models and data on this machine, or models by Hub
# id, and says so where such an address would read as a missing file.
WEB_ADDRESS = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")

# A model's page on the Hub, or its address in huggingface_hub's file system: what a user copies from a browser.
HUB_MODEL_ADDRESS = re.compile(r"(?:https?://(?:www\.)?(?:huggingface\.co|hf\.co)/|hf://)(?!datasets/|spaces/)"
                               r"([\w.-]+(?:/[\w.-]+)?)")


def web_address_said(address: str) -> str:
    """What to say of a web address given for a model or tokenizer folder (a Hub page copied from the browser)."""
    model = HUB_MODEL_ADDRESS.match(address)
    fix = (f"pass its repository id, {model.group(1)}" if model
           else "pass a model folder on this machine, or a Hub repository id (OWNER/NAME)")
    return f"{address} is a web address, not a model folder or a Hub repository id: {fix}."


# The errors of a write that found no room: the disk is full, or the user's quota is spent.
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)

# What a training run's user does after freeing space; an export's own (pocketlm/export) differs.
RESUME_AFTERWARDS = "resume with --resume; the last good model and checkpoint are intact"


@contextlib.contextmanager
def full_disk_says(folder: Path, needed: int = 0, afterwards: str = RESUME_AFTERWARDS):
    """Turns a full disk into one line naming the folder, about how much space the write needs, and what to do
    once there is room (`afterwards`)."""
    try:
        yield
    except UsageError:
        raise  # already said (by a save that knew its size)
    except Exception as error:
        if not _caused_by_full_disk(error):
            raise
        need = f"about {needed / 1e6:,.1f} MB" if needed else "more space"
        folder = Path(folder)
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
        raise UsageError(
            f"no space left in {folder} (a save needs {need}, {free / 1e6:,.1f} MB are free): free some space "
            f"and {afterwards}."
        ) from None


def _caused_by_full_disk(error: BaseException | None) -> bool:
    """A full disk anywhere in the exception's chain (safetensors and torch wrap the OSError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in FULL_DISK:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
