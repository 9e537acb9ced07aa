"""export.py --format web: the static chat page, in a real browser (Debian's Chromium through Playwright), served
from 127.0.0.1 with every other request aborted, for both families; and the static Space built from it.

.ci/run installs Chromium and sets POCKETLM_REQUIRE_BROWSER=1, so there these tests run or fail.
"""

import http.server
import json
import os
import shutil
import threading
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import (CHROMIUM, TINY_SHAPES, broken_characters, make_text, run_entry, train_tiny_models,
                      with_decisive_weights, writing_only)

from pocketlm.chat import ChatInterface
from pocketlm.cli import export_main, upload_main
from pocketlm.errors import UsageError
from pocketlm.generation import stop_token_ids
from pocketlm.loading import load_pretrained

if not os.environ.get("POCKETLM_REQUIRE_BROWSER"):
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
    pytest.importorskip("playwright", reason="the test extra: pip install -e '.[test]'")
    if not shutil.which("npm"):
        pytest.skip("the page's JavaScript comes from npm: install Node.js with npm", allow_module_level=True)
# A GPT whose window holds a reply of 2,000 tokens, so that one can be stopped halfway.
SHAPES = {**TINY_SHAPES, "transformer": {**TINY_SHAPES["transformer"], "block_size": 4096}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    return train_tiny_models(tmp_path_factory, "page", SHAPES, max_steps=30, eval_every=30)


@pytest.fixture(scope="module")
def decisive(trained, tmp_path_factory) -> dict[str, Path]:
    """Each trained model with weights whose greedy tokens change from step to step (conftest)."""
    return {family: with_decisive_weights(model, tmp_path_factory.mktemp(f"decisive-{family}") / "model")
            for family, model in trained.items()}


@pytest.fixture(scope="module")
def sites(trained, decisive, tmp_path_factory) -> Path:
    """One folder served at once: each family's page with its int8 graph (the default), and with its float32 one,
    the latter of the decisive model, against which the page's greedy tokens are compared."""
    root = tmp_path_factory.mktemp("sites")
    for family in trained:
        for precision, model in (("int8", trained[family]), ("float32", decisive[family])):
            out = root / f"{family}-{precision}"
            result = run_entry(export_main, str(model), "--format", "web", "--output-dir", str(out),
                               "--web-precision", precision)
            assert result.returncode == 0, result.stderr[-3000:]
    return root


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def at_least(model_dir: Path, tokens: int) -> dict:
    """Make the model in `model_dir` write at least `tokens` tokens a reply (a tiny model may otherwise sample its end
    token first, and a test of streaming needs a reply to stream); returns the generation config to put back."""
    config = json.loads((model_dir / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps({**config, "min_new_tokens": tokens}))
    return config


class Server:
    """A plain static file server on 127.0.0.1, as `python -m http.server` is."""

    def __init__(self, root: Path):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def server(sites):
    served = Server(sites)
    yield served
    served.close()


class ChatPage:
    """The page as a user sees it, in a context where only `allowed` may be reached."""

    def __init__(self, context, url: str, allowed: str, wait: bool = True, routes: dict | None = None):
        self.outside = []
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(allowed)
                      else (self.outside.append(route.request.url), route.abort()))
        for pattern, handler in (routes or {}).items():  # registered later, so asked first
            context.route(pattern, handler)
        self.page = context.new_page()
        self.errors = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        # `shown`: every text the newest reply bubble is given, however briefly; `seen`: what it holds whenever the
        # browser gets a turn to paint or take a click (a timer's turn), which is what a reader sees.
        self.page.add_init_script("""
            window.shown = []; window.seen = [];
            const newest = () => { const b = document.querySelectorAll('.turn.assistant'); return b[b.length - 1]; };
            document.addEventListener("DOMContentLoaded", () => new MutationObserver(() => {
              if (newest()) window.shown.push(newest().textContent);
            }).observe(document.body, {subtree: true, childList: true, characterData: true}));
            setInterval(() => { if (newest()) window.seen.push(newest().textContent); }, 1);
        """)
        self.page.goto(url)
        if wait:
            self.page.wait_for_function("!document.getElementById('send').disabled", timeout=60_000)

    def status(self) -> str:
        return self.page.inner_text("#status")

    def send(self, text: str) -> None:
        before = self.figures()
        self.page.fill("#message", text)
        self.page.keyboard.press("Enter")
        try:
            self.page.wait_for_function(f"document.getElementById('figures').textContent != {json.dumps(before)} "
                                        "&& !document.getElementById('send').disabled", timeout=60_000)
        except Exception:
            pytest.fail(f"no reply; status {self.status()!r}, replies {self.replies()}, errors {self.errors}")

    def figures(self) -> str:
        return self.page.inner_text("#figures")

    def replies(self) -> list[str]:
        return [e.inner_text() for e in self.page.query_selector_all(".turn.assistant")]

    def last_tokens(self) -> list[int]:
        tokens = self.page.query_selector_all(".turn.assistant")[-1].get_attribute("data-tokens")
        return [int(t) for t in tokens.split(",") if t]

    def set(self, name: str, value) -> None:
        if not self.page.is_visible(f"#{name}"):
            self.page.click("summary")
        if name == "do_sample":
            self.page.set_checked("#do_sample", bool(value))
        else:
            self.page.fill(f"#{name}", str(value))
            self.page.keyboard.press("Tab")


def terminal_refusal(name: str, value) -> str:
    """What chat.py says when `value` is typed for the setting `name`."""
    with pytest.raises(UsageError) as refused:
        ChatInterface.validate_option(name, value)
    return str(refused.value)


def prompt_tokens(figures: str) -> int:
    return int(figures.split("prompt ")[1].split(" ")[0])


# ------------------------------------------------------------------------------------------------ the page


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_the_page_chats_in_the_browser_with_nothing_else_running(family, sites, server, browser, trained):
    model_dir = sites / f"{family}-int8" / "model"
    config = at_least(model_dir, 20)
    context = browser.new_context()
    try:
        # A fixed seed, so the sampled reply (and whether it is long enough to be seen growing) is the same each run.
        chat = ChatPage(context, f"{server.url}{family}-int8/?seed=1", server.url)
        name = trained[family].name
        assert chat.page.title() == f"Chat with {name}" and str(trained[family]) not in chat.page.content()
        assert "running in this page" in chat.status()
        chat.set("max_new_tokens", 40)
        chat.send("Hello!")
        reply, figures = chat.replies()[-1], chat.figures()
        assert reply.strip() and "tokens/s" in figures and "first token after" in figures
        grown = {text for text in chat.page.evaluate("window.seen") if text}
        assert len(grown) >= 3, grown  # streamed: the reader saw it grow, token by token, while it was written
        assert chat.outside == [] and chat.errors == []  # nothing but its own server
    finally:
        (model_dir / "generation_config.json").write_text(json.dumps(config))
        context.close()


def test_the_page_names_the_characters_a_model_has_no_token_for_as_chat_py_does(sites, server, browser, trained):
    """A character model reads any character its training text lacked (a snowman, an emoji) as <unk>, all alike:
    the page names them beside the reply's figures in the words chat.py uses; the GPT's byte-level BPE, which has a
    token for every byte, names none."""
    from pocketlm.chat import ChatInterface

    context = browser.new_context()
    try:
        for family in ("lstm", "transformer"):
            chat = ChatPage(context, f"{server.url}{family}-int8/?seed=1", server.url)
            chat.set("max_new_tokens", 4)
            chat.send("Hi ☃ and 😀")
            note = ChatInterface(str(trained[family])).unknown_note("Hi ☃ and 😀")
            if family == "lstm":
                assert note == "note: the model's vocabulary has no '☃' or '😀': it reads each as <unk>"
                assert chat.figures().startswith(f"{note}; ")
            else:
                assert note is None and not chat.figures().startswith("note:")
            assert chat.errors == []
    finally:
        context.close()


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_a_seed_in_the_address_repeats_a_sampled_reply_and_another_seed_changes_it(family, sites, server, browser):
    def reply(seed: int) -> list[int]:
        context = browser.new_context()
        chat = ChatPage(context, f"{server.url}{family}-int8/?seed={seed}", server.url)
        chat.set("max_new_tokens", 24)
        chat.send("Tell me something.")
        tokens = chat.last_tokens()
        context.close()
        return tokens

    first, again = reply(7), reply(7)
    assert first and first == again
    assert any(reply(seed) != first for seed in (8, 9, 10))  # sampled: a different draw, a different reply


def test_a_seed_in_the_address_that_chat_py_would_refuse_is_refused_in_one_line(sites, server, browser):
    """`?seed=abc` seeded as 0 and `?seed=-1` wrapped, in silence; the page takes chat.py --seed's numbers."""
    for seed in ("abc", "-1", "1.5", str(2**32)):
        context = browser.new_context()
        chat = ChatPage(context, f"{server.url}lstm-int8/?seed={seed}", server.url, wait=False)
        chat.page.wait_for_selector("#status.error", timeout=60_000)
        assert chat.status() == (f"seed={seed} in the page's address is not a whole number from 0 to 4294967295: "
                                 "change it, or take it out for unseeded sampling.")
        assert chat.page.is_disabled("#message") and chat.page.is_disabled("#send")
        context.close()


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_with_sampling_off_the_page_decodes_the_pytorch_model_s_greedy_tokens(family, sites, server, browser,
                                                                               decisive):
    # Both sides kept from their end tokens for 30 tokens (a tiny model's greedy reply may otherwise end at once).
    model_dir = sites / f"{family}-float32" / "model"
    config = at_least(model_dir, 30)
    context = browser.new_context()
    try:
        chat = ChatPage(context, f"{server.url}{family}-float32/", server.url)
        for name, value in (("do_sample", False), ("repetition_penalty", 1.0), ("max_new_tokens", 30)):
            chat.set(name, value)
        chat.send("How are you?")
    finally:
        (model_dir / "generation_config.json").write_text(json.dumps(config))
    model, tokenizer = load_pretrained(str(decisive[family]))
    prompt = ChatInterface(model, tokenizer, use_context=family == "transformer").prompt_ids("How are you?", 30)
    assert prompt_tokens(chat.figures()) == len(prompt)  # the terminal chat's prompt, to the token
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=30, min_new_tokens=30, do_sample=False,
                             repetition_penalty=1.0, eos_token_id=stop_token_ids(tokenizer))[0, len(prompt):].tolist()
    expected = [token for token in out if token not in stop_token_ids(tokenizer)]
    assert len(expected) == 30 and chat.last_tokens() == expected, (chat.replies(), chat.errors)
    assert len(set(expected)) > 5  # tokens that change from step to step: a wrong step would show
    context.close()


