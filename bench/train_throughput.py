"""Training throughput of pocketlm's models against a peer measured in the same run.

Each GPT preset races transformers' GPT2LMHeadModel built at the identical shape (layers, width, heads,
vocabulary, context, the same dropout); the LSTM races a bare torch.nn.LSTM language model of its shape.
Both sides get the same batches, precision and fused AdamW; runs alternate and the medians are compared.

    python bench/train_throughput.py                      # CPU: every preset at batch 16 x 256
    python bench/train_throughput.py --models small --block-size 256 --rounds 5
    python bench/train_throughput.py --nanogpt --precision bf16 --compile   # GPU: nanoGPT's char-level shape
"""

import argparse
import statistics
import time

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from modeling import PRESETS, GPTConfig, GPTForCausalLM, LSTMConfig, LSTMForCausalLM

NANOGPT_SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab_size": 65}


class BareLSTM(nn.Module):
    """The LSTM peer: embedding, torch.nn.LSTM and a linear head, with the same loss."""

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.embedding_dim, config.hidden_size, config.num_layers,
                            dropout=config.dropout, batch_first=True)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, input_ids, labels):
        hidden, _ = self.lstm(self.drop(self.embed(input_ids)))
        logits = self.head(self.drop(hidden))
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())


def gpt_pair(shape: dict, dropout: float):
    ours = GPTForCausalLM(GPTConfig(**shape, dropout=dropout))
    peer = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=shape["vocab_size"], n_positions=shape["block_size"], n_embd=shape["n_embd"],
            n_layer=shape["n_layer"], n_head=shape["n_head"], resid_pdrop=dropout, embd_pdrop=dropout,
            attn_pdrop=0.0,  # pocketlm does not drop attention probabilities; neither does the peer here
            bos_token_id=0, eos_token_id=0, attn_implementation="sdpa",
        )
    )
    return ours, peer


def lstm_pair(vocab_size: int, dropout: float):
    config = LSTMConfig(vocab_size=vocab_size, dropout=dropout)
    return LSTMForCausalLM(config), BareLSTM(config)


def loss_of(model, ids):
    if isinstance(model, BareLSTM):
        return model(ids, ids)
    return model(input_ids=ids, labels=ids, use_cache=False).loss


def make_step(model, device, precision: str, compile_: bool):
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model) if compile_ else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step(ids):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_of(forward, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(step, batches, device) -> float:
    """Seconds for one pass over `batches`, waiting for the device at the end only."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for ids in batches:
        step(ids)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def race(name, ours, peer, vocab_size, args, device) -> dict:
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab_size, (args.batch_size, args.block_size), generator=generator).to(device)
               for _ in range(args.steps)]
    steps = {"ours": make_step(ours, device, args.precision, args.compile),
             "peer": make_step(peer, device, args.precision, args.compile)}
    for step in steps.values():  # warm-up: allocator, kernels, compilation
        time_steps(step, batches[: args.warmup], device)
    times = {"ours": [], "peer": []}
    for _ in range(args.rounds):  # interleaved, so drifts in machine load hit both sides alike
        for side in ("ours", "peer"):
            times[side].append(time_steps(steps[side], batches, device))
    tokens = args.batch_size * args.block_size * args.steps
    result = {side: tokens / statistics.median(t) for side, t in times.items()}
    params = sum(p.numel() for p in ours.parameters())
    return {"model": name, "params": params, "ours": result["ours"], "peer": result["peer"],
            "ratio": result["ours"] / result["peer"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[*PRESETS, "lstm"], help="presets and/or lstm")
    parser.add_argument("--nanogpt", action="store_true", help="only nanoGPT's char-level shape (6x6x384, vocab 65)")
    parser.add_argument("--vocab-size", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed pass")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    rows = []
    if args.nanogpt:
        args.vocab_size, args.block_size = NANOGPT_SHAPE["vocab_size"], NANOGPT_SHAPE["block_size"]
        rows.append(race("nanogpt-char", *gpt_pair(NANOGPT_SHAPE, args.dropout), args.vocab_size, args, device))
    else:
        for name in args.models:
            if name == "lstm":
                rows.append(race("lstm", *lstm_pair(args.vocab_size, args.dropout), args.vocab_size, args, device))
                continue
            shape = {**PRESETS[name], "vocab_size": args.vocab_size}  # the preset's context window, as trained
            if args.block_size > shape["block_size"]:
                parser.error(f"--block-size {args.block_size} exceeds {name}'s context of {shape['block_size']}")
            rows.append(race(name, *gpt_pair(shape, args.dropout), args.vocab_size, args, device))

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training tokens/s, batch {args.batch_size} x {args.block_size}, {args.precision}"
          f"{', compiled' if args.compile else ''}, {where}, median of {args.rounds} interleaved rounds")
    print(f"{'model':<14}{'params':>12}{'pocketlm':>12}{'peer':>12}{'ratio':>8}   peer")
    for row in rows:
        peer = "bare nn.LSTM" if row["model"] == "lstm" else "GPT2LMHeadModel"
        print(f"{row['model']:<14}{row['params']:>12,}{row['ours']:>12,.0f}{row['peer']:>12,.0f}"
              f"{row['ratio']:>7.2f}x   {peer}")


if __name__ == "__main__":
    main()
