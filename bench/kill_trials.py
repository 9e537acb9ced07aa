"""SIGKILL a training run at random moments, saves included, and check what a user relies on afterwards.

A tiny Transformer trains with a checkpoint and an evaluation (which may write the best model) at every step, so a
good share of the run is spent saving. Each trial starts the run in a fresh folder, kills it with SIGKILL at a
random moment of the reference run's training (timed from its first checkpoint folder, so that no kill
is spent on Python's start-up; every other trial then waits for the next save to be under way), and then checks:

- the folder holds a loadable best model whenever it holds weights at all (`pocketlm.loading.load_pretrained`);
- `--resume` continues (from the newest checkpoint, or the one before when the newest is damaged), or a fresh
  start works when the kill came before the first checkpoint;
- the finished run's model and last checkpoint are bitwise identical to an uninterrupted run's; where they are not,
  whether the killed run had already gone its own way before the kill (an evaluation in its metrics, or a whole
  checkpoint it wrote, unlike the uninterrupted run's), which clears the kill and the resume.

With `--controls N`, N more uninterrupted runs are compared with the first in the same way: a difference after a
kill means something only if uninterrupted runs do not differ among themselves.

Runs share pocketlm's home and datasets' cache, as a user's runs do, so the tokenizer is trained and the data
prepared once. With `--fresh-caches` every run (the reference, each control, each trial with its resume) gets
its own, so each trains its tokenizer and prepares its data from nothing: a run that reproduces itself only from
a warm cache shows there.

It counts the kills that landed while a checkpoint (`checkpoints/.tmp-step-N/`) or the model (`.saving/`) was
being written.

    python bench/kill_trials.py                 # 24 trials
    python bench/kill_trials.py --trials 5 --steps 20
    python bench/kill_trials.py --trials 300 --jobs 2 --keep-different /tmp/kept   # two trials at a time
    python bench/kill_trials.py --trials 0 --controls 100 --jobs 2                  # is a run reproducible at all?
    python bench/kill_trials.py --trials 0 --controls 40 --fresh-caches             # ... from empty caches too?
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pocketlm.checkpoints import TEMPORARY_PREFIX  # noqa: E402  (after the path is set)
from pocketlm.run_folder import CHECKPOINTS_DIR, MODEL_FILE, SAVING_DIR  # noqa: E402
from pocketlm.signing import MANIFEST_FILE  # noqa: E402

WORDS = "the a king queen speaks softly to of my lord lady sword crown night day fair foul".split()


def corpus(path: Path) -> Path:
    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randrange(20, 60))).capitalize() + ".\n"
                              for _ in range(80)))
    return path


def command(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), f"--data={data}", f"--output-dir={out}", "--block-size=32",
            "--batch-size=4", f"--max-steps={steps}", "--save-every=1", "--eval-every=1", "--samples=0",
            "--model-config=n_layer=2", "--model-config=n_embd=32", "--model-config=n_head=2", "--seed=3", *extra]


def caches(out: Path, fresh: bool) -> dict | None:
    """The environment of the runs in `out`: their own pocketlm home and datasets cache beside it when `fresh`."""
    if not fresh:
        return None
    return {**os.environ, "POCKETLM_HOME": f"{out}.home", "HF_DATASETS_CACHE": f"{out}.datasets"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_loading = threading.Lock()  # transformers' loading is not thread-safe: two at once can miss the tied head


def loadable(folder: Path) -> bool:
    from pocketlm.errors import UsageError
    from pocketlm.loading import load_pretrained

    with _loading:
        try:
            model, tokenizer = load_pretrained(str(folder))
            model.generate(**tokenizer("the king", return_tensors="pt"), max_new_tokens=2, do_sample=False)
            return True
        except UsageError as error:
            print(f"    not loadable: {error}")
            return False


def wait_for_training(process: subprocess.Popen, out: Path) -> float:
    """Seconds until the run has written its first checkpoint folder (the loop is running), or until it ended.

    Kill times are drawn from the training that follows: drawn over the whole run, most would land while Python
    imports torch, which tests nothing a user relies on.
    """
    started = time.perf_counter()
    while process.poll() is None and not (out / CHECKPOINTS_DIR).exists():
        time.sleep(0.01)
    return time.perf_counter() - started


def writing_checkpoint(out: Path) -> bool:
    return any((out / CHECKPOINTS_DIR).glob(f"{TEMPORARY_PREFIX}*"))


def writing_model(out: Path) -> bool:
    return (out / SAVING_DIR).exists()


def trial(data: Path, out: Path, steps: int, duration: float, reference: Path, rng: random.Random,
          in_a_save: bool, env: dict | None = None) -> dict:
    process = subprocess.Popen(command(data, out, steps), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for_training(process, out)
    delay = rng.uniform(0.0, duration)
    time.sleep(delay)
    # Half the trials then wait for the next save to be under way, so that kills in the middle of writing a
    # checkpoint or the model are not left to chance (a tiny model writes each in a few milliseconds).
    deadline = time.perf_counter() + 2.0
    while (in_a_save and process.poll() is None and not (writing_checkpoint(out) or writing_model(out))
           and time.perf_counter() < deadline):
        time.sleep(0.0005)
    finished_first = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    record = {
        "delay": delay, "finished_first": finished_first,
        # A save's temporary folder, left behind by the kill.
        "during_checkpoint": writing_checkpoint(out), "during_model_save": writing_model(out),
        "had_weights": (out / MODEL_FILE).exists(),
        # What the killed run had computed itself, before any resume: where a finished run differs, this tells a
        # run that had already gone its own way from one the kill or the resume sent there.
        "before_the_kill": first_divergence(out, reference),
    }
    record["loadable"] = loadable(out) if record["had_weights"] else None
    resumed = resume_or_restart(data, out, steps, env)
    record["resumed"] = resumed.returncode == 0
    record["resume_said"] = resume_said(resumed)
    if not record["resumed"]:
        print("    resume failed:", resumed.stderr.strip().splitlines()[-1:] or resumed.returncode)
    record["different"] = differences(out, reference, steps)
    record["identical"] = record["resumed"] and not record["different"]
    return record


def evaluations(folder: Path) -> dict[int, float]:
    """The validation loss of each step in `folder`'s metrics log (a line the kill cut short left out)."""
    metrics = folder / "metrics.jsonl"
    losses = {}
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "val_loss" in entry:
            losses[entry["step"]] = entry["val_loss"]
    return losses


