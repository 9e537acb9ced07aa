"""The special tokens and chat template both pocketlm tokenizers share, and their transformers wrapper."""

import json
from pathlib import Path

import jinja2
import jinja2.ext
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from .kind import definition, steps, with_steps

END_OF_TEXT = "<|endoftext|>"  # ends a document or a whole conversation
PAD = "<|pad|>"
END_OF_TURN = "<|end|>"  # ends one chat message; generation stops here
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [END_OF_TEXT, PAD, END_OF_TURN, *ROLE_TOKENS.values()]

# Each message is its role token, its text and an end-of-turn token; no spaces or newlines are added, so the
# model sees exactly the user's text. A generation prompt ends with the assistant's role token. An assistant's text
# and its end-of-turn token are what the model writes after that prompt, so they sit inside transformers'
# {% generation %} block: apply_chat_template(..., return_assistant_tokens_mask=True) marks them, and TRL's
# assistant_only_loss trains on them alone (the end-of-turn token included, so the model learns to stop).
#
# A message's content is a string, or a list of parts as OpenAI's API, TRL and transformers' processors write it
# ([{"type": "text", "text": ...}]): its text parts, in order, are the text; any other part (an image) is refused, as
# a text model cannot read it. Written with a loop and tests every engine below knows (no filters, no namespace).
_MESSAGE_TEXT = (
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- else -%}{{ raise_exception('pocketlm models read text, and a message holds a part of type ' + part['type']) }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '" + END_OF_TURN + "' }}"
)
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('chat roles are system, user and assistant, not ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}" + _MESSAGE_TEXT + "{% endgeneration %}"
    "{%- else -%}" + _MESSAGE_TEXT +
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + ROLE_TOKENS["assistant"] + "' }}{%- endif -%}"
)

# Runtimes outside transformers (llama.cpp's template engine, transformers.js) need not know transformers'
# {% generation %} marker, which only marks the assistant's tokens: without it the template renders the same text.
PLAIN_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")


# What a tokenizer hands the model: both families read these two. transformers 4.x's default also returns
# token_type_ids, and GPT-2 adds their embeddings (token 0's, at every position) to its input, so a stock export
# called as `model.generate(**tokenizer(text))` there decoded other tokens, and optimum's ONNX model refused them.
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]


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
        model_input_names=MODEL_INPUT_NAMES,
        **special,
    )


def with_special_tokens(tokenizer) -> tuple[PreTrainedTokenizerFast, list[str]]:
    """`tokenizer` with pocketlm's special tokens and chat template, and the tokens it lacked. A tokenizer from
    elsewhere (GPT-2's, say) has no pad token to cut blocks with, nor the role tokens and template a conversation
    is written with: wrapped, it keeps its own vocabulary and ids and gains those after them. A tokenizer pocketlm
    trained is returned as it is."""
    missing = [token for token in SPECIAL_TOKENS if token not in tokenizer.get_vocab()]
    if not missing and tokenizer.pad_token == PAD and tokenizer.eos_token == END_OF_TEXT and tokenizer.chat_template:
        return tokenizer, []
    # A copy: adding the tokens to the loaded tokenizer's backend would change it in place.
    return wrap(Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())), missing


def without_framing(tokenizer) -> tuple[PreTrainedTokenizerFast, list[str]]:
    """`tokenizer` without what it adds to every text it encodes, and what that was: the tokens its post-processor
    puts around the text, and a leading space.

    pocketlm frames text itself (the end-of-text token after each document, nothing before), in training and in its
    prompts; a tokenizer from elsewhere may add its own (Llama 3's puts a BOS first), which every runtime that
    encodes a prompt as `tokenizer(text)` (transformers' pipelines, transformers.js) would then hand a model that
    never saw them. Only the post-processor's offset handling (ByteLevel's) is kept.

    A leading space (RoBERTa's byte-level BPE, Llama 2's and SentencePiece's "▁") is framing too: a long text is
    encoded in pieces, and each piece would begin with a space the text does not hold; where the decoder strips
    one space back off (Llama 2's), a text that did begin with one lost it. Without it, the tokenizer gives back
    exactly the text, and reads a text with a space before it as it read the text before."""
    encoded = tokenizer("x", return_special_tokens_mask=True)
    added = [token for token, special in zip(tokenizer.convert_ids_to_tokens(encoded["input_ids"]),
                                             encoded["special_tokens_mask"]) if special]
    spec = definition(tokenizer)
    spaced = _without_leading_space(spec)
    if not added and not spaced:
        return tokenizer, []
    if added:
        processor = spec.get("post_processor")
        spec["post_processor"] = with_steps(processor, [step for step in steps(processor)
                                                        if step.get("type") == "ByteLevel"])
    return wrap(Tokenizer.from_str(json.dumps(spec))), added + ["a leading space"] * spaced


