"""Chat with a pocketlm model in the browser: the app of the Hugging Face Space that `hub_upload.py --space-id`
publishes beside a model. It needs only torch, transformers and gradio (requirements.txt), not pocketlm: the
model's own code comes from its repository through `trust_remote_code`.

    python app.py                               # the model named below, from the Hub
    POCKETLM_MODEL=path/to/model python app.py  # any pocketlm model folder or repository
"""

import html
import os
import threading

import gradio as gr
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList,
                          TextIteratorStreamer)

MODEL_ID = os.environ.get("POCKETLM_MODEL", "pocketlm/model")  # hub_upload.py writes the repository's id here
# How the model is talked to, which hub_upload.py writes here from its training record: "chat", through its chat
# template, or "text" for a model trained on plain text, which continues what is typed (chat.py --mode text).
MODE = os.environ.get("POCKETLM_MODE", "chat")
END_OF_TURN = "<|end|>"  # where a reply ends, in every pocketlm tokenizer

tokenizer = AutoTokenizer.from_pretrained(MODEL_ID, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(MODEL_ID, trust_remote_code=True).eval()
# The Transformer attends over a window of tokens and keeps the conversation in it; the LSTM, which has no window,
# answers each message on its own, as pocketlm's own chat does.
WINDOW = getattr(model.config, "block_size", None)
STOP_IDS = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)]


class StopWhenSet(StoppingCriteria):
    """Ends generation between two tokens once the page's stop button closed the reply."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# Copied from pocketlm.generation.reply_budget
def reply_budget(window: int | None, max_new_tokens: int) -> int:
    """The one rule for fitting text into a model's window: a reply gets at most half of it, and the prompt keeps
    its newest tokens in the rest. A model without a window (the LSTM) gets what was asked for."""
    if window is None:
        return max_new_tokens
    return max(1, min(max_new_tokens, window // 2))


# Copied from tokenization.special_tokens.message_text
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


# Copied from pocketlm.chat.continued_passage
def continued_passage(turns: list[dict]) -> str:
    """Text mode's text to continue: what was typed and written, in order, each typed message on a line of its own
    (a typed line is a line) unless what came before ends in a space or line break; an empty message adds nothing,
    asking for more of the same passage."""
    text = ""
    for turn in turns:
        if turn["role"] == "user" and text and turn["content"] and not text[-1].isspace():
            text += "\n"
        text += turn["content"]
    return text


# Copied from pocketlm.wording.listed
def listed(names: list[str], last: str = "and") -> str:
    """`names` as a sentence lists them: "a", "a and b", "a, b and c" (or, with `last="or"`, "a, b or c")."""
    return f" {last} ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


# Copied from pocketlm.chat.unknown_characters
def unknown_characters(tokenizer, text: str) -> list[str]:
    """The characters of `text` the tokenizer reads as its unknown token, each once, in order: a character model's
    vocabulary holds its training text's characters only, and the model reads any other alike."""
    unknown = tokenizer.unk_token_id
    if unknown is None:  # a byte-level BPE has a token for every byte
        return []
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
    except (NotImplementedError, ValueError, KeyError):  # one without offsets (Python's, Mistral's): no note
        return []
    return list(dict.fromkeys(text[start:end] for token, (start, end) in zip(encoded["input_ids"], offsets)
                              if token == unknown))


# Copied from pocketlm.chat.unknown_note
def unknown_note(tokenizer, text: str) -> str | None:
    """What to say of `text`'s characters the model has no token for (`unknown_characters`), if any: the terminal,
    `chat.py --web`, the exported page and the Space's app say these words."""
    unknown = unknown_characters(tokenizer, text)
    if not unknown:
        return None
    named = [repr(character) for character in unknown[:8]] + (["others"] if len(unknown) > 8 else [])
    return (f"note: the model's vocabulary has no {listed(named, 'or')}: it reads "
            f"{'each' if len(unknown) > 1 else 'it'} as {tokenizer.unk_token}")


