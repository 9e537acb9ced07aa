"""Why Trainer.release() frees the wrapped model before the process group: the hang it avoids, on demand.

Two processes end many short runs each: a gloo group is used by DDP, torn down right after a barrier (as a
pocketlm run ends), then freed in one of two orders:

- reducer-last: the model goes last, so DDP's reducer drops the group's last reference while holding the GIL,
  and the group's destructor waits for a gloo worker thread that needs the GIL (a deadlock, whenever that
  thread is still releasing the barrier's tensors);
- group-last: Python's own handle goes last, and its destructor releases the GIL first (what pocketlm does).

Each order runs under its own time limit; run it again after a PyTorch upgrade to see whether it still hangs.

    python bench/gloo_teardown.py --teardowns 1000 --limit 120
"""

import argparse
import contextlib
import os
import subprocess
import sys
import time

import psutil

ORDERS = ("reducer-last", "group-last")


def worker(order: str, teardowns: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    for done in range(teardowns):
        group = dist.new_group(backend="gloo")
        model = DistributedDataParallel(torch.nn.Linear(8, 8), process_group=group)
        model(torch.randn(4, 8)).sum().backward()
        dist.all_reduce(torch.zeros(()), group=group)
        dist.barrier(group=group)
        dist.destroy_process_group(group)
        if order == "group-last":
            del model, group
        else:
            del group, model
        if dist.get_rank() == 0:
            print(f"teardowns {done + 1}", flush=True)
    dist.destroy_process_group()


def run(order: str, teardowns: int, limit: float) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", __file__,
               "--worker", order, "--teardowns", str(teardowns)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        stdout, _ = process.communicate(timeout=limit)
        hung = False
    except subprocess.TimeoutExpired:
        # The launcher starts each worker in a session of its own: stop every descendant, not just the group.
        for child in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        stdout, _ = process.communicate()
        hung = True
    counts = [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("teardowns ")]
    finished = counts[-1] if counts else 0
    seconds = time.perf_counter() - started
    if hung:
        return f"{order:>12}: hung after {finished} of {teardowns} teardowns (stopped at {limit:.0f} s)"
    if process.returncode != 0:
        return f"{order:>12}: failed (exit {process.returncode}) after {finished} teardowns"
    return f"{order:>12}: all {finished} teardowns in {seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teardowns", type=int, default=1000, help="runs ended by each process, per order")
    parser.add_argument("--limit", type=float, default=120, help="seconds allowed to each order")
    parser.add_argument("--worker", choices=ORDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.teardowns)
        return
    for order in ORDERS:
        print(run(order, args.teardowns, args.limit), flush=True)


if __name__ == "__main__":
    main()