_SPACE_MARKS = (" ", "▁")  # a space as text holds it, and as SentencePiece's tokens spell it


def _without_leading_space(spec: dict) -> bool:
    """Drop, in place, the space a tokenizer's definition (tokenizer.json's) puts before every text, and the step of
    its decoder that strips it back off; whether it put one."""
    spaced = False
    for step in steps(spec.get("pre_tokenizer")):
        if step.get("type") == "ByteLevel" and step.get("add_prefix_space"):
            step["add_prefix_space"], spaced = False, True
        elif step.get("type") == "Metaspace" and step.get("prepend_scheme") != "never":
            step["prepend_scheme"], spaced = "never", True
    normalizer = spec.get("normalizer")
    kept = [step for step in steps(normalizer) if not (step.get("type") == "Prepend"
                                                       and step.get("prepend") in _SPACE_MARKS)]
    if len(kept) < len(steps(normalizer)):  # Llama 2's tokenizer.json: a "▁" prepended, then spaces replaced
        spec["normalizer"], spaced = with_steps(normalizer, kept), True
    if not spaced:
        return False
    decoder = spec.get("decoder")
    for step in steps(decoder):
        if step.get("type") == "Metaspace":
            step["prepend_scheme"] = "never"
    spec["decoder"] = with_steps(decoder, [step for step in steps(decoder) if not (
        step.get("type") == "Strip" and step.get("content") in _SPACE_MARKS and step.get("start") == 1)])
    for step in steps(spec.get("post_processor")):  # its offsets no longer allow for a space it adds
        if step.get("type") == "ByteLevel":
            step["add_prefix_space"] = False
    return True


class _GenerationBlock(jinja2.ext.Extension):
    """Reads transformers' `{% generation %}...{% endgeneration %}` (which only marks assistant tokens) as its body."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str):
    raise ValueError(message)


_TEMPLATE = jinja2.Environment(extensions=[_GenerationBlock]).from_string(CHAT_TEMPLATE)


def save_tokenizer(tokenizer, folder) -> None:
    """`tokenizer.save_pretrained(folder)`, its class recorded under the name every transformers release knows.

    transformers 5 writes "TokenizersBackend", a class 4.x lacks ("Tokenizer class TokenizersBackend does not
    exist"), and lists the extra special tokens under a key 4.x reads as a dict; 5.x also reads the older
    "PreTrainedTokenizerFast" and "additional_special_tokens". With those, and the inputs the models read
    (MODEL_INPUT_NAMES), a 4.x user runs a stock GPT-2 export as pocketlm does, or, given the model's own folder,
    meets its error naming the transformers version it needs.

    A tokenizer read with from_pretrained also carries how it was read ("is_local", and "local_files_only", true
    when offline), which transformers 5.24 and 5.25 write back beside its settings: left out, so that a tokenizer
    published on the Hub does not say it was read from a local folder.
    """
    tokenizer.save_pretrained(folder)
    config_file = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    for how_it_was_read in ("is_local", "local_files_only"):
        config.pop(how_it_was_read, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = MODEL_INPUT_NAMES  # also for a tokenizer saved before wrap() named them
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def message_text(content) -> str | None:
    """A message's text as the chat template reads it: a string, or the text parts of a list joined in order
    ([{"type": "text", "text": ...}], as OpenAI's API, TRL and Gradio write it); None for anything else (an image
    part, a part without its text, no content)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        return None
    texts = [part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None for part in content]
    return "".join(texts) if all(isinstance(text, str) for text in texts) else None


def render_chat(messages: list[dict]) -> str:
    """The training text of a conversation: the chat template applied without a tokenizer."""
    return _TEMPLATE.render(messages=messages, add_generation_prompt=False, raise_exception=_raise_exception)
