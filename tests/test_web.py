"""chat.py --web and the Hub Space's app, driven in a real browser: Debian's Chromium through Playwright.

.ci/run installs Chromium and sets POCKETLM_REQUIRE_BROWSER=1, so there these tests run or fail; elsewhere they are
skipped where /usr/bin/chromium is missing (Playwright's own browser download cannot be reached here).
"""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import (CHROMIUM, PROJECT_FREE_PRELUDE, REPO_ROOT, assert_one_line_error, free_port, make_text,
                      run_entry, writing_only)

from pocketlm.chat import ChatInterface
from pocketlm.spaces import GRADIO_VERSION, PYTHON_VERSION
from pocketlm.training import TrainingOptions, train

if not os.environ.get("POCKETLM_REQUIRE_BROWSER"):
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
    pytest.importorskip("gradio", reason="the web extra: pip install -e '.[web]'")
    pytest.importorskip("playwright", reason="the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def web_model(tmp_path_factory) -> Path:
    """A tiny Transformer whose replies run to their full length (so one can be stopped, and seen growing)."""
    out = tmp_path_factory.mktemp("web-model")
    train(TrainingOptions(output_dir=str(out), model_config={"n_layer": 2, "n_head": 2, "n_embd": 32,
                                                             "block_size": 4096},
                          block_size=32, batch_size=4, max_steps=4, vocab_size=400, samples=0))
    config = json.loads((out / "generation_config.json").read_text())
    config["min_new_tokens"] = 5000  # never end early: a reply is as long as its max_new_tokens
    (out / "generation_config.json").write_text(json.dumps(config))
    return out


def serve(command: list[str], port: int, cwd: Path = REPO_ROOT, env: dict | None = None) -> subprocess.Popen:
    """Start a server and wait until it answers on `port`."""
    server = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, **(env or {})})
    deadline = time.time() + 180
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            pytest.fail(f"the server did not start:\n{server.communicate()[0][-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def web_app(web_model):
    """`chat.py --web` as a user starts it (no --host, no --share): its process and its port."""
    port = free_port()
    server = serve([sys.executable, str(REPO_ROOT / "chat.py"), "--model", str(web_model), "--web", "--port",
                    str(port), "--max-new-tokens", "120", "--seed", "0"], port)
    yield server, port
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def web_server(web_app) -> str:
    return f"http://127.0.0.1:{web_app[1]}/"


class Page:
    """The chat page as a user sees it."""

    def __init__(self, page, url: str):
        self.page = page
        page.goto(url)
        page.wait_for_selector("textarea[data-testid='textbox']")

    def send(self, text: str) -> None:
        self.page.fill("textarea[data-testid='textbox']", text)
        self.page.keyboard.press("Enter")

    def replies(self) -> list[str]:
        return [e.inner_text() for e in self.page.query_selector_all("#chatbot [data-testid='bot']")]

    def messages(self) -> list[str]:
        return [e.inner_text() for e in self.page.query_selector_all("#chatbot [data-testid='user']")]

    def wait_for_replies(self, count: int) -> list[str]:
        self.page.wait_for_function(f"document.querySelectorAll(\"#chatbot [data-testid='bot']\").length >= {count}",
                                    timeout=60_000)
        return self.replies()

    def figures(self) -> str:
        """The figures line's own text (not the timer Gradio shows over it while a reply runs)."""
        shown = self.page.query_selector("#figures [data-testid='markdown']")
        return shown.inner_text().strip() if shown else ""

    def has_figures(self, before: str = "") -> bool:
        """Whether a reply's figures are shown (they change only when a reply ends; a timer shows meanwhile)."""
        text = self.figures()
        return "tokens/s" in text and text != before

    def wait_for_figures(self, before: str, timeout: float = 120) -> str:
        deadline = time.time() + timeout
        while not self.has_figures(before) and time.time() < deadline:
            time.sleep(0.05)
        return self.figures()

    def set_setting(self, name: str, value) -> None:
        if not self.page.is_visible(f"#{name} input"):
            self.page.click("text=System text and sampling")
        self.page.fill(f"#{name} input", str(value))
        self.page.keyboard.press("Tab")

    @staticmethod
    def prompt_tokens(figures: str) -> int:
        return int(re.search(r"prompt (\d+) tokens", figures).group(1))


def test_the_page_streams_keeps_context_stops_resets_validates_and_keeps_tabs_apart(browser, web_server):
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    chat = Page(context.new_page(), web_server)

    # A reply appears in pieces: a part of it is shown before it ends. (One part is the proof: a 120-token reply
    # of this tiny model takes a fraction of a second, and on a loaded machine the browser may draw few of them.
    # Each text the page draws is recorded in the page itself: polling from here missed every one once in CI.)
    chat.page.evaluate("""() => {
        window.shownReplies = [];
        new MutationObserver(() => {
            const bot = document.querySelector("#chatbot [data-testid='bot']");
            if (bot) window.shownReplies.push(bot.innerText);
        }).observe(document.querySelector("#chatbot"), {subtree: true, childList: true, characterData: true});
    }""")
    chat.send("Hello there")
    deadline = time.time() + 120
    while not chat.has_figures() and time.time() < deadline:
        time.sleep(0.05)
    whole = chat.replies()[0]
    seen = {reply for reply in chat.page.evaluate("window.shownReplies") if reply}
    assert any(part != whole and whole.startswith(part) for part in seen), (seen, whole)
    first = chat.figures()
    assert "120 tokens" in first and "tokens/s" in first

    # The second reply's prompt holds the first exchange: the context was kept.
    chat.send("And then?")
    second = chat.wait_for_figures(first)
    assert len(chat.wait_for_replies(2)) == 2 and chat.messages() == ["Hello there", "And then?"]
    # The first message and its 120-token reply came along.
    assert chat.prompt_tokens(second) > chat.prompt_tokens(first) + 100, (first, second)

    # Stop during a long reply: it ends between two tokens, far short of its length.
    chat.set_setting("max_new_tokens", 2000)
    chat.send("Tell me everything")
    chat.wait_for_replies(3)
    deadline = time.time() + 60
    while len((chat.replies()[2:] or [""])[0]) < 20 and time.time() < deadline:
        time.sleep(0.02)
    chat.page.click("button.stop-button")
    time.sleep(1.0)
    stopped = chat.replies()[2]
    time.sleep(1.0)
    assert chat.replies()[2] == stopped  # no longer growing
    assert len(stopped.split()) < 1500

    # Reset forgets the conversation.
    chat.page.click("#reset")
    chat.page.wait_for_function("document.querySelectorAll(\"#chatbot [data-testid='bot']\").length == 0")
    assert chat.messages() == []

    # An out-of-range setting shows a message in the page and goes back to its last good value; the server
    # answers the next message.
    chat.set_setting("max_new_tokens", 30)
    chat.set_setting("temperature", 0)
    chat.page.wait_for_selector("text=temperature=0.0 is out of range", timeout=60_000)
    chat.page.wait_for_function("document.querySelector('#temperature input').value == '0.7'")
    before = chat.figures()
    chat.send("Hi again")
    assert "30 tokens" in chat.wait_for_figures(before)

    # A second tab has its own conversation, and the first keeps its own.
    other = Page(context.new_page(), web_server)
    assert other.messages() == []
    other.send("I am the other tab")
    other.wait_for_figures("")
    assert other.messages() == ["I am the other tab"]
    assert "I am the other tab" not in chat.messages() and "Hi again" in chat.messages()
    context.close()


# The README's pictures show a trained model: the run folder named here (the default model, from README's first
# command) is what they show. Without it this test is skipped; with it, it must pass.
SCREENSHOT_MODEL = os.environ.get("POCKETLM_SCREENSHOT_MODEL")
SCREENSHOTS = REPO_ROOT / "tests" / "screenshots"
README_CONVERSATION = ["Hello!", "What is your favorite book?"]


@pytest.mark.skipif(not SCREENSHOT_MODEL, reason="POCKETLM_SCREENSHOT_MODEL=models/transformer-small refreshes "
                                                 "the README's picture of chat.py --web")
def test_the_readme_picture_of_chat_web_shows_a_trained_model_by_name(browser):
    model = Path(SCREENSHOT_MODEL).resolve()
    port = free_port()
    server = serve([sys.executable, str(REPO_ROOT / "chat.py"), "--model", str(model), "--web", "--port", str(port),
                    "--seed", "0"], port)
    try:
        chat = Page(browser.new_page(viewport={"width": 1100, "height": 760}), f"http://127.0.0.1:{port}/")
        assert chat.page.title() == f"Chat with {model.name}" and str(model) not in chat.page.content()
        before = ""
        for message in README_CONVERSATION:
            chat.send(message)
            before = chat.wait_for_figures(before)
        replies = chat.wait_for_replies(len(README_CONVERSATION))
        assert all(reply.strip() and "\ufffd" not in reply for reply in replies), replies
        chat.page.evaluate("window.scrollTo(0, 0)")
        chat.page.screenshot(path=str(SCREENSHOTS / "web-chat.png"))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_gradio_client_calls_the_running_app(web_server):
    from gradio_client import Client

    client = Client(web_server, verbose=False)
    reply, figures = client.predict("Hello!", "", 0.7, 50, 0.9, 1.2, 16, api_name="/chat")
    assert isinstance(reply, str) and reply.strip()
    assert "16 tokens" in figures
    # A system text the window cannot hold is named in the page, as a setting out of range is.
    with pytest.raises(Exception, match="the system text is .* tokens, and this model's 4,096-token window"):
        client.predict("Hello!", "word " * 5000, 0.7, 50, 0.9, 1.2, 16, api_name="/chat")


def test_the_web_page_binds_to_this_machine_only_and_never_shares_by_default(web_app):
    import psutil

    server, port = web_app
    processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    listening = [c.laddr for p in processes for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and {address.ip for address in listening} == {"127.0.0.1"}, listening
    assert port in {address.port for address in listening}
    # Reached through any other address of this machine, the port is closed.
    others = [a.address for addresses in psutil.net_if_addrs().values() for a in addresses
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in others:
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex((address, port)) != 0, f"port {port} answers on {address}"
    # No public link: Gradio's share tunnel would show its URL, and hold a connection to the outside.
    outside = [c.raddr for p in processes for c in p.net_connections(kind="inet")
               if c.raddr and not c.raddr.ip.startswith("127.")]
    assert not outside, outside


def test_without_gradio_web_says_how_to_install_it(web_model, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gradio" else real_find_spec(name, *a))
    from pocketlm.cli import chat_main

    assert_one_line_error(run_entry(chat_main, "--model", str(web_model), "--web"), "pip install -e '.[web]'")


def test_a_port_in_use_or_a_host_not_of_this_machine_is_named_before_the_model_loads(web_app, tmp_path):
    """Gradio says "Cannot find empty port" whatever stops it, after uvicorn logs the cause: the chat names it."""
    from pocketlm.cli import chat_main

    _, busy = web_app  # the running page's own port
    missing = str(tmp_path / "no-model")  # never reached: the address is checked first
    for flags, needle in ((["--port", str(busy)], f"port {busy} on 127.0.0.1 is in use by another program"),
                          (["--host", "192.0.2.1"], "--host 192.0.2.1 is not an address of this machine"),
                          (["--host", "no-such-host.invalid"], "is not a name or address this machine can resolve")):
        assert_one_line_error(run_entry(chat_main, "--model", missing, "--web", *flags), needle)


PROJECT_FREE_APP = PROJECT_FREE_PRELUDE + textwrap.dedent(
    """
    import json, os, runpy
    import transformers

    # The test's window on the app: each conversation it renders, written where the test reads it.
    render = transformers.PreTrainedTokenizerBase.apply_chat_template
    def recorded(self, conversation, *args, **kwargs):
        with open(os.environ["PROMPTS_LOG"], "a") as log:
            log.write(json.dumps(conversation) + "\\n")
        return render(self, conversation, *args, **kwargs)
    transformers.PreTrainedTokenizerBase.apply_chat_template = recorded

    sys.argv = ["app.py"]
    runpy.run_path("app.py", run_name="__main__")
    """
)


def test_the_space_app_serves_the_model_without_pocketlm(web_model, browser, tmp_path):
    from pocketlm.cli import upload_main

    result = run_entry(upload_main, str(web_model), "--repo-id", "me/tiny", "--space-id", "me/tiny-chat", "--dry-run",
                       "--output-dir", str(tmp_path / "hub"))
    assert result.returncode == 0, result.stderr[-3000:]
    space = tmp_path / "hub-space"
    assert {p.name for p in space.iterdir()} == {"app.py", "requirements.txt", "README.md"}
    assert "pocketlm" not in (space / "requirements.txt").read_text()
    assert 'os.environ.get("POCKETLM_MODEL", "me/tiny")' in (space / "app.py").read_text()
    metadata = yaml.safe_load((space / "README.md").read_text().split("---")[1])
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == "app.py" and metadata["models"] == ["me/tiny"]
    assert metadata["sdk_version"] == GRADIO_VERSION and metadata["python_version"] == PYTHON_VERSION  # as tested

    port, log = free_port(), tmp_path / "prompts.jsonl"
    env = {"POCKETLM_MODEL": str(tmp_path / "hub"), "GRADIO_SERVER_PORT": str(port), "PYTHONPATH": "",
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "PROMPTS_LOG": str(log)}
    server = serve([sys.executable, "-c", PROJECT_FREE_APP.format(root=str(REPO_ROOT))], port, cwd=space, env=env)
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("textarea[data-testid='textbox']")
        for turn, text in enumerate(["Hello!", "And again?"], 1):
            page.fill("textarea[data-testid='textbox']", text)
            page.keyboard.press("Enter")
            page.wait_for_function(f"document.querySelectorAll(\"[data-testid='bot']\").length == {turn} && "
                                   "!document.querySelector('button.stop-button')", timeout=120_000)
        page.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    # The second prompt holds the first exchange. Gradio 6 sends earlier turns' content as lists of text parts,
    # which the app dropped as not strings: each message was answered as if it were the first.
    first, second = [json.loads(line) for line in log.read_text().splitlines()]
    assert first == [{"role": "user", "content": "Hello!"}]
    assert [turn["role"] for turn in second] == ["user", "assistant", "user"]
    assert second[0]["content"] == "Hello!" and second[2]["content"] == "And again?"
    assert isinstance(second[1]["content"], str) and second[1]["content"].strip()  # the first reply, as text


SPACE_APP_EMPTY_REPLIES = PROJECT_FREE_PRELUDE + textwrap.dedent(
    """
    import json, os, runpy
    shown = {{}}
    for name, folder in {models!r}.items():  # the app reads its model's name when it starts
        os.environ["POCKETLM_MODEL"] = folder
        app = runpy.run_path("app.py", run_name="space")  # not __main__: the page is built, not served
        shown[name] = list(app["reply"]("Hello", [], 0.7, 6))[-1]
    print(json.dumps(shown))
    """
)  # formatted with root=REPO_ROOT and models, as the prelude is: its braces doubled


def test_the_space_app_says_whether_an_empty_reply_ended_at_once_or_hid_what_it_wrote(web_model, tmp_path):
    """The Space's app runs without pocketlm, so it spells the terminal's words for an empty reply itself: one that
    ends at once, and one of special tokens alone, which it used to call ending at once."""
    from pocketlm.cli import upload_main

    models = {}
    for name, token in (("end", "<|end|>"), ("user", "<|user|>")):
        writing_only(web_model, tmp_path / name, token)
        result = run_entry(upload_main, str(tmp_path / name), "--repo-id", f"me/{name}", "--space-id",
                           f"me/{name}-chat", "--dry-run", "--output-dir", str(tmp_path / f"{name}-hub"))
        assert result.returncode == 0, result.stderr[-3000:]
        models[name] = str(tmp_path / f"{name}-hub")
    env = {**os.environ, "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    shown = subprocess.run([sys.executable, "-c", SPACE_APP_EMPTY_REPLIES.format(root=str(REPO_ROOT), models=models)],
                           cwd=tmp_path / "user-hub-space", env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert json.loads(shown.stdout.strip().splitlines()[-1]) == {
        "end": "[no reply: the model ended its turn at once]",
        "user": "[no reply shown: the model wrote only special tokens or spaces]"}


@pytest.fixture(scope="module")
def character_pages(tmp_path_factory):
    """A character LSTM trained on plain text (so chatted with in text mode), served by `chat.py --web` (greedy)
    with the conversation as context, and by the Space's app from a dry run's folders: the model's folder and the
    two pages' addresses."""
    from pocketlm.cli import upload_main

    tmp_path = tmp_path_factory.mktemp("character-pages")
    data = tmp_path / "plain.txt"
    data.write_text(make_text(3, 80) + "\nHi, and hi again.\n", encoding="utf-8")  # the messages' other characters
    lstm = tmp_path / "lstm"
    train(TrainingOptions(model_type="lstm", output_dir=str(lstm), data=[str(data)],
                          model_config={"hidden_size": 16, "num_layers": 1}, block_size=32, batch_size=4,
                          max_steps=1, samples=0))
    result = run_entry(upload_main, str(lstm), "--repo-id", "me/lstm", "--space-id", "me/lstm-chat", "--dry-run",
                       "--output-dir", str(tmp_path / "hub"))
    assert result.returncode == 0, result.stderr[-3000:]
    web_port, space_port = free_port(), free_port()
    servers = [serve([sys.executable, str(REPO_ROOT / "chat.py"), "--model", str(lstm), "--web", "--port",
                      str(web_port), "--greedy", "--context", "--max-new-tokens", "8"], web_port),
               serve([sys.executable, "app.py"], space_port, cwd=tmp_path / "hub-space",
                     env={"POCKETLM_MODEL": str(tmp_path / "hub"), "GRADIO_SERVER_PORT": str(space_port),
                          "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")})]
    yield lstm, f"http://127.0.0.1:{web_port}/", f"http://127.0.0.1:{space_port}/"
    for server in servers:
        server.terminate()
        server.wait(timeout=30)


def test_both_web_chats_name_the_characters_a_model_has_no_token_for_as_the_terminal_does(browser, character_pages):
    """A character model reads any character its training text lacked as <unk>. `chat.py --web` names them before
    the reply's figures, and the Space's app, which runs without pocketlm and shows no figures, in a toast: in the
    terminal's words, letter for letter. The figures are Markdown and a toast is HTML, so the page dropped `<unk>`
    as a tag, and would have read a named '*' or '<' as markup."""
    _, web_page, space_page = character_pages
    message = "Hi ☃, *and* <hi> 😀"
    note = "note: the model's vocabulary has no '☃', '*', '<', '>' or '😀': it reads each as <unk>"
    chat = Page(browser.new_page(), web_page)
    chat.send(message)
    assert chat.wait_for_figures("").startswith(f"{note}; 8 tokens in ")
    space = Page(browser.new_page(), space_page)
    space.send(message)
    space.page.wait_for_selector(".toast-body", timeout=60_000)
    assert space.page.inner_text(".toast-body").endswith(f"\n{note}")


def test_both_web_chats_keep_and_show_each_message_as_written(browser, character_pages):
    """Gradio's chatbot dedents every message it shows (its leading spaces, a common indentation, blank lines at
    either end) and sends that back as the history, so the passage a model continued in the browser was not the
    terminal's: under greedy decoding the page's second reply differed from the terminal's. And it showed the text
    as Markdown ('*and*' as emphasis, an indented line as code). Now both pages show, and send back, what was typed
    and written: `chat.py --web`'s replies and prompts are the terminal chat's (the same ChatInterface, greedy, in
    this process), and the Space's app shows each message as typed."""
    lstm, web_page, space_page = character_pages
    messages = ["  Hi, and\n\thi *again*", "    and *hi*  "]
    terminal = ChatInterface(str(lstm), use_context=True, max_new_tokens=8, do_sample=False)
    expected = [(terminal.reply(text), terminal.last_stats["prompt_tokens"]) for text in messages]
    assert terminal.mode == "text"
    chat, figures = Page(browser.new_page(), web_page), ""
    for turn, text in enumerate(messages, 1):
        chat.send(text)
        figures = chat.wait_for_figures(figures)
        assert chat.prompt_tokens(figures) == expected[turn - 1][1]
    assert chat.messages() == messages
    assert chat.replies() == [reply for reply, _ in expected]
    space = Page(browser.new_page(), space_page)
    for turn, text in enumerate(messages, 1):
        space.send(text)
        space.page.wait_for_function(f"document.querySelectorAll(\"[data-testid='bot']\").length == {turn} && "
                                     "!document.querySelector('button.stop-button')", timeout=60_000)
    assert [e.inner_text() for e in space.page.query_selector_all("[data-testid='user']")] == messages
    # Gradio writes a .pyi file beside the source of a subclass of its components: neither page made one.
    assert not [*(lstm.parent / "hub-space").glob("*.pyi"), *(REPO_ROOT / "pocketlm").glob("*.pyi")]


SPACE_APP_PROMPTS = PROJECT_FREE_PRELUDE + textwrap.dedent(
    """
    import json, runpy
    app = runpy.run_path("app.py", run_name="space")  # not __main__: the page is built, not served
    history = [{{"role": "user", "content": "The king"}},
               {{"role": "assistant", "content": [{{"type": "text", "text": " speaks softly"}}]}}]
    print(json.dumps({{"title": app["demo"].title, "first": app["prompt_ids"]("The king", [], 8)[0].tolist(),
                       "second": app["prompt_ids"]("A lady", history, 8)[0].tolist()}}))
    """
)  # formatted with root=REPO_ROOT, as the prelude is: its braces doubled


def test_the_space_app_of_a_plain_text_model_continues_the_passage(tmp_path):
    """hub_upload.py writes the model's mode into the Space's app: a model trained on plain text continues what is
    typed there too, its prompt the passage's own tokens, not the chat template's turns."""
    from transformers import AutoTokenizer

    from pocketlm.cli import upload_main

    data = tmp_path / "prose.txt"
    data.write_text(make_text(3, 80), encoding="utf-8")
    model = tmp_path / "prose-model"
    train(TrainingOptions(output_dir=str(model), data=[str(data)], model_config={"n_layer": 1, "n_head": 2,
                                                                                 "n_embd": 32, "block_size": 64},
                          block_size=32, batch_size=4, max_steps=2, vocab_size=300, samples=0))
    result = run_entry(upload_main, str(model), "--repo-id", "me/prose", "--space-id", "me/prose-chat", "--dry-run",
                       "--output-dir", str(tmp_path / "hub"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'os.environ.get("POCKETLM_MODE", "text")' in (tmp_path / "hub-space" / "app.py").read_text()
    env = {**os.environ, "POCKETLM_MODEL": str(tmp_path / "hub"), "PYTHONPATH": "",
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    shown = subprocess.run([sys.executable, "-c", SPACE_APP_PROMPTS.format(root=str(REPO_ROOT))],
                           cwd=tmp_path / "hub-space", env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    seen = json.loads(shown.stdout.strip().splitlines()[-1])
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert seen["title"] == f"Continue a text with {tmp_path / 'hub'}"  # POCKETLM_MODEL names the model
    assert seen["first"] == tokenizer("The king", add_special_tokens=False).input_ids
    assert seen["second"] == tokenizer("The king speaks softly\nA lady", add_special_tokens=False).input_ids
