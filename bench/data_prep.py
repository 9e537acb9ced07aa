"""Data preparation as a corpus grows: seconds to the first step and peak memory at 10 MB, 100 MB and 1 GB of
text, for both families, read whole (Arrow) or streamed, a second run on the same data, and one evaluation.

The text is generated (words drawn from the benchmark corpus's vocabulary, in paragraphs, by a seeded generator),
so every size is distinct text with no exact duplicates; it is written to a scratch folder, never committed.
Each run is `train.py --max-steps 1` in its own process: its preparation (reading, tokenizer, tokenizing, from
`training_summary.json`), the seconds from its start to its first step (the evaluation's seconds taken out), and its
peak resident memory, that process tree's (`getrusage(RUSAGE_CHILDREN)` of a wrapper that runs only it).

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

WRAPPER = """
import resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
seconds = time.perf_counter() - started
print(code, seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


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
    result = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True)
    code, seconds, peak_kb = result.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out / "training_summary.json").read_text())
    evaluations = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    eval_seconds = sum(r.get("eval_seconds", 0) for r in evaluations)
    return {"seconds_to_first_step": float(seconds) - eval_seconds, "peak_mb": int(peak_kb) / 1024,
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
        print("| text | family | read | preparation: s | first step after: s | peak MB | second run's preparation: s "
              "| of the first's | one evaluation: s | scored |")
        print("|---|---|---|---|---|---|---|---|---|---|")
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
                          f"{second['preparation']:.1f} | {ratio:.0%} | {first['eval_seconds']:.1f} | "
                          f"{first['validation_scored']} |", flush=True)
                    print(f"<!-- stages, first run: {first['stages']}; second: {second['stages']} -->", flush=True)


if __name__ == "__main__":
    main()
