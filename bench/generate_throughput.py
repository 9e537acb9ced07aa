"""Batch-1 decoding speed through generate(), against peers measured in the same run.

Each GPT preset races transformers' GPT2LMHeadModel.generate at the identical shape, greedy and with sampling
(top-k 50, top-p 0.9, temperature 0.8, repetition penalty 1.2); time to first token is the time of a one-token
generate() from a 16-token prompt. The LSTM's generate() races a bare torch.nn.LSTM loop that carries its state
and samples with the same settings by hand. Runs alternate; medians are compared.

A third side, a "model" whose forward costs nothing, times generate()'s own loop (input preparation, cache
bookkeeping, logits processors, stopping checks) at the same vocabulary and settings. No model decoding through
generate() can beat it, so `ceiling` (its speed over the peer's) is the largest ratio this machine allows.

    python bench/generate_throughput.py                       # CPU: small and medium presets and the LSTM
    python bench/generate_throughput.py --models small large --new-tokens 256 --rounds 5
    python bench/generate_throughput.py --models small --static-compile   # ours: static cache + compiled step
    python bench/generate_throughput.py --models small --fused-sampling   # ours: chat's fused top-k/top-p

With --static-compile our GPT decodes through generate(cache_implementation="static", compile_config=...): a
preallocated cache and a torch.compile'd decoding step (CUDA graphs on a GPU), the compile time reported
separately; the peer stays on its default generate(). With --fused-sampling our models, and the loop-only side,
sample as pocketlm's chat does: temperature, top-k and top-p in one warper (pocketlm.generation.TopKTopPSampling)
instead of transformers' three; the peer keeps the three.
"""

import argparse
import statistics
import time

import torch
from torch import nn
from transformers import GenerationMixin, GPT2Config, GPT2LMHeadModel, PreTrainedModel
from transformers.generation import CompileConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from modeling import PRESETS, GPTConfig, GPTForCausalLM, LSTMConfig, LSTMForCausalLM
from pocketlm.generation import sampling_arguments

SAMPLING = {"do_sample": True, "top_k": 50, "top_p": 0.9, "temperature": 0.8, "repetition_penalty": 1.2}
GREEDY = {"do_sample": False}


def gpt_pair(shape: dict):
    ours = GPTForCausalLM(GPTConfig(**shape, dropout=0.0))
    peer = GPT2LMHeadModel(GPT2Config(
        vocab_size=shape["vocab_size"], n_positions=shape["block_size"], n_embd=shape["n_embd"],
        n_layer=shape["n_layer"], n_head=shape["n_head"], bos_token_id=None, eos_token_id=None,
        attn_implementation="sdpa",
    ))
    return ours, peer


class BareLSTMLoop:
    """The LSTM peer: the same weights driven by a hand-written loop over torch.nn.LSTM, state carried."""

    def __init__(self, model: LSTMForCausalLM):
        self.embed, self.lstm, self.head = model.model.embed_tokens, model.model.lstm, model.lm_head

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, do_sample, top_k=0, top_p=1.0, temperature=1.0,
                 repetition_penalty=1.0, **ignored):
        hidden, state = self.lstm(self.embed(input_ids))
        tokens = input_ids[0].tolist()
        device = input_ids.device
        for _ in range(max_new_tokens):
            logits = self.head(hidden[:, -1]).float()[0]
            if repetition_penalty != 1.0:
                seen = torch.tensor(tokens, device=device)
                scores = logits[seen]
                logits[seen] = torch.where(scores < 0, scores * repetition_penalty, scores / repetition_penalty)
            if do_sample:
                logits = logits / temperature
                values, indices = logits.topk(min(top_k, logits.numel()))
                probs = values.softmax(-1)
                keep = probs.cumsum(-1) - probs < top_p
                choice = torch.multinomial(probs * keep, 1)
                token = indices[choice]
            else:
                token = logits.argmax(-1, keepdim=True)
            tokens.append(int(token))
            hidden, state = self.lstm(self.embed(token.view(1, 1)), state)
        return torch.tensor([tokens], device=device)


class LoopOnly(PreTrainedModel, GenerationMixin):
    """generate()'s loop with nothing inside: every step returns the same logits, built once."""

    config_class = GPT2Config

    def __init__(self, vocab_size: int):
        super().__init__(GPT2Config(vocab_size=vocab_size, bos_token_id=None, eos_token_id=None))
        self.anchor = nn.Parameter(torch.zeros(1))  # generate() reads the device off a parameter
        logits = torch.randn(1, 1, vocab_size, generator=torch.Generator().manual_seed(0))
        self.register_buffer("logits", logits, persistent=False)
        self.post_init()

    def forward(self, input_ids=None, cache=None, **ignored) -> CausalLMOutputWithPast:
        return CausalLMOutputWithPast(logits=self.logits.expand(input_ids.shape[0], 1, -1), cache=cache)


def decode_seconds(model, prompt, new_tokens: int, options: dict) -> float:
    if prompt.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        if isinstance(model, BareLSTMLoop):
            out = model.generate(prompt, new_tokens, **options)
        else:
            out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                                 **options)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert out.shape[1] == prompt.shape[1] + new_tokens, "generation ended early"
    return seconds


