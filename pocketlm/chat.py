"""Multi-turn chat with a trained model: the ChatInterface API behind chat.py, its web page and the Python API.

Turns go through the tokenizer's chat template. When the conversation outgrows the model's context window,
the oldest turns go first; the system text and the current message always stay (a message too long on its
own keeps its end). Replies stream token by token and stop at the end-of-turn token.

A model trained on plain text (a book, notes, code) never saw the chat template's role tokens, so it is not
chatted with but asked to continue what is typed, as nanoGPT's and char-rnn's samplers do: the "text" mode, which
its training record picks by default. With context the passage grows, each message on a line of its own after
what the model wrote, and its oldest tokens go when it outgrows the window.
"""

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jinja2
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from tokenization import message_text

from .errors import UsageError
from .choices import BALANCED_SAMPLING, CHAT_MODES, DEFAULT_MAX_NEW_TOKENS, OPTION_RANGES
from .generation import context_window, padding_id, reply_budget, sampling_arguments, stop_token_ids
from .loading import default_runtime, load_pretrained, trained_mode
from .wording import counted, listed


def _yes_or_no(value) -> bool:
    """A switch as typed (`do_sample=off`), or as a caller passes it; anything else is refused, not read as off."""
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if str(value).strip().lower() not in words:
        raise ValueError(value)
    return words[str(value).strip().lower()]


GENERATION_OPTIONS = {
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "repetition_penalty": float,
    "max_new_tokens": int,
    "do_sample": _yes_or_no,
}
NO_REPLY = "[no reply: the model ended its turn at once]"
# A reply of special tokens or spaces alone (a fine-tuning's <|tool|>, hidden as transformers' pipelines hide
# special tokens) has nothing to show either, but the model did not end its turn at once: said as such.
HIDDEN_REPLY = "[no reply shown: the model wrote only special tokens or spaces]"


def describe_stats(stats: dict) -> str:
    """A reply's figures in one line: what `/stats` prints and the web page shows under each reply."""
    first = stats["time_to_first_token"]
    # A reply can end before any visible text (an end-of-turn token first): say so, keep the rest.
    shown = f"first token after {first:.3f} s" if first is not None else "no visible text"
    new, prompt = stats["new_tokens"], stats["prompt_tokens"]
    return (f"{counted(new, 'token')} in {stats['seconds']:.2f} s ({stats['tokens_per_second']:.1f} tokens/s), "
            f"{shown}, prompt {counted(prompt, 'token')}")


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


def check_text(text: str, what: str = "the message") -> None:
    """Refuse text that holds lone surrogates, which no tokenizer can encode: Python reads bytes a terminal, a piped
    file or the command line sent in another encoding than its own as such, and they stopped the chat with a
    TypeError from the tokenizer."""
    if any("\ud800" <= character <= "\udfff" for character in text):
        raise UsageError(f"{what} holds bytes that are not text in {getattr(sys.stdin, 'encoding', None) or 'UTF-8'}"
                         ", the encoding this terminal reads: type it in a UTF-8 terminal, or convert a file first "
                         "(iconv -f cp1252 -t utf-8 FILE).")


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


def unknown_note(tokenizer, text: str) -> str | None:
    """What to say of `text`'s characters the model has no token for (`unknown_characters`), if any: the terminal,
    `chat.py --web`, the exported page and the Space's app say these words."""
    unknown = unknown_characters(tokenizer, text)
    if not unknown:
        return None
    named = [repr(character) for character in unknown[:8]] + (["others"] if len(unknown) > 8 else [])
    return (f"note: the model's vocabulary has no {listed(named, 'or')}: it reads "
            f"{'each' if len(unknown) > 1 else 'it'} as {tokenizer.unk_token}")


