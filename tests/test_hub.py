"""hub_upload.py: the folder it would upload, loading it without pocketlm, and every way an upload can fail."""

import http.server
import html
import json
import re
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml
from conftest import (PROJECT_FREE_PRELUDE, REPO_ROOT, TINY_SHAPES, assert_one_line_error, cache_as_hub_repo,
                      make_text, run_at_once, run_entry, train_tiny_models)

from pocketlm.cli import upload_main
from pocketlm.loading import load_pretrained
from pocketlm.training import TrainingOptions, train

SECRET = "hf_thisIsNotARealTokenButMustNeverBePrinted"
EXPECTED_FILES = {
    "transformer": {"configuration_gpt.py", "modeling_gpt.py"},
    "lstm": {"configuration_lstm.py", "modeling_lstm.py"},
}
COMMON_FILES = {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja", "loss_curve.png"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    return train_tiny_models(tmp_path_factory, "trained", save_every=3)


def run_upload(*args: str) -> subprocess.CompletedProcess:
    return run_entry(upload_main, *args)


def run_script(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env={**os.environ, **env})


def read_card(folder: Path) -> tuple[dict, str]:
    _, metadata, body = (folder / "README.md").read_text().split("---\n", 2)
    return yaml.safe_load(metadata), body


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_dry_run_builds_exactly_the_repository_folder(family, trained, tmp_path):
    out = tmp_path / "hub"
    result = run_upload(str(trained[family]), "--repo-id", "someone/tiny-model", "--dry-run", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == COMMON_FILES | EXPECTED_FILES[family]
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_")
    # The tokenizer's settings, not how this machine read it (transformers writes "local_files_only" back).
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert not {"is_local", "local_files_only"} & set(tokenizer_config), tokenizer_config

    metadata, body = read_card(out)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "text-generation"
    assert metadata["license"] == "mit" and "pocketlm" in metadata["tags"]
    metrics = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    summary = json.loads((trained[family] / "training_summary.json").read_text())
    assert metrics["bits_per_character"] == pytest.approx(summary["best_val_bpc"], abs=1e-4)
    assert metrics["perplexity"] > 1
    params = sum(p.numel() for p in load_pretrained(str(trained[family]))[0].parameters())
    assert f"{params:,} parameters" in body
    assert "trust_remote_code=True" in body and "![training and validation loss](loss_curve.png)" in body
    assert body.count("```text") == 3  # the samples
    assert "chatterbot-corpus" in body and "| lr |" in body


def test_dry_run_never_overwrites(trained, tmp_path):
    out = tmp_path / "hub"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_upload(str(trained["lstm"]), "--repo-id", "a/b", "--dry-run", "--output-dir", str(out))
    assert result.returncode == 2 and "not an empty folder" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_dry_run_of_the_folder_you_are_in_builds_beside_it(trained, tmp_path, monkeypatch):
    """`hub_upload.py . --dry-run` built `.-hub`, a hidden folder inside the model it was publishing."""
    model = tmp_path / "mine"
    shutil.copytree(trained["lstm"], model)
    before = sorted(path.name for path in model.iterdir())
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.chdir(model)
    result = run_upload(".", "--repo-id", "a/b", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in model.iterdir()) == before
    assert (tmp_path / "mine-hub" / "model.safetensors").is_file()
    assert str(tmp_path / "mine-hub") in result.stdout


def test_the_card_names_a_hub_dataset_s_configuration_as_the_hub_indexes_it():
    """A run on `--dataset Salesforce/wikitext --dataset-config wikitext-2-raw-v1`: the card's results say which
    configuration they were measured on (the model-index's `config`), and its data line names it."""
    from pocketlm.card import card_metadata, public_data_name

    summary = {"options": {"dataset": "Salesforce/wikitext", "dataset_config": "wikitext-2-raw-v1"},
               "data": {"name": "Salesforce/wikitext (wikitext-2-raw-v1)"}, "best_val_bpc": 2.0, "best_val_ppl": 9.0}
    name = public_data_name(summary)
    metadata = card_metadata("transformer", summary, "me/model", "mit", name)
    assert name == "Salesforce/wikitext (wikitext-2-raw-v1)" and metadata["datasets"] == ["Salesforce/wikitext"]
    assert metadata["model-index"][0]["results"][0]["dataset"] == {
        "name": name, "type": "Salesforce/wikitext", "config": "wikitext-2-raw-v1"}


PROJECT_FREE = PROJECT_FREE_PRELUDE + textwrap.dedent(
    """
    import json
    from transformers import AutoModelForCausalLM, AutoTokenizer
    # The model card's own snippet, with the folder standing in for the repo id.
    tokenizer = AutoTokenizer.from_pretrained({folder!r}, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained({folder!r}, trust_remote_code=True)
    messages = [{{"role": "user", "content": "Hello!"}}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    reply = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    print(json.dumps(reply[0].tolist()))
    """
)


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_the_uploaded_folder_loads_without_pocketlm_and_generates_the_same(family, trained, tmp_path):
    out = tmp_path / "hub"
    assert run_upload(str(trained[family]), "--repo-id", "a/b", "--dry-run", "--output-dir", str(out)).returncode == 0
    model, tokenizer = load_pretrained(str(trained[family]))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True,
                                           return_tensors="pt")
    expected = model.generate(**prompt, max_new_tokens=12, do_sample=False)[0].tolist()
    script = PROJECT_FREE.format(root=str(REPO_ROOT), folder=str(out))
    result = run_script("-c", script, env={"HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


def card_snippet(folder: Path) -> str:
    """The card's "How to use" code, as a reader copies it, the repository id replaced by `folder`, decoding
    greedily (the card's samples): what it prints is then a fact to compare."""
    _, body = read_card(folder)
    code = body.split("## How to use", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    shrunk = code.replace('"a/b"', repr(str(folder))).replace("max_new_tokens=60", "max_new_tokens=12, do_sample=False")
    assert shrunk.count(repr(str(folder))) == 2 and "do_sample=False" in shrunk
    return PROJECT_FREE_PRELUDE.format(root=str(REPO_ROOT)) + shrunk


def test_the_card_of_a_plain_text_model_continues_a_text_and_its_snippet_prints_what_pocketlm_does(
        trained, tmp_path, tmp_path_factory):
    """A model trained on plain text never saw the chat template's role tokens: its card's snippet continues a text
    (run as written, without pocketlm, it prints pocketlm's own greedy continuation) and names chat.py's text mode;
    a chat model's card keeps the chat turn. The repository, as downloaded, has no run record: its card's tags
    tell chat.py which mode to take. The exports beside it carry the chat template for the chat model only, and
    the gpt2/ folder of the plain-text model, as downloaded, is run as text."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from pocketlm.chat import ChatInterface
    from pocketlm.generation import complete

    data = tmp_path / "prose.txt"
    data.write_text(make_text(9, 80), encoding="utf-8")
    prose = train_tiny_models(tmp_path_factory, "prose", {"transformer": TINY_SHAPES["transformer"]},
                              data=[str(data)])["transformer"]
    for model_dir, is_chat in ((prose, False), (trained["transformer"], True)):
        out = tmp_path / f"hub-{is_chat}"
        assert run_upload(str(model_dir), "--repo-id", "a/b", "--dry-run", "--output-dir", str(out), "--formats",
                          "transformers,gguf").returncode == 0
        metadata, body = read_card(out)
        assert ("apply_chat_template" in body) == is_chat and ("continues what you type" in body) != is_chat
        assert ("conversational" in metadata["tags"]) == is_chat  # the Hub's tag for a chat model
        assert ("with the tokenizer and no chat template" in body) != is_chat
        assert ChatInterface(str(out)).mode == ("chat" if is_chat else "text")
        # The exports: transformers' and llama.cpp's own readers find a template in the chat model's only.
        assert (AutoTokenizer.from_pretrained(out, subfolder="gpt2").chat_template is not None) == is_chat
        assert ("tokenizer.chat_template" in GGUFReader(next(out.glob("*.gguf"))).fields) == is_chat
        assert ChatInterface(str(out / "gpt2")).mode == ("chat" if is_chat else "text")
        printed = run_script("-c", card_snippet(out), env={"HF_MODULES_CACHE": str(tmp_path / "modules"),
                                                          "PYTHONPATH": ""})
        assert printed.returncode == 0, printed.stderr[-3000:]
        model, tokenizer = load_pretrained(str(model_dir))
        if is_chat:
            expected = chat_reply_text(model, tokenizer)
        else:
            expected = "The " + complete(model, tokenizer, "The ", 12, do_sample=False)
        assert printed.stdout.rstrip("\n") == expected


def test_the_lstm_card_s_onnxruntime_code_runs_without_pocketlm_and_picks_the_model_s_next_character(trained,
                                                                                                      tmp_path):
    """The card's onnxruntime code for the LSTM loaded the tokenizer with AutoTokenizer, which reads config.json
    first: pocketlm's model type made transformers stop to ask whether to run the repository's code. It reads the
    tokenizer's files alone now; run as written (the repository id replaced by the folder), in a process without
    pocketlm, its logits pick the native model's next character."""
    import torch

    out = tmp_path / "hub-lstm"
    assert run_upload(str(trained["lstm"]), "--repo-id", "a/tiny-lstm", "--dry-run", "--output-dir", str(out),
                      "--formats", "onnx").returncode == 0
    code = read_card(out)[1].split("**onnxruntime.**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('hf_hub_download("a/tiny-lstm", "onnx/model.onnx")', repr(str(out / "onnx" / "model.onnx")))
    code = code.replace('"a/tiny-lstm"', repr(str(out)))
    assert "a/tiny-lstm" not in code
    script = PROJECT_FREE_PRELUDE.format(root=str(REPO_ROOT)) + code + "print(int(logits[0, -1].argmax()))\n"
    result = run_script("-c", script, env={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "custom code" not in result.stdout + result.stderr, result.stdout[-2000:]
    model, tokenizer = load_pretrained(str(trained["lstm"]))
    with torch.no_grad():
        expected = model(**tokenizer("Hello", return_tensors="pt")).logits[0, -1].argmax().item()
    assert int(result.stdout.strip().splitlines()[-1]) == expected


def chat_reply_text(model, tokenizer) -> str:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    reply = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    return tokenizer.decode(reply[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)


STOCK_FROM_THE_REPOSITORY = PROJECT_FREE_PRELUDE + textwrap.dedent(
    """
    import json
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained({folder!r}, subfolder="gpt2")  # no remote code
    tokenizer = AutoTokenizer.from_pretrained({folder!r}, subfolder="gpt2")
    prompt = tokenizer.apply_chat_template([{{"role": "user", "content": "Hello!"}}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    reply = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    print(type(model).__name__, json.dumps(reply[0].tolist()))
    """
)


def test_the_repository_carries_a_gguf_file_for_each_precision_asked_and_the_card_names_them(trained, tmp_path):
    out = tmp_path / "hub"
    result = run_upload(str(trained["transformer"]), "--repo-id", "a/tiny-gpt", "--dry-run", "--output-dir", str(out),
                        "--formats", "gguf", "--gguf-precision", "q8_0,f16")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.gguf")) == ["tiny-gpt-f16.gguf", "tiny-gpt-q8_0.gguf"]
    _, body = read_card(out)
    assert "`tiny-gpt-q8_0.gguf` (8-bit Q8_0), `tiny-gpt-f16.gguf` (float16): GPT-2 architecture" in body
    assert "f32.gguf" not in body


def test_the_repository_carries_the_exports_where_the_hub_and_each_runtime_look(trained, tmp_path):
    out = tmp_path / "hub"
    result = run_upload(str(trained["transformer"]), "--repo-id", "a/tiny-gpt", "--dry-run", "--output-dir", str(out),
                        "--formats", "all")
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"gpt2", "tiny-gpt-f32.gguf"} <= {p.name for p in out.iterdir()}  # beside the native model
    assert json.loads((out / "gpt2" / "config.json").read_text())["model_type"] == "gpt2"
    assert {p.name for p in (out / "gpt2" / "onnx").iterdir()} == {"model.onnx", "model_quantized.onnx"}
    metadata, body = read_card(out)
    assert {"transformers", "onnx", "gguf"} <= set(metadata["tags"])
    for how in ('subfolder="gpt2"', "ollama run hf.co/a/tiny-gpt", "llama-server -hf a/tiny-gpt",
                "gpt2/onnx/model.onnx", "transformers serve"):
        assert how in body, how
    # The stock GPT-2 in the subfolder decodes what the native model does, in a process without pocketlm.
    model, tokenizer = load_pretrained(str(trained["transformer"]))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    expected = model.generate(**prompt, max_new_tokens=12, do_sample=False)[0].tolist()
    loaded = run_script("-c", STOCK_FROM_THE_REPOSITORY.format(root=str(REPO_ROOT), folder=str(out)),
                        env={"PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    name, tokens = loaded.stdout.strip().splitlines()[-1].split(" ", 1)
    assert name == "GPT2LMHeadModel" and json.loads(tokens) == expected

    lstm = tmp_path / "hub-lstm"
    result = run_upload(str(trained["lstm"]), "--repo-id", "a/tiny-lstm", "--dry-run", "--output-dir", str(lstm),
                        "--formats", "onnx")
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p.name for p in (lstm / "onnx").iterdir()} == {"model.onnx", "model_quantized.onnx"}
    assert '"h": state, "c": state' in read_card(lstm)[1]
    # chat.py on the repository as downloaded (`hf download ... --include "gpt2/*"`, as the card says): the stock
    # GPT-2 folder, no export record beside it, was refused ("holds a 'gpt2' model"); it and the graphs the
    # repository carries now run, each the native model's reply.
    from pocketlm.cli import chat_main

    asked = ("--prompt", "Hello!", "--seed", "3", "--max-new-tokens", "12")  # sampled: the tiny LSTM's greedy is ""
    for native, folder in ((trained["transformer"], out / "gpt2"), (trained["lstm"], lstm)):
        reply = run_entry(chat_main, str(native), *asked)
        assert reply.returncode == 0 and reply.stdout.strip(), reply.stderr[-2000:]
        for runtime in ("torch", "onnx"):
            ran = run_entry(chat_main, str(folder), "--runtime", runtime, *asked)
            assert ran.returncode == 0 and ran.stdout == reply.stdout, (folder, runtime, ran.stderr[-2000:])
            assert "exporting" not in ran.stderr  # the repository's own graphs, not a new export
    from pocketlm.cli import export_main

    assert_one_line_error(run_entry(export_main, str(out / "gpt2"), "--format", "gguf"),
                          "is a stock GPT-2", "need the pocketlm model itself (the repository's top folder)")
    refused = run_upload(str(trained["lstm"]), "--repo-id", "a/tiny-lstm", "--dry-run", "--output-dir",
                         str(tmp_path / "no"), "--formats", "gguf")
    assert refused.returncode == 2 and "choose onnx or all" in refused.stderr and not (tmp_path / "no").exists()


# ---------------------------------------------------------------------------------------------------- errors


def _assert_clean_failure(result: subprocess.CompletedProcess, needle: str, code: int | None = None) -> None:
    assert result.returncode != 0
    if code is not None:
        assert result.returncode == code
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_offline_upload_fails_cleanly_and_never_prints_the_token(trained):
    result = run_script("hub_upload.py", str(trained["transformer"]), "--repo-id", "me/model", "--token", SECRET,
                        env={"HF_HUB_OFFLINE": "1"})
    _assert_clean_failure(result, "HF_HUB_OFFLINE", code=1)


def test_no_token_says_how_to_log_in(trained, tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": "", "HF_HUB_OFFLINE": "0"}
    result = run_script("hub_upload.py", str(trained["lstm"]), "--repo-id", "me/model", env=env)
    _assert_clean_failure(result, "hf auth login", code=2)


def test_unreachable_hub_fails_cleanly(trained):
    # A closed port on this machine: the connection is refused at once.
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    result = run_script("hub_upload.py", str(trained["lstm"]), "--repo-id", "me/model", "--token", SECRET, env=env)
    _assert_clean_failure(result, "could not reach the Hub", code=1)
    line = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert "Connect" in line and line.endswith("check the connection."), line  # the refused connection, named


class _Forbidding(http.server.BaseHTTPRequestHandler):
    """A stand-in Hub on loopback that refuses every write, as the Hub does for someone else's namespace."""

    def _refuse(self):
        body = json.dumps({"error": "You don't have the rights to create a model under the namespace"}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _refuse

    def log_message(self, *args):
        pass


def test_someone_elses_repository_is_refused_cleanly(trained):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forbidding)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_OFFLINE": "0"}
        result = run_script("hub_upload.py", str(trained["lstm"]), "--repo-id", "huggingface/not-mine", "--token",
                            SECRET, env=env)
    finally:
        server.shutdown()
    _assert_clean_failure(result, "no permission to write to huggingface/not-mine", code=1)


NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}  # a closed port: any request fails at once


@pytest.mark.parametrize("family, flags, needle", [
    ("transformer", ["--repo-id", "not a valid/repo id!"], "--repo-id 'not a valid/repo id!' must look like OWNER/NAME"),
    ("lstm", ["--repo-id", "no-owner"], "--repo-id 'no-owner' must look like OWNER/NAME"),
    ("lstm", ["--repo-id", "a/b/c"], "--repo-id 'a/b/c' must look like OWNER/NAME"),
    # The Hub takes ASCII letters only; huggingface_hub 1.x's own check let these through.
    ("transformer", ["--repo-id", "me/modèle"], "--repo-id 'me/modèle' must look like OWNER/NAME"),
    ("lstm", ["--repo-id", "me/model", "--space-id", "me/chat space"], "--space-id 'me/chat space' must look like"),
    ("transformer", ["--repo-id", "me/model", "--static-space", "me/page.."], "--static-space 'me/page..' must look"),
    ("lstm", ["--repo-id", "me/model", "--formats", "gguf"], "the lstm cannot be exported as gguf"),
    ("transformer", ["--repo-id", "me/model", "--formats", "onnx,pdf"], "unknown format 'pdf'"),
    ("transformer", ["--repo-id", "me/model", "--formats", "web"], "pass --static-space OWNER/NAME"),
    ("lstm", ["--repo-id", "me/model", "--token", ""], "no Hugging Face token"),
    ("lstm", ["--repo-id", "me/model", "--revision", "my branch"], "--revision 'my branch' is not a branch name git"),
    ("transformer", ["--repo-id", "me/model", "--revision", "v1..2"], "--revision 'v1..2' is not a branch name"),
    # The Hub refuses a card whose license is not one of its ids ("Invalid metadata in README.md").
    ("lstm", ["--repo-id", "me/model", "--license", "GPL-3.0-only"],
     "--license 'GPL-3.0-only' is not a license id the Hub accepts: did you mean gpl-3.0?"),
    ("transformer", ["--repo-id", "me/model", "--license", "proprietary"], "is not a license id the Hub accepts"),
    ("lstm", ["--repo-id", "me/model", "--data-name", "two\nlines"], "--data-name 'two\\nlines' must be one line"),
])
def test_a_dry_run_refuses_what_the_upload_would_refuse_with_its_message(family, flags, needle, trained, tmp_path,
                                                                         monkeypatch):
    for name, value in NO_HUB.items():
        monkeypatch.setenv(name, value)
    if "--token" in flags:  # and no saved login either
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
        monkeypatch.setenv("HF_TOKEN", "")
    out = tmp_path / "hub"
    dry = run_upload(str(trained[family]), *flags, "--dry-run", "--output-dir", str(out))
    real = run_upload(str(trained[family]), *flags)
    _assert_clean_failure(dry, needle, code=2)
    _assert_clean_failure(real, needle, code=2)  # refused before the network, as the dry run was
    assert dry.stderr == real.stderr and not out.exists()  # the same line; no folder half-built


def test_a_license_written_as_spdx_writes_it_reaches_the_cards_as_the_hub_spells_it(trained, tmp_path):
    from huggingface_hub import ModelCard, SpaceCard

    out = tmp_path / "hub"
    result = run_upload(str(trained["lstm"]), "--repo-id", "me/model", "--space-id", "me/chat", "--license",
                        "Apache-2.0", "--dry-run", "--output-dir", str(out), "--space-output-dir", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    assert ModelCard.load(out / "README.md").data.license == "apache-2.0"
    assert SpaceCard.load(tmp_path / "s" / "README.md").data.license == "apache-2.0"


@pytest.mark.parametrize("branch", ["main", "v1.0", "feature/x", "dev-2026_12", "refs/pr/1", "日本", "my branch",
                                    "a..b", "-x", "x/", "x.lock", "x.lock/y", "x.", ".x", "a/.b", "x~1", "a:b", "a^",
                                    "a?", "a*", "a[b", "a\\b", "a@{b", "a//b", "tab\there"])
def test_a_branch_name_is_checked_as_git_checks_it(branch):
    from pocketlm.errors import UsageError
    from pocketlm.hub import check_branch

    git = subprocess.run(["git", "check-ref-format", "--branch", branch], capture_output=True).returncode == 0
    try:
        check_branch(branch)
        ours = True
    except UsageError:
        ours = False
    assert ours == git


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    result = run_upload(str(tmp_path), "--repo-id", "me/model", "--dry-run")
    _assert_clean_failure(result, "holds no model (no config.json)", code=2)
    assert run_upload(str(tmp_path), "--repo-id", "not-a-repo-id", "--dry-run").returncode == 2


def test_push_to_hub_carries_the_custom_code(trained, monkeypatch):
    from transformers.utils import hub as transformers_hub

    uploaded = []

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def create_commit(self, repo_id, operations, **kwargs):
            uploaded.extend(op.path_in_repo for op in operations)

    monkeypatch.setattr(transformers_hub, "hf_api", lambda: RecordingApi())
    model, tokenizer = load_pretrained(str(trained["transformer"]))
    model.push_to_hub("me/model", token=SECRET)
    tokenizer.push_to_hub("me/model", token=SECRET)
    assert {"modeling_gpt.py", "configuration_gpt.py", "model.safetensors", "config.json",
            "tokenizer.json"} <= set(uploaded)


# -------------------------------------------------------------------------------------- Hub ids from the cache


def test_chat_and_fine_tuning_take_a_hub_repo_id_from_the_cache(trained, tmp_path):
    cache = tmp_path / "hub-cache"
    cache_as_hub_repo(trained["transformer"], cache, "someone/tiny-chat")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    chat, tuned, missing = run_at_once(
        [sys.executable, "chat.py", "--model", "someone/tiny-chat", "--prompt", "Hello", "--seed", "1"],
        [sys.executable, "train.py", "--init-from", "someone/tiny-chat", "--output-dir", str(tmp_path / "tuned"),
         "--max-steps", "1", "--block-size", "32", "--batch-size", "4", "--samples", "0"],
        [sys.executable, "chat.py", "--model", "someone/not-cached", "--prompt", "Hello"], env=env)
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert missing.returncode == 2 and "is not in the local cache (the Hub cannot be reached)" in missing.stderr
    # The fine-tuned model's card names the model it came from, where the Hub links the two (its model tree); the
    # card named neither, and showed the preset the run never read.
    result = run_upload(str(tmp_path / "tuned"), "--repo-id", "me/tuned", "--dry-run", "--output-dir",
                        str(tmp_path / "hub"))
    assert result.returncode == 0, result.stderr[-3000:]
    metadata, body = read_card(tmp_path / "hub")
    assert metadata["base_model"] == "someone/tiny-chat" and "| init_from | someone/tiny-chat |" in body
    assert "| model_size |" not in body
    # Its first line says so too (it read "trained with pocketlm", as if from scratch).
    assert ("A small language model fine-tuned with pocketlm from [someone/tiny-chat]"
            "(https://huggingface.co/someone/tiny-chat): a GPT-style") in body


def test_no_path_of_this_machine_reaches_the_hub_folder(tmp_path):
    """A run's data lives in a private folder; the card names it by file name (or --data-name), never by path."""
    from conftest import make_text

    private = tmp_path / "home" / "someone" / "private notes"
    private.mkdir(parents=True)
    (private / "diary.txt").write_text(make_text(4))
    model = tmp_path / "model"
    train(TrainingOptions(model_type="lstm", data=[str(private)], output_dir=str(model), block_size=32,
                          batch_size=4, max_steps=2, model_config={"hidden_size": 32}, samples=0))
    for extra, name in (([], "private notes"), (["--data-name", "my diary"], "my diary")):
        out = tmp_path / f"hub-{len(extra)}"
        result = run_upload(str(model), "--repo-id", "me/diary", "--dry-run", "--output-dir", str(out), *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        for path in out.rglob("*"):
            if path.is_file() and path.suffix in (".md", ".json", ".jinja", ".py", ".txt"):
                text = path.read_text()
                for secret in (str(tmp_path), str(Path.home()), os.getcwd(), "/tmp/"):
                    assert secret not in text, (path.name, secret)
        metadata, body = read_card(out)
        assert f"{name}: " in body and metadata["model-index"][0]["results"][0]["dataset"]["name"] == name
        # The LSTM's card shows what shaped it, not the Transformer preset it never read.
        assert "| model_config | hidden_size=32 |" in body and "| model_size |" not in body
    # A model fine-tuned from a private folder names that folder, never its path, and claims no Hub base model.
    tuned = tmp_path / "tuned"
    train(TrainingOptions(init_from=str(model), data=[str(private)], output_dir=str(tuned), block_size=32,
                          batch_size=4, max_steps=1, samples=0))
    result = run_upload(str(tuned), "--repo-id", "me/diary-2", "--dry-run", "--output-dir", str(tmp_path / "hub-t"))
    assert result.returncode == 0, result.stderr[-3000:]
    metadata, body = read_card(tmp_path / "hub-t")
    assert "| init_from | a local model, model |" in body and "base_model" not in metadata
    assert str(tmp_path) not in (tmp_path / "hub-t" / "README.md").read_text()


SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="../shared/data/tinyshakespeare.txt is not beside this checkout")
def test_a_tinyshakespeare_lstm_shows_its_bits_per_character_in_the_card(tmp_path):
    """bench/shakespeare.py's LSTM recipe, on nanoGPT's split of a slice of the text and for a few steps."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from shakespeare import RECIPES

    text = tmp_path / "slice.txt"
    text.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    recipe = {**RECIPES["lstm"], "max_steps": 20}
    recipe.pop("char")  # the LSTM trains a character tokenizer of its own
    from shakespeare import split

    train_file, val_file = split(text, tmp_path)
    model = tmp_path / "lstm"
    train(TrainingOptions(**recipe, data=[str(train_file)], validation_data=[str(val_file)], output_dir=str(model),
                          eval_every=10, samples=0))
    bpc = json.loads((model / "training_summary.json").read_text())["best_val_bpc"]
    result = run_upload(str(model), "--repo-id", "me/shakespeare-lstm", "--dry-run", "--output-dir",
                        str(tmp_path / "hub"))
    assert result.returncode == 0, result.stderr[-3000:]
    metadata, body = read_card(tmp_path / "hub")
    metrics = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert metrics["bits_per_character"] == round(bpc, 4)
    assert f"| bits per character | {bpc:.4f} |" in body and "train.txt" in body


def test_the_card_says_whether_the_output_head_is_the_input_embedding():
    """Every GPT card said "input and output embeddings tied", an untied model's too."""
    from modeling import GPTConfig
    from pocketlm.card import architecture

    assert architecture(GPTConfig(), "transformer", "byte-level BPE").endswith("input and output embeddings tied")
    assert architecture(GPTConfig(tie_word_embeddings=False), "transformer", "byte-level BPE").endswith("an output head of its own")


def test_the_card_counts_a_one_layer_model_in_the_singular():
    from modeling import GPTConfig, LSTMConfig
    from pocketlm.card import architecture

    assert "1 pre-norm block, width 32, 1 head," in architecture(GPTConfig(n_layer=1, n_head=1, n_embd=32), "transformer", "BPE")
    assert "4 pre-norm blocks, width 32, 2 heads," in architecture(GPTConfig(n_layer=4, n_head=2, n_embd=32),
                                                                   "transformer", "BPE")
    assert "LSTM: 1 layer of 64 units" in architecture(LSTMConfig(num_layers=1, hidden_size=64), "lstm", "character-level")


def test_the_card_shows_each_sample_whole_as_the_model_wrote_it(trained):
    """A model trained on Markdown writes ``` too, which closed the card's fence of three halfway through its
    sample, and the rest read as the card's own Markdown. Rendered by markdown-it (CommonMark), each sample is one
    code block holding it exactly."""
    from markdown_it import MarkdownIt

    from pocketlm.card import model_card

    model, tokenizer = load_pretrained(str(trained["transformer"]))
    samples = ["Install it:\n```bash\npip install x\n```\n# done *now*", "````\n`` two", "plain"]
    card = model_card(model, tokenizer, "transformer", {}, samples, "me/tiny", "mit", has_curve=False)
    blocks = [token.content for token in MarkdownIt("commonmark").parse(card.split("## Samples")[1])
              if token.type == "fence"]
    assert blocks == [sample + "\n" for sample in samples]


def test_the_card_shows_the_training_data_s_name_as_written(trained):
    """The card's training section began a line with the data's name, the user's file name: `*draft*` read as
    emphasis (`# notes.txt` would have been a heading), and a `|` in a setting would break its table. Rendered by
    markdown-it, the name reads as written and each setting keeps its row."""
    from markdown_it import MarkdownIt

    from pocketlm.card import model_card

    model, tokenizer = load_pretrained(str(trained["transformer"]))
    summary = json.loads((trained["transformer"] / "training_summary.json").read_text())
    summary["data"]["name"] = "#1 *draft* | notes_v2_.txt"
    card = model_card(model, tokenizer, "transformer", summary, [], "me/tiny", "mit", has_curve=False)
    page = MarkdownIt("commonmark").enable("table").render(card.split("## Training data")[1])
    data_paragraph = page.split("<p>", 1)[1].split("</p>", 1)[0]
    assert html.unescape(data_paragraph).startswith("Trained on #1 *draft* | notes_v2_.txt: ")  # no markup in it
    assert "<h1>" not in page and "<em>" not in data_paragraph
    rows = re.findall(r"<tr>\s*<td>(.*?)</td>\s*<td>(.*?)</td>", page, re.S)
    assert rows and all(value.strip() for _, value in rows)  # each setting's row has its two cells