def test_stop_reset_settings_context_and_a_second_tab_behave_as_in_the_chat(sites, server, browser):
    model_dir = sites / "transformer-int8" / "model"
    config = at_least(model_dir, 5000)  # never ends early
    context = browser.new_context()
    chat = ChatPage(context, f"{server.url}transformer-int8/", server.url)
    try:
        chat.set("max_new_tokens", 12)
        chat.send("Hello there")
        first = chat.figures()
        assert first.startswith("12 tokens")
        chat.send("And then?")  # the first exchange comes along: the context is kept
        assert prompt_tokens(chat.figures()) > prompt_tokens(first) + 12

        # A value out of range is refused where it is typed, with /params' message; the last good value stays.
        chat.set("temperature", 0)
        assert chat.page.inner_text("#setting-error") == terminal_refusal("temperature", 0)
        assert chat.page.input_value("#temperature") == "0.7"
        chat.set("top_k", "many")
        assert chat.page.inner_text("#setting-error") == terminal_refusal("top_k", "many")

        # Stop during a long reply: it ends between two tokens, far short of its length.
        chat.set("max_new_tokens", 2000)
        chat.page.fill("#message", "Tell me everything")
        chat.page.keyboard.press("Enter")
        # The reader's click, from inside the page as soon as 20 characters show (a tiny model writes fast).
        chat.page.evaluate("""() => new Promise((done) => { const poll = setInterval(() => {
            const reply = document.querySelectorAll('.turn.assistant')[2];
            if (reply && reply.textContent.length > 20) { document.getElementById('stop').click();
                                                          clearInterval(poll); done(); } }, 2); })""")
        chat.page.wait_for_function("!document.getElementById('send').disabled", timeout=60_000)
        stopped = chat.replies()[2]
        assert chat.page.query_selector_all(".turn.assistant")[2].get_attribute("class").endswith("stopped")
        assert int(chat.figures().split(" tokens")[0]) < 2000

        # A second tab has its own conversation, and the first keeps its own.
        other = ChatPage(context, f"{server.url}transformer-int8/", server.url)
        assert other.replies() == [] and len(chat.replies()) == 3 and chat.replies()[2] == stopped

        # Reset forgets the conversation: the next prompt holds only the new message.
        chat.page.click("#reset")
        assert chat.replies() == []
        chat.set("max_new_tokens", 12)
        chat.send("Hello there")
        assert prompt_tokens(chat.figures()) == prompt_tokens(first)
    finally:
        (model_dir / "generation_config.json").write_text(json.dumps(config))
        context.close()


