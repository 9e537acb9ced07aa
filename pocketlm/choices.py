"""The names the command lines offer as choices, the chat's sampling defaults and the seeds every command takes,
spelled here without importing torch or transformers, so that `--help` and a mistyped option answer at once instead
of after seconds of imports. The names are copies of modeling's MODEL_TYPES and PRESETS and of loading's DTYPES and
RUNTIMES, which tests/test_chat.py keeps equal to them; the chat's defaults live only here."""

from .errors import UsageError

MODEL_TYPES = ["transformer", "lstm"]
MODEL_SIZES = ["small", "medium", "large"]
DTYPES = ["float32", "float16", "bfloat16", "int8"]
RUNTIMES = ["torch", "onnx"]
DEVICES = ["auto", "cpu", "cuda"]  # auto: a CUDA GPU when one is visible, else the CPU
EXPORT_FORMATS = ["transformers", "onnx", "gguf", "web"]  # what export.py writes; a family has some (export.FORMATS)
WEB_PRECISIONS = ["int8", "float32"]  # the web page's ONNX graph; the first is the default
# A GGUF file's weights, as llama.cpp names them; the first is the default. pocketlm writes the first five itself
# (the gguf package); llama.cpp's own quantizer makes its k-quants, which pick a format for each tensor by its rules.
GGUF_PRECISIONS = ["f32", "f16", "q8_0", "q5_0", "q4_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m"]
GGUF_BY_LLAMA_CPP = GGUF_PRECISIONS[5:]

# The old guide's "balanced" setting: readable, varied replies from small models.
BALANCED_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.2}
DEFAULT_MAX_NEW_TOKENS = 128
# How a chat message reaches the model: as a turn of a conversation, or as text for it to continue (a model trained
# on plain text); the default is the one the model's training record names.
CHAT_MODES = {"chat": "reply through the chat template", "text": "continue the text typed"}
# Where chat.py --web serves: this machine only, on Gradio's usual port.
WEB_HOST, WEB_PORT = "127.0.0.1", 7860
# What each number takes, said when a value is refused: by the terminal and web chats, and by the static page
# (its pocketlm.json carries these words).
OPTION_RANGES = {
    # 0 means greedy in llama.cpp and ollama; here greedy is sampling switched off, named where 0 is refused.
    "temperature": "use a number above 0 (lower is more predictable; for the likeliest token every time, switch "
                   "sampling off: --greedy, /params do_sample=false)",
    "top_k": "use a whole number, 0 for no limit",
    "top_p": "use a number above 0 and at most 1",
    "repetition_penalty": "use a number above 0 (1 leaves repetition alone)",
    "max_new_tokens": "use a whole number of at least 1",
    "do_sample": "use true or false",
}


def check_seed(seed: int | None) -> None:
    """Every command's --seed (train.py's, chat.py's, compare.py's): numpy's seeding, which accelerate's set_seed
    does, takes no other, and torch's manual_seed overflows past it (a traceback in the chat)."""
    if seed is not None and not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be a whole number from 0 to {2**32 - 1}, got {seed}.")
