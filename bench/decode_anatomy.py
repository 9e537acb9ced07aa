"""Where a batch-1 decoding token's time goes, piece by piece, for a GPT preset and its GPT2LMHeadModel peer.

bench/generate_throughput.py gives the end-to-end ratios; this script explains them. It times, in one run:
- one cached token through each model's forward, outside generate() (interleaved rounds, medians);
- the output head's matrix-vector product warm (repeated back to back) and as decoding meets it: first right
  after a trunk forward has streamed the other layers' weights, then once more;
- the 4 x layers + 1 matrix-vector products of one token back to back, warm: the arithmetic floor;
- the per-token pieces of generate()'s sampling loop at this vocabulary, each alone: the top-p sort over the
  whole vocabulary, multinomial, top-k, and the signature inspection LogitsProcessorList repeats per processor.

    python bench/decode_anatomy.py                   # small preset, vocabulary 5000, CPU
    python bench/decode_anatomy.py --model medium --rounds 7
"""

import argparse
import inspect
import statistics
import time

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import TopPLogitsWarper

from generate_throughput import gpt_pair
from modeling import PRESETS

GENERATE_SAMPLING_PROCESSORS = 4  # repetition penalty, temperature, top-k, top-p


def microseconds(fn, repeats: int = 200) -> float:
    """Median of `repeats` single calls, after a short warm-up."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def cached_token_ms(model, prompt, steps: int) -> float:
    """Milliseconds per forward of one new token with the prompt and earlier tokens in the cache."""
    cache, token = DynamicCache(), prompt[:, -1:]
    model(input_ids=prompt, cache=cache, use_cache=True)
    start = time.perf_counter()
    for _ in range(steps):
        model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
    return (time.perf_counter() - start) / steps * 1e3


def head_after_trunk_us(model, prompt, steps: int) -> tuple[float, float]:
    """The head's product first after each trunk forward, and immediately again: (first, second) medians in us."""
    weight, cache, token = model.lm_head.weight, DynamicCache(), prompt[:, -1:]
    model.model(input_ids=prompt, cache=cache, use_cache=True)
    first, second = [], []
    for _ in range(steps):
        hidden = model.model(input_ids=token, cache=cache, use_cache=True).last_hidden_state
        for times in (first, second):
            start = time.perf_counter()
            F.linear(hidden, weight)
            times.append(time.perf_counter() - start)
    return statistics.median(first) * 1e6, statistics.median(second) * 1e6


def matvecs_us(model) -> float:
    """Every matrix-vector product of one token, back to back with warm caches."""
    x = {n: torch.randn(1, n) for n in (model.config.n_embd, 4 * model.config.n_embd)}
    layers = [(m.weight, m.bias) for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def products():
        for weight, bias in layers:
            F.linear(x[weight.shape[1]], weight, bias)

    return microseconds(products, repeats=50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", choices=list(PRESETS))
    parser.add_argument("--vocab-size", type=int, default=5000)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="cached tokens per timed forward run")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)

    ours, peer = gpt_pair({**PRESETS[args.model], "vocab_size": args.vocab_size})
    ours.eval(), peer.eval()
    prompt = torch.randint(0, args.vocab_size, (1, args.prompt_tokens))
    megabytes = sum(p.numel() * p.element_size() for p in ours.parameters()) / 1e6
    with torch.no_grad():
        forwards = {"ours": [], "peer": []}
        for _ in range(args.rounds):
            for side, model in (("ours", ours), ("peer", peer)):
                forwards[side].append(cached_token_ms(model, prompt, args.steps))
        first, second = head_after_trunk_us(ours, prompt, args.steps)
        hidden = torch.randn(1, 1, ours.config.n_embd)
        warm = microseconds(lambda: F.linear(hidden, ours.lm_head.weight))
        floor = matvecs_us(ours)

    scores = torch.randn(1, args.vocab_size)
    probs = scores.softmax(-1)
    top_p = TopPLogitsWarper(0.9)
    ours_ms, peer_ms = statistics.median(forwards["ours"]), statistics.median(forwards["peer"])
    print(f"{args.model} preset at vocabulary {args.vocab_size}: {megabytes:.1f} MB of float32 weights per token, "
          f"CPU, {torch.get_num_threads()} threads")
    print("one cached token's forward, outside generate()")
    print(f"  pocketlm {ours_ms:.2f} ms   GPT2LMHeadModel {peer_ms:.2f} ms   ratio {peer_ms / ours_ms:.2f}x")
    print(f"  every matrix-vector product back to back, warm: {floor / 1000:.2f} ms")
    print(f"output head ({args.vocab_size} x {ours.config.n_embd}) matrix-vector product")
    print(f"  warm, repeated: {warm:.0f} us   first after a trunk forward: {first:.0f} us ({first / warm:.1f}x)"
          f"   again right after: {second:.0f} us")
    print(f"generate()'s sampling loop, per token, each piece alone (vocabulary {args.vocab_size})")
    print(f"  top-p sort of every score: {microseconds(lambda: torch.sort(scores)):.0f} us")
    print(f"  multinomial draw: {microseconds(lambda: torch.multinomial(probs, 1)):.0f} us")
    print(f"  top-k 50: {microseconds(lambda: torch.topk(scores, 50)):.0f} us")
    inspections = microseconds(lambda: inspect.signature(top_p.__call__)) * GENERATE_SAMPLING_PROCESSORS
    print(f"  signature inspection, {GENERATE_SAMPLING_PROCESSORS} processors: {inspections:.0f} us")


if __name__ == "__main__":
    main()
