"""Blocks: documents in, fixed-length token blocks and the batches the training loop draws from them.

Each document is tokenized whole and ends with the end-of-text token; the token stream is cut into blocks that
overlap by one token, so every token but the very first is a target exactly once. Training draws its batches
here too: batch k of a run is a pure function of the seed and k, which is what makes resuming exact.
"""

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from datasets.distributed import split_dataset_by_node

from tokenization import END_OF_TEXT, END_OF_TURN, ROLE_TOKENS, SPECIAL_TOKENS
from tokenization.char import UNKNOWN

from ..sources import cache_key
from .reading import DOCUMENT_FEATURES, column, text_lengths

SHUFFLE_BUFFER_BLOCKS = 1000  # a streamed corpus is shuffled within a window of this many blocks


# ------------------------------------------------------------------------------------------------ characters


def count_characters(text: str) -> int:
    """Characters of `text`, counting each special token as one (it stands for one separator, not its spelling)."""
    return len(text) - sum(text.count(token) * (len(token) - 1) for token in (*SPECIAL_TOKENS, UNKNOWN))


_ASSISTANT_TURN = re.compile(re.escape(ROLE_TOKENS["assistant"]) + "(.*?)" + re.escape(END_OF_TURN), re.DOTALL)


def count_assistant_characters(text: str) -> int:
    """Characters of the assistant's replies in a rendered conversation, each reply's end-of-turn token as one: what
    a chat model is asked to write, so its loss on them per character says how well it answers."""
    return sum(count_characters(reply) + 1 for reply in _ASSISTANT_TURN.findall(text))


def characters_of(documents: datasets.Dataset) -> int:
    """Characters a model is scored on: the text, each special token as one, and one per end-of-text token."""
    return sum(count_characters(text) for text in column(documents, "text")) + sum(column(documents, "ends"))


def assistant_mask(ids, assistant_id: int, end_id: int) -> np.ndarray:
    """1 for each token of an assistant's reply and the end-of-turn token closing it, 0 elsewhere: exactly what the
    chat template's {% generation %} block marks, read from the token ids (role tokens are single tokens).

    A token is inside a reply when the last role or end-of-turn token before it opened one: each token's state is
    the last such marker's, carried forward (vectorized: a chat corpus's tokens are counted in hundreds of millions).
    """
    ids = np.asarray(ids)
    markers = np.flatnonzero((ids == assistant_id) | (ids == end_id))
    last = np.full(len(ids), -1)
    last[markers] = markers
    last = np.maximum.accumulate(last) if len(ids) else last  # the index of the last marker at or before each token
    opened = np.zeros(len(ids), dtype=np.uint8)
    opened[last >= 0] = ids[last[last >= 0]] == assistant_id  # inside a reply just after each token
    return np.concatenate([[0], opened[:-1]]).astype(np.uint8) if len(ids) else opened


# ---------------------------------------------------------------------------------------------------- blocks