def first_divergence(out: Path, reference: Path) -> str | None:
    """Where the run in `out`, as it stands, already differs from `reference`: its first evaluation whose loss is not
    the reference's, and its first whole checkpoint whose weights are not; None where all agree."""
    said = []
    ours, theirs = evaluations(out), evaluations(reference)
    steps = sorted(step for step in ours if ours[step] != theirs.get(step))
    if steps:
        said.append(f"its own evaluation of step {steps[0]} ({ours[steps[0]]!r} against the uninterrupted run's "
                    f"{theirs.get(steps[0])!r})")
    for folder in sorted((out / CHECKPOINTS_DIR).glob("step-*"), key=lambda path: int(path.name.split("-")[1])):
        weights, reference_weights = folder / MODEL_FILE, reference / CHECKPOINTS_DIR / folder.name / MODEL_FILE
        if (folder / MANIFEST_FILE).exists() and reference_weights.exists() and \
                digest(weights) != digest(reference_weights):
            said.append(f"the weights of its checkpoint {folder.name}")
            break
    return " and ".join(said) or None


def resume_or_restart(data: Path, out: Path, steps: int, env: dict | None = None) -> subprocess.CompletedProcess:
    """What a user does after a kill: `--resume` from the newest checkpoint, or start afresh when none was written."""
    has_checkpoint = any((out / CHECKPOINTS_DIR).glob("step-*"))
    again = command(data, out, steps, "--resume" if has_checkpoint else "--overwrite")
    return subprocess.run(again, env=env, capture_output=True, text=True)


def resume_said(resumed: subprocess.CompletedProcess) -> list[str]:
    """Where a resume started, and its notes, which name what it computes differently from the run it continues
    (threads, say), if anything."""
    return [line for line in resumed.stdout.splitlines() if "resumed from" in line or line.startswith("note:")]


def differences(out: Path, reference: Path, steps: int) -> list[str]:
    """The files of a finished run's model and last checkpoint that are not bitwise those of `reference`."""
    compared = (MODEL_FILE, f"{CHECKPOINTS_DIR}/step-{steps}/{MODEL_FILE}",
                f"{CHECKPOINTS_DIR}/step-{steps}/optimizer.bin")
    return [name for name in compared if not (out / name).exists() or digest(out / name) != digest(reference / name)]


