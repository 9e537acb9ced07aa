"""pocketlm's tokenizers, trained with `tokenizers` and saved in a form `AutoTokenizer` loads without pocketlm."""

from .bpe import MIN_VOCAB_SIZE, train_bpe_tokenizer
from .char import train_char_tokenizer
from .fidelity import characters_without_a_token, first_change
from .kind import BYTE_LEVEL_BPE, CHARACTER_LEVEL, tokenizer_kind
from .special_tokens import (
    CHAT_TEMPLATE,
    END_OF_TEXT,
    END_OF_TURN,
    PAD,
    PLAIN_CHAT_TEMPLATE,
    ROLE_TOKENS,
    SPECIAL_TOKENS,
    message_text,
    render_chat,
    save_tokenizer,
    with_special_tokens,
    without_framing,
)

__all__ = [
    "train_bpe_tokenizer",
    "train_char_tokenizer",
    "MIN_VOCAB_SIZE",
    "characters_without_a_token",
    "first_change",
    "BYTE_LEVEL_BPE",
    "CHARACTER_LEVEL",
    "tokenizer_kind",
    "CHAT_TEMPLATE",
    "END_OF_TEXT",
    "END_OF_TURN",
    "PAD",
    "PLAIN_CHAT_TEMPLATE",
    "ROLE_TOKENS",
    "SPECIAL_TOKENS",
    "message_text",
    "render_chat",
    "save_tokenizer",
    "with_special_tokens",
    "without_framing",
]
