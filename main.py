"""The old pocketlm command line: `python main.py --train|--chat|--compare [--model-type lstm|transformer] ...`."""

import sys

from pocketlm.cli import legacy_main

if __name__ == "__main__":
    sys.exit(legacy_main())
