"""The terminal conversation of chat.py: a prompt, replies streamed as they come, and slash commands.

At the prompt Ctrl-C clears the line and asks again, as Python's and ollama's prompts do; Ctrl-D or /quit leaves.
During a reply Ctrl-C stops it and keeps what was said. With standard input not a terminal, each line is a turn
and each reply a line, so scripts can pipe a conversation through it. In text mode (a model trained on plain
text) each reply continues the text typed, and an empty line at the prompt asks for more of the same passage (a
new text of the model's own without context, where each message stands alone).
"""

import json
import signal
import sys
from pathlib import Path

from .chat import ChatInterface, check_text, describe_stats
from .errors import UsageError

HELP = """commands:
  /help                  this text
  /reset                 forget the conversation
  /retry                 answer the last message again, in place of its reply (a new sample of it)
  /undo                  forget the last message and its reply
  /params                show the sampling settings; /params temperature=0.9 top_k=20 changes them
  /system                show the system text; /system TEXT sets it, /system --clear drops it
  /save FILE             write the conversation to FILE as JSON messages (again to update it; a file this chat
                         did not write needs /save --overwrite FILE)
  /load FILE             continue a conversation /save wrote (its system text too)
  /stats                 tokens, time to first token and tokens/s of the last reply
  /quit                  leave (Ctrl-D too); Ctrl-C stops a reply, or clears the line at the prompt"""
TEXT_MODE_HELP = """text mode: the model continues what you type (it was trained on plain text; chat.py --mode chat
talks to it through the chat template instead); an empty line asks for {empty}"""
# What an empty line asks for in text mode: more of the passage, or, where each message stands alone, a new text.
EMPTY_LINE = {True: "more of the passage", False: "a new text of the model's own"}