class _StopWhenSet(StoppingCriteria):
    """Lets Ctrl-C end a reply between two tokens, from the thread that reads the stream."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ChatInterface:
    """A conversation with a pocketlm model.

    `model` is a loaded model or a folder / Hub repo id; the tokenizer comes from the model's folder when not
    given; `device`, `dtype` ("float32", "float16", "bfloat16" or "int8") and `runtime` ("torch", or "onnx" for
    onnxruntime; by default torch, onnxruntime for an export of ONNX graphs alone) apply when it is loaded here.
    `use_context=False` answers each message on its own (the old LSTM behaviour). `mode` is "chat" (a reply
    through the chat template) or "text" (the message continued, for a model trained on plain text); by default
    the one the model's training record names. Keyword arguments are generation options (temperature, top_k,
    top_p, repetition_penalty, max_new_tokens, do_sample).
    """

    def __init__(self, model, tokenizer=None, use_context: bool = True, system: str | None = None,
                 device: str | torch.device = "cpu", dtype: str = "float32", runtime: str | None = None,
                 mode: str | None = None, **generation_options):
        if mode is not None and mode not in CHAT_MODES:
            raise UsageError(f"unknown mode {mode!r}: choose " + " or ".join(f"{name} ({what})" for name, what in
                                                                         CHAT_MODES.items()) + ".")
        named = model
        if isinstance(model, (str, Path)):
            model, loaded_tokenizer = load_pretrained(str(model), device, dtype, runtime or default_runtime(str(model)))
            tokenizer = tokenizer or loaded_tokenizer
        elif tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        self.model = model.eval()
        self.tokenizer = tokenizer
        # Once loaded: a missing model is named by load_pretrained's message. A tokenizer without a chat template
        # (the export of a model trained on plain text) can only continue text.
        if mode == "chat" and tokenizer.chat_template is None:
            raise UsageError(f"{getattr(model, 'name_or_path', None) or 'this model'} has no chat template (an export "
                             "of a model trained on plain text carries none): it continues text; drop --mode chat.")
        self.mode = mode or trained_mode(named, tokenizer)
        self.use_context = use_context
        self.system = None
        self.history: list[dict] = []
        self._whole_for: tuple[str | None, bool] = (None, False)  # the template last probed, and what it showed
        self.options = {**BALANCED_SAMPLING, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
        self.set_options(**generation_options)
        self.set_system(system)
        self.last_stats: dict | None = None
        self._stop = threading.Event()

    # ----------------------------------------------------------------------------------------- settings

    def set_options(self, **options) -> None:
        """Change generation options; unknown names or values out of range raise UsageError and change none
        (`/params temperature=0.5 top_k=abc` changed the temperature before refusing top_k)."""
        self.options.update({name: self.validate_option(name, value) for name, value in options.items()})

    @staticmethod
    def validate_option(name: str, value):
        """`value` as the option `name` takes it; an unknown name or a value out of range raises UsageError."""
        if name not in GENERATION_OPTIONS:
            raise UsageError(f"unknown setting {name!r}: choose from {', '.join(GENERATION_OPTIONS)}.")
        try:
            value = GENERATION_OPTIONS[name](value)
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"{name}={value!r} is not a valid {name} value: {OPTION_RANGES[name]}.")
        limits = {"temperature": 0 < value < float("inf"), "top_k": value >= 0, "top_p": 0 < value <= 1,
                  "repetition_penalty": 0 < value < float("inf"), "max_new_tokens": value > 0}
        if not limits.get(name, True):
            raise UsageError(f"{name}={value} is out of range: {OPTION_RANGES[name]}.")
        return value

    def set_system(self, system: str | None) -> None:
        """Set the system text (None or empty drops it); one the model's window cannot hold beside a reply and a
        message raises UsageError and changes nothing, as does any in text mode, which has no place for one."""
        check_text(system or "", "the system text")
        if system and self.mode == "text":
            raise UsageError("a system text is for chat: in text mode the model continues what is typed, so put "
                             "the text to continue in the message, or chat with --mode chat.")
        self._check_system(system or None, self.options["max_new_tokens"])
        self.system = system or None

    def _check_system(self, system: str | None, max_new_tokens: int) -> None:
        """A system text longer than the window leaves (it always stays in the prompt) ended the reply in a
        traceback from the model: refused here, in one line naming its size and the room."""
        window = context_window(self.model)
        if not system or window is None:
            return
        reply = reply_budget(window, max_new_tokens)
        # Measured inside a conversation, not on its own: a template may put the system text in the first user turn
        # (Llama 2's), where on its own it renders nothing. The room is what a message of one character leaves.
        message = [{"role": "user", "content": "."}]
        bare = len(self._encode(message, generation_prompt=True))
        size = len(self._encode([{"role": "system", "content": system}, *message], generation_prompt=True)) - bare
        room = window - reply - bare
        if size > room:
            raise UsageError(f"the system text is {size:,} tokens, and this model's {window:,}-token window leaves "
                             f"it {max(room, 0):,} beside a reply of {reply:,}: shorten it, or lower max_new_tokens.")

    def reset(self) -> None:
        """Forget the conversation (the system text stays)."""
        self.history = []

    def undo(self) -> str | None:
        """Forget the last exchange, the user's message and the reply to it, and give back the message (None when
        there is none: a fresh chat, or a loaded one that holds no message of the user's)."""
        for at in reversed(range(len(self.history))):
            if self.history[at]["role"] == "user":
                text, self.history = self.history[at]["content"], self.history[:at]
                return text
        return None

    # --------------------------------------------------------------------------------------------- prompt

    def _render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                                      tokenize=False)
        except jinja2.TemplateError as error:  # a model's own template may refuse a turn (Gemma's, a system text)
            name = getattr(self.model, "name_or_path", None) or "this model"
            raise UsageError(f"{name}'s chat template refuses this conversation ({str(error).rstrip('.')}): leave "
                             "out what it names (a system text, say), or continue text with --mode text.") from None

    def _encode(self, messages: list[dict], generation_prompt: bool = False) -> list[int]:
        # verbose=False: a conversation longer than the window is expected and trimmed by prompt_ids.
        return self.tokenizer(self._render(messages, generation_prompt), add_special_tokens=False,
                              verbose=False).input_ids

    def _renders_whole(self) -> bool:
        """Whether the template renders a conversation otherwise than as its messages rendered one by one and
        joined, so that a prompt must be rendered whole: Llama 2's puts the system text inside the first user turn
        and refuses a history that opens with a reply, Llama 3's opens every rendering with its begin-of-text token,
        Qwen's gives one without a system text a default one. pocketlm's and plain ChatML's do not, and their
        prompts are joined from each message's tokens, each rendered once."""
        template = self.tokenizer.chat_template
        if self._whole_for[0] != template:
            self._whole_for = (template, self._probe_whole())
        return self._whole_for[1]

    def _probe_whole(self) -> bool:
        turns = [{"role": role, "content": text} for role, text in (("user", "A"), ("assistant", "B"), ("user", "C"))]
        for probe in ([{"role": "system", "content": "S"}, *turns], turns):  # Gemma's refuses a system text
            try:
                whole = self._render(probe, generation_prompt=True)
            except UsageError:
                continue
            try:
                cue = self._render(probe[-1:], generation_prompt=True)[len(self._render(probe[-1:])) :]
                return whole != "".join(self._render([message]) for message in probe) + cue
            except UsageError:  # refuses a message on its own: a reply without the turn before it, say
                return True
        return False  # refuses even a plain exchange: each prompt says so

    def _message_opening(self) -> int:
        """How many tokens open a user's message before its text: its role token (pocketlm's <|user|>), or more
        (ChatML's <|im_start|>, "user" and a line break). A message too long for the window keeps them."""
        message, empty = (self._encode([{"role": "user", "content": text}]) for text in (".", ""))
        return next((at for at, (a, b) in enumerate(zip(message, empty)) if a != b), min(len(message), len(empty)))

    def _reply_cue(self) -> list[int]:
        """The tokens the template appends to ask for the assistant's turn (templates refuse an empty chat)."""
        probe = [{"role": "user", "content": "."}]
        return self._encode(probe, generation_prompt=True)[len(self._encode(probe)) :]

    def passage(self, text: str) -> str:
        """Text mode: the text the model continues for the message `text`, after the conversation's when it keeps
        context (continued_passage)."""
        return continued_passage([*(self.history if self.use_context else []), {"role": "user", "content": text}])

    def prompt_ids(self, text: str, max_new_tokens: int) -> list[int]:
        """The prompt for a reply to `text`: system, as many recent turns as fit, the message, the reply cue; in
        text mode the passage to continue, its newest tokens where it outgrows the window."""
        window = context_window(self.model)
        budget = None if window is None else window - max_new_tokens
        if self.mode == "text":
            ids = self.tokenizer(self.passage(text), add_special_tokens=False, verbose=False).input_ids
            # Nothing to continue: begin a text, as training's documents begin after an end-of-text token.
            return ids[-budget:] if budget is not None and ids else ids or [self.tokenizer.eos_token_id]
        self._check_system(self.system, max_new_tokens)  # max_new_tokens may have grown since it was set
        system = [{"role": "system", "content": self.system}] if self.system else []
        if self._renders_whole():
            return self._whole_prompt(system, self.history if self.use_context else [], text, budget)
        fixed = self._encode(system) if system else []
        message = self._encode([{"role": "user", "content": text}])
        cue = self._reply_cue()
        if budget is not None and len(fixed) + len(message) + len(cue) > budget:
            # Too long on its own: keep the message's end (what opens it first), drop its beginning.
            opening = self._message_opening()
            keep = max(1, budget - len(fixed) - len(cue) - opening)
            message = message[:opening] + message[opening:][-keep:]
            return fixed + message + cue
        turns: list[int] = []
        if self.use_context:
            room = None if budget is None else budget - len(fixed) - len(message) - len(cue)
            for earlier in reversed(self.history):  # newest first, until the window is full
                ids = self._encode([earlier])
                if room is not None and len(ids) > room:
                    break
                turns = ids + turns
                room = None if room is None else room - len(ids)
        return fixed + turns + message + cue

    def _whole_prompt(self, system: list[dict], history: list[dict], text: str, budget: int | None) -> list[int]:
        """prompt_ids for a template that renders a conversation only whole (_renders_whole): the system text, the
        newest turns that fit and the template takes (one that wants the user first refuses a history opening with
        a reply: it opens a turn later), the message; a message too long on its own keeps its end."""
        def render(turns: list[dict], message: str) -> list[int]:
            return self._encode([*system, *turns, {"role": "user", "content": message}], generation_prompt=True)

        prompt = render([], text)  # what the template refuses here, it refuses in every prompt: said as it is
        if budget is not None and len(prompt) > budget:
            # Too long on its own: the fewest first characters to drop (_check_system leaves room for one).
            low, high = 0, len(text)
            while low < high:
                middle = (low + high) // 2
                low, high = (low, middle) if len(render([], text[middle:])) <= budget else (middle + 1, high)
            return render([], text[low:])
        for start in reversed(range(len(history))):  # one more turn each time, until the window is full
            try:
                ids = render(history[start:], text)
            except UsageError:
                continue
            if budget is not None and len(ids) > budget:
                break
            prompt = ids
        return prompt

    # --------------------------------------------------------------------------------------------- replies

    def stream(self, text: str) -> Iterator[str]:
        """Yield the reply to `text` piece by piece; the exchange joins the history when the reply ends."""
        check_text(text)
        max_new = reply_budget(context_window(self.model), self.options["max_new_tokens"])
        ids = torch.tensor([self.prompt_ids(text, max_new)], device=self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
        self._stop.clear()
        options = {k: v for k, v in self.options.items() if k != "max_new_tokens"}
        if not options.get("do_sample", True):
            options = {"do_sample": False, "repetition_penalty": options.get("repetition_penalty", 1.0)}
        options = sampling_arguments(self.model.generation_config, options)
        kwargs = dict(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, streamer=streamer,
            eos_token_id=stop_token_ids(self.tokenizer, self.model.generation_config),
            pad_token_id=padding_id(self.tokenizer),
            stopping_criteria=StoppingCriteriaList([_StopWhenSet(self._stop)]), **options,
        )
        result: dict = {}

        def run():
            result["ids"] = self.model.generate(**kwargs)

        worker = threading.Thread(target=run, daemon=True)
        started = time.perf_counter()
        first = None
        pieces: list[str] = []
        try:
            worker.start()  # inside: a Ctrl-C that lands while the thread starts still stops it below
            for piece in streamer:
                if piece:
                    first = first or time.perf_counter()
                    pieces.append(piece)
                    yield piece
        finally:  # also on Ctrl-C or when the caller stops reading: end generation, keep what was said
            self._stop.set()
            if worker.ident is not None:  # started
                worker.join()
            elapsed = time.perf_counter() - started
            new = result["ids"][0, ids.shape[1]:].tolist() if "ids" in result else []
            self.last_stats = {
                "prompt_tokens": ids.shape[1],
                "new_tokens": len(new),
                "written_tokens": sum(token not in kwargs["eos_token_id"] for token in new),  # less the stop
                "seconds": elapsed,
                "time_to_first_token": (first - started) if first else None,
                "tokens_per_second": len(new) / elapsed if elapsed > 0 else 0.0,
            }
            # A continuation keeps its spaces and line breaks: the passage goes on from its last character.
            reply = "".join(pieces) if self.mode == "text" else "".join(pieces).strip()
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]

    def unknown_note(self, text: str) -> str | None:
        """What to say of `text`'s characters the model has no token for, if any (`unknown_note`)."""
        return unknown_note(self.tokenizer, text)

    def empty_reply(self) -> str:
        """What to show for the last reply when it has no text to show: the model ended its turn at once, or wrote
        only special tokens or spaces."""
        return HIDDEN_REPLY if self.last_stats and self.last_stats["written_tokens"] else NO_REPLY

    def reply(self, text: str) -> str:
        """The whole reply to `text`; in text mode the continuation as written, its first space or line break kept."""
        reply = "".join(self.stream(text))
        return reply if self.mode == "text" else reply.strip()

    def transcript(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history

    def continue_from(self, messages) -> None:
        """Take up a conversation `transcript()` gave (what /save writes), or a `{"messages": [...]}` record of the
        training data: its system text and turns replace this chat's. Anything else raises UsageError and changes
        nothing."""
        if isinstance(messages, dict) and "messages" in messages:
            messages = messages["messages"]
        if not isinstance(messages, list) or not messages:
            raise UsageError("it holds no conversation: a JSON list of messages, as /save writes, is expected.")
        for number, message in enumerate(messages, 1):
            if not (isinstance(message, dict) and message.get("role") in ("system", "user", "assistant")
                    and message_text(message.get("content")) is not None):
                raise UsageError(f"message {number} is not a role (system, user or assistant) with a content "
                                 "string or list of text parts.")
            if message["role"] == "system" and number > 1:
                raise UsageError(f"message {number} is a system message: only the first may be.")
            if message["role"] == "system" and self.mode == "text":
                raise UsageError("it opens with a system text, which is for chat: continue it with --mode chat.")
        # Text parts (an OpenAI or Gradio transcript) read as the text they hold, as in the training data.
        messages = [{"role": m["role"], "content": message_text(m["content"])} for m in messages]
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        self._check_system(system, self.options["max_new_tokens"])
        self.system, self.history = system or None, messages[1 if system is not None else 0 :]