@pytest.mark.parametrize("damage", ["graph missing", "graph truncated", "no WebAssembly", "opened from the disk",
                                    "script missing", "settings missing"])
def test_a_page_that_cannot_load_its_model_says_so(damage, sites, browser, tmp_path):
    """Each way a page cannot start says why in its status line, where the page used to say "Loading" for ever when
    it was opened from the disk (double-clicked: the browser refuses a file:// page's scripts) or lacked chat.js or
    pocketlm.json."""
    broken = tmp_path / "broken"
    shutil.copytree(sites / "lstm-int8", broken)
    graph = broken / "model" / "onnx" / "model_quantized.onnx"
    if damage == "graph missing":
        graph.unlink()
    elif damage == "graph truncated":
        graph.write_bytes(graph.read_bytes()[:1000])
    elif damage == "script missing":
        (broken / "chat.js").unlink()
    elif damage == "settings missing":
        (broken / "pocketlm.json").unlink()
    served = Server(tmp_path)
    context = browser.new_context()
    if damage == "no WebAssembly":
        context.add_init_script("delete window.WebAssembly")
    url, allowed = ((broken / "index.html").as_uri(), "file://") if damage == "opened from the disk" else \
        (f"{served.url}broken/", served.url)
    said = {"no WebAssembly": ["cannot run WebAssembly"],
            "opened from the disk": ["opened from the disk", f'python -m http.server -d "{broken}"'],
            "script missing": ["could not load its script (chat.js)", "export.py"],
            "settings missing": ["could not read its settings, pocketlm.json (HTTP 404)", "export.py"]}
    try:
        chat = ChatPage(context, url, allowed, wait=False)
        chat.page.wait_for_selector("#status.error", timeout=60_000)
        message = chat.status()
        assert all(needle in message for needle in said.get(damage, ["could not be loaded", "export.py"])), message
        assert chat.page.is_disabled("#send")
    finally:
        context.close()
        served.close()