def prompt_ids(message: str, history: list[dict], max_new_tokens: int) -> torch.Tensor:
    """The conversation as token ids, the oldest turns dropped until prompt and reply fit the window; in text mode
    the passage, its newest tokens kept. Gradio 6 sends each earlier turn's content as a list of text parts: read
    as its text, not dropped."""
    said = [(turn.get("role"), message_text(turn.get("content"))) for turn in history] if WINDOW else []
    turns = [{"role": role, "content": text} for role, text in said
             if role in ("user", "assistant") and text is not None]
    if MODE == "text":
        ids = tokenizer(continued_passage(turns + [{"role": "user", "content": message}]), return_tensors="pt",
                        add_special_tokens=False)["input_ids"]
        return ids if WINDOW is None else ids[:, -(WINDOW - max_new_tokens):]
    while True:
        messages = turns + [{"role": "user", "content": message}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        if WINDOW is None or ids.shape[1] + max_new_tokens <= WINDOW or not turns:
            return ids if WINDOW is None else ids[:, -(WINDOW - max_new_tokens):]
        turns = turns[2:]


def reply(message: str, history: list[dict], temperature: float, max_new_tokens: int):
    """Stream the reply to `message`, piece by piece; a character the model has no token for is named in a toast,
    as pocketlm's chat names it beside the reply."""
    note = unknown_note(tokenizer, message)
    if note:  # a toast's text is HTML: the note names <unk>, and the characters it names can be any
        gr.Warning(html.escape(note))
    max_new_tokens = reply_budget(WINDOW, int(max_new_tokens))
    ids = prompt_ids(message, history, max_new_tokens)
    stop = threading.Event()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    options = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                   max_new_tokens=max_new_tokens, do_sample=True, temperature=float(temperature), top_k=50,
                   top_p=0.9, repetition_penalty=1.2, eos_token_id=STOP_IDS, pad_token_id=tokenizer.pad_token_id,
                   stopping_criteria=StoppingCriteriaList([StopWhenSet(stop)]))
    result = {}
    worker = threading.Thread(target=lambda: result.update(ids=model.generate(**options)), daemon=True)
    text = ""
    try:
        worker.start()
        for piece in streamer:
            text += piece
            yield text
    finally:  # the stop button closes this generator: end generation too
        stop.set()
        worker.join()
    if not text.strip():  # chat.py's words: the turn ended at once, or only hidden tokens or spaces were written
        new = result["ids"][0, ids.shape[1]:].tolist() if "ids" in result else []
        written = any(token not in STOP_IDS for token in new)
        yield "[no reply shown: the model wrote only special tokens or spaces]" if written else \
            "[no reply: the model ended its turn at once]"


# Copied from pocketlm.web.chatbot_as_written
def chatbot_as_written(**options):
    """A Gradio Chatbot that shows each message as written and sends it back with the next one unchanged. Gradio's
    own dedents every message (inspect.cleandoc: leading spaces, a common indentation and blank lines at either
    end go), so the history the page sent back was not the conversation the model had: a continuation lost its
    first space, a typed poem its indentation. And it renders Markdown, so a reply's '*', '_', '#' or indented
    lines showed as emphasis, headings and code, where the terminal and the exported page show what the model
    wrote. (HTML tags it still renders, through its sanitizer.)"""
    import gradio as gr
    from gradio.components.chatbot import TextMessage

    chatbot = gr.Chatbot(render_markdown=False, **options)
    dedenting = chatbot._postprocess_content
    # Changed on the instance: Gradio writes a .pyi file beside the source of any subclass of its components.
    chatbot._postprocess_content = lambda message: (TextMessage(text=message) if isinstance(message, str)
                                                    else dedenting(message))
    return chatbot


# Copied from pocketlm.web.AS_WRITTEN_CSS
AS_WRITTEN_CSS = ".message-content span.md { white-space: pre-wrap; }"


demo = gr.ChatInterface(
    reply,
    title=f"Continue a text with {MODEL_ID}" if MODE == "text" else f"Chat with {MODEL_ID}",
    description="A small language model trained with pocketlm. It imitates its training text and makes mistakes."
                + (" It was trained on plain text: it continues what you write." if MODE == "text" else ""),
    additional_inputs=[gr.Slider(0.1, 1.5, value=0.7, label="Temperature"),
                       gr.Slider(8, 256, value=128, step=8, label="Max new tokens")],
    chatbot=chatbot_as_written(),
    api_name="chat",
)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=1).launch(css=AS_WRITTEN_CSS)