def tokenizer_digest(tokenizer) -> str:
    """What identifies a tokenizer's output: its full definition (vocabulary, merges, normalizer, special tokens)
    when it has a `tokenizers` backend, else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.blake2b(definition.encode(), digest_size=16).hexdigest()


def token_dtype(vocabulary: int) -> np.dtype:
    """The narrowest integer that holds every token id: two bytes for our vocabularies (a gigabyte of characters is
    2 GB of tokens on disk, not 8), four for a larger one a user brings."""
    return np.dtype(np.uint16 if vocabulary <= 2**16 else np.int32)


def _token_features(dtype: np.dtype, with_assistant_mask: bool) -> datasets.Features:
    columns = {"input_ids": datasets.List(datasets.Value(dtype.name))}
    if with_assistant_mask:
        columns["assistant_mask"] = datasets.List(datasets.Value("uint8"))
    return datasets.Features(columns)


def _encoder(tokenizer, with_assistant_mask: bool):
    """The function a `map` tokenizes a batch of documents with, and the features of what it returns: each whole
    document's ids followed by the end-of-text token, and with `with_assistant_mask` a mask of the assistant's
    replies."""
    assistant_id, end_id = tokenizer.convert_tokens_to_ids([ROLE_TOKENS["assistant"], END_OF_TURN])
    dtype = token_dtype(len(tokenizer))
    encode_ids = _id_encoder(tokenizer)

    def encode(batch):
        texts = [t + END_OF_TEXT if ends else t for t, ends in zip(batch["text"], batch["ends"])]
        # 200 texts at a time: a batch's encodings are held whole until converted (a thousand of the character
        # tokenizer's took 700 MB more in each worker), and smaller batches cost no measurable time.
        pieces = (texts[start : start + ENCODE_BATCH] for start in range(0, len(texts), ENCODE_BATCH))
        ids = [np.array(row, dtype=dtype) for piece in pieces for row in encode_ids(piece)]  # Arrow takes arrays whole
        if not with_assistant_mask:
            return {"input_ids": ids}
        return {"input_ids": ids, "assistant_mask": [assistant_mask(row, assistant_id, end_id) for row in ids]}

    return encode, _token_features(dtype, with_assistant_mask)


ENCODE_BATCH = 200


def _workers(documents: datasets.Dataset) -> int | None:
    # Worker processes cost seconds to start: worth it only for large corpora.
    return min(4, os.cpu_count() or 1) if len(documents) > 20_000 else None


def tokenize(documents: datasets.Dataset | datasets.IterableDataset, tokenizer, with_assistant_mask: bool = False):
    """Token ids of every document, each whole document followed by the end-of-text token (lazily, if streamed);
    with `with_assistant_mask`, also an `assistant_mask` column marking the assistant's replies. On an Arrow corpus
    the result is cached under a key of the documents, the tokenizer and the mask."""
    encode, features = _encoder(tokenizer, with_assistant_mask)
    if isinstance(documents, datasets.IterableDataset):
        return documents.map(encode, batched=True, remove_columns=list(DOCUMENT_FEATURES), features=features)
    key = cache_key("tokens", documents._fingerprint, tokenizer_digest(tokenizer), with_assistant_mask)
    return documents.map(encode, batched=True, remove_columns=documents.column_names, num_proc=_workers(documents),
                         features=features, desc="tokenizing", new_fingerprint=key)


def _id_encoder(tokenizer):
    """A function from texts to their token ids, as `tokenizer(texts, add_special_tokens=False)["input_ids"]` gives
    them: pocketlm frames documents itself (the end-of-text token after each, nothing before, as its prompts are
    built), where a tokenizer from elsewhere would add its post-processor's tokens (Llama 3's BOS) to every piece
    of a long document.

    With a `tokenizers` backend that truncates and pads nothing (ours never do), its `encode_batch_fast` gives the
    same ids without computing offsets: 2.2x faster for the character tokenizer (100 MB: 8.3 s instead of 18.5).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return lambda texts: [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    # Documents are cut into blocks afterwards, so one longer than the model's window is expected: verbose=False
    # keeps transformers from warning that it "will result in indexing errors".
    return lambda texts: tokenizer(texts, add_special_tokens=False, verbose=False,
                                   return_attention_mask=False)["input_ids"]


def cut(stream: np.ndarray, block_size: int, pad_id: int, keep_partial: bool) -> np.ndarray:
    """A token stream cut into blocks of `block_size` that overlap by one token, as rows of a 2-D array.

    The model predicts token i+1 from tokens up to i inside a block, so overlapping by one makes every token
    but the very first a target exactly once. A partial last block is padded with `pad_id` when kept.
    """
    starts = np.arange(0, max(len(stream) - 1, 0), block_size - 1)
    if not keep_partial:
        starts = starts[starts + block_size <= len(stream)]
    elif len(starts) and starts[-1] + block_size > len(stream):  # only the last block can fall short
        stream = np.concatenate([stream, np.full(starts[-1] + block_size - len(stream), pad_id, stream.dtype)])
    return stream[starts[:, None] + np.arange(block_size)]


def blocks_from_ids(ids: list[int], block_size: int, pad_id: int, keep_partial: bool) -> list[list[int]]:
    """`cut` for a list of ids: the blocks as lists."""
    return cut(np.asarray(ids, dtype=np.int64), block_size, pad_id, keep_partial).tolist()


TOKEN_COLUMNS = ("input_ids", "assistant_mask")  # cut into blocks side by side, so a mask stays with its tokens


def _joined(rows) -> np.ndarray:
    """One stream of the rows' tokens (arrays or lists), in order."""
    return np.concatenate([np.asarray(row) for row in rows]) if len(rows) else np.zeros(0, dtype=np.int64)


def training_blocks(documents: datasets.Dataset | datasets.IterableDataset, tokenizer, block_size: int,
                    with_assistant_mask: bool = False):
    """Training blocks: the documents tokenized and their tokens cut into blocks a thousand documents at a time
    (each thousand's partial tail dropped), lazily if streamed. On an Arrow corpus, cached under a key of the
    documents, the tokenizer, the block size and the mask.

    One pass from text to blocks: the tokens are never written on their own and read back, which at a gigabyte
    of characters would be 2 GB more to write and to map into memory.
    """
    encode, features = _encoder(tokenizer, with_assistant_mask)
    columns = tuple(features)

    def tokenize_and_cut(batch):
        tokens = encode(batch)
        return {name: cut(_joined(tokens[name]), block_size, pad_id=0, keep_partial=False) for name in columns}

    if isinstance(documents, datasets.IterableDataset):
        return documents.map(tokenize_and_cut, batched=True, batch_size=1000, remove_columns=list(DOCUMENT_FEATURES))
    key = cache_key("blocks", documents._fingerprint, tokenizer_digest(tokenizer), block_size, columns)
    return documents.map(tokenize_and_cut, batched=True, batch_size=1000, remove_columns=documents.column_names,
                         num_proc=_workers(documents), features=features, desc="tokenizing into blocks",
                         new_fingerprint=key)


PADDING = -100  # pads the last validation block: torch's cross-entropy ignore_index, never a token id, so scoring
# needs no pad token of the tokenizer's (GPT-2's has none; its usual stand-in, end-of-text, is a token scored)


def validation_blocks(token_ids: datasets.Dataset, block_size: int) -> tuple[dict[str, list], int]:
    """Every validation token in blocks (the last padded with `PADDING`), its assistant mask's blocks when it has
    one, and the number of real tokens in them."""
    blocks, length = {}, 0
    for name in TOKEN_COLUMNS:
        if name in token_ids.column_names:
            chunks = token_ids.with_format("arrow")[name].chunks  # each a list array: its values, in order
            stream = _joined([chunk.flatten().to_numpy(zero_copy_only=False) for chunk in chunks]).astype(np.int64)
            blocks[name] = cut(stream, block_size, PADDING if name == "input_ids" else 0, keep_partial=True).tolist()
            length = max(length, len(stream))  # the mask runs beside the tokens: the same length
    return blocks, length


@dataclass
class ValidationSet:
    """The validation text as the model is scored on it: its blocks, and the counts that turn summed losses into
    per-token and per-character figures."""

    blocks: dict[str, list]  # "input_ids" (the last block padded), and "assistant_mask" on conversations
    tokens: int  # real tokens in the blocks
    characters: int  # characters of the text scored, each special token as one
    assistant_characters: int  # characters of the assistant's replies (0 outside conversations)
    targets: int = 0  # tokens predicted: every real token of a block but its first
    scored: str = "all of it"  # which part of the validation text an evaluation scores, in words


def validation_set(documents: datasets.Dataset, tokenizer, block_size: int, with_assistant_mask: bool = False,
                   max_tokens: int = 0, seed: int = 0) -> ValidationSet:
    """Every validation document tokenized and cut into blocks of `block_size`, with its character counts; past
    `max_tokens` (0: no limit), a fixed sample of the blocks (`sample_blocks`).

    A validation set far larger than the sample (a gigabyte's tenth) is first narrowed to a seeded sample of its
    documents holding `CHARACTERS_PER_TOKEN` times `max_tokens` characters, so that only they are tokenized and held
    in memory; their characters per token then stand for the whole set's.
    """
    if max_tokens:
        documents = _sample_documents(documents, max_tokens * CHARACTERS_PER_TOKEN, seed)
    token_ids = tokenize(documents, tokenizer, with_assistant_mask=with_assistant_mask)
    blocks, length = validation_blocks(token_ids, block_size)
    assistant = sum(count_assistant_characters(text) for text in column(documents, "text")) if with_assistant_mask \
        else 0
    whole = ValidationSet(blocks=blocks, tokens=length, characters=characters_of(documents),
                          assistant_characters=assistant, targets=max(1, length - 1))
    return sample_blocks(whole, max_tokens, seed) if max_tokens and length > max_tokens else whole


CHARACTERS_PER_TOKEN = 8  # more than any of our tokenizers packs into a token of prose: the narrowed set still
# holds more than `max_tokens` tokens, and the blocks are sampled from it


def _sample_documents(documents: datasets.Dataset, characters: int, seed: int) -> datasets.Dataset:
    """`documents` whole when they hold at most twice `characters`; else a seeded sample of them, in reading order,
    holding at least `characters`."""
    lengths = text_lengths(documents).tolist()
    if sum(lengths) <= 2 * characters:
        return documents
    chosen, held = [], 0
    for row in random.Random(seed).sample(range(len(lengths)), len(lengths)):
        chosen.append(row)
        held += lengths[row]
        if held >= characters:
            break
    return documents.select(sorted(chosen))


def sample_blocks(whole: ValidationSet, max_tokens: int, seed: int) -> ValidationSet:
    """About `max_tokens` of `whole`'s blocks, drawn once by `seed`: every evaluation of a run scores the same text,
    so its best-model choices compare like with like, and an evaluation costs the same at 10 MB as at 1 GB.

    Its characters are the whole set's in proportion to the targets scored (and the replies' to the reply tokens
    scored), so bits per character estimate the whole set's, as compare.py measures it.
    """
    ids = whole.blocks["input_ids"]
    block_size = len(ids[0])
    count = max(1, min(len(ids), max_tokens // block_size))
    chosen = sorted(random.Random(seed).sample(range(len(ids)), count))
    # Only the last block is padded: each other holds block_size real tokens, block_size - 1 of them targets.
    targets = [len(ids[i]) - 1 if i < len(ids) - 1 else whole.tokens - i * (block_size - 1) - 1 for i in chosen]
    share = sum(targets) / whole.targets
    assistant_characters = 0
    if "assistant_mask" in whole.blocks and whole.assistant_characters:
        masks = whole.blocks["assistant_mask"]
        replies = sum(sum(mask[1:]) for mask in masks)
        assistant_characters = round(whole.assistant_characters * sum(sum(masks[i][1:]) for i in chosen)
                                     / max(1, replies))
    return ValidationSet(
        blocks={name: [rows[i] for i in chosen] for name, rows in whole.blocks.items()},
        tokens=sum(targets) + count, characters=max(1, round(whole.characters * share)),
        assistant_characters=assistant_characters, targets=max(1, sum(targets)),
        scored=f"a fixed sample of {count:,} of its {len(ids):,} blocks ({sum(targets):,} of {whole.targets:,} "
               "tokens)")


# --------------------------------------------------------------------------------------------------- batches


def training_batches(documents, tokenizer, block_size: int, batch_size: int, seed: int, rank: int = 0,
                     world: int = 1, with_assistant_mask: bool = False) -> "BlockBatches | StreamBatches":
    """The batches of a run's training documents for process `rank` of `world`: drawn from every block of an
    Arrow corpus, or read from a stream, where each process tokenizes only its share of the documents.

    With `with_assistant_mask` (learning the replies alone) only blocks holding a target of a reply are drawn: a
    block inside a long user turn would teach nothing and still cost a step.
    """
    if isinstance(documents, datasets.IterableDataset):
        blocks = training_blocks(split_dataset_by_node(documents, rank, world), tokenizer, block_size,
                                 with_assistant_mask)
        if with_assistant_mask:
            blocks = blocks.filter(lambda batch: _has_a_target(np.asarray(batch["assistant_mask"], dtype=np.uint8)
                                                               .reshape(-1, block_size)).tolist(), batched=True)
        return StreamBatches(blocks, batch_size, seed)
    blocks = training_blocks(documents, tokenizer, block_size, with_assistant_mask)
    rows = blocks_with_a_target(blocks, block_size) if with_assistant_mask else None
    return BlockBatches(blocks, batch_size, seed, rank, world, rows)


def blocks_with_a_target(blocks: datasets.Dataset, block_size: int) -> np.ndarray:
    """The indices of the Arrow `blocks` whose assistant mask marks a target: a reply's token past the block's
    first, which is only read. Scanned by Arrow in batches, one byte a token."""
    batches = blocks.select_columns(["assistant_mask"]).with_format("arrow").iter(batch_size=10_000)
    kept = [_has_a_target(pc.list_flatten(batch["assistant_mask"]).to_numpy(zero_copy_only=False)
                          .reshape(-1, block_size)) for batch in batches]
    return np.flatnonzero(np.concatenate([np.zeros(0, dtype=bool), *kept]))


def _has_a_target(masks: np.ndarray) -> np.ndarray:
    """For each row of blocks' assistant masks, whether it marks a target: a reply's token past the block's
    first, which is only read."""
    return masks[:, 1:].any(axis=1)


def with_labels(blocks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's inputs for a batch of blocks: the ids, and as labels the ids, or, when the blocks carry an
    assistant mask, only the tokens of the assistant's replies (the rest -100, which the loss ignores)."""
    ids = blocks["input_ids"]
    mask = blocks.get("assistant_mask")
    return {"input_ids": ids, "labels": ids if mask is None else ids.masked_fill(mask == 0, -100)}


class BlockBatches:
    """Deterministic batches of training blocks: a seeded shuffle per epoch, sharded across processes.

    Batch k of the whole run is a pure function of (seed, k), which is what makes resuming exact.
    """

    def __init__(self, blocks, batch_size: int, seed: int, rank: int, world: int, rows: np.ndarray | None = None):
        self.blocks = blocks.with_format("torch")
        # The blocks drawn from (`rows` of them, or all); the rest are counted, to be said.
        self.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.long)
        self.count = len(blocks) if rows is None else len(rows)
        self.left_out = len(blocks) - self.count
        self.batch_size = min(batch_size, max(1, self.count // world))
        self.seed, self.rank, self.world = seed, rank, world
        self.per_epoch = max(1, self.count // (self.batch_size * world))
        self._epoch, self._order = None, None

    def has_a_block(self) -> bool:
        return self.count > 0

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        epoch, index = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.count, generator=generator)
        start = (index * self.world + self.rank) * self.batch_size
        rows = self._order[torch.arange(start, start + self.batch_size) % self.count]
        if self.rows is not None:
            rows = self.rows[rows]
        return with_labels(self.blocks[rows.tolist()])


class StreamBatches:
    """Batches of training blocks read from a streamed corpus, shuffled within a window, one share per process.

    Batch k is the k-th batch of a seeded pass over the stream (passes continue into the next epoch), so
    resuming at step k replays the first k batches without training on them: exact, at the price of
    re-reading and re-tokenizing that much text.
    """

    def __init__(self, blocks, batch_size: int, seed: int):
        self.blocks = blocks.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER_BLOCKS)
        self.batch_size = batch_size
        self.epoch, self._next, self._rows = 0, 0, None

    def has_a_block(self) -> bool:
        return next(iter(self.blocks), None) is not None

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        if self._rows is None or k < self._next:
            self.epoch, self._next = 0, 0
            self._start_pass()
        while self._next < k:
            self._take()
        rows = self._take()
        return with_labels({name: torch.as_tensor(np.array([row[name] for row in rows]), dtype=torch.long)
                            for name in rows[0]})

    def _start_pass(self) -> None:
        self.blocks.set_epoch(self.epoch)  # a new shuffle each epoch
        self._rows = iter(self.blocks)

    def _take(self) -> list[dict]:
        batch = []
        while len(batch) < self.batch_size:
            row = next(self._rows, None)
            if row is None:
                self.epoch += 1
                self._start_pass()
                continue
            batch.append(row)
        self._next += 1
        return batch