def test_a_reply_with_nothing_to_show_says_whether_the_model_ended_its_turn_or_hid_what_it_wrote(sites, browser,
                                                                                                  tmp_path):
    """The page's words for an empty reply are the terminal's: one that ends at once, and one of special tokens
    alone (hidden, as transformers.js hides them), which the page used to call ending at once."""
    cases = {"end": ("<|end|>", "[no reply: the model ended its turn at once]"),
             "user": ("<|user|>", "[no reply shown: the model wrote only special tokens or spaces]")}
    for name, (token, _) in cases.items():
        shutil.copytree(sites / "transformer-int8", tmp_path / name, ignore=shutil.ignore_patterns("model"))
        writing_only(sites / "transformer-int8" / "model", tmp_path / name / "model", token)
    served = Server(tmp_path)
    context = browser.new_context()
    try:
        for name, (_, said) in cases.items():
            chat = ChatPage(context, f"{served.url}{name}/", served.url)
            chat.send("Hello")
            assert chat.replies()[-1] == said and bool(chat.last_tokens()) == (name == "user")
    finally:
        context.close()
        served.close()


def test_a_streamed_reply_never_shows_a_broken_character_the_finished_one_lacks(browser, accented_model,
                                                                                 tmp_path_factory):
    site = tmp_path_factory.mktemp("accents-site")
    assert run_entry(export_main, str(accented_model), "--format", "web", "--output-dir", str(site / "page"),
                     "--web-precision", "float32").returncode == 0
    served = Server(site)
    context = browser.new_context()
    try:
        chat = ChatPage(context, f"{served.url}page/", served.url)
        chat.set("max_new_tokens", 60)
        chat.set("do_sample", False)
        chat.send("Café")
        final, shown = chat.replies()[-1], chat.page.evaluate("window.shown")
        assert any(ord(character) > 127 for character in final), final  # multi-byte characters were written
        assert len(shown) > 20 and broken_characters(shown, final) == []
    finally:
        context.close()
        served.close()


