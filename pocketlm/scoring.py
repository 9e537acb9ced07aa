"""Scoring a model on text per character: the one number on which models with any tokenizer compare.

Validation during training and `compare.py` use the same arithmetic: the summed next-token loss over every real
token of the text, in bits, divided by the text's characters (each special token standing for one separator).
"""

import contextlib
import math

import datasets
import torch
from tqdm.auto import tqdm

from . import data


@torch.no_grad()
def sum_token_losses(model, blocks: dict[str, list], batch_size: int, device: torch.device,
                     autocast=contextlib.nullcontext, shown_as: str | None = None) -> torch.Tensor:
    """Summed next-token loss in nats over every real token of `blocks` ("input_ids", padded with `data.PADDING`), and
    over the tokens its "assistant_mask" marks (0 without one), as a float64 tensor of two. With `shown_as`, a
    progress bar of that name on a terminal (compare.py scores whatever text it is given: minutes for megabytes)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, device=device, dtype=torch.float64)
    starts = range(0, len(blocks["input_ids"]), batch_size)
    for start in starts if shown_as is None else tqdm(starts, desc=shown_as, unit="batch", leave=False, disable=None):
        ids = torch.tensor(blocks["input_ids"][start : start + batch_size], device=device)
        with autocast():
            # The padding (only ever after a block's last real token) reads as token 0: no real token attends to it.
            logits = model(input_ids=ids.clamp(min=0), use_cache=False).logits
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), ignore_index=data.PADDING, reduction="none"
        )
        totals[0] += losses.sum()
        if "assistant_mask" in blocks:
            mask = torch.tensor(blocks["assistant_mask"][start : start + batch_size], device=device)
            totals[1] += (losses * mask[:, 1:].flatten()).sum()
    model.train(was_training)
    return totals


def bits_per_character(model, tokenizer, documents: datasets.Dataset, block_size: int, batch_size: int = 8,
                       shown_as: str | None = None) -> dict:
    """`model`'s bits per character on `documents` (rows with `text` and `ends`), read in blocks of `block_size`
    tokens as validation reads them, with the token and character counts behind it."""
    validation = data.validation_set(documents, tokenizer, block_size)
    nats = sum_token_losses(model, validation.blocks, batch_size, model.device, shown_as=shown_as)[0].item()
    return {"bits_per_char": nats / math.log(2) / validation.characters, "tokens": validation.tokens,
            "characters": validation.characters}
