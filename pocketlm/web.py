"""`chat.py --web`: the terminal chat's conversation in a browser page, served by Gradio.

The page is a Gradio ChatInterface around the same `ChatInterface` the terminal uses, so the context window is
managed the same way. Each browser tab keeps its own history (Gradio holds it per session and sends it with every
message), the model is shared, and replies are generated one at a time in the order they were asked. Gradio is an
optional extra: `pip install -e '.[web]'`.
"""

import errno
import socket

from tokenization import message_text

from .chat import ChatInterface, describe_stats
from .errors import UsageError, require_extra
from .choices import BALANCED_SAMPLING, WEB_HOST, WEB_PORT
from .loading import model_name
from .wording import in_markdown

SETTINGS = ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens")


def require_gradio() -> None:
    require_extra("web", ("gradio",), "--web")


class WebChat:
    """The page's reply function: one shared model; the conversation comes from the page with every message."""

    def __init__(self, chat: ChatInterface):
        self.chat = chat  # holds the model, tokenizer and the defaults the command line set

    def check_setting(self, name: str):
        """The handler of one setting's field: keep a good value, refuse a bad one with a message in the page."""
        import gradio as gr

        def check(value, accepted: dict):
            try:
                ChatInterface.validate_option(name, value)
            except UsageError as error:
                gr.Warning(str(error), title="Setting out of range")
                return accepted[name], accepted
            return value, {**accepted, name: value}

        return check

    def reply(self, message: str, history: list[dict], system: str, *settings):
        """Yield the reply to `message` as it grows, and its figures once it ends."""
        import gradio as gr

        conversation = ChatInterface(self.chat.model, self.chat.tokenizer, use_context=self.chat.use_context,
                                     mode=self.chat.mode)
        try:
            conversation.set_options(**{**self.chat.options, **dict(zip(SETTINGS, settings))})
        except UsageError as error:
            raise gr.Error(str(error), title="Setting out of range")
        try:
            conversation.set_system(system.strip() or None)
        except UsageError as error:
            raise gr.Error(str(error), title="System text refused")
        # Gradio 6 sends each turn's content as a list of text parts.
        conversation.history = [{"role": turn["role"], "content": message_text(turn["content"]) or ""}
                                for turn in history if turn.get("role") in ("user", "assistant")]
        reply = ""
        try:
            for piece in conversation.stream(message):
                reply += piece
                yield reply, ""
        except UsageError as error:  # a turn the model's own template refuses: said in the page, as in the terminal
            raise gr.Error(str(error), title="Message refused")
        # A continuation keeps its first space or line break: the page sends it back as part of the passage.
        shown = reply if conversation.mode == "text" and reply.strip() else reply.strip()
        note = conversation.unknown_note(message)
        figures = describe_stats(conversation.last_stats)
        yield shown or conversation.empty_reply(), f"{in_markdown(note)}; {figures}" if note else figures


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


# The page's style: a message keeps its spaces, tabs and line breaks.
AS_WRITTEN_CSS = ".message-content span.md { white-space: pre-wrap; }"

def build_app(chat: ChatInterface):
    """The Gradio page for `chat`: messages, system text and sampling settings, figures, stop and reset."""
    import gradio as gr

    web = WebChat(chat)
    options = {**BALANCED_SAMPLING, **chat.options}
    name = model_name(chat.model.name_or_path) if chat.model.name_or_path else "a pocketlm model"
    text_mode = chat.mode == "text"
    with gr.Blocks(title=f"{'Continue a text' if text_mode else 'Chat'} with {name}") as app:
        gr.Markdown(f"### Chat with `{name}`" if not text_mode else
                    f"### Continue a text with `{name}`\n{name} was trained on plain text: it continues what you "
                    "write, and each message adds to the passage (`chat.py --mode chat` chats with it instead).")
        # Numbers, not sliders: a typed value reaches set_options, which says what is out of range.
        # Text mode has no system text (set_system refuses one): its field is not shown.
        system = gr.Textbox(label="System text", value=chat.system or "", elem_id="system", render=False,
                            visible=not text_mode)
        settings = [
            gr.Number(label=label, value=options[name], elem_id=name, precision=precision, render=False)
            for name, label, precision in (
                ("temperature", "Temperature", None), ("top_k", "Top-k", 0), ("top_p", "Top-p", None),
                ("repetition_penalty", "Repetition penalty", None), ("max_new_tokens", "Max new tokens", 0),
            )
        ]
        figures = gr.Markdown(elem_id="figures", render=False)
        interface = gr.ChatInterface(
            web.reply, additional_inputs=[system, *settings], additional_outputs=[figures],
            additional_inputs_accordion="Sampling" if text_mode else "System text and sampling",
            chatbot=chatbot_as_written(elem_id="chatbot", height=380), api_name="chat", fill_height=False,
        )
        with gr.Row():
            figures.render()
            reset = gr.Button("Reset", elem_id="reset", size="sm", scale=0, min_width=100)
        reset.click(lambda: ([], [], ""), None, [interface.chatbot, interface.chatbot_state, figures], queue=False)
        # A value out of range is refused where it is typed, with /params' message, and the field goes back to the
        # last good value: the page never sends it (a reply that failed would leave Gradio's input disabled).
        accepted = gr.State({name: options[name] for name in SETTINGS})
        for name, field in zip(SETTINGS, settings):
            for event in (field.blur, field.submit):
                # Through the queue (Gradio shows warnings only there), beside any reply being generated.
                event(web.check_setting(name), [field, accepted], [field, accepted], concurrency_limit=None)
    return app


def check_can_listen(host: str, port: int) -> None:
    """Bind `host`:`port` once to name what stands in the way, before the model is loaded: Gradio's own message is
    "Cannot find empty port" whatever the cause, after uvicorn has logged the real one."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UsageError(f"--host {host} is not a name or address this machine can resolve: use 127.0.0.1, or "
                         "0.0.0.0 to serve on every interface.")
    family, kind, protocol, _, address = addresses[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is in use by another program: pick another --port.")
            if error.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"--host {host} is not an address of this machine: use 127.0.0.1, or 0.0.0.0 to "
                                 "serve on every interface.")
            if error.errno == errno.EACCES:
                raise UsageError(f"port {port} needs administrator rights here: pick a --port above 1023.")
            raise UsageError(f"cannot serve on {host}:{port} ({error.strerror}): pick another --host or --port.")


def serve(chat: ChatInterface, host: str = WEB_HOST, port: int = WEB_PORT, share: bool = False) -> int:
    """Serve the page until Ctrl-C. Loopback only and no public link unless `host` or `share` say otherwise."""
    require_gradio()
    app = build_app(chat)
    # One reply at a time: they share the model and the CPU; the others wait their turn in Gradio's queue.
    app.queue(default_concurrency_limit=1)
    try:
        app.launch(server_name=host, server_port=port, share=share, inbrowser=False, prevent_thread_lock=False,
                   show_error=True, css=AS_WRITTEN_CSS)
    except OSError as error:
        raise UsageError(f"cannot serve on {host}:{port} ({error}): pick another --port.")
    return 0


__all__ = ["build_app", "serve", "require_gradio"]
