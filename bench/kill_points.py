"""SIGKILL a training run just before each change it makes to the disk, one trial per change, and check each resumes.

What a killed run leaves behind is decided by which of its changes to the disk had been made, nothing else: a kill
in the middle of a step's arithmetic leaves the same files as one just before the step's next write. Random kills
(`kill_trials.py`) land where the time goes, in the arithmetic, and reach a given gap between two writes by chance;
this bench visits every gap. A counting run lists every change a short run makes, in order, to its output folder
and to the caches it shares with later runs (pocketlm's home: the checkpoint-signing key and the tokenizers;
datasets' cache: the corpus, tokens and blocks): each file opened for writing, rename, removal and folder made or
removed, as Python's audit hooks report them (`sys.addaudithook`; bytes that native code writes into a file it
opened itself, such as safetensors' weights, are published by the rename that follows them, which is listed).
Then trial N runs the same command in a fresh folder with fresh caches, kills it with SIGKILL just before change
N (checking that the N changes it made are as many as the counting run's and its last is the same one: `--list`
also compares a second whole run), and checks what `kill_trials.py` checks: the folder holds a loadable best
model whenever it holds weights;
`--resume` (or a fresh start when no checkpoint was written) ends without error; the model and the last checkpoint
are bitwise identical to the uninterrupted run's.

Native code (safetensors, torch.save, tokenizers, Arrow) writes without passing the audit hooks, and a SIGKILL can
stop a write halfway. `--writes` runs the uninterrupted run under strace and lists every file any system call
writes in those places and how: aside (at a name that it, or a folder above it, is later renamed from) or in place.
Only the lock and the metrics log may be written in place (a resume skips a torn last line). With `--tear`, each
trial then cuts every file the kill left at an aside name to half its size, which is what a kill in the middle of
that file's writing leaves, before it checks and resumes.

    python bench/kill_points.py                       # every change of a 4-step run
    python bench/kill_points.py --writes              # how each file is written, system calls included
    python bench/kill_points.py --tear --jobs 2       # every change, with what was being written left torn
    python bench/kill_points.py --steps 3 --jobs 2 --keep-different /tmp/kept
    python bench/kill_points.py --matching "rename .*step-"      # only before each checkpoint is renamed
    python bench/kill_points.py --steps 30 --first 980           # the end of a 30-step run
"""

import argparse
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# the random trials' run and checks
from kill_trials import command, corpus, differences, loadable, resume_or_restart, resume_said

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pocketlm.run_folder import CHECKPOINTS_DIR, LOCK_FILE, METRICS_FILE, MODEL_FILE, SAVING_DIR  # noqa: E402

# What the run writes to, each under a name that is the same in every trial (the changes are compared by it).
PLACES = {"run": "", "home": "POCKETLM_HOME", "datasets": "HF_DATASETS_CACHE"}
WRITING = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
SCRATCH_NAMES = r"reference|again|trial-\d+"  # the folders of the runs, each with its own caches
CHANGES = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.link", "os.symlink")
# What strace records of a run: the calls that write into a file, and those that name a file or move it.
WRITE_CALLS = ("write", "pwrite64", "writev", "pwritev", "pwritev2", "ftruncate", "fallocate")
TRACED_CALLS = ("openat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "mkdir", "mkdirat", "rmdir",
                *WRITE_CALLS)
# The files a run may write in place: the lock (its text only says who holds it) and the append-only metrics log,
# whose torn last line a resume skips.
IN_PLACE = {f"run:{LOCK_FILE}", f"run:{METRICS_FILE}"}


# ------------------------------------------------------------------------------------- inside the killed run


def run_and_kill(listing: Path, kill_before: int, roots: dict[str, str], train_args: list[str]) -> None:
    """Run train.py in this process, writing each change to the disk under `roots` to `listing` as it comes; with
    `kill_before` >= 0, SIGKILL this process just before that change (numbered from 0) is made."""
    log = os.open(listing, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # opened before the hook: not a change
    count, busy = 0, False

    def place(path, dir_fd: int = -1) -> str | None:
        if isinstance(path, int):
            return None
        # shutil.rmtree removes relative to a folder
        folder = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd not in (-1, None) else None
        return named(os.fsdecode(path), roots, folder)

    def hook(event: str, args: tuple) -> None:
        nonlocal count, busy
        if busy or (event != "open" and event not in CHANGES):
            return
        busy = True  # the hook's own calls raise audit events too
        try:
            if event == "open":
                path, mode, flags = args
                writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITING)
                where = [place(path)] if writes else []
            elif event == "os.rename":
                where = [place(args[0], args[2]), place(args[1], args[3])]
            else:
                where = [place(args[0], args[-1] if event in ("os.remove", "os.rmdir", "os.mkdir") else -1)]
            where = [w for w in where if w]
            if where:
                os.write(log, f"{event} {' -> '.join(where)}\n".encode())  # the last line: the change not made
                if count == kill_before:
                    os.kill(os.getpid(), signal.SIGKILL)
                count += 1
        finally:
            busy = False

    sys.argv = [str(REPO_ROOT / "train.py"), *train_args]
    sys.path[0] = str(REPO_ROOT)  # as when train.py is run as a script
    sys.addaudithook(hook)
    runpy.run_path(str(REPO_ROOT / "train.py"), run_name="__main__")


