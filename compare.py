"""Compare trained models on one number (bits per character), size, speed and replies: `python compare.py --help`."""

import sys

from pocketlm.cli import compare_main

if __name__ == "__main__":
    sys.exit(compare_main())
