"""compare.py: two families side by side on bits per character, with the number each run recorded as its check."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (REPO_ROOT, TINY_SHAPES, assert_one_line_error, cache_as_hub_repo, make_text, run_at_once,
                      run_entry, save_stock_gpt2, train_tiny_models)

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    return train_tiny_models(tmp_path_factory, "compare", eval_every=3)


def run_compare(*args: str) -> subprocess.CompletedProcess:
    from pocketlm.cli import compare_main

    return run_entry(compare_main, *args)


def test_two_families_side_by_side_on_the_number_each_run_recorded(trained, tmp_path):
    report = tmp_path / "report.md"
    result = run_compare(str(trained["lstm"]), str(trained["transformer"]), "--output", str(report), "--seed", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    # The default text is the first model's validation documents. Each model's score on its own run's validation
    # documents is the bits/char its training recorded for the model it kept (same documents, same blocks).
    lstm_line = next(line for line in result.stdout.splitlines() if line.startswith(str(trained["lstm"])))
    recorded = json.loads((trained["lstm"] / "training_summary.json").read_text())["best_val_bpc"]
    assert f"{recorded:.3f}" in lstm_line.split()
    text = report.read_text()
    assert "validation documents" in text and "| bits/char |" in text
    for family in TINY_SHAPES:
        assert f"| {trained[family]} | {family} |" in text
    assert text.count("- `") == 2 * 3  # each model's reply to each of the three default prompts
    chart = report.with_suffix(".png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({chart.name})" in text


def test_replies_are_reproducible_under_one_seed_and_the_text_can_be_given(trained, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello!\n\nWhat is AI?\n")
    text = tmp_path / "held_out.txt"
    text.write_text("Hello there, how are you today?\n\nI am fine, thank you.\n\n" * 20)
    outputs = []
    for run in range(2):
        result = run_compare(str(trained["transformer"]), "--prompts", str(prompts), "--data", str(text),
                             "--seed", "7", "--output", str(tmp_path / f"{run}.md"))
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append((tmp_path / f"{run}.md").read_text().split("## Replies")[1])
    assert outputs[0] == outputs[1] and "**What is AI?**" in outputs[0]


def test_a_tokenizer_that_changes_the_text_gets_its_score_marked_with_what_it_changes(trained, tmp_path):
    """A model whose tokenizer lowercases scores only the lowercased text against every character: its bits per
    character are marked, and a footnote shows the first stretch it gives back changed; its twin that keeps every
    character is not marked."""
    lowered = tmp_path / "lowercased"
    shutil.copytree(trained["transformer"], lowered)
    spec = json.loads((lowered / "tokenizer.json").read_text())
    lowercase = {"type": "Lowercase"}
    spec["normalizer"] = lowercase if spec["normalizer"] is None else {
        "type": "Sequence", "normalizers": [spec["normalizer"], lowercase]}
    (lowered / "tokenizer.json").write_text(json.dumps(spec))
    text = tmp_path / "held_out.txt"
    text.write_text("hello there, how are you today?\n\nWell, I am Fine, thank you.\n\n" * 20)
    report = tmp_path / "report.md"
    result = run_compare(str(trained["transformer"]), str(lowered), "--data", str(text), "--output", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line.split()[4] for line in result.stdout.splitlines()
            if line.startswith((str(trained["transformer"]), str(lowered)))}
    assert rows[str(trained["transformer"])][-1].isdigit() and rows[str(lowered)].endswith("*")
    footnotes = [line for line in result.stdout.splitlines() if line.startswith("* ")]
    assert len(footnotes) == 1 and footnotes[0].startswith(f"* {lowered}: its tokenizer does not give back the text")
    original, back = map(ast.literal_eval, re.search(r"\((.+) comes back as (.+)\), so", footnotes[0]).groups())
    assert original in text.read_text() and back == original.lower() != original
    assert "\\" + footnotes[0] in report.read_text()  # escaped, so markdown shows the mark, not a list


def test_main_py_compare_dispatches(trained, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), "--compare", str(trained["lstm"]), "--output",
         str(tmp_path / "c.md")], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "c.md").exists() and (tmp_path / "c.png").exists()


def test_without_models_every_model_trained_into_models_is_compared(trained, tmp_path, monkeypatch):
    """After `main.py --train` of both families, `main.py --compare` was refused: 'MODEL is required'. It compares
    what train.py left in models/ now, and leaves out the exports and Hub folders beside them (the same model
    twice: `hub_upload.py --dry-run` builds models/transformer-hub by default)."""
    from pocketlm.cli import export_main, legacy_main, upload_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_notARealToken")
    assert_one_line_error(run_entry(legacy_main, "--compare"), "no trained model in models/: name the models to "
                          "compare (compare.py MODEL [MODEL ...]), or train one with: python train.py")
    for family in TINY_SHAPES:
        shutil.copytree(trained[family], tmp_path / "models" / family)
    assert run_entry(export_main, "models/transformer", "--format", "transformers").returncode == 0
    assert run_entry(upload_main, "models/transformer", "--repo-id", "me/m", "--dry-run").returncode == 0
    assert (tmp_path / "models" / "transformer-hub" / "config.json").is_file()
    result = run_entry(legacy_main, "--compare", "--max-new-tokens", "4", "--seed", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("comparing every model in models/: models/lstm, models/transformer\n")
    report = (tmp_path / "comparison.md").read_text()
    rows = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| models/")]
    assert rows == ["models/lstm", "models/transformer"]
    named = run_entry(legacy_main, "--compare", "models/lstm", "models/transformer", "--max-new-tokens", "4", "--seed",
                      "2", "--output", "named.md")
    assert named.returncode == 0 and "comparing every" not in named.stdout, named.stderr[-3000:]
    # The same comparison as naming them: the same replies (the speeds are measured afresh).
    assert (tmp_path / "named.md").read_text().split("## Replies")[1] == report.split("## Replies")[1]


@pytest.mark.parametrize("case", ["not a model", "missing", "hub offline", "empty text", "empty prompts", "twice",
                                  "chart is the report"])
def test_bad_input_ends_in_one_line(case, trained, tmp_path):
    models = [str(trained["lstm"])]
    extra = []
    needle = {"not a model": "holds no model", "missing": "no model folder",
              "hub offline": "is not in the local cache (the Hub cannot be reached)",
              "empty text": "no usable text", "empty prompts": "holds no prompt", "twice": "name each model once",
              "chart is the report": "give --chart a path of its own"}[case]
    if case == "not a model":
        (tmp_path / "folder").mkdir()
        models.append(str(tmp_path / "folder"))
    elif case == "missing":
        models.append(str(tmp_path / "nowhere"))
    elif case == "hub offline":
        models.append("nobody/no-such-model")
    elif case == "empty text":
        (tmp_path / "empty.txt").write_text("  \n\n")
        extra = ["--data", str(tmp_path / "empty.txt")]
    elif case == "twice":  # the same folder under another spelling
        models.append(str(trained["lstm"].parent / ".." / trained["lstm"].parent.name / trained["lstm"].name) + "/")
    elif case == "chart is the report":
        extra = ["--chart", str(tmp_path / "out.md")]
    else:
        (tmp_path / "prompts.txt").write_text("\n")
        extra = ["--prompts", str(tmp_path / "prompts.txt")]
    result = run_compare(*models, *extra, "--output", str(tmp_path / "out.md"))
    assert_one_line_error(result, needle)
    assert not (tmp_path / "out.md").exists()


def test_a_report_or_chart_compare_did_not_write_is_never_replaced(trained, tmp_path):
    """`compare.py MODEL --output notes.md` wrote its report over the notes, and the chart over any picture at its
    path. Such a file is refused in one line before any work; an earlier comparison's own report and chart,
    from before the chart was marked as compare.py's too, are replaced."""
    from PIL import Image

    notes, picture, report = tmp_path / "notes.md", tmp_path / "picture.png", tmp_path / "report.md"
    notes.write_text("# My notes\n\nkeep these\n")
    Image.new("RGB", (4, 4)).save(picture)
    kept = {path: path.read_bytes() for path in (notes, picture)}
    for extra, needle in ((["--output", str(notes)], f"{notes} exists and compare.py did not write it"),
                          (["--output", str(report), "--chart", str(picture)], f"{picture} exists and compare.py")):
        assert_one_line_error(run_compare(str(trained["lstm"]), *extra), needle)
    assert {path: path.read_bytes() for path in (notes, picture)} == kept
    assert not report.exists() and not notes.with_suffix(".png").exists()
    for run in range(2):  # the second replaces the first's report and chart
        result = run_compare(str(trained["lstm"]), "--output", str(report), "--max-new-tokens", "2")
        assert result.returncode == 0, result.stderr[-3000:]
        if run == 0:  # the chart as an earlier compare.py saved it, unmarked: the report's link names it
            Image.open(report.with_suffix(".png")).save(report.with_suffix(".png"))
            assert "Software" not in Image.open(report.with_suffix(".png")).info
    assert Image.open(report.with_suffix(".png")).info["Software"] == "pocketlm compare.py"


