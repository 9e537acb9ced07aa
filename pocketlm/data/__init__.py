"""Text in, token blocks out: `reading` finds and reads the user's text, `splitting` drops duplicates and holds
out validation documents, `blocks` tokenizes, cuts blocks and draws the training batches.

Data flows one way through them: files or a `datasets` name -> documents -> a deduplicated train/validation
`Corpus` -> token blocks -> batches for the training loop.
"""

from .blocks import (PADDING, ValidationSet, blocks_from_ids, characters_of, count_assistant_characters,
                     count_characters, tokenize, training_batches, validation_set)
from .reading import (DEFAULT_CORPUS_NAME, ReadReport, keep_readable_records, load_documents,
                      public_name, split_into_documents, with_config)
from .splitting import Corpus, HoldOut, deduplicate, deduplicate_and_split, load_corpus

__all__ = [
    "DEFAULT_CORPUS_NAME", "PADDING", "Corpus", "HoldOut", "ReadReport", "ValidationSet", "blocks_from_ids",
    "characters_of", "count_assistant_characters", "count_characters", "deduplicate", "deduplicate_and_split",
    "keep_readable_records", "load_corpus", "load_documents", "public_name", "split_into_documents", "tokenize",
    "training_batches", "validation_set", "with_config",
]