def named(path: str, roots: dict[str, str], folder: str | None = None) -> str | None:
    """`path` as "place:relative/path" when it lies under one of `roots`, else None; a relative path is taken from
    `folder` (or the current folder)."""
    path = os.path.abspath(os.path.join(folder, path) if folder and not os.path.isabs(path) else path)
    for name, root in roots.items():
        if path == root or path.startswith(root + os.sep):
            return f"{name}:{os.path.relpath(path, root)}"
    return None


# ----------------------------------------------------------------------------------------- the system calls


def how_written(trace: Path, roots: dict[str, str]) -> dict[str, tuple[int, str]]:
    """From strace's record of a run: each file under `roots` that a system call wrote into (by its general name),
    with the number of such calls and "aside" when it, or a folder above it, is later renamed into place, else
    "in place". A rename that only retires a name (the very next rename or removal removes something inside its
    destination, as a run's tokenizer is moved aside to be removed) publishes nothing."""
    events = []  # ("write", name) / ("rename", source, destination) / ("remove", name), in order
    for line in trace.read_text(errors="replace").splitlines():
        found = re.match(r"\d+\s+(\w+)\((.*)", line)
        if not found:
            continue
        call, arguments = found.groups()
        # a path argument: "path", or folder<path>, "relative" as the *at calls give it
        paths = [named(path, roots, folder or None)
                 for folder, path in re.findall(r'(?:[\w-]+<([^>]*)>, )?"([^"]*)"', arguments)]
        if call in WRITE_CALLS:
            target = re.match(r"\d+<([^>]*)>", arguments)
            name = target and named(target.group(1), roots)
            if name:
                events.append(("write", name))
        elif call.startswith("rename") and len(paths) >= 2 and paths[0]:
            events.append(("rename", paths[0], paths[1]))
        elif call in ("unlink", "unlinkat", "rmdir") and paths and paths[0]:
            events.append(("remove", paths[0]))
    published = set()
    for number, event in enumerate(events):
        if event[0] != "rename":
            continue
        _, source, destination = event
        # (a checkpoint removed steps later, when it is the oldest of those kept, was published all the same)
        kind, name = next((later[:2] for later in events[number + 1:] if later[0] != "write"), ("", ""))
        if not (kind == "remove" and destination in and_above(name)):
            published.add((number, source))
    calls = Counter(event[1] for event in events if event[0] == "write")
    aside = {event[1] for number, event in enumerate(events) if event[0] == "write" and any(
        after > number and source in and_above(event[1]) for after, source in published)}
    found = {}  # by general name: in place when any one of its files was
    for name, count in calls.items():
        total, how = found.get(general(name), (0, "aside"))
        found[general(name)] = (total + count, how if name in aside else "in place")
    return found


def and_above(name: str) -> list[str]:
    """"run:a/b/c" -> ["run:a/b/c", "run:a/b", "run:a"]."""
    parts = name.split("/")
    return ["/".join(parts[:end]) for end in range(len(parts), 0, -1)]