def control(data: Path, out: Path, steps: int, reference: Path, env: dict | None = None) -> bool:
    """An uninterrupted run like the reference: True when it ends bitwise identical to it."""
    done = subprocess.run(command(data, out, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode == 0 and not differences(out, reference, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--jobs", type=int, default=1, help="trials run at the same time (each is two processes "
                        "one after the other)")
    parser.add_argument("--keep-different", type=Path, metavar="DIR",
                        help="copy the folder of every trial (and control) that ends different from the "
                        "uninterrupted run here")
    parser.add_argument("--controls", type=int, default=0, metavar="N",
                        help="also run N more uninterrupted runs and compare them with the first")
    parser.add_argument("--fresh-caches", action="store_true",
                        help="give every run its own empty pocketlm home and datasets cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = corpus(scratch / "corpus.txt")
        reference = scratch / "reference"
        process = subprocess.Popen(command(data, reference, args.steps), env=caches(reference, args.fresh_caches),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        startup = wait_for_training(process, reference)
        started = time.perf_counter()
        if process.wait() != 0:
            sys.exit("the reference run failed")
        duration = time.perf_counter() - started
        print(f"reference run: {args.steps} steps, a checkpoint and an evaluation every step; {startup:.1f} s to "
              f"the first checkpoint, then {duration:.1f} s over which the kills are spread")
        records = []

        def one(number: int) -> dict:
            # Each trial draws from its own seeded generator: the same kills whatever order the jobs finish in.
            out = scratch / f"trial-{number}"
            return trial(data, out, args.steps, duration, reference, random.Random(f"{args.seed}-{number}"),
                         in_a_save=number % 2 == 1, env=caches(out, args.fresh_caches))

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for number, record in enumerate(pool.map(one, range(args.trials))):
                records.append(record)
                print(f"trial {number + 1:>2}: killed {record['delay']:5.2f} s into training"
                      f"{' (after it had finished)' if record['finished_first'] else ''}"
                      f"{', writing a checkpoint' if record['during_checkpoint'] else ''}"
                      f"{', writing the model' if record['during_model_save'] else ''}; weights "
                      f"{'loadable' if record['loadable'] else 'absent' if record['loadable'] is None else 'BROKEN'}, "
                      f"{'resumed' if record['resumed'] else 'RESUME FAILED'}, "
                      f"{'identical to the uninterrupted run' if record['identical'] else 'DIFFERENT'}", flush=True)
                if record["different"]:
                    print(f"    differs from the uninterrupted run: {', '.join(record['different'])}; "
                          f"{' '.join(record['resume_said']) or 'started afresh'}", flush=True)
                    print("    " + (f"before the kill, the run itself already differed: {record['before_the_kill']}"
                                    " (neither the kill nor the resume made the difference)" if record["before_the_kill"]
                                    else "before the kill, what the run had written was the uninterrupted run's"),
                          flush=True)
                    if args.keep_different:  # the folder, and the run it differs from, to find out why
                        shutil.copytree(scratch / f"trial-{number}", args.keep_different / f"trial-{number}")
                        if not (args.keep_different / "reference").exists():
                            shutil.copytree(reference, args.keep_different / "reference")

        def uninterrupted(number: int) -> bool:
            out = scratch / f"control-{number}"
            same = control(data, out, args.steps, reference, caches(out, args.fresh_caches))
            if not same:
                print(f"control {number + 1}: DIFFERENT from the first uninterrupted run: "
                      f"{first_divergence(out, reference) or 'its evaluations and checkpoints agree'}",
                      flush=True)
                if args.keep_different:
                    shutil.copytree(out, args.keep_different / f"control-{number}")
                    if not (args.keep_different / "reference").exists():
                        shutil.copytree(reference, args.keep_different / "reference")
            for folder in (out, Path(f"{out}.home"), Path(f"{out}.datasets")):
                shutil.rmtree(folder, ignore_errors=True)
            return same

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            controls = list(pool.map(uninterrupted, range(args.controls)))
    count = len(records)
    summary = {
        "trials": count,
        "killed while writing a checkpoint": sum(r["during_checkpoint"] for r in records),
        "killed while writing the model": sum(r["during_model_save"] for r in records),
        "with weights after the kill": sum(r["had_weights"] for r in records),
        "of those, loadable": sum(bool(r["loadable"]) for r in records),
        "resumed or restarted to the end": sum(r["resumed"] for r in records),
        "bitwise identical to the uninterrupted run": sum(r["identical"] for r in records),
        "of the others, already different before the kill": sum(bool(r["before_the_kill"]) for r in records
                                                                 if not r["identical"]),
        "more uninterrupted runs": len(controls),
        "of those, bitwise identical to the first": sum(controls),
    }
    print(json.dumps(summary, indent=1))
    failed = summary["of those, loadable"] < summary["with weights after the kill"] or \
        summary["bitwise identical to the uninterrupted run"] < count or not all(controls)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
