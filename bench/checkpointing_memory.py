"""Peak memory of one training step with and without gradient checkpointing, and what it costs in time.

Each measurement runs in a fresh process: build the model, note the memory in use, run forward and backward on one
batch at the full context, and report the peak above that baseline (on a CPU the peak resident set, read from the
kernel; on a GPU torch.cuda.max_memory_allocated). Checkpointing goes through transformers' own mechanism
(`model.gradient_checkpointing_enable()`), as `train.py --gradient-checkpointing` does.

    python bench/checkpointing_memory.py                    # the large preset, 1,024 tokens, batch 4
    python bench/checkpointing_memory.py --model small --batch-size 16
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def peak_of_one_step(model_name: str, batch_size: int, checkpointing: bool) -> dict:
    import torch

    from modeling import GPTConfig, GPTForCausalLM, LSTMConfig, LSTMForCausalLM

    torch.manual_seed(0)
    if model_name == "lstm":
        model, context = LSTMForCausalLM(LSTMConfig(vocab_size=100)), 1024
    else:
        config = GPTConfig.from_preset(model_name, vocab_size=5000)
        model, context = GPTForCausalLM(config), config.block_size
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    ids = torch.randint(0, model.config.vocab_size, (batch_size, context), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/statm") as statm:
            baseline = int(statm.read().split()[1]) * resource.getpagesize()
    started = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {"peak_above_model_mb": (peak - baseline) / 1e6, "seconds": time.perf_counter() - started,
            "tokens": batch_size * context, "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="large", choices=["small", "medium", "large", "lstm"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--one", choices=["with", "without"], help=argparse.SUPPRESS)  # a measuring subprocess
    args = parser.parse_args()
    if args.one:
        print(json.dumps(peak_of_one_step(args.model, args.batch_size, args.one == "with")))
        return
    results = {}
    for mode in ("without", "with"):
        run = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
                              "--one", mode], capture_output=True, text=True, check=True)
        results[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    tokens = results["with"]["tokens"]
    print(f"{args.model}, batch {args.batch_size}, {tokens // args.batch_size} tokens each, one forward and backward "
          f"on {results['with']['device']}")
    for mode in ("without", "with"):
        r = results[mode]
        print(f"  {mode:<8} checkpointing: peak {r['peak_above_model_mb']:,.0f} MB above the model, {r['seconds']:.2f} s")
    saved = 1 - results["with"]["peak_above_model_mb"] / results["without"]["peak_above_model_mb"]
    slower = results["with"]["seconds"] / results["without"]["seconds"]
    print(f"  checkpointing: {saved:.0%} less peak memory, {slower:.2f}x the time")


if __name__ == "__main__":
    main()
