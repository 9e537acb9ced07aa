"""Model quality on tinyshakespeare, every model scored per character so they compare.

The text is split as nanoGPT splits it: the first 90% trains, the last 10% validates. Each model trains through
pocketlm's own `train()` (the loop users run) for the same number of steps, and the table reports the best
validation loss in nats per character and bits per character:

- char-gpt: the GPT at nanoGPT's character-level shape (6 layers, 6 heads, 384 wide, 256 context, dropout 0.2)
  with a character tokenizer; nanoGPT's published best validation loss is 1.4697 nats/char;
- lstm: the default LSTM (2 x 256) with a character tokenizer;
- bpe-small, bpe-medium: the small and medium presets with a 5,000-token byte-level BPE.

    python bench/shakespeare.py --steps 5000                       # the full run (GPU)
    python bench/shakespeare.py --steps 200 --batch-size 8        # a CPU-sized check
"""

import argparse
import math
import tempfile
import time
from pathlib import Path

from pocketlm.training import TrainingOptions, train
from tokenization import save_tokenizer, train_char_tokenizer

DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

MODELS = {
    "char-gpt": {"model_type": "transformer", "char": True, "lr": 1e-3,
                 "model_config": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.2}},
    "lstm": {"model_type": "lstm", "char": True, "lr": 3e-3, "block_size": 128, "model_config": {}},
    "bpe-small": {"model_type": "transformer", "model_size": "small", "lr": 2e-3, "model_config": {}},
    "bpe-medium": {"model_type": "transformer", "model_size": "medium", "lr": 1e-3, "model_config": {}},
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
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256, help="for the Transformers (the LSTM uses 128)")
    parser.add_argument("--eval-every", type=int, help="default: steps / 5")
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
            recipe = MODELS[name]
            started = time.perf_counter()
            result = train(TrainingOptions(
                model_type=recipe["model_type"], model_size=recipe.get("model_size", "small"),
                data=[str(train_file)], validation_data=[str(val_file)], output_dir=str(root / name),
                tokenizer=str(char_tokenizer) if recipe.get("char") else None,
                model_config=recipe["model_config"], lr=recipe["lr"], max_steps=args.steps,
                batch_size=args.batch_size, block_size=recipe.get("block_size", args.block_size),
                eval_every=args.eval_every or max(1, args.steps // 5), save_every=args.steps,
                mixed_precision=args.mixed_precision, compile=args.compile, samples=0, overwrite=True,
            ))
            rows.append((name, result, time.perf_counter() - started))

    print(f"\ntinyshakespeare ({args.text.name}: first 90% train, last 10% validation), {args.steps} steps, "
          f"batch {args.batch_size}, {args.mixed_precision} precision")
    print(f"{'model':<12}{'best val nats/char':>20}{'bits/char':>11}{'tokens/s':>11}{'minutes':>9}")
    for name, result, seconds in rows:
        nats = result.best_val_bpc * math.log(2)
        print(f"{name:<12}{nats:>20.4f}{result.best_val_bpc:>11.4f}{result.tokens_per_second:>11,.0f}"
              f"{seconds / 60:>9.1f}")


if __name__ == "__main__":
    main()
