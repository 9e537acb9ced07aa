"""Does pocketlm's LSTM learn as fast as the plain PyTorch model of its shape?

Both models, LSTMForCausalLM and a bare torch.nn.Embedding + torch.nn.LSTM + torch.nn.Linear twin of the same
shape (bench/train_throughput.py's BareLSTM, PyTorch's default initialisation), train side by side on the same
random batches of tinyshakespeare characters (nanoGPT's split: first 90% train, last 10% validation), with the
same AdamW, learning rate, gradient clipping and dropout. Both are scored on the same validation batches; the table
shows both curves and ours over theirs (below 1.00: ours is ahead).

    python bench/lstm_vs_torch.py                          # 300 steps of 32 x 128, evaluated every 100
    python bench/lstm_vs_torch.py --steps 1000 --seeds 3   # longer, and the mean over three seeds
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from modeling import LSTMConfig, LSTMForCausalLM
from train_throughput import BareLSTM

DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def character_split(text: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Training and validation character ids (nanoGPT's 90/10 split) and the vocabulary size."""
    cut = int(len(text) * 0.9)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    return ids[:cut], ids[cut:], len(chars)


def random_batches(ids: torch.Tensor, count: int, batch_size: int, block_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
        yield torch.stack([ids[s : s + block_size] for s in starts.tolist()])


def loss_of(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    if isinstance(model, BareLSTM):
        return model(batch, batch)
    return model(input_ids=batch, labels=batch, use_cache=False).loss


@torch.no_grad()
def validation_loss(model: nn.Module, batches: list[torch.Tensor]) -> float:
    model.eval()
    loss = statistics.mean(loss_of(model, batch).item() for batch in batches)
    model.train()
    return loss


def race(config: LSTMConfig, train_ids, val_batches, args, seed: int) -> dict[str, list[float]]:
    """Train both models on the same batches; their validation losses at every evaluation, and seconds spent."""
    torch.manual_seed(seed)
    models = {"pocketlm": LSTMForCausalLM(config), "plain torch": BareLSTM(config)}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=args.lr) for name, m in models.items()}
    curves = {name: [] for name in models}
    seconds = dict.fromkeys(models, 0.0)
    for model in models.values():
        model.train()
    batches = random_batches(train_ids, args.steps, args.batch_size, args.block_size, seed + 1)
    for step, batch in enumerate(batches, 1):
        for name, model in models.items():
            started = time.perf_counter()
            loss = loss_of(model, batch)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            seconds[name] += time.perf_counter() - started
        if step % args.eval_every == 0:
            for name, model in models.items():
                curves[name].append(validation_loss(model, val_batches))
    return {"curves": curves, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds and average")
    parser.add_argument("--val-batches", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    train_ids, val_ids, vocab_size = character_split(args.text.read_text(encoding="utf-8"))
    config = LSTMConfig(vocab_size=vocab_size, dropout=args.dropout)  # the default shape: 2 x 256, 128-wide embedding
    val_batches = list(random_batches(val_ids, args.val_batches, args.batch_size, args.block_size, seed=12345))
    runs = [race(config, train_ids, val_batches, args, seed) for seed in range(args.seeds)]

    names = list(runs[0]["curves"])
    print(f"tinyshakespeare characters, {args.steps} steps of {args.batch_size} x {args.block_size}, AdamW lr {args.lr}, "
          f"clip {args.grad_clip}, dropout {args.dropout}, {args.seeds} seed(s); validation loss in nats/char "
          f"on {args.val_batches} batches")
    print(f"{'step':>6}" + "".join(f"{name:>14}" for name in names) + f"{'ours/theirs':>13}")
    for point in range(len(runs[0]["curves"][names[0]])):
        means = [statistics.mean(run["curves"][name][point] for run in runs) for name in names]
        print(f"{(point + 1) * args.eval_every:>6}" + "".join(f"{m:>14.4f}" for m in means) + f"{means[0] / means[1]:>12.3f}x")
    tokens = args.steps * args.batch_size * args.block_size * args.seeds
    speeds = [tokens / sum(run["seconds"][name] for run in runs) for name in names]
    print(f"{'tok/s':>6}" + "".join(f"{s:>14,.0f}" for s in speeds) + f"{speeds[0] / speeds[1]:>12.2f}x (speed)")
    if args.seeds > 1:  # the spread between seeds says how much of the ratio is noise
        for name in names:
            finals = ", ".join(f"{run['curves'][name][-1]:.3f}" for run in runs)
            print(f"{name} at step {args.steps}, seed by seed: {finals}")


if __name__ == "__main__":
    main()
