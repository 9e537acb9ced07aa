"""Model quality on tinyshakespeare, every model scored per character so they compare.

The text is split as nanoGPT splits it: the first 90% trains, the last 10% validates. Each model trains through
pocketlm's own `train()` (the loop users run) with its recipe below, and the table reports the best validation loss
in nats per character and bits per character, and the minutes the training took.

- lstm: the default LSTM (2 x 256, 128-wide embedding) with a character tokenizer;
- char-gpt-cpu: the GPT at nanoGPT's CPU shape (4 layers, 4 heads, 128 wide, 64 context, no dropout) with a
  character tokenizer, for nanoGPT's CPU budget of 2,000 steps of 12 x 64 (nanoGPT itself: 1.88 nats/char);
- char-gpt: the GPT at nanoGPT's GPU shape (6 x 6 x 384, 256 context, dropout 0.2); nanoGPT: 1.4697 nats/char;
- bpe-small, bpe-medium: the small and medium presets with a 5,000-token byte-level BPE.

    python bench/shakespeare.py --models lstm char-gpt-cpu bpe-small     # the CPU targets, one recipe each
    python bench/shakespeare.py --models bpe-small --steps 300            # a shorter check of one recipe
    python bench/shakespeare.py --models char-gpt --steps 5000 --batch-size 64 --mixed-precision bf16 --compile
"""

import argparse
import math
import tempfile
import time
from pathlib import Path

from pocketlm.training import TrainingOptions, train
from tokenization import save_tokenizer, train_char_tokenizer

DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

# Each recipe: the options it trains with. "char" swaps the BPE for a character tokenizer of the training text.
RECIPES = {
    "lstm": {"model_type": "lstm", "char": True, "lr": 3e-3, "batch_size": 32, "block_size": 128,
             "max_steps": 4500, "model_config": {}},
    "char-gpt-cpu": {"model_type": "transformer", "char": True, "lr": 3e-3, "warmup_steps": 100,
                     "min_lr_ratio": 0.1, "weight_decay": 0.1, "batch_size": 12, "block_size": 64, "max_steps": 2000,
                     "model_config": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0}},
    "char-gpt": {"model_type": "transformer", "char": True, "lr": 1e-3, "batch_size": 64, "block_size": 256,
                 "max_steps": 5000,
                 "model_config": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.2}},
    # A 2,048-token BPE and dropout 0.3: at 5,000 tokens and dropout 0.2 it overfit early (see BENCHMARKS.md).
    "bpe-small": {"model_type": "transformer", "model_size": "small", "vocab_size": 2048, "lr": 3e-3,
                  "batch_size": 16, "block_size": 256, "max_steps": 2600, "model_config": {"dropout": 0.3}},
    "bpe-medium": {"model_type": "transformer", "model_size": "medium", "lr": 1e-3, "batch_size": 16,
                   "block_size": 512, "max_steps": 1000, "model_config": {}},
}


def split(text_path: Path, folder: Path) -> tuple[Path, Path]:
    """nanoGPT's split: the first 90% of the characters train, the last 10% validate."""
    text = text_path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train_file, val_file = folder / "train.txt", folder / "val.txt"
    train_file.write_text(text[:cut], encoding="utf-8")
    val_file.write_text(text[cut:], encoding="utf-8")
    return train_file, val_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="the corpus (default: ../shared/data/...)")
    parser.add_argument("--models", nargs="+", default=["lstm", "char-gpt-cpu", "bpe-small"], choices=list(RECIPES))
    parser.add_argument("--steps", type=int, help="override each recipe's steps")
    parser.add_argument("--batch-size", type=int, help="override each recipe's batch size")
    parser.add_argument("--lr", type=float, help="override each recipe's learning rate")
    parser.add_argument("--eval-every", type=int, help="default: steps / 8")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--output-dir", type=Path, help="keep the models here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.output_dir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        train_file, val_file = split(args.text, root)
        char_tokenizer = root / "char-tokenizer"
        save_tokenizer(train_char_tokenizer([train_file.read_text(encoding="utf-8")]), char_tokenizer)
        rows = []
        for name in args.models:
            recipe = dict(RECIPES[name])
            char = recipe.pop("char", False)
            for option in ("steps", "batch_size", "lr"):
                if getattr(args, option) is not None:
                    recipe["max_steps" if option == "steps" else option] = getattr(args, option)
            steps = recipe["max_steps"]
            started = time.perf_counter()
            result = train(TrainingOptions(
                **recipe, data=[str(train_file)], validation_data=[str(val_file)], output_dir=str(root / name),
                tokenizer=str(char_tokenizer) if char else None, eval_every=args.eval_every or max(1, steps // 8),
                save_every=steps, mixed_precision=args.mixed_precision, compile=args.compile, samples=0,
                overwrite=True,
            ))
            rows.append((name, recipe, result, time.perf_counter() - started))

    print(f"\ntinyshakespeare ({args.text.name}: first 90% train, last 10% validation), {args.mixed_precision} precision")
    print(f"{'model':<14}{'steps':>7}{'batch':>10}{'best val nats/char':>20}{'bits/char':>11}{'tokens/s':>11}"
          f"{'minutes':>9}")
    for name, recipe, result, seconds in rows:
        nats = result.best_val_bpc * math.log(2)
        batch = f"{recipe['batch_size']}x{recipe['block_size']}"
        print(f"{name:<14}{result.steps:>7}{batch:>10}{nats:>20.4f}{result.best_val_bpc:>11.4f}"
              f"{result.tokens_per_second:>11,.0f}{seconds / 60:>9.1f}")


if __name__ == "__main__":
    main()
