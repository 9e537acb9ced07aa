"""Where a batch-1 decoding token's time goes, piece by piece, for a GPT preset and its GPT2LMHeadModel peer.

bench/generate_throughput.py gives the end-to-end ratios; this script explains them. It times, in one run:
- one cached token through each model's forward, outside generate() (interleaved rounds, medians), ours also
  with its weights in float16 and bfloat16 (chat.py --dtype);
- the output head's matrix-vector product warm (repeated back to back) and as decoding meets it: first right
  after a trunk forward has streamed the other layers' weights, then once more;
- the 4 x layers + 1 matrix-vector products of one token back to back, warm: the arithmetic floor; and the same
  products with the weights stored narrower (float16, bfloat16, int8 weight-only), to see whether fewer bytes
  per token would lower that floor on this machine;
- the per-token pieces of generate()'s sampling loop at this vocabulary, each alone: the top-p sort over the
  whole vocabulary, multinomial, top-k, and the signature inspection LogitsProcessorList repeats per processor.

    python bench/decode_anatomy.py                   # small preset, vocabulary 5000, CPU
    python bench/decode_anatomy.py --model medium --rounds 7
"""

import argparse
import copy
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


def matvecs_by_precision_us(model, rounds: int) -> dict[str, float]:
    """The same products with the weights held in narrower types, the types interleaved round by round (medians).

    Each type's activations match its weights. int8 is weight-only with a scale per output row, through the CPU
    kernel torch ships for it (`aten::_weight_int8pack_mm`, as gpt-fast uses). Biases are left out so every type
    times the same products.
    """
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    widths = (model.config.n_embd, 4 * model.config.n_embd)
    products = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = {n: torch.randn(1, n, dtype=dtype) for n in widths}
        narrow = [w.to(dtype) for w in weights]
        products[str(dtype).removeprefix("torch.")] = lambda x=x, narrow=narrow: [
            F.linear(x[w.shape[1]], w) for w in narrow
        ]
    int8_matmul = getattr(torch.ops.aten, "_weight_int8pack_mm", None)
    if int8_matmul is not None:
        x = {n: torch.randn(1, n) for n in widths}
        scales = [w.abs().amax(1) / 127 for w in weights]
        packed = [((w / s[:, None]).round().to(torch.int8), s) for w, s in zip(weights, scales)]
        products["int8 weight-only"] = lambda: [int8_matmul(x[q.shape[1]], q, s) for q, s in packed]
    timings = {name: [] for name in products}
    for _ in range(rounds):
        for name, fn in products.items():
            timings[name].append(microseconds(fn, repeats=20))
    return {name: statistics.median(times) for name, times in timings.items()}


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
        sides = {"ours": ours, "peer": peer, "float16": copy.deepcopy(ours).half(),
                 "bfloat16": copy.deepcopy(ours).bfloat16()}
        forwards = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, model in sides.items():
                forwards[side].append(cached_token_ms(model, prompt, args.steps))
        first, second = head_after_trunk_us(ours, prompt, args.steps)
        hidden = torch.randn(1, 1, ours.config.n_embd)
        warm = microseconds(lambda: F.linear(hidden, ours.lm_head.weight))
        floor = matvecs_us(ours)
        by_precision = matvecs_by_precision_us(ours, args.rounds)

    scores = torch.randn(1, args.vocab_size)
    probs = scores.softmax(-1)
    top_p = TopPLogitsWarper(0.9)
    ours_ms, peer_ms = statistics.median(forwards["ours"]), statistics.median(forwards["peer"])
    print(f"{args.model} preset at vocabulary {args.vocab_size}: {megabytes:.1f} MB of float32 weights per token, "
          f"CPU, {torch.get_num_threads()} threads")
    print("one cached token's forward, outside generate()")
    print(f"  pocketlm {ours_ms:.2f} ms   GPT2LMHeadModel {peer_ms:.2f} ms   ratio {peer_ms / ours_ms:.2f}x")
    print("  pocketlm with its weights in " + "   ".join(
        f"{dtype} {statistics.median(forwards[dtype]):.2f} ms ({ours_ms / statistics.median(forwards[dtype]):.2f}x)"
        for dtype in ("float16", "bfloat16")) + " (not the peer's precision: for chat.py --dtype, not the ratio)")
    print(f"  every matrix-vector product back to back, warm: {floor / 1000:.2f} ms")
    print("  the same products without biases, types interleaved, weights stored as: "
          + "   ".join(f"{name} {us / 1000:.2f} ms" for name, us in by_precision.items()))
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
