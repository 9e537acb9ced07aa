"""Train a pocketlm model: `python train.py --help`, or `accelerate launch train.py ...` for several devices."""

import sys

from pocketlm.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
