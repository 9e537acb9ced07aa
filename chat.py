"""Chat with a trained pocketlm model: `python chat.py --help`."""

import sys

from pocketlm.cli import chat_main

if __name__ == "__main__":
    sys.exit(chat_main())