def test_the_report_shows_each_prompt_and_reply_as_written():
    """The report is Markdown: a reply with '*', '_', '<b>' or a character model's '<unk>' showed as emphasis, as
    bold or not at all in any Markdown viewer. Rendered by markdown-it (CommonMark, with GitHub's tables and
    strikethrough), each prompt and reply reads as written, with no markup but the model's name as code."""
    from html.parser import HTMLParser

    from markdown_it import MarkdownIt

    from pocketlm.comparison import ModelReport, markdown

    prompts = ["**Hi** <i>there</i>", "a_b_", "[x](y)"]
    replies = ["*so* it <b>was</b> x_y_z", "<unk> `c` \\ | ~~d~~ &amp; ok", "![i](j) _k_"]
    report = ModelReport("models/a", "lstm", 1, 1, 1.0, 1.0, 0.1, replies)
    page = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(
        markdown([report], "text", prompts, 0, None))

    class Reader(HTMLParser):
        def __init__(self):
            super().__init__()
            self.open, self.shown, self.tags = None, [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag in ("strong", "li"):
                self.open = tag
                self.shown.append("")

        def handle_endtag(self, tag):
            self.open = None if tag in ("strong", "li") else self.open

        def handle_data(self, data):
            if self.open:
                self.shown[-1] += data

    reader = Reader()
    reader.feed(page.split("<h2>Replies</h2>")[1])
    assert reader.shown == [text for prompt, reply in zip(prompts, replies) for text in (prompt, f"models/a: {reply}")]
    assert set(reader.tags) == {"p", "strong", "ul", "li", "code"}


def test_a_prompt_longer_than_a_model_s_window_is_read_by_its_newest_tokens(trained, tmp_path):
    """The replies kept the newest tokens of a prompt longer than the GPT's window, but the speed measurement fed it
    whole, and the comparison ended in a traceback ('6002 tokens exceed this model's context window of 256')."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the king and the queen " * 400 + "\n")
    report = tmp_path / "report.md"
    result = run_compare(str(trained["transformer"]), str(trained["lstm"]), "--prompts", str(prompts), "--output",
                         str(report), "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert report.read_text().split("## Replies")[1].count("- `") == 2


def test_a_stock_gpt2_is_scored_and_continues_text_as_transformers_computes_it(trained, tmp_path):
    """The Hub's gpt2 beside a model of one's own, as nanoGPT's sample.py takes init_from='gpt2': chat.py and
    compare.py refused a GPT-2 pocketlm did not write ("fine-tune it into one"), and scoring masked the padding by
    the pad token's id, which GPT-2's tokenizer has none of (transformers' usual stand-in, its end-of-text token,
    would have left every document's end unscored). Its bits per character are GPT2LMHeadModel's own summed loss
    over the text and its end-of-text token, and its greedy continuation is transformers' own."""
    import math

    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from pocketlm.cli import chat_main
    from pocketlm.comparison import compare_models, comparison_text

    stock = save_stock_gpt2(tmp_path / "gpt2", make_text(5), n_positions=128)
    model, tokenizer = GPT2LMHeadModel.from_pretrained(stock).eval(), AutoTokenizer.from_pretrained(stock)
    assert tokenizer.pad_token is None
    text = tmp_path / "held_out.txt"
    text.write_text("the king and the queen went to the river to see the boats")
    ids = torch.tensor([tokenizer(text.read_text())["input_ids"] + [tokenizer.eos_token_id]])
    with torch.no_grad():
        nats = model(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
    expected = nats / math.log(2) / (len(text.read_text()) + 1)  # the end-of-text token read as one character

    documents, _ = comparison_text([str(stock)], [str(text)])
    [report] = compare_models([str(stock)], documents, ["the king"], max_new_tokens=4)
    assert report.family == "transformer, stock GPT-2" and report.replies[0].startswith("the king")
    assert report.bits_per_char == pytest.approx(expected, rel=1e-5)
    # Without --data, a fine-tune named after its base is scored with it on the fine-tune's validation documents,
    # not on the built-in corpus the base (no run of pocketlm's) would have chosen.
    mine, said = comparison_text([str(stock), str(trained["transformer"])])
    assert said.startswith(f"the validation documents of {trained['transformer']}'s run")
    assert mine["text"] == comparison_text([str(trained["transformer"])])[0]["text"]

    # Named by its Hub id, from the cache, as transformers' examples name it.
    cache_as_hub_repo(stock, tmp_path / "hub-cache", "gpt2")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub-cache"), "HF_HUB_OFFLINE": "1"}
    chat, compared = run_at_once(
        [sys.executable, "chat.py", "gpt2", "--prompt", "the king", "--greedy", "--repetition-penalty", "1",
         "--max-new-tokens", "8"],
        [sys.executable, "compare.py", "gpt2", "--data", str(text), "--output", str(tmp_path / "c.md")], env=env)
    with torch.no_grad():
        prompt = tokenizer("the king", return_tensors="pt").input_ids
        greedy = model.generate(prompt, do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.eos_token_id)
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert chat.stdout == "the king" + tokenizer.decode(greedy[0, prompt.shape[1]:], skip_special_tokens=True) + "\n"
    assert compared.returncode == 0, compared.stderr[-3000:]
    size = f"{(stock / 'model.safetensors').stat().st_size / 1e3:.2f}kB"  # the cache's copy of the weights
    row = f"| gpt2 | transformer, stock GPT-2 | {model.num_parameters() / 1e3:.2f}k | {size} | {expected:.3f} |"
    assert row in (tmp_path / "c.md").read_text()
    # Its graphs would be pocketlm's exporter's, which writes pocketlm's models.
    assert_one_line_error(run_entry(chat_main, str(stock), "--runtime", "onnx", "--device", "cpu", "--prompt", "the"),
                          f"{stock} is a stock GPT-2 with no ONNX graphs beside it: run it in torch (drop --runtime "
                          "onnx), or fine-tune it into a pocketlm model (train.py --init-from), whose graphs "
                          "--runtime onnx exports.")


def test_a_gpt2_fine_tuned_elsewhere_on_chatml_stops_its_reply_at_its_template_s_turn_end(tmp_path):
    """A GPT-2 fine-tuned to chat outside pocketlm, ChatML-style (TRL, a notebook): its template closes a reply with
    <|im_end|>, which is neither its end-of-text nor in its generation config. chat.py and compare.py stopped only at
    the end of text, so the reply ran on into a turn the model wrote for the user, its role tokens hidden. They stop
    where the template ends a turn, as generate() does when told that token; a message too long for the window
    keeps the template's whole opening of it."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from pocketlm.chat import ChatInterface
    from pocketlm.cli import chat_main
    from pocketlm.comparison import compare_models, comparison_text

    folder = save_stock_gpt2(tmp_path / "gpt2-chatml", make_text(5), n_positions=64)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    model = GPT2LMHeadModel.from_pretrained(folder)
    model.resize_token_embeddings(len(tokenizer))
    # Taught one conversation that goes on past the reply: the turn the model writes next is the user's.
    conversation = [{"role": "user", "content": "the king"}, {"role": "assistant", "content": "went to the river"},
                    {"role": "user", "content": "and the queen"}]
    ids = torch.tensor([tokenizer.apply_chat_template(conversation)["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    prompt = torch.tensor([tokenizer.apply_chat_template(conversation[:1], add_generation_prompt=True)["input_ids"]])
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        ran_on = model.generate(prompt, do_sample=False, max_new_tokens=40, pad_token_id=end)[0, prompt.shape[1]:]
        stopped = model.generate(prompt, do_sample=False, max_new_tokens=40, eos_token_id=end)[0, prompt.shape[1]:]
    assert "and the queen" in tokenizer.decode(ran_on, skip_special_tokens=True)  # what the reply used to be
    assert tokenizer.decode(stopped, skip_special_tokens=True) == "went to the river"

    chat = run_entry(chat_main, str(folder), "--prompt", "the king", "--greedy", "--repetition-penalty", "1",
                     "--max-new-tokens", "40")
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert chat.stdout == "went to the river\n"
    # A message longer than the window keeps its end and what opens it: "<|im_start|>user\n", not <|im_start|> alone.
    message = "the queen " * 40 + "and the king"
    prompt = tokenizer.decode(ChatInterface(str(folder), max_new_tokens=40).prompt_ids(message, 32))
    opening, kept = prompt[:len("<|im_start|>user\n")], prompt[len("<|im_start|>user\n"):]
    assert opening == "<|im_start|>user\n" and len(tokenizer(prompt).input_ids) == 32
    assert (message + "<|im_end|>\n<|im_start|>assistant\n").endswith(kept)
    text = tmp_path / "text.txt"
    text.write_text(make_text(6, paragraphs=3))
    documents, _ = comparison_text([str(folder)], [str(text)])
    [report] = compare_models([str(folder)], documents, ["the king"], max_new_tokens=40)
    assert report.replies == ["went to the river"]  # sampled, from a model sure of every token of it