# ---------------------------------------------------------------------------------------------- static Space


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_the_static_space_chats_with_the_model_repository_routed_to_a_local_folder(family, trained, browser,
                                                                                    tmp_path):
    repo, space = f"someone/tiny-{family}", f"someone/tiny-{family}-page"
    result = run_entry(upload_main, str(trained[family]), "--repo-id", repo, "--static-space", space, "--dry-run",
                       "--output-dir", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "repo-static-space"
    metadata = (folder / "README.md").read_text().split("---")[1]
    assert "sdk: static" in metadata and "app_file: index.html" in metadata and f"- {repo}" in metadata
    assert not (folder / "model").exists()  # the page loads the model from the repository
    at_least(tmp_path / "repo" / ("gpt2" if family == "transformer" else ""), 10)
    served = Server(folder)
    context = browser.new_context()
    hub = f"https://huggingface.co/{repo}/resolve/main/"

    def from_the_repository(route):  # the Hub's URLs, answered from the dry run's repository folder
        path = tmp_path / "repo" / route.request.url[len(hub):].split("?")[0]
        if path.is_file():
            route.fulfill(path=str(path))
        else:
            route.fulfill(status=404, body="not found")

    try:
        chat = ChatPage(context, served.url, served.url, routes={f"{hub}**": from_the_repository})
        assert chat.page.title() == f"Chat with {repo}"
        chat.set("max_new_tokens", 20)
        chat.send("Hello!")
        assert chat.replies()[-1].strip() and chat.errors == []
        assert chat.outside == []  # only the page's server and the (routed) model repository
    finally:
        context.close()
        served.close()


# --------------------------------------------------------------------------------------------- README picture

# As in test_web.py: the README's picture of the page shows the trained model named here, or is skipped.
SCREENSHOT_MODEL = os.environ.get("POCKETLM_SCREENSHOT_MODEL")


@pytest.mark.skipif(not SCREENSHOT_MODEL, reason="POCKETLM_SCREENSHOT_MODEL=models/transformer-small refreshes "
                                                 "the README's picture of the exported page")
def test_the_readme_picture_of_the_page_shows_a_trained_model_by_name(browser, tmp_path):
    model = Path(SCREENSHOT_MODEL).resolve()
    assert run_entry(export_main, str(model), "--format", "web", "--output-dir", str(tmp_path / "site")).returncode == 0
    served = Server(tmp_path / "site")
    context = browser.new_context(viewport={"width": 1000, "height": 720})
    try:
        chat = ChatPage(context, served.url, served.url)
        assert chat.page.title() == f"Chat with {model.name}" and str(model) not in chat.page.content()
        for message in ("Hello!", "What is your favorite book?"):
            chat.send(message)
        replies = chat.replies()
        assert all(reply.strip() and "\ufffd" not in reply for reply in replies), replies
        assert chat.outside == [] and chat.errors == []
        chat.page.screenshot(path=str(Path(__file__).parent / "screenshots" / "web-page.png"))
    finally:
        context.close()
        served.close()


# ------------------------------------------------------------------------------------------------ text mode


def test_an_lstm_trained_with_a_bpe_reads_and_writes_its_own_tokens_on_the_page(trained, browser, tmp_path_factory):
    """The page's LSTM spelled every character as a token of its own (the character tokenizer's way), so an LSTM
    trained with a BPE (`train.py --model-type lstm --tokenizer FOLDER`) got ids its vocabulary does not map and
    answered nothing. Its tokenizer is now read by transformers.js, as the GPT's is: the page's prompt and greedy
    tokens are the terminal chat's and PyTorch's."""
    from pocketlm.training import TrainingOptions, train

    model_dir = tmp_path_factory.mktemp("page-lstm-bpe")
    train(TrainingOptions(model_type="lstm", output_dir=str(model_dir), model_config=TINY_SHAPES["lstm"],
                          tokenizer=str(trained["transformer"]), block_size=32, batch_size=4, max_steps=20,
                          samples=0))
    model, tokenizer = load_pretrained(str(model_dir))
    assert tokenizer.get_vocab() == load_pretrained(str(trained["transformer"]))[1].get_vocab()  # the BPE's
    site = tmp_path_factory.mktemp("page-lstm-bpe-site")
    assert run_entry(export_main, str(model_dir), "--format", "web", "--output-dir", str(site / "page"),
                     "--web-precision", "float32").returncode == 0
    at_least(site / "page" / "model", 20)
    served, context = Server(site), browser.new_context()
    try:
        chat = ChatPage(context, f"{served.url}page/", served.url)
        for name, value in (("do_sample", False), ("repetition_penalty", 1.0), ("max_new_tokens", 20)):
            chat.set(name, value)
        chat.send("How are you, my lord?")
        prompt = ChatInterface(model, tokenizer, use_context=False).prompt_ids("How are you, my lord?", 20)
        assert prompt_tokens(chat.figures()) == len(prompt)
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                                 repetition_penalty=1.0, eos_token_id=stop_token_ids(tokenizer))[0, len(prompt):]
        expected = [token for token in out.tolist() if token not in stop_token_ids(tokenizer)]
        assert len(expected) == 20 and chat.last_tokens() == expected, (chat.replies(), chat.errors)
    finally:
        context.close()
        served.close()


