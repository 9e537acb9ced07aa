"""The terminal conversation of chat.py: a prompt, replies streamed as they come, and slash commands.

At the prompt Ctrl-C clears the line and asks again, as Python's and ollama's prompts do; Ctrl-D or /quit leaves.
During a reply Ctrl-C stops it and keeps what was said. With standard input not a terminal, each line is a turn
and each reply a line, so scripts can pipe a conversation through it.
"""

import json
import signal
import sys
from pathlib import Path

from .chat import NO_REPLY, ChatInterface, describe_stats
from .errors import UsageError

HELP = """commands:
  /help                  this text
  /reset                 forget the conversation
  /params                show the sampling settings; /params temperature=0.9 top_k=20 changes them
  /save FILE             write the conversation to FILE as JSON messages
  /stats                 tokens, time to first token and tokens/s of the last reply
  /quit                  leave (Ctrl-D too); Ctrl-C stops a reply, or clears the line at the prompt"""


class TerminalChat:
    """The terminal loop around a `ChatInterface`."""

    def __init__(self, chat: ChatInterface):
        self.chat = chat

    def run(self, interactive: bool | None = None) -> int:
        """The terminal loop. With standard input not a terminal, each line is a turn and each reply a line.

        At the prompt Ctrl-C clears the line and asks again, as Python's and ollama's prompts do; Ctrl-D or /quit
        leaves. During a reply Ctrl-C stops it and keeps what was said.
        """
        interactive = sys.stdin.isatty() if interactive is None else interactive
        if not interactive:
            return self._loop(interactive)
        print(f"chatting with {self.chat.model.name_or_path or 'a pocketlm model'}: /help for commands, "
              "Ctrl-D or /quit to leave")
        # Ctrl-C must raise KeyboardInterrupt even when this process was started with SIGINT ignored, as a
        # background job of a non-interactive shell is (and its children inherit): Python then installs no
        # handler, and Ctrl-C would silently do nothing. (The chat test failed that way in such a run.)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return self._loop(interactive)
        finally:
            signal.signal(signal.SIGINT, previous)

    def _loop(self, interactive: bool) -> int:
        while True:
            try:
                line = input("you> " if interactive else "")
            except EOFError:
                if interactive:
                    print()
                return 0
            except KeyboardInterrupt:
                if not interactive:
                    return 0
                print("\n(the line was cleared: Ctrl-D or /quit leaves)")
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if self._command(line) == "quit":
                    return 0
                continue
            self._print_reply(line, interactive)

    def _print_reply(self, line: str, interactive: bool) -> None:
        """Stream the reply to `line`; Ctrl-C anywhere in it, from its first moment, ends it with [stopped]."""
        shown = False
        try:
            if interactive:
                print("bot> ", end="", flush=True)
            for piece in self.chat.stream(line):
                shown = shown or bool(piece.strip())
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" [stopped]", end="")
            shown = True
        if interactive and not shown:
            # The model ended its turn at once: say so rather than leave a blank line.
            print(NO_REPLY, end="")
        print(flush=True)

    def _command(self, line: str) -> str | None:
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name in ("/quit", "/exit"):
            return "quit"
        if name == "/help":
            print(HELP)
        elif name == "/reset":
            self.chat.reset()
            print("conversation forgotten")
        elif name == "/params":
            try:
                changes = dict(item.split("=", 1) for item in argument.split()) if argument else {}
                self.chat.set_options(**changes)
            except (ValueError, UsageError) as error:
                message = str(error) if isinstance(error, UsageError) else "write /params name=value ..."
                print(f"error: {message}")
            print(" ".join(f"{k}={v}" for k, v in self.chat.options.items()))
        elif name == "/save":
            if not argument:
                print("error: write /save FILE")
            else:
                try:
                    Path(argument).write_text(json.dumps(self.chat.transcript(), ensure_ascii=False, indent=2) + "\n")
                    print(f"saved {len(self.chat.transcript())} messages to {argument}")
                except OSError as error:
                    print(f"error: could not write {argument}: {error.strerror}")
        elif name == "/stats":
            print(describe_stats(self.chat.last_stats) if self.chat.last_stats else "no reply yet")
        else:
            print(f"unknown command {name}: /help lists them")
        return None