class TerminalChat:
    """The terminal loop around a `ChatInterface`."""

    def __init__(self, chat: ChatInterface):
        self.chat = chat
        self.saved: set[Path] = set()  # the files /save wrote: updating one loses nothing

    def run(self, interactive: bool | None = None) -> int:
        """The terminal loop. With standard input not a terminal, each line is a turn and each reply a line.

        At the prompt Ctrl-C clears the line and asks again, as Python's and ollama's prompts do; Ctrl-D or /quit
        leaves. During a reply Ctrl-C stops it and keeps what was said.
        """
        interactive = sys.stdin.isatty() if interactive is None else interactive
        if not interactive:
            return self._loop(interactive)
        name = self.chat.model.name_or_path or "a pocketlm model"
        if self.chat.mode == "text":
            print(f"continuing text with {name}, trained on plain text (--mode chat to chat): type the start of a "
                  f"text, or an empty line for {EMPTY_LINE[self.chat.use_context]}; /help for commands, Ctrl-D or "
                  "/quit to leave")
        else:
            print(f"chatting with {name}: /help for commands, Ctrl-D or /quit to leave")
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
            if not line and not (interactive and self.chat.mode == "text"):  # text mode: more of the passage
                continue
            if line.startswith("/"):
                if self._command(line, interactive) == "quit":
                    return 0
                continue
            self._print_reply(line, interactive)

    def _print_reply(self, line: str, interactive: bool) -> None:
        """Stream the reply to `line`; Ctrl-C anywhere in it, from its first moment, ends it with [stopped]."""
        try:
            check_text(line, "that line")
        except UsageError as error:  # said, on standard error as the notes are, and the session goes on
            print(f"error: {error}", file=sys.stderr, flush=True)
            return
        shown = False
        note = self.chat.unknown_note(line)
        if note:  # on standard error: piped, standard output stays the replies alone
            print(note, file=sys.stderr, flush=True)
        try:
            if interactive:
                print("bot> ", end="", flush=True)
            for piece in self.chat.stream(line):
                shown = shown or bool(piece.strip())
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" [stopped]", end="")
            shown = True
        except UsageError as error:  # a setting the conversation cannot follow: said, and the session goes on
            print(f"error: {error}", end="")
            shown = True
        if interactive and not shown:  # said rather than left a blank line
            print(self.chat.empty_reply(), end="")
        print(flush=True)

    def _command(self, line: str, interactive: bool) -> str | None:
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name in ("/quit", "/exit"):
            return "quit"
        if name == "/help":
            text_mode = TEXT_MODE_HELP.format(empty=EMPTY_LINE[self.chat.use_context])
            print(HELP + ("\n" + text_mode if self.chat.mode == "text" else ""))
        elif name == "/reset":
            self.chat.reset()
            print("conversation forgotten")
        elif name in ("/retry", "/undo"):
            self._retry_or_undo(name, interactive)
        elif name == "/params":
            try:
                changes = dict(item.split("=", 1) for item in argument.split()) if argument else {}
                self.chat.set_options(**changes)
            except (ValueError, UsageError) as error:
                message = str(error) if isinstance(error, UsageError) else "write /params name=value ..."
                print(f"error: {message}")
            print(" ".join(f"{k}={v}" for k, v in self.chat.options.items()))
        elif name == "/system":
            self._system(argument)
        elif name == "/save":
            self._save(argument)
        elif name == "/load":
            self._load(argument)
        elif name == "/stats":
            print(describe_stats(self.chat.last_stats) if self.chat.last_stats else "no reply yet")
        else:
            print(f"unknown command {name}: /help lists them")
        return None

    def _retry_or_undo(self, name: str, interactive: bool) -> None:
        """/undo forgets the last exchange; /retry forgets it and asks its message again, so the new reply takes
        the old one's place in the conversation."""
        text = self.chat.undo()
        if text is None:
            print(f"nothing to {name[1:]}: no message yet")
        elif name == "/undo":
            print(f"forgot your last message and its reply: {_excerpt(text)}")
        else:
            self._print_reply(text, interactive)

    def _system(self, argument: str) -> None:
        """/system shows the system text, /system TEXT sets it for the turns to come, /system --clear drops it."""
        try:
            if argument:
                self.chat.set_system(None if argument == "--clear" else argument)
        except UsageError as error:
            print(f"error: {error}")
        print(f"system: {self.chat.system}" if self.chat.system else "no system text")

    def _load(self, argument: str) -> None:
        """/load FILE: continue the conversation in FILE; a file that holds none changes nothing. /save may then
        update FILE: the conversation it writes starts with what FILE holds."""
        if not argument:
            print("error: write /load FILE")
            return
        path = Path(argument).expanduser()
        try:
            messages = json.loads(path.read_text(encoding="utf-8"))
            self.chat.continue_from(messages)
        except OSError as error:
            print(f"error: could not read {argument}: {error.strerror}")
            return
        except (UnicodeDecodeError, ValueError, UsageError) as error:
            reason = str(error) if isinstance(error, UsageError) else "it is not a JSON file"
            print(f"error: {argument}: {reason.rstrip('.')}; the conversation was not changed.")
            return
        self.saved.add(path.resolve())
        print(f"loaded {len(self.chat.transcript())} messages from {argument}")

    def _save(self, argument: str) -> None:
        """/save FILE: the conversation as JSON messages; a file this chat did not write is replaced only with
        --overwrite (`/save notes.txt` must not lose the notes)."""
        overwrite = argument.startswith("--overwrite")
        name = argument.removeprefix("--overwrite").strip()
        if not name:
            print("error: write /save FILE")
            return
        path = Path(name).expanduser()
        if path.exists() and not path.is_dir() and not overwrite and path.resolve() not in self.saved:
            print(f"error: {name} already exists and this chat did not write it: choose another name, or "
                  f"/save --overwrite {name}")
            return
        messages = self.chat.transcript()
        try:
            path.write_text(json.dumps(messages, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            print(f"error: could not write {name}: {error.strerror}")
            return
        self.saved.add(path.resolve())
        print(f"saved {len(messages)} messages to {name}")


def _excerpt(text: str, width: int = 60) -> str:
    """A message on one short line."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."
