"""Writes that land whole or not at all, and the checks that they can land before any work is done.

A command stopped halfway (a full disk, Ctrl-C, SIGKILL) must leave what was there before, never half of what it
was writing, and a command that cannot write where it was asked must say so before it trains, exports or
uploads. So every file pocketlm writes is filled at a hidden name beside its place and renamed into it
(`write_whole`; a rename is atomic), and so is every folder: a training run's model (`run_folder.RunFolder`), an
export, a Hub or Space folder (`build_folder`), a cache shared by runs (`write_folder_whole`). What a killed
process left at a hidden name is removed by the next write to the same place; weights are given the mode the
umask says.
"""

import contextlib
import glob
import os
import shutil
import socket
from pathlib import Path
from typing import Callable

from .errors import FULL_DISK, UsageError


def check_writable(folder: Path, flag: str = "--output-dir", shown: Path | None = None) -> None:
    """Refuse an output folder that cannot be created or written (its nearest existing folder is a file, read-only,
    another user's), before any work: a training run's, or an export's, which goes beside its model by default.
    `shown` is the folder the user named, where `folder` is where it is built (beside it)."""
    for parent in [folder, *folder.parents]:
        if parent.is_symlink() and not parent.exists():
            raise UsageError(f"{flag} {shown or folder}: {parent} is a link to {os.readlink(parent)}, which does not "
                             f"exist; create that folder, or pick another {flag}.")
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {shown or folder}: {parent} is a file, not a folder; pick another {flag}.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"{flag} {shown or folder}: {parent} is not writable; pick another {flag}.")
            return


def make_folder(folder: Path, flag: str = "--output-dir", shown: Path | None = None) -> list[Path]:
    """Create `folder` and its missing parents, and return the folders made, innermost first, for a command that
    fails later to remove again (`remove_empty`). One that cannot be made is named in one line (as `shown`, the
    folder the user named, where `folder` is built aside): check_writable's permission test passes root, who
    still cannot make a folder in /proc or on some network mounts."""
    folder = folder.absolute()
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        remove_empty(made)
        fix = "free some space, or pick another" if error.errno in FULL_DISK else "pick another"
        raise UsageError(f"{flag} {shown or folder}: cannot create it ({error.strerror or error}); {fix} {flag}."
                         ) from None
    return made


def remove_empty(folders: list[Path]) -> None:
    """Remove those of `folders` (innermost first) that are empty: a refused command leaves no folder it made."""
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty after all: another run's, or a file put there
            folder.rmdir()


def check_new_folder(target: Path, flag: str = "--output-dir") -> None:
    """Refuse, before any work, a Hub or Space folder `build_folder` could not build: one that exists and is not
    an empty folder, or where it or the folder it is built beside cannot be written."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} is not an empty folder: choose a new {flag}, nothing there was touched.")
    check_writable(target, flag)
    check_writable(target.expanduser().resolve().parent, flag, shown=target)


def build_folder(target: Path, write: Callable[[Path], object], flag: str = "--output-dir",
                 what: str | None = None) -> None:
    """Build an output folder (an export, a Hub folder, a Space) whole or not at all: `write` fills a hidden folder
    beside it, which then takes its place, replacing what is there (an empty folder, or an earlier export the user
    chose to overwrite; callers refuse anything else before any work). Built in place, a command stopped halfway (a
    full disk, Ctrl-C, SIGKILL) left a folder that the next command, or an upload, would take for a finished one.
    Where `target` is a link, the folder it points at is built and the link stays. With `what` (the Hub folder),
    a write the file system refuses is said in one line naming it."""
    whole = target.expanduser().resolve()
    check_writable(whole.parent, flag, shown=target)  # where it is built: an empty folder there is not enough
    building = whole.with_name(f".{whole.name}.partial-{_writer()}")
    _remove_left_by_killed(whole.with_name(f".{whole.name}.partial-"))
    made = make_folder(building, flag, shown=target)
    try:
        write(building)
        readable_by_others(building)
    except BaseException as error:
        shutil.rmtree(building, ignore_errors=True)
        remove_empty(made)
        if what and isinstance(error, OSError):
            fix = "free some space or choose another" if error.errno in FULL_DISK else "choose another"
            raise UsageError(f"cannot write the {what} {target} ({error.strerror or error}): {fix} {flag}.") from None
        raise
    if whole.is_dir() and any(whole.iterdir()):
        shutil.rmtree(whole)
    os.replace(building, whole)  # onto an empty folder too: rename(2) replaces one


def write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """Write a file whole or not at all: `write` fills a hidden file beside it, which is then renamed over it (a
    run killed while writing a record must leave the previous one, not half of the new one)."""
    temporary = path.with_name(f".{path.name}.writing")
    write(temporary)
    os.replace(temporary, path)


def write_folder_whole(folder: Path, write: Callable[[Path], object]) -> None:
    """Write a folder of a cache shared by runs whole or not at all: `write` fills a hidden folder of this process's
    own beside it, which is then renamed into place. Where another process placed the folder first, its copy (of
    the same content: a cache's names are digests) stays and this one goes."""
    scratch = folder.with_name(f".{folder.name}-{_writer()}")
    _remove_left_by_killed(folder.with_name(f".{folder.name}-"))
    try:
        write(scratch)
        os.replace(scratch, folder)  # refused onto a folder another process placed meanwhile: that one stays
    except BaseException as error:
        shutil.rmtree(scratch, ignore_errors=True)
        if not (isinstance(error, OSError) and folder.is_dir()):
            raise


def readable_by_others(folder: Path) -> None:
    """Give the weights files in `folder` the mode the umask gives every other file written there. safetensors 0.8
    writes its files through a temporary file of mode 0600 whatever the umask (safetensors#782), so a model saved by
    one user did not load for another: on a shared machine, in a container image built as root, behind a web
    server."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*.safetensors"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def _writer() -> str:
    """Who writes a scratch folder, as its name ends: this machine and process. A cache or an output folder can be
    on a file system that several machines share (a cluster's home), where another machine's process id says
    nothing here."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _remove_left_by_killed(prefix: Path) -> None:
    """Remove the scratch folders named `prefix` + `_writer()` of this machine's processes that no longer run: a
    process killed while writing cannot clean up, and they stayed for good, the size of what was written each
    time."""
    for left in prefix.parent.glob(glob.escape(prefix.name) + "*"):
        host, _, pid = left.name[len(prefix.name):].rpartition("-")
        if host == socket.gethostname() and not _is_running(pid):
            shutil.rmtree(left, ignore_errors=True)


def _is_running(pid: str) -> bool:
    """Whether a process of this id runs on this machine (a name that is no id: say yes, and leave its folder)."""
    if not pid.isdigit():
        return True
    if int(pid) == os.getpid():
        return False  # this process's own, from a build that failed or an earlier process of the same id
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: set it straight back
    os.umask(mask)
    return mask
