"""Publish a trained pocketlm model on the Hugging Face Hub: `python hub_upload.py --help`."""

import sys

from pocketlm.cli import upload_main

if __name__ == "__main__":
    sys.exit(upload_main())
