"""The names the command lines offer as choices, spelled here without importing torch or transformers, so that
`--help` and a mistyped option answer at once instead of after seconds of imports. They are copies of modeling's
MODEL_TYPES and PRESETS and of loading's DTYPES and RUNTIMES, which tests/test_chat.py keeps equal to them."""

MODEL_TYPES = ["transformer", "lstm"]
MODEL_SIZES = ["small", "medium", "large"]
DTYPES = ["float32", "float16", "bfloat16", "int8"]
RUNTIMES = ["torch", "onnx"]