def static_compile_options(args) -> dict:
    """generate() options for a static cache and a compiled decoding step, one cache size for every call."""
    config = CompileConfig(fullgraph=True, dynamic=False)
    config._compile_all_devices = True  # generate() compiles only on accelerators unless told otherwise
    # One cache size for the timed and the time-to-first-token calls: a new size would mean a new compile.
    return {"cache_implementation": "static", "compile_config": config,
            "max_cache_len": args.prompt_tokens + args.new_tokens}


def race(name, ours, peer, vocab_size, args) -> list[dict]:
    ours.to(args.device).eval()
    if not isinstance(peer, BareLSTMLoop):
        peer.to(args.device).eval()
    loop_only = LoopOnly(vocab_size).to(args.device).eval()
    prompt = torch.randint(0, vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(args.device)
    ours_extra = static_compile_options(args) if args.static_compile and name != "lstm" else {}
    rows = []
    for mode, options in (("greedy", GREEDY), ("sampling", SAMPLING)):
        timings = {"ours": [], "peer": [], "loop": [], "ttft_ours": [], "ttft_peer": []}
        ours_options = sampling_arguments(ours.generation_config, options) if args.fused_sampling else options
        loop_options = sampling_arguments(loop_only.generation_config, options) if args.fused_sampling else options
        sides = {"ours": (ours, {**ours_options, **ours_extra}), "peer": (peer, options),
                 "loop": (loop_only, loop_options)}
        for side, (model, side_options) in sides.items():  # warm-up (and, with --static-compile, the compile)
            started = time.perf_counter()
            decode_seconds(model, prompt, 4, side_options)
            if side == "ours" and ours_extra and mode == "greedy":
                print(f"{name}: static cache + compile warm-up took {time.perf_counter() - started:.1f} s")
        for _ in range(args.rounds):
            for side, (model, side_options) in sides.items():
                timings[side].append(decode_seconds(model, prompt, args.new_tokens, side_options))
                if side != "loop":
                    timings["ttft_" + side].append(decode_seconds(model, prompt, 1, side_options))
        ours_tps, peer_tps, loop_tps = (args.new_tokens / statistics.median(timings[side])
                                        for side in ("ours", "peer", "loop"))
        rows.append({"model": name, "mode": mode, "ours": ours_tps, "peer": peer_tps, "ratio": ours_tps / peer_tps,
                     "loop_ms": 1000 / loop_tps, "ceiling": loop_tps / peer_tps,
                     "ttft_ours": statistics.median(timings["ttft_ours"]) * 1000,
                     "ttft_peer": statistics.median(timings["ttft_peer"]) * 1000})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["small", "medium", "lstm"], help="presets and/or lstm")
    parser.add_argument("--vocab-size", type=int, default=5000)
    parser.add_argument("--lstm-vocab-size", type=int, default=100, help="a character vocabulary")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--static-compile", action="store_true",
                        help="our GPT decodes with a static cache and a torch.compile'd step")
    parser.add_argument("--fused-sampling", action="store_true",
                        help="ours and the loop-only side sample through chat's fused top-k/top-p warper")
    args = parser.parse_args()
    torch.manual_seed(0)

    rows = []
    for name in args.models:
        if name == "lstm":
            ours = LSTMForCausalLM(LSTMConfig(vocab_size=args.lstm_vocab_size, dropout=0.0))
            rows += race("lstm", ours, BareLSTMLoop(ours), args.lstm_vocab_size, args)
        else:
            rows += race(name, *gpt_pair({**PRESETS[name], "vocab_size": args.vocab_size}), args.vocab_size, args)

    print(f"batch-1 decoding, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
          f"{torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'}, "
          f"median of {args.rounds} interleaved rounds"
          f"{'; ours: static cache + compiled decoding step' if args.static_compile else ''}"
          f"{'; ours and loop: fused top-k/top-p sampling' if args.fused_sampling else ''}")
    print(f"{'model':<8}{'mode':<10}{'pocketlm tok/s':>15}{'peer tok/s':>12}{'ratio':>8}"
          f"{'TTFT ms':>9}{'peer TTFT':>11}{'loop ms/tok':>13}{'ceiling':>9}   peer")
    for row in rows:
        peer = "bare nn.LSTM loop" if row["model"] == "lstm" else "GPT2LMHeadModel.generate"
        print(f"{row['model']:<8}{row['mode']:<10}{row['ours']:>15,.0f}{row['peer']:>12,.0f}{row['ratio']:>7.2f}x"
              f"{row['ttft_ours']:>9.1f}{row['ttft_peer']:>11.1f}{row['loop_ms']:>13.2f}{row['ceiling']:>8.2f}x"
              f"   {peer}")
    print("loop ms/tok: generate()'s own loop around a forward that costs nothing; ceiling: its speed over the peer's,"
          " the most any model could reach through generate() here")


if __name__ == "__main__":
    main()
