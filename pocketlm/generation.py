"""Generation helpers that keep prompts inside a model's context window and speak in text, not ids."""

import jinja2
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from tokenization import END_OF_TEXT, END_OF_TURN

from .choices import BALANCED_SAMPLING


class TopKTopPSampling(LogitsProcessor):
    """Temperature, top-k and top-p (nucleus) filtering in one pass over the k best scores.

    transformers' chain of three warpers sorts the whole vocabulary for top-p on every token: about 0.3 ms at
    5,000 tokens on a 2-core CPU (`bench/decode_anatomy.py`), a tenth of the small preset's sampled token. After
    top-k only k scores can survive, so sorting those k is enough; the kept tokens and their probabilities are
    the chain's.
    """

    def __init__(self, temperature: float, top_k: int, top_p: float):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        values, indices = scores.topk(min(self.top_k, scores.shape[-1]))  # best first
        values = values / self.temperature
        if self.top_p < 1.0:
            # Keep a token while the probability before it is under top_p: the best token always stays.
            probs = values.softmax(-1)
            values = values.masked_fill(probs.cumsum(-1) - probs >= self.top_p, float("-inf"))
        return torch.full_like(scores, float("-inf")).scatter_(-1, indices, values)


def sampling_arguments(generation_config: GenerationConfig, options: dict) -> dict:
    """generate() keyword arguments for `options` over the model's defaults, top-k and top-p sampling fused.

    Greedy decoding, and top-p without top-k (which must sort every score anyway), keep transformers' warpers.
    """
    def setting(name, unset):
        value = options.get(name, getattr(generation_config, name, None))
        return unset if value is None else value

    top_k = setting("top_k", 0)
    if not setting("do_sample", False) or top_k == 0:
        return options
    fused = TopKTopPSampling(setting("temperature", 1.0), top_k, setting("top_p", 1.0))
    # Neutral values switch the separate warpers off; generate() runs `fused` where they would have run.
    return {**options, "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
            "logits_processor": LogitsProcessorList([fused])}


def context_window(model: PreTrainedModel) -> int | None:
    """Tokens the model can attend over, or None for a recurrent model with no limit."""
    # The standard name: pocketlm's GPT config maps it to block_size, GPT-2's (an export's) to n_positions.
    return getattr(model.config, "max_position_embeddings", None)


def stop_token_ids(tokenizer, generation_config: GenerationConfig | None = None) -> list[int]:
    """Where a document or a chat reply ends: pocketlm's end-of-text and end-of-turn, the tokenizer's end-of-text,
    the token its chat template closes a reply with, and the model's own stops (`generation_config`). A model from
    elsewhere brings its own: the Hub's gpt2 its end-of-text and no turns, a ChatML fine-tune its <|im_end|>."""
    stops = []
    for token in (END_OF_TEXT, END_OF_TURN, tokenizer.eos_token, _turn_end(tokenizer)):
        token_id = None if token is None else tokenizer.convert_tokens_to_ids(token)
        # A token the vocabulary lacks converts to the unknown token's id (GPT-2's is its end-of-text): not a stop.
        known = token_id != tokenizer.unk_token_id or token == tokenizer.unk_token
        if token_id is not None and known and token_id not in stops:
            stops.append(token_id)
    model_stops = None if generation_config is None else generation_config.eos_token_id
    for token_id in [model_stops] if isinstance(model_stops, int) else model_stops or []:
        if token_id not in stops:
            stops.append(token_id)
    return stops


def _turn_end(tokenizer) -> str | None:
    """The special token a tokenizer's chat template puts after a reply's text (pocketlm's <|end|>, ChatML's
    <|im_end|>, Llama 3's <|eot_id|>), or None: a template of plain words, or none."""
    if not tokenizer.chat_template:
        return None
    reply = "pocketlm-reply-7f3a"  # found again in the rendered text: no template writes it
    conversation = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": reply}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except (jinja2.TemplateError, ValueError, TypeError):  # a template that refuses this conversation names none
        return None
    if reply not in text:  # a template that leaves out the assistant's text
        return None
    after = text[text.index(reply) + len(reply):]
    special = set(tokenizer.all_special_tokens) | {token.content for token in tokenizer.added_tokens_decoder.values()
                                                   if token.special}
    return next((token for token in tokenizer.tokenize(after) if token in special), None)


