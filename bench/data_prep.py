"""Data preparation as a corpus grows: seconds to the first step and peak memory at 10 MB, 100 MB and 1 GB of
text, for both families, read whole (Arrow) or streamed, a second run on the same data, and one evaluation.

The text is generated (words drawn from the benchmark corpus's vocabulary, in paragraphs, by a seeded generator),
so every size is distinct text with no exact duplicates; it is written to a scratch folder, never committed.
Each run is `train.py --max-steps 1` in its own process: its preparation (reading, tokenizer, tokenizing, from
`training_summary.json`), the seconds from its start to its first step (the evaluation's seconds taken out), and the
peak memory of its process tree (`measured`).

    python bench/data_prep.py                              # 10 and 100 MB, both families, whole and streamed
    python bench/data_prep.py --sizes 1000 --families transformer --modes streamed
"""

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"



def _tree(pid: int) -> list[int]:
    """`pid` and every process below it (datasets' tokenizing workers, accelerate's processes)."""
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return []
    return [pid, *(p for child in children for p in _tree(int(child)))]


def _proportional_memory(pid: int) -> tuple[int, int]:
    """(all, anonymous) of a process's proportional set size, in kB: a page shared by n processes counts 1/n in
    each, so a forked worker's inherited pages are not counted twice, as summed resident sizes would."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:  # "Pss:  1234 kB" lines, after a header line naming the address range
                name, value, *_ = line.split() + ["", ""]
                if value.isdigit():
                    fields[name] = int(value)
    except OSError:  # the process ended between listing and reading
        return 0, 0
    return fields.get("Pss:", 0), fields.get("Pss_Anon:", 0)


def measured(command: list[str]) -> tuple[int, float, float, float, str]:
    """Run `command`; its exit code, wall seconds, and the peak memory of its process tree (MB, proportional set
    size summed over the tree, sampled every 0.2 s: all of it, and the anonymous part, without the pages of
    memory-mapped Arrow files, which the kernel can drop and read again), and its stderr's tail."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        peak, peak_anonymous = 0, 0
        while process.poll() is None:
            sizes = [_proportional_memory(pid) for pid in _tree(process.pid)]
            peak = max(peak, sum(size for size, _ in sizes))
            peak_anonymous = max(peak_anonymous, sum(anonymous for _, anonymous in sizes))
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        errors.seek(0)
        tail = errors.read()[-3000:].decode(errors="replace")
    return process.returncode, seconds, peak / 1024, peak_anonymous / 1024, tail


def write_text(path: Path, megabytes: int) -> Path:
    """`megabytes` MB of paragraphs of words from the benchmark corpus's vocabulary, seeded by the size."""
    words = sorted(set(re.findall(r"[A-Za-z']+", TEXT.read_text())))
    rng = random.Random(megabytes)
    target = megabytes * 1_000_000
    with open(path, "w") as handle:
        written = 0
        while written < target:
            lines = [" ".join(rng.choices(words, k=rng.randrange(8, 16))).capitalize() + "."
                     for _ in range(rng.randrange(2, 8))]
            paragraph = "\n".join(lines) + "\n\n"
            handle.write(paragraph)
            written += len(paragraph)
    return path


def run(data: Path, out: Path, family: str, streamed: bool) -> dict:
    command = [sys.executable, str(REPO_ROOT / "train.py"), f"--data={data}", f"--output-dir={out}",
               f"--model-type={family}", "--max-steps=1", "--samples=0", "--batch-size=8", "--block-size=128",
               *(["--streaming"] if streamed else [])]
    code, seconds, peak, peak_anonymous, errors = measured(command)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{errors}")
    summary = json.loads((out / "training_summary.json").read_text())
    evaluations = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    eval_seconds = sum(r.get("eval_seconds", 0) for r in evaluations)
    return {"seconds_to_first_step": seconds - eval_seconds, "peak_mb": peak, "peak_anonymous_mb": peak_anonymous,
            "preparation": sum(summary["preparation_seconds"].values()), "eval_seconds": eval_seconds,
            "stages": summary["preparation_seconds"], "validation_scored": summary["data"].get("validation_scored")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100], help="megabytes of text")
    parser.add_argument("--families", nargs="+", default=["transformer", "lstm"])
    parser.add_argument("--modes", nargs="+", default=["whole", "streamed"], choices=["whole", "streamed"])
    parser.add_argument("--scratch", type=Path, help="where the text and runs go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        scratch = Path(scratch)
        print("| text | family | read | preparation: s | first step after: s | peak MB | of it anonymous | second "
              "run's preparation: s | of the first's | one evaluation: s | scored |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for size in args.sizes:
            started = time.perf_counter()
            data = write_text(scratch / f"text-{size}mb.txt", size)
            print(f"<!-- {size} MB written in {time.perf_counter() - started:.0f} s -->", flush=True)
            for family in args.families:
                for mode in args.modes:
                    streamed = mode == "streamed"
                    first = run(data, scratch / f"{family}-{size}-{mode}-1", family, streamed)
                    second = run(data, scratch / f"{family}-{size}-{mode}-2", family, streamed)
                    ratio = second["preparation"] / first["preparation"]
                    print(f"| {size} MB | {family} | {mode} | {first['preparation']:.1f} | "
                          f"{first['seconds_to_first_step']:.0f} | {first['peak_mb']:,.0f} | "
                          f"{first['peak_anonymous_mb']:,.0f} | "
                          f"{second['preparation']:.1f} | {ratio:.0%} | {first['eval_seconds']:.1f} | "
                          f"{first['validation_scored']} |", flush=True)
                    print(f"<!-- stages, first run: {first['stages']}; second: {second['stages']} -->", flush=True)


if __name__ == "__main__":
    main()
