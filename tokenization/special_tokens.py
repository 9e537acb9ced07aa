"""The special tokens and chat template both pocketlm tokenizers share, and their transformers wrapper."""

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"  # ends a document or a whole conversation
PAD = "<|pad|>"
END_OF_TURN = "<|end|>"  # ends one chat message; generation stops here
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [END_OF_TEXT, PAD, END_OF_TURN, *ROLE_TOKENS.values()]

# Each message is its role token, its text and an end-of-turn token; no spaces or newlines are added, so the
# model sees exactly the user's text. A generation prompt ends with the assistant's role token.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('chat roles are system, user and assistant, not ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '" + END_OF_TURN + "' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + ROLE_TOKENS["assistant"] + "' }}{%- endif -%}"
)


def wrap(tokenizer: Tokenizer, **special) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a trained `tokenizers` one, with pocketlm's special tokens and chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
        additional_special_tokens=[END_OF_TURN, *ROLE_TOKENS.values()],
        chat_template=CHAT_TEMPLATE,
        # Generation pads on the left so every prompt ends where its reply begins.
        padding_side="left",
        clean_up_tokenization_spaces=False,
        **special,
    )


def render_chat(messages: list[dict]) -> str:
    """The training text of a conversation: the chat template applied without a tokenizer."""
    import jinja2

    def raise_exception(message: str):
        raise ValueError(message)

    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    return template.render(messages=messages, add_generation_prompt=False, raise_exception=raise_exception)