@pytest.fixture(scope="module")
def prose_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny models of both families trained on plain text, not conversations."""
    data = tmp_path_factory.mktemp("prose") / "prose.txt"
    data.write_text(make_text(7, 120), encoding="utf-8")
    return train_tiny_models(tmp_path_factory, "page-prose", max_steps=10, data=[str(data)])


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_the_page_of_a_plain_text_model_continues_the_passage_as_pytorch_does(family, prose_models, browser,
                                                                               tmp_path):
    """A model trained on a book gets a page that continues what is typed (chat.py's text mode), with the
    tokens PyTorch's greedy decoding gives for the same passage, and no system text to fill in."""
    site = tmp_path / "site"
    result = run_entry(export_main, str(prose_models[family]), "--format", "web", "--output-dir", str(site),
                       "--web-precision", "float32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((site / "pocketlm.json").read_text())["mode"] == "text"
    at_least(site / "model", 12)
    model, tokenizer = load_pretrained(str(prose_models[family]))
    stops = stop_token_ids(tokenizer)

    def greedy(passage: str) -> list[int]:
        ids = tokenizer(passage, add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                                 repetition_penalty=1.0, eos_token_id=stops)[0, len(ids):].tolist()
        return [token for token in out if token not in stops]

    served, context = Server(site), browser.new_context()
    try:
        chat = ChatPage(context, served.url, served.url)
        assert chat.page.title().startswith("Continue a text with") and not chat.page.is_visible("#system")
        for name, value in (("do_sample", False), ("repetition_penalty", 1.0), ("max_new_tokens", 12)):
            chat.set(name, value)
        chat.send("The king")
        first = chat.last_tokens()
        assert first == greedy("The king"), (chat.replies(), chat.errors)
        written = tokenizer.decode(first)
        passage = "The king" + written + ("" if written[-1:].isspace() else "\n") + "A lady"
        chat.send("A lady")  # the transformer keeps the passage; the LSTM continues each message on its own
        expected = passage if family == "transformer" else "A lady"
        assert prompt_tokens(chat.figures()) == len(tokenizer(expected, add_special_tokens=False).input_ids)
        assert chat.last_tokens() == greedy(expected) and chat.errors == []
    finally:
        context.close()
        served.close()
