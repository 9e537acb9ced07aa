"""chat.py and ChatInterface: the real program in a pseudo-terminal, piped input, --prompt, and the API."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
from conftest import (REPO_ROOT, TINY_SHAPES, assert_one_line_error, broken_characters, make_text, run_at_once,
                      run_entry, train_tiny_models, writing_only)

from pocketlm.chat import ChatInterface, unknown_characters
from pocketlm.cli import chat_main
from pocketlm.errors import UsageError
from pocketlm.training import TrainingOptions, train

CHAT_SHAPES = {**TINY_SHAPES, "transformer": {**TINY_SHAPES["transformer"], "block_size": 96}}


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny models of both families, trained for a few steps on the built-in dialogs."""
    return train_tiny_models(tmp_path_factory, "chat", CHAT_SHAPES, max_steps=10)


@pytest.fixture(scope="module")
def endless_models(chat_models, tmp_path_factory) -> dict[str, Path]:
    """Models told never to end a reply before 5,000 tokens, so Ctrl-C lands mid-reply.

    The Transformer gets an 8,192-token window so such a reply fits.
    """
    wide = tmp_path_factory.mktemp("wide")
    train(TrainingOptions(output_dir=str(wide), model_config={**TINY_SHAPES["transformer"], "block_size": 8192},
                          block_size=32, batch_size=4, max_steps=2, vocab_size=400, samples=0))
    folders = {}
    for family, source in (("transformer", wide), ("lstm", chat_models["lstm"])):
        target = tmp_path_factory.mktemp(f"endless-{family}")
        shutil.copytree(source, target, dirs_exist_ok=True)
        config = json.loads((target / "generation_config.json").read_text())
        config["min_new_tokens"] = 5000
        (target / "generation_config.json").write_text(json.dumps(config))
        folders[family] = target
    return folders


def chat_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "chat.py"), *args]


def run_chat(*args: str, stdin: str = "", cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(chat_command(*args), input=stdin, capture_output=True, text=True, timeout=300, cwd=cwd)


def spawn_chat(*args: str, preexec_fn=None) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, [str(REPO_ROOT / "chat.py"), *args], cwd=str(REPO_ROOT), encoding="utf-8",
                          timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"}, dimensions=(40, 200),
                          preexec_fn=preexec_fn)
    child.expect("you> ")
    return child


def exit_status(child: pexpect.spawn) -> int:
    """The chat's exit status once its output has ended. Waited for: `close()` alone gives a process still in
    its exit (torch's teardown, slow on a busy machine) 0.1 s and then kills it, which reads as no exit status."""
    child.expect(pexpect.EOF)
    status = child.wait()
    child.close()
    return status


def say(child: pexpect.spawn, text: str) -> str:
    """Send a line and return what came back before the next prompt."""
    child.sendline(text)
    child.expect("you> ")
    return child.before


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_a_terminal_session(family, chat_models, tmp_path):
    child = spawn_chat("--model", str(chat_models[family]), "--seed", "3", "--context")
    assert "bot> " in say(child, "Hello there")
    assert "bot> " in say(child, "Ça va? 🙂 你好 مرحبا שלום")
    assert "bot> " in say(child, "a very long message " * 400)  # far beyond the 96-token window
    assert "bot> " not in say(child, "")  # empty input: just a new prompt
    assert "temperature=0.9" in say(child, "/params temperature=0.9 top_k=20")
    assert "top_k=20" in say(child, "/params")
    assert "error" in say(child, "/params temperature=hot")
    assert "tokens/s" in say(child, "/stats")
    transcript = tmp_path / "chat.json"
    assert "saved 6 messages" in say(child, f"/save {transcript}")
    messages = json.loads(transcript.read_text())
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert messages[1]["content"] == messages[1]["content"].strip()
    # /save again updates the file it wrote; a file the chat did not write is kept unless --overwrite is given.
    assert "bot> " in say(child, "One more")
    assert "saved 8 messages" in say(child, f"/save {transcript}")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert "already exists and this chat did not write it" in say(child, f"/save {notes}")
    assert notes.read_text() == "my notes"
    assert "saved 8 messages" in say(child, f"/save --overwrite {notes}")
    assert json.loads(notes.read_text()) == json.loads(transcript.read_text())
    assert "forgotten" in say(child, "/reset")
    assert "commands:" in say(child, "/help")
    child.sendline("/quit")
    assert exit_status(child) == 0


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("family", ["transformer", "lstm"])
@pytest.mark.parametrize("started", ["from a terminal", "with SIGINT ignored"])
def test_ctrl_c_stops_a_reply_and_the_session_goes_on(family, started, endless_models):
    # A background job of a non-interactive shell starts with SIGINT ignored, and so do its children: the suite
    # run that way once saw Ctrl-C do nothing. The chat must answer Ctrl-C however it was started.
    child = spawn_chat("--model", str(endless_models[family]), "--max-new-tokens", "5000",
                       preexec_fn=_ignore_sigint if started == "with SIGINT ignored" else None)
    child.sendline("Tell me everything")
    child.expect("bot> ")
    time.sleep(0.5)
    child.sendintr()
    child.expect(r"\[stopped\]")
    child.expect("you> ")
    assert "tokens" in say(child, "/stats")
    child.sendline("And again")
    child.expect("bot> ")
    child.sendintr()  # at once, as the reply starts
    child.expect(r"\[stopped\]")
    child.expect("you> ")
    child.send("half a line")
    child.sendintr()  # at the prompt: the line is cleared and the prompt comes back, as in python or ollama
    child.expect("cleared")
    child.expect("you> ")
    child.sendeof()  # Ctrl-D leaves
    assert exit_status(child) == 0


