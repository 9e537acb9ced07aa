"""pocketlm: train small language models on your own text, chat with them, and share them on the Hub."""

__version__ = "0.1.0"