def padding_id(tokenizer) -> int | None:
    """What generate() fills finished rows with: the pad token, else (GPT-2's tokenizer has none) the end of text,
    transformers' own stand-in, given here rather than warned about on every reply."""
    if tokenizer.pad_token_id is not None:  # every pocketlm tokenizer: no template rendered for the stops
        return tokenizer.pad_token_id
    stops = stop_token_ids(tokenizer)
    return stops[0] if stops else None


def default_generation_config(tokenizer, max_new_tokens: int = 128) -> GenerationConfig:
    """What a trained pocketlm model's `generate()` does by default: balanced sampling, stopping at a turn's end."""
    return GenerationConfig(
        **BALANCED_SAMPLING,
        # Said, as GenerationConfig.from_model_config says it for a built-in model: generate() reads unset as on,
        # but transformers' torch.export recipe (TorchExportableModuleForDecoderOnlyLM) refuses unset.
        use_cache=True,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=padding_id(tokenizer),
    )


def reply_budget(window: int | None, max_new_tokens: int) -> int:
    """The one rule for fitting text into a model's window: a reply gets at most half of it, and the prompt keeps
    its newest tokens in the rest. A model without a window (the LSTM) gets what was asked for."""
    if window is None:
        return max_new_tokens
    return max(1, min(max_new_tokens, window // 2))


def fit_to_context(input_ids: torch.Tensor, model: PreTrainedModel, max_new_tokens: int) -> tuple[torch.Tensor, int]:
    """Keep the most recent prompt tokens so prompt and reply fit the context window (`reply_budget`).

    Returns the (possibly shortened) ids and the number of new tokens that still fit.
    """
    window = context_window(model)
    max_new_tokens = reply_budget(window, max_new_tokens)
    if window is None:
        return input_ids, max_new_tokens
    return input_ids[:, -(window - max_new_tokens):], max_new_tokens


@torch.no_grad()
def complete(model: PreTrainedModel, tokenizer, text: str, max_new_tokens: int = 128, **options) -> str:
    """The model's continuation of `text` (a prompt of any length: the oldest tokens go when it is too long)."""
    # verbose=False: a prompt longer than the window is expected and cut below, not an "indexing error". No special
    # tokens: the text is what training saw (a tokenizer from elsewhere would add its BOS, or end it with an EOS).
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False).input_ids.to(model.device)
    ids, max_new_tokens = fit_to_context(ids, model, max_new_tokens)
    options = sampling_arguments(model.generation_config, options)
    options.setdefault("eos_token_id", stop_token_ids(tokenizer, model.generation_config))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, **options)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def chat_reply(model: PreTrainedModel, tokenizer, messages: list[dict], max_new_tokens: int = 128, **options) -> str:
    """The assistant's next message after `messages`, built with the tokenizer's chat template."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return complete(model, tokenizer, prompt, max_new_tokens=max_new_tokens, **options).strip()


SAMPLE_QUESTIONS = ["Hello!", "How are you?", "What is your favorite book?", "Tell me a joke.", "What is AI?"]


def sample_outputs(model: PreTrainedModel, tokenizer, is_chat: bool, count: int, seed: int = 0) -> list[str]:
    """A few generations for the end of training and the model card: replies for chat data, continuations otherwise."""
    torch.manual_seed(seed)
    if is_chat:
        return [
            f"> {question}\n{chat_reply(model, tokenizer, [{'role': 'user', 'content': question}], 60)}"
            for question in SAMPLE_QUESTIONS[:count]
        ]
    openings = ["The ", "Once upon a time", "I think", "And then", "We"]
    return [f"{text}{complete(model, tokenizer, text, 100)}" for text in openings[:count]]
