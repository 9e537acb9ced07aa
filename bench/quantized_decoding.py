"""Decoding speed on the CPU with dynamic int8 quantization against float32, for every preset and the LSTM.

`torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)` swaps each linear layer for one
that stores int8 weights and quantizes its input on the fly (the LSTM's nn.LSTM too, with `--lstm-layers`). Both
copies decode the same prompt through `generate()` with chat's sampling (temperature 0.7, top-k 50, top-p 0.9,
repetition penalty 1.2, one fused warper), batch 1; rounds alternate and the medians are compared.

    python bench/quantized_decoding.py                      # small, medium, large and the LSTM
    python bench/quantized_decoding.py --models large --rounds 7 --new-tokens 128
"""

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from modeling import PRESETS, GPTConfig, GPTForCausalLM, LSTMConfig, LSTMForCausalLM
from pocketlm.choices import BALANCED_SAMPLING
from pocketlm.generation import sampling_arguments

VOCAB = 5000


def build(name: str):
    torch.manual_seed(0)
    if name == "lstm":
        return LSTMForCausalLM(LSTMConfig(vocab_size=100, dropout=0.0)).eval()
    return GPTForCausalLM(GPTConfig.from_preset(name, vocab_size=VOCAB, dropout=0.0)).eval()


@torch.no_grad()
def tokens_per_second(model, prompt: torch.Tensor, new_tokens: int) -> float:
    options = sampling_arguments(model.generation_config, BALANCED_SAMPLING)
    torch.manual_seed(0)
    started = time.perf_counter()
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, **options)
    return new_tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[*PRESETS, "lstm"], choices=[*PRESETS, "lstm"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--lstm-layers", action="store_true", help="quantize the LSTM's nn.LSTM too")
    args = parser.parse_args()
    print(f"batch-1 sampled decoding, 16-token prompt, {args.new_tokens} new tokens, CPU, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print(f"{'model':<8}{'float32 tok/s':>15}{'int8 tok/s':>13}{'int8 / float32':>16}{'weights MB f32 -> int8':>24}")
    for name in args.models:
        model = build(name)
        layers = {nn.Linear, nn.LSTM} if name == "lstm" and args.lstm_layers else {nn.Linear}
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), layers, dtype=torch.qint8)
        prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
        for candidate in (model, quantized):  # warm-up
            tokens_per_second(candidate, prompt, 4)
        speeds = {"float32": [], "int8": []}
        for _ in range(args.rounds):
            speeds["float32"].append(tokens_per_second(model, prompt, args.new_tokens))
            speeds["int8"].append(tokens_per_second(quantized, prompt, args.new_tokens))
        full, narrow = statistics.median(speeds["float32"]), statistics.median(speeds["int8"])
        float_mb = sum(p.numel() * 4 for p in model.parameters()) / 1e6
        int8_mb = _stored_megabytes(quantized)
        print(f"{name:<8}{full:>15,.0f}{narrow:>13,.0f}{narrow / full:>15.2f}x{float_mb:>14.1f} -> {int8_mb:.1f}")


def _stored_megabytes(model) -> float:
    """Bytes the model's state takes as saved (int8 weights count one byte each)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


if __name__ == "__main__":
    main()