def tear(roots: dict[str, str], aside: set[str]) -> list[str]:
    """Cut to half its size every file under `roots` whose general name is one written aside: what a kill in the
    middle of writing it leaves (the kernel stops a killed write at a page). Returns their names."""
    torn = []
    for name, root in roots.items():
        for path in sorted(Path(root).rglob("*")):
            where = f"{name}:{path.relative_to(root)}"
            if path.is_file() and not path.is_symlink() and general(where) in aside and path.stat().st_size:
                os.truncate(path, path.stat().st_size // 2)
                torn.append(where)
    return torn


# ---------------------------------------------------------------------------------------------- the trials


def places(folder: Path) -> dict[str, str]:
    """A run folder and its own caches, all under `folder`."""
    return {name: os.path.realpath(folder / name) for name in PLACES}


def environment(roots: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **{variable: roots[name] for name, variable in PLACES.items() if variable},
            "HF_HUB_OFFLINE": "1"}


def killed_run(data: Path, folder: Path, steps: int, kill_before: int,
               trace: Path | None = None) -> tuple[subprocess.CompletedProcess, list]:
    """The run of `kill_trials.command` in `folder`, killed just before change `kill_before` (-1: never), with its
    system calls recorded in `trace` when given; returns the process and the changes it made, in order."""
    roots = places(folder)
    listing = folder / "changes.txt"
    folder.mkdir(parents=True, exist_ok=True)
    train_args = command(data, Path(roots["run"]), steps)[2:]
    strace = ["strace", "-f", "-qq", "-y", "-s", "0", "-e", "signal=none", "-e", f"trace={','.join(TRACED_CALLS)}",
              "-o", str(trace)] if trace else []
    done = subprocess.run([*strace, sys.executable, __file__, "--child", str(listing), str(kill_before),
                           json.dumps(roots), "--", *train_args], env=environment(roots), capture_output=True,
                          text=True)
    return done, listing.read_text().splitlines()


def trial(data: Path, folder: Path, steps: int, kill_before: int, expected: str, reference: Path,
          aside: set[str] | None = None) -> dict:
    """Kill before change `kill_before`, cut what was being written aside when `aside` names it, check, resume."""
    done, made = killed_run(data, folder, steps, kill_before)
    out = Path(places(folder)["run"])
    record = {"had_weights": (out / MODEL_FILE).exists(), "resumed": False, "different": [], "identical": False,
              "loadable": None, "torn": []}
    if done.returncode != -signal.SIGKILL or len(made) != kill_before + 1 or not same_change(made[-1], expected):
        record["said"] = (f"the run was not killed before that change (exit {done.returncode}, "
                          f"{len(made)} changes, the last {made[-1:]}): {done.stderr.strip()[-300:]}")
        return record
    if aside:
        record["torn"] = tear(places(folder), aside)
    record["loadable"] = loadable(out) if record["had_weights"] else None
    resumed = resume_or_restart(data, out, steps, environment(places(folder)))
    record["resumed"] = resumed.returncode == 0
    record["said"] = "; ".join(resume_said(resumed)) or "started afresh"
    if not record["resumed"]:
        record["said"] = f"resume failed: {(resumed.stderr.strip().splitlines() or ['?'])[-1]}"
    record["different"] = differences(out, reference, steps)
    record["identical"] = record["resumed"] and not record["different"]
    return record


def verdict(record: dict) -> str:
    if record["identical"]:
        return "identical"
    return f"DIFFERENT: {', '.join(record['different'])}" if record["resumed"] else "NOT RESUMED"


def phase(change: str) -> str:
    """What a change belongs to, for the summary."""
    if f"{CHECKPOINTS_DIR}/" in change:
        return "a checkpoint"
    if SAVING_DIR in change:
        return "the model"
    if "home:" in change or "datasets:" in change:
        return "the caches"
    return "the run's other files"


def general(change: str) -> str:
    """A change or a file's name with what differs from run to run replaced by "#": process ids, the random names
    of temporary files, cache keys and the run's own folder (datasets names a lock file after the cache's path)."""
    return re.sub(r"tmp\w+|[0-9a-f]{8,}|\d+", "#", re.sub(SCRATCH_NAMES, "run", change))


def same_change(a: str, b: str) -> bool:
    return general(a) == general(b)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        listing, kill_before, roots, _, *train_args = sys.argv[2:]
        return run_and_kill(Path(listing), int(kill_before), json.loads(roots), train_args)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="steps of the run (a checkpoint and an evaluation at "
                        "each; from step 4 the oldest of three checkpoints is removed)")
    parser.add_argument("--jobs", type=int, default=1, help="trials run at the same time")
    parser.add_argument("--matching", metavar="REGEX", help="kill only before the changes whose line (as the "
                        "counting run prints them) matches REGEX")
    parser.add_argument("--first", type=int, default=0, metavar="N",
                        help="kill only before change N and the later ones (the end of a longer run, say)")
    parser.add_argument("--keep-different", type=Path, metavar="DIR",
                        help="copy the folders of every trial that ends different from the uninterrupted run here")
    parser.add_argument("--list", action="store_true", help="print the changes of the uninterrupted run and stop")
    parser.add_argument("--writes", action="store_true", help="print how the run writes each file, system calls "
                        "included (strace), and stop: exit 1 when one besides the lock and the log is written in place")
    parser.add_argument("--tear", action="store_true", help="after each kill, cut every file left at a name the run "
                        "writes aside to half its size, as a kill in the middle of its writing would (needs strace)")
    args = parser.parse_args()
    traced = args.writes or args.tear
    if traced and not shutil.which("strace"):
        sys.exit("--writes and --tear record the run's system calls with strace: apt-get install strace")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = corpus(scratch / "corpus.txt")
        trace = scratch / "reference.strace" if traced else None
        done, changes = killed_run(data, scratch / "reference", args.steps, -1, trace)
        if done.returncode != 0:
            sys.exit(f"the uninterrupted run failed: {done.stderr[-2000:]}")
        print(f"the uninterrupted run makes {len(changes)} changes to the disk")
        if args.list:
            # A kill point means the same change in every trial only if every run makes the same changes in order
            # (each trial also checks that its kill came just before the change it was meant for).
            done, again = killed_run(data, scratch / "again", args.steps, -1)
            if done.returncode != 0:
                sys.exit(f"the second uninterrupted run failed: {done.stderr[-2000:]}")
            differing = [(a, b) for a, b in zip(changes, again) if not same_change(a, b)]
            same = len(again) == len(changes) and not differing
            print(f"a second run makes {'the same ones in the same order' if same else 'OTHERS'}")
            print("\n".join(f"    {a}  /  {b}" for a, b in differing[:5]))
            print("\n".join(f"{number:>4} {change}" for number, change in enumerate(changes)))
            return
        written = how_written(trace, places(scratch / "reference")) if traced else {}
        misplaced = sorted(name for name, (_, how) in written.items() if how == "in place" and name not in IN_PLACE)
        if args.writes:
            print("the files the run writes with system calls (calls, how; # stands for what differs per run):")
            print("\n".join(f"{calls:>6}  {how:<8}  {name}" for name, (calls, how) in sorted(written.items())))
            print(json.dumps({"files": len(written), "written in place": sorted(
                name for name, (_, how) in written.items() if how == "in place"), "in place and should not be":
                misplaced}, indent=1))
            sys.exit(1 if misplaced else 0)
        aside = {name for name, (_, how) in written.items() if how == "aside"}
        reference = Path(places(scratch / "reference")["run"])
        chosen = [n for n, change in enumerate(changes)
                  if n >= args.first and (not args.matching or re.search(args.matching, change))]

        def one(number: int) -> dict:
            return trial(data, scratch / f"trial-{number}", args.steps, number, changes[number], reference, aside)

        records = {}
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for number, record in zip(chosen, pool.map(one, chosen)):
                records[number] = record
                weights = ("absent" if record["loadable"] is None else "loadable" if record["loadable"] else "BROKEN")
                torn = f"{len(record['torn'])} torn, " if record["torn"] else ""
                print(f"before change {number:>3} ({changes[number]}): {torn}weights {weights}, {record['said']}, "
                      f"{verdict(record)}", flush=True)
                if not record["identical"] and args.keep_different:
                    shutil.copytree(scratch / f"trial-{number}", args.keep_different / f"trial-{number}")
                    shutil.copytree(reference, args.keep_different / "reference", dirs_exist_ok=True)
                shutil.rmtree(scratch / f"trial-{number}", ignore_errors=True)
    by_phase = Counter(phase(changes[n]) for n in records)
    summary = {
        "changes": len(changes), "trials": len(records),
        "trials by what was being written": dict(by_phase),
        "trials with files torn before the resume": sum(bool(r["torn"]) for r in records.values()),
        "with weights after the kill": sum(r["had_weights"] for r in records.values()),
        "of those, loadable": sum(bool(r["loadable"]) for r in records.values()),
        "resumed or restarted to the end": sum(r["resumed"] for r in records.values()),
        "bitwise identical to the uninterrupted run": sum(r["identical"] for r in records.values()),
    }
    if traced:  # a file written in place would be left torn where a resume reads it
        summary["written in place and should not be"] = misplaced
    print(json.dumps(summary, indent=1))
    sys.exit(0 if summary["bitwise identical to the uninterrupted run"] == len(records) and not misplaced
             and summary["of those, loadable"] == summary["with weights after the kill"] else 1)


if __name__ == "__main__":
    main()
