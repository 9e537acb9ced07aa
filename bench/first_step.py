"""A fresh process's first training step against its later ones, with the CPU busy: the same numbers?

Each trial starts a Python process that builds the tiny Transformer of bench/kill_trials.py (seeded, dropout
off), takes one fixed batch and runs the training forward and backward three times. The three losses and
gradients should be equal bit for bit; where the first differs from the two after it, the process computed its
first step otherwise, and a run (or a resume, which is a new process too) would go its own way from there.

Alternate trials first call `pocketlm.preparation.set_up_vector_math`, as every training run does; the others
import the same modules and skip it. `--busy N` processes spin beside the trials: a run shares its CPUs more often
than not, and the difference shows far more often then.

    python bench/first_step.py                   # 40 trials each way, 3 busy processes
    python bench/first_step.py --trials 100 --busy 2
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def trial(set_up: bool) -> dict:
    """One process's three identical steps (run in the worker process)."""
    import torch

    from modeling import GPTConfig, GPTForCausalLM
    from pocketlm.preparation import set_up_vector_math

    if set_up:
        set_up_vector_math()
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=336, n_embd=32, n_head=2, n_layer=2, block_size=256, dropout=0.0)
    model = GPTForCausalLM(config).train()
    ids = torch.randint(0, config.vocab_size, (4, 32))
    steps = []
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids).loss
        loss.backward()
        steps.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))

    def equal(a, b) -> bool:  # two steps' losses and gradients, bit for bit
        return torch.equal(a[0], b[0]) and all(map(torch.equal, a[1], b[1]))

    first, second, third = steps
    return {"first_differs": not (equal(first, second) and equal(first, third)), "later_agree": equal(second, third),
            "losses": [float(loss) for loss, _ in steps]}


def run_trial(set_up: bool) -> dict:
    command = [sys.executable, __file__, "--worker"] + (["--set-up"] if set_up else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40, help="trials each way")
    parser.add_argument("--busy", type=int, default=3, help="spinning processes beside the trials")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--set-up", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(trial(args.set_up)))
        return

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    differing = {False: 0, True: 0}
    try:
        for i in range(2 * args.trials):
            set_up = i % 2 == 1
            result = run_trial(set_up)
            if not result["later_agree"]:
                print(f"trial {i}: the second and third steps differ too: {result['losses']}", flush=True)
            if result["first_differs"]:
                differing[set_up] += 1
                way = "with" if set_up else "without"
                print(f"trial {i} ({way} the set-up): the first step differs: losses {result['losses']}", flush=True)
    finally:
        for spinner in spinners:
            spinner.kill()
    for set_up, label in ((False, "without the set-up"), (True, "with pocketlm's set-up")):
        share = differing[set_up] / args.trials
        print(f"{label:>24}: {differing[set_up]} of {args.trials} first steps differ from the later ones ({share:.1%})")
    if differing[True]:
        print(f"ratio (without / with): {differing[False] / differing[True]:.1f}")
    elif differing[False]:
        print("ratio (without / with): none differed with the set-up")
    else:
        print("ratio: none differed either way (more trials, or more --busy, to see the difference)")


if __name__ == "__main__":
    main()