def test_a_reply_with_nothing_to_show_says_whether_the_model_ended_its_turn_or_hid_what_it_wrote(chat_models,
                                                                                                  tmp_path):
    """A reply that ends at once is said, rather than left a blank line. So is one of special tokens alone (a
    fine-tuning's <|tool|>, hidden as transformers' pipelines hide them), which used to be said as ending at once:
    in the terminal and on `chat.py --web`'s page alike (both ask `ChatInterface.empty_reply`)."""
    from pocketlm.web import SETTINGS, WebChat

    silent = writing_only(chat_models["transformer"], tmp_path / "silent", "<|end|>")
    hiding = writing_only(chat_models["transformer"], tmp_path / "hiding", "<|user|>")
    for folder, said in ((silent, "[no reply: the model ended its turn at once]"),
                         (hiding, "[no reply shown: the model wrote only special tokens or spaces]")):
        chat = ChatInterface(str(folder))
        shown, _ = list(WebChat(chat).reply("Hello", [], "", *[chat.options[name] for name in SETTINGS]))[-1]
        assert shown == said
    child = spawn_chat("--model", str(hiding))
    assert "[no reply shown: the model wrote only special tokens or spaces]" in say(child, "Hello")
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_characters_the_model_has_no_token_for_are_named_beside_its_reply(chat_models):
    """A character model's vocabulary holds its training text's characters only: it reads any other (a snowman, an
    emoji) as <unk>, all alike, and its odd reply to them said nothing of why. The terminal names them on standard
    error before the reply (its standard output stays the replies alone); a byte-level BPE, which has a token for
    every byte, names none. (The web chats: tests/test_web.py.)"""
    lstm = ChatInterface(str(chat_models["lstm"]))
    assert unknown_characters(lstm.tokenizer, "Hi ☃ and 😀, ☃") == ["☃", "😀"]
    assert unknown_characters(ChatInterface(str(chat_models["transformer"])).tokenizer, "Hi ☃ and 😀") == []
    note = "note: the model's vocabulary has no '☃' or '😀': it reads each as <unk>"
    result = run_chat("--model", str(chat_models["lstm"]), "--greedy", "--max-new-tokens", "4",
                      stdin="Hi ☃ and 😀\nHello\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count(note) == 1 and "note:" not in result.stdout  # "Hello" needs none


def test_ctrl_d_at_the_prompt_leaves_cleanly(chat_models):
    child = spawn_chat("--model", str(chat_models["lstm"]))
    child.sendeof()
    assert exit_status(child) == 0


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_prompt_flag_prints_one_reproducible_reply(family, chat_models):
    first, second = run_at_once(*[chat_command("--model", str(chat_models[family]), "--prompt", "Hello", "--seed",
                                               "11")] * 2)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout == second.stdout and first.stdout.strip()
    assert "you>" not in first.stdout


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_piped_input_is_script_friendly(family, chat_models):
    result = run_chat("--model", str(chat_models[family]), "--greedy", "--max-new-tokens", "8",
                      stdin="Hello\nHow are you?\n/stats\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "you>" not in result.stdout and "bot>" not in result.stdout
    assert "tokens/s" in result.stdout


def test_the_model_named_bare_is_the_model_named_with_its_option_and_two_are_sent_to_compare(chat_models):
    """compare.py, export.py and hub_upload.py take MODEL bare, chat.py only --model: `chat.py MODEL` was refused."""
    model, other = str(chat_models["transformer"]), str(chat_models["lstm"])
    reply = ["--greedy", "--max-new-tokens", "8", "--prompt", "Hello"]
    bare, named, both = (run_entry(chat_main, *args, *reply) for args in ([model], ["--model", model],
                                                                          [model, "--model", model]))
    assert bare.returncode == 0, bare.stderr[-2000:]
    assert bare.stdout == named.stdout == both.stdout and bare.stdout.strip()
    for two in ([model, other], [model, "--model", other]):
        refused = run_entry(chat_main, *two, *reply)
        assert refused.returncode == 2 and not refused.stdout
        assert refused.stderr.strip().splitlines() == [
            f"error: chat.py talks with one model, got 2 ({model}, {other}): name one, or put them side by side "
            f"with: python compare.py {model} {other} (see chat.py --help)"]


def test_retry_answers_the_last_message_again_in_place_of_its_reply_and_undo_forgets_it(endless_models, tmp_path):
    """A small model's reply is often a bad one: the terminal had no way to ask again but to type the message anew,
    which kept the bad reply in the conversation."""
    model = ["--model", str(endless_models["transformer"]), "--max-new-tokens", "8"]  # replies never empty
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    sampled = run_chat(*model, "--seed", "3", stdin=f"Hello\n/retry\n/retry\n/save {first}\nHow are you?\n/undo\n"
                                                    f"/save {second}\n/undo\n/undo\n/retry\n")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    lines = sampled.stdout.splitlines()
    assert lines[3] == f"saved 2 messages to {first}"
    # Two retries leave one exchange: the message once, and the last reply printed.
    assert json.loads(first.read_text()) == [{"role": "user", "content": "Hello"},
                                             {"role": "assistant", "content": lines[2].strip()}]
    assert lines[5] == "forgot your last message and its reply: How are you?"
    assert json.loads(second.read_text()) == json.loads(first.read_text())
    assert lines[7:] == ["forgot your last message and its reply: Hello", "nothing to undo: no message yet",
                         "nothing to retry: no message yet"]
    # The retried reply's prompt is the first reply's: the same message with the same context, the old reply not in
    # it. Asked anew instead, the message's prompt holds the old exchange.
    stats = run_chat(*model, "--seed", "3", stdin="Hello\nHow are you?\n/stats\n/retry\n/stats\nHow are you?\n/stats\n")
    assert stats.returncode == 0, stats.stderr[-2000:]
    prompts = [line.rsplit("prompt ", 1)[1] for line in stats.stdout.splitlines() if "tokens/s" in line]
    assert prompts[0] == prompts[1] != prompts[2], prompts


def test_a_conversation_saved_and_loaded_continues_as_the_unbroken_one_and_a_bad_file_changes_nothing(chat_models,
                                                                                                    tmp_path):
    """/save had no way back: a conversation could be written but never taken up again, and the system text set
    only by --system when the chat started."""
    model = ["--model", str(chat_models["transformer"]), "--greedy", "--max-new-tokens", "8"]
    first, whole, resumed = tmp_path / "first.json", tmp_path / "whole.json", tmp_path / "resumed.json"
    unbroken = run_chat(*model, stdin=f"/system Answer briefly.\nHello there\n/save {first}\nWhat is your name?\n"
                                      f"/save {whole}\n")
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    assert "system: Answer briefly." in unbroken.stdout
    notes = tmp_path / "notes.txt"
    notes.write_text("not a conversation")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]))
    later = run_chat(*model, stdin=f"/load {first}\n/load {notes}\n/load {broken}\n/load {tmp_path / 'none.json'}\n"
                                   f"/system\nWhat is your name?\n/save {resumed}\n")
    assert later.returncode == 0, later.stderr[-2000:]
    assert f"loaded 3 messages from {first}" in later.stdout
    assert f"error: {notes}: it is not a JSON file; the conversation was not changed." in later.stdout
    assert f"error: {broken}: message 2 is a system message: only the first may be; the conversation was not " \
           "changed." in later.stdout
    assert "error: could not read" in later.stdout and "system: Answer briefly." in later.stdout
    saved = json.loads(resumed.read_text())
    assert saved == json.loads(whole.read_text())  # the same turns, and the same greedy reply to the last
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    # Taken up through the API, the next prompt is the unbroken conversation's, not a fresh chat's.
    chat, fresh = ChatInterface(chat_models["transformer"]), ChatInterface(chat_models["transformer"])
    chat.continue_from({"messages": saved})
    assert chat.transcript() == saved and chat.prompt_ids("And?", 8) != fresh.prompt_ids("And?", 8)
    assert chat.tokenizer.decode(chat.prompt_ids("And?", 8)).startswith("<|system|>Answer briefly.<|end|><|user|>"
                                                                         "Hello there<|end|>")
    with pytest.raises(UsageError, match="message 1 is not a role"):
        chat.continue_from([{"role": "narrator", "content": "x"}])
    # An OpenAI or Gradio transcript gives each content as text parts: it was "message 1 is not a role ... with a
    # content string"; it is taken up as the same conversation.
    as_parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in saved]
    parted = ChatInterface(chat_models["transformer"])
    parted.continue_from(as_parts)
    assert parted.transcript() == saved and parted.prompt_ids("And?", 8) == chat.prompt_ids("And?", 8)
    with pytest.raises(UsageError, match="message 2 is not a role"):
        chat.continue_from([saved[0], {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    assert chat.transcript() == saved


def test_a_system_text_the_window_cannot_hold_is_refused_in_one_line_and_the_session_goes_on(chat_models):
    """It always stays in the prompt, so one longer than the window leaves ended the reply in a traceback from the
    model, from --system and /system alike."""
    model = str(chat_models["transformer"])  # a 96-token window
    long, short = "word " * 200, "Answer briefly."
    result = run_entry(chat_main, "--model", model, "--system", long, "--prompt", "Hi")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert "the system text is" in result.stderr and "96-token window leaves it" in result.stderr
    session = run_chat("--model", model, "--greedy", "--max-new-tokens", "8",
                       stdin=f"/system {short}\n/system {long}\nHello\n/params max_new_tokens=60\nHello\n")
    assert session.returncode == 0, session.stderr[-2000:]
    lines = session.stdout.splitlines()
    assert lines[0] == f"system: {short}" and lines[1].startswith("error: the system text is")
    assert lines[2] == f"system: {short}"  # the refused one changed nothing
    chat = ChatInterface(chat_models["transformer"], system=short, max_new_tokens=8)
    with pytest.raises(UsageError, match="shorten it, or lower max_new_tokens"):
        chat.set_system(long)
    with pytest.raises(UsageError, match="the system text is"):
        ChatInterface(chat_models["transformer"], system=long)
    assert chat.system == short and chat.reply("Hello") is not None
    chat.set_system(None)
    assert chat.system is None

    # One that fits beside a short reply, and not beside a longer one asked for later: that reply is refused, in the
    # terminal as a line, and the session goes on.
    def fits(text: str, max_new_tokens: int) -> bool:
        try:
            ChatInterface(chat.model, chat.tokenizer, system=text, max_new_tokens=max_new_tokens)
            return True
        except UsageError:
            return False

    middle = next(text for text in (" ".join(["word"] * count) for count in range(1, 200)) if fits(text, 8)
                  and not fits(text, 60))  # as the session reads it, without the line's end
    session = run_chat("--model", model, "--greedy", "--max-new-tokens", "8",
                       stdin=f"/system {middle}\nHello\n/params max_new_tokens=60\nHello\n/system --clear\nHello\n")
    assert session.returncode == 0, session.stderr[-2000:]
    replies = [line for line in session.stdout.splitlines() if not line.startswith(("system:", "no system", "do_sample"))]
    assert len(replies) == 3 and replies[1].startswith("error: the system text is")
    assert not replies[0].startswith("error") and not replies[2].startswith("error")



def test_a_turn_the_model_s_own_template_refuses_is_said_in_one_line_and_the_session_goes_on(chat_models, tmp_path):
    """A model's own chat template may refuse a turn, as Gemma's refuses a system text ("System role not supported",
    Jinja's raise_exception): --system ended in a Jinja traceback, and /system or a reply in the session with it.
    Said in one line naming the model and the template's reason, and nothing changes."""
    from transformers import AutoTokenizer

    model = tmp_path / "no-system"
    shutil.copytree(chat_models["transformer"], model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                               "supported') }}{% endif %}" + tokenizer.chat_template)
    tokenizer.save_pretrained(model)
    refused = f"{model}'s chat template refuses this conversation (System role not supported): leave out what it names"
    assert_one_line_error(run_entry(chat_main, str(model), "--system", "Be brief.", "--prompt", "Hi"), refused)
    session = run_chat(str(model), "--greedy", "--max-new-tokens", "4", stdin="/system Be brief.\nHello\n")
    assert session.returncode == 0 and "Traceback" not in session.stderr, session.stderr[-2000:]
    lines = session.stdout.splitlines()
    assert lines[0].startswith(f"error: {refused}") and lines[1] == "no system text" and len(lines) == 3
    chat = ChatInterface(str(model), max_new_tokens=4)
    with pytest.raises(UsageError, match="System role not supported"):
        chat.continue_from([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert chat.history == [] and chat.system is None
    # The browser chat (chat.py --web) says it in the page.
    import gradio as gr

    from pocketlm.web import SETTINGS, WebChat

    web, settings = WebChat(chat), [chat.options[name] for name in SETTINGS]
    with pytest.raises(gr.Error, match="System role not supported"):
        list(web.reply("Hello", [], "Be brief.", *settings))
    # And a refusal met while the reply's prompt is built (a template that refuses a message for what it holds): in
    # the page, not a traceback.
    chat.tokenizer.chat_template = ("{% if 'secret' in messages[-1]['content'] %}{{ raise_exception('Secrets are "
                                    "not supported') }}{% endif %}" + chat.tokenizer.chat_template)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    with pytest.raises(gr.Error, match="Secrets are not supported"):
        list(web.reply("A secret", history, "", *settings))

def test_main_py_chat_dispatches_to_chat(chat_models):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), "--chat", "--model-type", "lstm", "--model",
         str(chat_models["lstm"]), "--prompt", "hi", "--seed", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_without_a_model_one_line_says_how_to_train(chat_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_entry(chat_main, "--prompt", "hi")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: no trained model in models/transformer-small: train one with: " \
                                    "python train.py --model-size small"
    # Only an LSTM trained (train.py --model-type lstm): the line names it rather than only the default's absence.
    shutil.copytree(chat_models["lstm"], tmp_path / "models" / "lstm")
    result = run_entry(chat_main, "--prompt", "hi")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: no trained model in models/transformer-small; models holds lstm: pass " \
                                    "one, e.g. --model models/lstm, or train one with: python train.py " \
                                    "--model-size small"
    assert run_entry(chat_main, "--model", "models/lstm", "--prompt", "hi").returncode == 0


# ------------------------------------------------------------------------------------------------------ API


def test_history_keeps_turns_and_reset_forgets_them(chat_models):
    chat = ChatInterface(chat_models["transformer"], max_new_tokens=5, do_sample=False)
    reply = chat.reply("Hello")
    assert chat.history == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": reply}]
    assert reply == ChatInterface(chat_models["transformer"], max_new_tokens=5, do_sample=False).reply("Hello")
    pieces = list(chat.stream("And you?"))
    assert chat.history[-1]["content"] == "".join(pieces).strip()
    chat.reset()
    assert chat.history == []


def test_the_window_drops_old_turns_but_keeps_system_and_message(chat_models):
    chat = ChatInterface(chat_models["transformer"], system="You are terse.", max_new_tokens=16)
    tokenizer, window = chat.tokenizer, chat.model.config.block_size
    for i in range(12):
        chat.history += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    text = tokenizer.decode(chat.prompt_ids("the current one", 16))
    assert len(chat.prompt_ids("the current one", 16)) <= window - 16
    assert text.startswith("<|system|>You are terse.<|end|>")
    assert text.endswith("<|user|>the current one<|end|><|assistant|>")
    assert "answer 11" in text and "question 0" not in text
    long_ids = chat.prompt_ids("start " + "word " * 300 + "finish", 16)
    long_text = tokenizer.decode(long_ids)
    assert len(long_ids) <= window - 16
    assert "finish" in long_text and "start" not in long_text and "You are terse." in long_text


# Llama 2's chat template, as its chat models carry it: the system text inside the first user turn, roles that must
# alternate from a user's first, no cue for the reply (the prompt ends at [/INST]).
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def test_a_template_that_renders_only_whole_conversations_chats_with_context_and_its_system_text(chat_models,
                                                                                                  tmp_path):
    """Chat built a prompt from each message rendered on its own, which is how pocketlm's and ChatML's templates
    render a conversation, but not Llama 2's: its system text rendered nothing on its own (dropped in silence), and a
    reply rendered without the user's turn before it is refused, so every reply after the first was. Nor Llama 3's,
    which opens each rendering with its begin-of-text token (one came before every message). The prompt is now what
    transformers' apply_chat_template renders of the conversation, its oldest turns left out as the window fills."""
    from transformers import AutoConfig, AutoTokenizer

    from modeling import GPTForCausalLM

    # The chat model with a window of 256 (its weights untrained): room for a few of Llama 2's [INST] turns.
    model = tmp_path / "llama2-template"
    shutil.copytree(chat_models["transformer"], model)
    config = AutoConfig.from_pretrained(model)
    config.block_size = 256
    GPTForCausalLM(config).save_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template, tokenizer.bos_token = LLAMA2_TEMPLATE, tokenizer.eos_token  # Llama's <s> and </s>
    tokenizer.save_pretrained(model)
    system = {"role": "system", "content": "Be brief."}

    def rendered(conversation: list[dict], tokenizer=tokenizer) -> list[int]:  # transformers' own: the reference
        text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False).input_ids

    def newest_that_fit(history: list[dict], text: str, budget: int) -> list[int]:
        """The most turns, from a user's, that fit beside the message: the prompt, as transformers renders it."""
        for start in range(0, len(history) + 1, 2):
            ids = rendered([system, *history[start:], {"role": "user", "content": text}])
            if len(ids) <= budget:
                return ids

    chat = ChatInterface(str(model), system="Be brief.", max_new_tokens=3, do_sample=False)
    chat.reply("Hello")
    window = chat.model.config.block_size
    assert chat.prompt_ids("Bye", 8) == rendered([system, *chat.history, {"role": "user", "content": "Bye"}])
    assert tokenizer.decode(chat.prompt_ids("Bye", 8)).startswith(f"{tokenizer.bos_token}[INST] <<SYS>>\nBe brief.")
    # The window full: the newest turns that fit, from a user's turn (a reply first is refused), the system text kept.
    chat.history = [{"role": role, "content": str(i)} for i in range(20) for role in ("user", "assistant")]
    prompt = chat.prompt_ids("Bye", 8)
    assert prompt == newest_that_fit(chat.history, "Bye", window - 8)
    assert 2 < tokenizer.decode(prompt).count("[INST]") < 21  # some of the turns, not all
    long_ids = chat.prompt_ids("start " + "word " * 300 + "finish", 16)
    long_text = tokenizer.decode(long_ids)
    assert len(long_ids) <= window - 16 and long_text.endswith("word finish [/INST]") and "Be brief." in long_text
    assert "start" not in long_text and "19" not in long_text
    # The system text counts inside the first turn, where it sits: one the window cannot hold is refused.
    with pytest.raises(UsageError, match=f"this model's {window}-token window leaves it"):
        chat.set_system("Be brief. " * 60)
    # The terminal session with context: each reply, and no refusal.
    session = run_chat(str(model), "--greedy", "--max-new-tokens", "4", "--system", "Be brief.",
                       stdin="Hello\nAnd you?\nGood\n")
    assert session.returncode == 0 and "error" not in session.stdout + session.stderr, session.stdout[-2000:]
    # Llama 3's way: a begin-of-text token opens the rendering, once, before the system text.
    opened = "{{ bos_token }}" + AutoTokenizer.from_pretrained(chat_models["transformer"]).chat_template
    chat.tokenizer.chat_template, chat.history = opened, chat.history[-4:]
    prompt = chat.prompt_ids("Farewell", 8)
    assert prompt == rendered([system, *chat.history, {"role": "user", "content": "Farewell"}], chat.tokenizer)
    assert prompt.count(chat.tokenizer.bos_token_id) == 1


def test_without_context_each_message_stands_alone(chat_models):
    chat = ChatInterface(chat_models["lstm"], use_context=False, max_new_tokens=5)
    chat.history = [{"role": "user", "content": "remember me"}, {"role": "assistant", "content": "ok"}]
    assert "remember me" not in chat.tokenizer.decode(chat.prompt_ids("hi", 5))


def test_an_interrupted_stream_keeps_the_partial_reply(endless_models):
    chat = ChatInterface(endless_models["lstm"], max_new_tokens=5000)
    stream = chat.stream("go on")
    first = next(stream)
    with pytest.raises(KeyboardInterrupt):
        stream.throw(KeyboardInterrupt)
    assert chat.history[-1]["role"] == "assistant" and chat.history[-1]["content"].startswith(first.strip()[:1])
    assert 0 < chat.last_stats["new_tokens"] < 5000


def test_unseen_characters_reach_the_lstm_as_unknown(chat_models):
    chat = ChatInterface(chat_models["lstm"], max_new_tokens=5)
    assert chat.tokenizer.unk_token_id in chat.prompt_ids("🤖 ∑", 5)
    chat.reply("🤖 ∑")


def test_bad_settings_are_refused(chat_models):
    chat = ChatInterface(chat_models["lstm"])
    with pytest.raises(UsageError, match="unknown setting"):
        chat.set_options(beam=2)
    with pytest.raises(UsageError, match="out of range"):
        chat.set_options(top_p=1.5)
    before = dict(chat.options)
    with pytest.raises(UsageError, match="top_k='abc' is not a valid top_k value: use a whole number"):
        chat.set_options(temperature=0.5, top_k="abc")
    assert chat.options == before  # all or nothing: the temperature did not change either
    # A switch typed wrong was read as off: `do_sample=ture` decoded greedily in silence.
    with pytest.raises(UsageError, match="do_sample='ture' is not a valid do_sample value: use true or false"):
        chat.set_options(do_sample="ture")
    chat.set_options(do_sample="OFF")
    assert chat.options["do_sample"] is False
    chat.set_options(do_sample="yes")
    assert chat.options["do_sample"] is True
    with pytest.raises(UsageError, match="unknown --dtype 'int4'"):
        ChatInterface(chat_models["lstm"], dtype="int4")


def test_replies_sample_through_the_fused_top_k_top_p(chat_models, monkeypatch):
    from pocketlm.generation import TopKTopPSampling

    calls = []
    original = TopKTopPSampling.__call__
    monkeypatch.setattr(TopKTopPSampling, "__call__", lambda self, ids, scores: calls.append(1) or original(self, ids, scores))
    ChatInterface(chat_models["transformer"], max_new_tokens=4).reply("Hello!")
    assert calls  # the default sampling (top-k 50, top-p 0.9) went through the fused warper


@pytest.mark.parametrize("family", ["transformer", "lstm"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_chat_computes_what_float32_does(family, dtype, chat_models):
    import torch

    narrow = ChatInterface(chat_models[family], dtype=dtype, max_new_tokens=5)
    full = ChatInterface(chat_models[family], max_new_tokens=5)
    assert {p.dtype for p in narrow.model.parameters()} == {getattr(torch, dtype)}
    ids = torch.tensor([full.prompt_ids("How are you today?", 5)])
    with torch.no_grad():
        expected = full.model(ids).logits[0, -1]
        got = narrow.model(ids).logits[0, -1].float()
    # Half-precision rounding moves the logits a little; the prediction stays the same distribution.
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()
    assert torch.allclose(got.softmax(-1), expected.softmax(-1), atol=0.02)
    narrow.reply("Hello!")
    assert narrow.last_stats["new_tokens"] > 0


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_int8_chat_runs_torch_ao_linear_layers_and_predicts_what_float32_does(family, chat_models):
    import torch

    quantized = ChatInterface(chat_models[family], dtype="int8", max_new_tokens=5)
    full = ChatInterface(chat_models[family], max_new_tokens=5)
    assert "quantized" in type(quantized.model.lm_head).__module__
    ids = torch.tensor([full.prompt_ids("How are you today?", 5)])
    with torch.no_grad():
        expected = full.model(ids).logits[0]
        got = quantized.model(ids).logits[0]
    assert not torch.equal(got, expected)  # the int8 layers ran
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.8
    quantized.reply("Hello!")
    assert quantized.last_stats["new_tokens"] > 0


def test_chat_py_takes_a_dtype_and_refuses_an_unknown_one(chat_models):
    replies = run_at_once(*[chat_command("--model", str(chat_models["transformer"]), "--dtype", dtype, "--prompt",
                                         "Hello", "--seed", "2") for dtype in ("bfloat16", "int8")])
    for result in replies:  # each in a process of its own: what it prints on stderr is the user's screen
        assert result.returncode == 0 and result.stdout.strip(), result.stderr[-2000:]
        assert "Warning" not in result.stderr, result.stderr[-2000:]  # torch.ao's deprecation notes stay quiet
    refused = run_entry(chat_main, "--model", str(chat_models["transformer"]), "--dtype", "int4", "--prompt", "Hi")
    assert refused.returncode == 2 and "invalid choice: 'int4'" in refused.stderr


def test_every_command_offers_exactly_the_library_s_choices_and_answers_help_without_torch():
    # The choices are named in pocketlm/choices.py so that `--help` and a mistyped option need no torch or
    # transformers (seconds of imports); they must stay the library's.
    import modeling
    from pocketlm import choices
    from pocketlm.loading import DTYPES, RUNTIMES

    assert choices.MODEL_TYPES == list(modeling.MODEL_TYPES) and choices.MODEL_SIZES == list(modeling.PRESETS)
    assert choices.DTYPES == list(DTYPES) and choices.RUNTIMES == list(RUNTIMES)
    started = time.perf_counter()
    help_text = run_chat("--help")
    assert help_text.returncode == 0 and "--dtype {float32,float16,bfloat16,int8}" in help_text.stdout
    for script in ("train.py", "main.py"):
        shown = subprocess.run([sys.executable, str(REPO_ROOT / script), "--help"], capture_output=True, text=True)
        assert shown.returncode == 0 and "--model-type {transformer,lstm}" in shown.stdout, shown.stderr[-2000:]
    libraries = ("torch", "transformers", "datasets", "accelerate", "tokenizers")
    probe = subprocess.run([sys.executable, "-c", "import sys; from pocketlm import cli; [getattr(cli, name)() for "
                            "name in dir(cli) if name.endswith('_parser')]; print(sorted(m for m in "
                            f"{libraries!r} if m in sys.modules))"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr[-2000:]
    assert time.perf_counter() - started < 10  # train.py --help alone took 8 s or more with torch imported
    mistyped = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--model-size", "huge"],
                              capture_output=True, text=True)
    assert mistyped.returncode == 2 and "invalid choice: 'huge'" in mistyped.stderr


TRAINING_CODE = ("pocketlm.training", "pocketlm.preparation", "pocketlm.options", "pocketlm.checkpoints",
                 "pocketlm.data", "datasets")


def test_chat_compare_and_upload_import_no_training_code(chat_models, tmp_path):
    model = str(chat_models["transformer"])
    commands = {
        "chat": f"chat_main(['--model', {model!r}, '--prompt', 'Hi', '--max-new-tokens', '2'])",
        "upload": f"upload_main([{model!r}, '--repo-id', 'me/m', '--dry-run', '--output-dir', "
                  f"{str(tmp_path / 'hub')!r}])",
        "compare": f"compare_main([{model!r}, '--output', {str(tmp_path / 'c.md')!r}, '--max-new-tokens', '2'])",
    }
    # One process runs the three in turn (compare last: it alone may load the data modules), checking after each.
    script = "import sys\nfrom pocketlm.cli import chat_main, compare_main, upload_main\n" + "".join(
        f"print('exit of', {name!r}, {call}, sorted(m for m in {TRAINING_CODE!r} if m in sys.modules))\n"
        for name, call in commands.items())
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [line.split(" ", 4)[2:] for line in result.stdout.splitlines() if line.startswith("exit of ")]
    assert [name for name, _, _ in reports] == list(commands), result.stdout[-2000:]
    for name, code, loaded in reports:
        assert code == "0", (name, result.stderr[-2000:])
        # compare reads text to score the models on: it needs the data modules, never the training ones.
        allowed = {"pocketlm.data", "datasets"} if name == "compare" else set()
        assert set(eval(loaded)) <= allowed, (name, loaded)


def test_a_streamed_reply_never_shows_a_broken_character_the_finished_one_lacks(accented_model):
    chat = ChatInterface(str(accented_model), max_new_tokens=60, do_sample=False)
    shown, text = [], ""
    for piece in chat.stream("Café"):
        text += piece
        shown.append(text)
    assert any(ord(character) > 127 for character in text), text
    assert broken_characters(shown, text) == []



# ------------------------------------------------------------------------------------------- text mode


@pytest.fixture(scope="module")
def text_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny models of both families trained on plain text (pseudo-prose), not on conversations."""
    data = tmp_path_factory.mktemp("prose") / "prose.txt"
    data.write_text(make_text(5, 120), encoding="utf-8")
    return train_tiny_models(tmp_path_factory, "text", CHAT_SHAPES, max_steps=10, data=[str(data)])


def greedy_continuation(folder: Path, text: str, max_new_tokens: int) -> str:
    """What transformers' own generate() continues `text` with, greedily, reading the model and tokenizer through
    the Auto classes: the reference text mode must equal."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer(text, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=ids.new_ones(ids.shape), do_sample=False,
                         max_new_tokens=max_new_tokens, repetition_penalty=1.0)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_a_line_in_another_encoding_is_named_and_the_chat_goes_on(chat_models):
    """A line of bytes that are not text in the encoding Python reads (a Latin-1 file piped in, a UTF-8 line in an
    ASCII locale, a --prompt typed in another encoding) stopped the chat with a traceback: a TypeError from the
    tokenizer, or UnicodeDecodeError. Such a line is named in one line on standard error and the chat answers the
    next one as if the bad one had not been sent; a --prompt or --system of such bytes is refused before the model
    loads."""
    folder = str(chat_models["transformer"])
    command = chat_command("--model", folder, "--greedy", "--max-new-tokens", "6")
    runs = [(command, b"Hello\n", "utf-8"), (command, b"caf\xe9 latin-1\nHello\n", "utf-8"),
            (command, "café\nHello\n".encode(), "ascii"), ([*command, "--prompt", b"caf\xe9"], b"", "utf-8")]
    started = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONIOENCODING": encoding}) for argv, _, encoding in runs]
    (alone, _), *results = [process.communicate(stdin, timeout=300) for process, (_, stdin, _) in zip(started, runs)]
    for (stdout, stderr), (_, _, encoding) in zip(results[:2], runs[1:3]):
        stderr = stderr.decode()
        assert "Traceback" not in stderr, stderr[-2000:]
        assert stderr.count(f"error: that line holds bytes that are not text in {encoding}") == 1, stderr
        assert stdout == alone and stdout.strip()  # the reply to "Hello" alone
    assert [process.returncode for process in started] == [0, 0, 0, 2]
    refused = subprocess.CompletedProcess(runs[3][0], 2, "", results[2][1].decode())
    assert_one_line_error(refused, "--prompt holds bytes that are not text in utf-8")
    with pytest.raises(UsageError, match="the message holds bytes"):
        ChatInterface(folder).reply("caf\udce9")


def test_output_that_the_terminal_cannot_encode_is_written_escaped(text_models):
    """On a terminal or pipe whose encoding lacks a character (PYTHONIOENCODING=ascii, a Latin-1 locale), chat.py
    stopped with a UnicodeEncodeError traceback at the first reply that held one. It is written escaped, as Python
    writes it to standard error, and the rest of the text is the model's greedy continuation."""
    folder = text_models["transformer"]
    result = subprocess.run(chat_command("--model", str(folder), "--prompt", "The king ☃", "--greedy",
                                         "--repetition-penalty", "1", "--max-new-tokens", "8"),
                            capture_output=True, timeout=300, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    expected = "The king ☃" + greedy_continuation(folder, "The king ☃", 8)
    assert result.stdout.decode("ascii").rstrip("\n") == expected.encode("ascii", "backslashreplace").decode()


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_a_model_trained_on_plain_text_continues_the_text_typed_as_generate_does(family, text_models, chat_models):
    """A model trained on a book was chatted with through role tokens it never saw: it now continues the text,
    token for token what generate() gives for that text, and the passage grows with context."""
    folder = text_models[family]
    chat = ChatInterface(folder, max_new_tokens=12, do_sample=False, repetition_penalty=1.0)
    assert chat.mode == "text" and ChatInterface(chat_models[family]).mode == "chat"
    first = chat.reply("The king speaks")
    assert first and first == greedy_continuation(folder, "The king speaks", 12)  # the tiny LSTM's: 12 spaces
    ids = chat.tokenizer("The king speaks", add_special_tokens=False).input_ids
    assert chat.prompt_ids("The king speaks", 12)[-len(ids):] == ids
    # With context, the next message goes on a line of its own after what the model wrote; an empty one asks
    # for more of the same passage.
    passage = "The king speaks" + first + ("" if first[-1].isspace() else "\n") + "A lady"
    assert chat.passage("A lady") == passage
    second = chat.reply("A lady")
    assert second == greedy_continuation(folder, passage, 12)
    assert chat.reply("") == greedy_continuation(folder, passage + second, 12)
    # The chat template's turn would have been another prompt altogether.
    as_chat = ChatInterface(folder, max_new_tokens=12, do_sample=False, repetition_penalty=1.0, mode="chat")
    assert as_chat.prompt_ids("The king speaks", 12) != chat.tokenizer("The king speaks").input_ids
    with pytest.raises(UsageError, match="a system text is for chat"):
        chat.set_system("You are terse.")
    with pytest.raises(UsageError, match="unknown mode 'prose'"):
        ChatInterface(chat.model, chat.tokenizer, mode="prose")


def test_text_mode_keeps_the_newest_text_when_the_passage_outgrows_the_window(text_models):
    chat = ChatInterface(text_models["transformer"], max_new_tokens=16)
    window = chat.model.config.block_size
    ids = chat.prompt_ids("start " + "word " * 300 + "finish", 16)
    assert len(ids) == window - 16 and chat.tokenizer.decode(ids).endswith("word finish")
    assert chat.prompt_ids("", 16) == [chat.tokenizer.eos_token_id]  # nothing yet: a text begins


def test_an_export_or_a_checkpoint_of_a_plain_text_run_continues_text_too(text_models, tmp_path):
    """The mode comes from the run's record, which an export and a checkpoint point back to."""
    folder = text_models["transformer"]
    exported = tmp_path / "stock"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "export.py"), str(folder), "--format", "transformers",
                             "--output-dir", str(exported)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = sorted((folder / "checkpoints").iterdir())[-1]
    for model in (exported, checkpoint):
        chat = ChatInterface(model, max_new_tokens=8, do_sample=False, repetition_penalty=1.0)
        assert chat.mode == "text" and chat.reply("The queen") == greedy_continuation(folder, "The queen", 8)


def test_chat_py_continues_a_plain_text_model_s_prompt_and_says_what_it_does(text_models):
    folder = str(text_models["transformer"])
    greedy = ("--greedy", "--repetition-penalty", "1", "--max-new-tokens", "10")
    shown, as_chat, system = (run_entry(chat_main, folder, "--prompt", "The lord", *args) for args in (
        greedy, ("--mode", "chat", *greedy), ("--system", "Be brief.")))
    assert shown.returncode == 0, shown.stderr[-2000:]
    # One passage, as nanoGPT's sample.py prints its start and what follows.
    assert shown.stdout == "The lord" + greedy_continuation(text_models["transformer"], "The lord", 10) + "\n"
    assert as_chat.returncode == 0 and as_chat.stdout != shown.stdout
    assert_one_line_error(system, "a system text is for chat", "--mode chat")
    child = spawn_chat(folder, *greedy)
    assert "continuing text with" in child.before and "--mode chat" in child.before
    passage = say(child, "The night")
    more = say(child, "")  # an empty line: more of the same passage
    assert passage.strip() and more.strip() and "error" not in passage + more
    assert "an empty line asks for more of the passage" in say(child, "/help")
    child.sendline("/quit")
    assert exit_status(child) == 0
    # The LSTM answers each message on its own by default: there, an empty line begins a text of the model's own.
    child = spawn_chat(str(text_models["lstm"]), *greedy)
    assert "an empty line for a new text of the model's own" in child.before
    assert "error" not in say(child, "") and "a new text" in say(child, "/help")
    child.sendline("/quit")
    assert exit_status(child) == 0


def test_the_web_page_of_a_plain_text_model_continues_the_passage_it_sends_back(text_models):
    pytest.importorskip("gradio", reason="the web extra: pip install -e '.[web]'")
    from pocketlm.web import SETTINGS, WebChat, build_app

    folder = text_models["transformer"]
    chat = ChatInterface(folder, max_new_tokens=10, do_sample=False, repetition_penalty=1.0)
    web = WebChat(chat)
    settings = [chat.options[name] for name in SETTINGS]
    first = list(web.reply("The king", [], "", *settings))[-1][0]
    assert first == greedy_continuation(folder, "The king", 10)  # its first space or line break kept
    history = [{"role": "user", "content": "The king"}, {"role": "assistant", "content": first}]
    second = list(web.reply("A lady", history, "", *settings))[-1][0]
    passage = "The king" + first + ("" if first[-1].isspace() else "\n") + "A lady"
    assert second == greedy_continuation(folder, passage, 10)
    app = build_app(chat)
    system = [block for block in app.blocks.values() if getattr(block, "elem_id", None) == "system"]
    assert system and system[0].visible is False  # no system text in text mode
