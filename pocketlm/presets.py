"""The README's table of model sizes, computed from the presets so the two never disagree.

    python -m pocketlm.presets     # prints the Markdown table
"""

import torch

from configs import load_recipe
from modeling import PRESETS, GPTConfig, GPTForCausalLM, LSTMConfig, LSTMForCausalLM

TABLE_VOCAB_SIZE = 5000
TABLE_CHAR_VOCAB_SIZE = 100  # about what a character tokenizer finds in English text


def parameter_count(model_type: str, size: str = "small", vocab_size: int = TABLE_VOCAB_SIZE) -> int:
    """Parameters of a fresh model (tied weights counted once), built on the meta device: no memory, no time."""
    with torch.device("meta"):
        if model_type == "lstm":
            model = LSTMForCausalLM(LSTMConfig(vocab_size=vocab_size))
        else:
            model = GPTForCausalLM(GPTConfig.from_preset(size, vocab_size=vocab_size))
    return sum(p.numel() for p in model.parameters())


def preset_table() -> str:
    lines = [
        "| `--model-type` | `--model-size` | layers | width | heads | context (tokens) | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, shape in PRESETS.items():
        count = parameter_count("transformer", size)
        lines.append(
            f"| transformer | {size} | {shape['n_layer']} | {shape['n_embd']} | {shape['n_head']} "
            f"| {shape['block_size']:,} | {count / 1e6:.2f}M at a {TABLE_VOCAB_SIZE:,}-token vocabulary |"
        )
    lstm, lstm_block = LSTMConfig(), load_recipe("lstm")["block_size"]
    count = parameter_count("lstm", vocab_size=TABLE_CHAR_VOCAB_SIZE)
    lines.append(
        f"| lstm | — | {lstm.num_layers} | {lstm.hidden_size} | — | unlimited (trained on {lstm_block}) "
        f"| {count / 1e6:.2f}M at {TABLE_CHAR_VOCAB_SIZE} characters |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(preset_table())
