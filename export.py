"""Export a pocketlm model for other runtimes: `python export.py MODEL --format transformers|onnx|gguf|all`."""

import sys

from pocketlm.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
