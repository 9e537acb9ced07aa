"""The fault matrix: every bad input and fault ends in one clear line, with a non-zero exit, and nothing lost.

Across the commands (train.py, chat.py, compare.py, hub_upload.py, export.py) and the Python API (`train`, `ChatInterface`,
`prepare_folder`): damaged and incomplete model folders, malformed data of every format, numbers out of range,
contradictory flags, unknown config fields, paths that cannot be written, a full disk, a busy output folder, and
checkpoints pocketlm did not write.
"""

import ast
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from conftest import REPO_ROOT, assert_one_line_error, make_text, run_at_once, run_entry, train_tiny_models

from pocketlm.chat import ChatInterface
from pocketlm.cli import chat_main, compare_main, export_main, legacy_main, train_main, upload_main
from pocketlm.errors import UsageError
from pocketlm.hub import prepare_folder
from pocketlm.loading import load_pretrained

def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its digest: what 'nothing overwritten' compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    return train_tiny_models(tmp_path_factory, "faults", max_steps=4, eval_every=2)


# --------------------------------------------------------------------------------- damaged model folders


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _other_weights(folder: Path, trained: dict[str, Path]) -> None:
    """Weights of the other family: a file that is whole, but not this model's."""
    other = trained["lstm" if "gpt" in (folder / "config.json").read_text() else "transformer"]
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")


def _set_config(folder: Path, **fields) -> None:
    """config.json edited by hand: `fields` written over what it holds."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


def _grown_tokenizer(folder: Path, trained) -> None:
    """Tokens the model has no embedding rows for (a tokenizer swapped for another's, or grown after training):
    chat ended mid-reply in an IndexError, the GGUF export in a ValueError."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([f"extra-{index}" for index in range(600)])
    tokenizer.save_pretrained(folder)


def _in_shards(folder: Path) -> list[Path]:
    """The weights saved again in shards, as save_pretrained(max_shard_size=...) and large Hub repositories keep
    them (model.safetensors.index.json and model-0000N-of-0000M.safetensors): the shards, in order."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="20KB")
    return sorted(folder.glob("model-*.safetensors"))


DAMAGE = {
    "a shard missing": (lambda f, t: _in_shards(f)[1].unlink(), "model-00002-of-"),
    "a shard truncated": (lambda f, t: _truncate(_in_shards(f)[-1]), "is truncated or damaged"),
    "config.json missing": (lambda f, t: (f / "config.json").unlink(), "no config.json"),
    "config.json not JSON": (lambda f, t: (f / "config.json").write_text("{'model_type': "), "config.json"),
    "config.json truncated": (lambda f, t: _truncate(f / "config.json"), "config.json"),
    "config.json of another library": (
        lambda f, t: (f / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1})), "'gpt2'"),
    "config.json with a field of the wrong type": (
        lambda f, t: _set_config(f, n_head="four", hidden_size=0), "must be a whole number of at least 1"),
    "weights missing": (lambda f, t: (f / "model.safetensors").unlink(), "model.safetensors"),
    "weights truncated": (lambda f, t: _truncate(f / "model.safetensors"), "model.safetensors"),
    "weights of another model": (_other_weights, "do not fit"),
    "tokenizer.json missing": (lambda f, t: (f / "tokenizer.json").unlink(), "tokenizer.json"),
    "tokenizer.json not JSON": (lambda f, t: _truncate(f / "tokenizer.json"), "tokenizer.json"),
    "tokenizer_config.json missing": (lambda f, t: (f / "tokenizer_config.json").unlink(), "tokenizer_config.json"),
    "tokenizer_config.json not JSON": (lambda f, t: _truncate(f / "tokenizer_config.json"), "tokenizer_config.json"),
    "chat template missing": (lambda f, t: (f / "chat_template.jinja").unlink(), "chat_template.jinja"),
    "a tokenizer larger than the model": (_grown_tokenizer, "it is not the tokenizer the model was trained with"),
    "generation_config.json not JSON": (
        lambda f, t: (f / "generation_config.json").write_text("max_new_tokens: 3"), "generation_config.json"),
    "an empty folder": (lambda f, t: [p.unlink() for p in f.iterdir() if p.is_file()], "no config.json"),
}


def _damaged_copy(trained, family: str, damage: str, tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / f"damaged-{family}"
    shutil.copytree(trained[family], folder, ignore=shutil.ignore_patterns("checkpoints"))
    apply, needle = DAMAGE[damage]
    apply(folder, trained)
    return folder, needle


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", ["chat.py", "compare.py", "hub_upload.py", "train.py --init-from", "export.py"])
def test_a_damaged_model_folder_is_refused_in_one_line(command, damage, trained, tmp_path):
    folder, needle = _damaged_copy(trained, "transformer", damage, tmp_path)
    before = snapshot(folder)
    if command == "export.py":
        result = run_entry(export_main, str(folder), "--output-dir", str(tmp_path / "exported"))
        assert not (tmp_path / "exported").exists()
    elif command == "chat.py":
        result = run_entry(chat_main, "--model", str(folder), "--prompt", "Hello")
    elif command == "compare.py":
        result = run_entry(compare_main, str(folder), "--output", str(tmp_path / "c.md"))
    elif command == "hub_upload.py":
        result = run_entry(upload_main, str(folder), "--repo-id", "me/model", "--dry-run", "--output-dir",
                           str(tmp_path / "hub"))
        assert not (tmp_path / "hub").exists()
    else:
        result = run_entry(train_main, "--init-from", str(folder), "--output-dir", str(tmp_path / "tuned"),
                           "--max-steps", "1", "--samples", "0")
        assert not (tmp_path / "tuned" / "model.safetensors").exists()
    assert_one_line_error(result, needle)
    assert snapshot(folder) == before


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_a_model_saved_in_shards_is_the_model_to_every_command(family, trained, corpus, tmp_path):
    """transformers loads weights saved in shards; every pocketlm command called such a folder "incomplete, missing
    model.safetensors". Each now takes it as the same model: the same reply, score, export and fine-tuned weights."""
    sharded = tmp_path / "model-in-shards"
    shutil.copytree(trained[family], sharded, ignore=shutil.ignore_patterns("checkpoints"))
    assert len(_in_shards(sharded)) > 1
    outputs = {}
    for name, folder in (("whole", trained[family]), ("sharded", sharded)):
        out = tmp_path / name
        out.mkdir()
        reply = run_entry(chat_main, str(folder), "--prompt", "Hello", "--greedy", "--max-new-tokens", "12")
        report = run_entry(compare_main, str(folder), "--output", str(out / "report.md"), "--max-new-tokens", "4")
        exported = run_entry(export_main, str(folder), "--format", "onnx", "--output-dir", str(out / "export"))
        uploaded = run_entry(upload_main, str(folder), "--repo-id", "me/m", "--dry-run", "--output-dir",
                             str(out / "hub"))
        tuned = run_entry(train_main, "--init-from", str(folder), f"--data={corpus}",
                          "--output-dir", str(out / "tuned"), "--max-steps", "2", "--samples", "0", "--seed", "3")
        for result in (reply, report, exported, uploaded, tuned):
            assert result.returncode == 0, result.stderr[-3000:]
        (row,) = [line.split("|") for line in (out / "report.md").read_text().splitlines()
                  if line.startswith(f"| {folder} |")]
        outputs[name] = (reply.stdout, row[5], (out / "export" / "onnx" / "model.onnx").read_bytes(),
                         (out / "hub" / "model.safetensors").read_bytes(),
                         (out / "tuned" / "model.safetensors").read_bytes())
    assert outputs["sharded"][0] == outputs["whole"][0] and outputs["whole"][0].strip()
    assert outputs["sharded"][1] == outputs["whole"][1] and float(outputs["whole"][1]) > 0  # bits per character
    assert outputs["sharded"][2:] == outputs["whole"][2:]


@pytest.mark.parametrize("command", ["chat.py", "compare.py", "hub_upload.py", "train.py --init-from", "export.py"])
def test_a_model_file_given_for_its_folder_is_pointed_to_the_folder(command, trained, tmp_path):
    given = str(trained["transformer"] / "model.safetensors")
    result = {
        "chat.py": lambda: run_entry(chat_main, "--model", given, "--prompt", "Hello"),
        "compare.py": lambda: run_entry(compare_main, given, "--output", str(tmp_path / "c.md")),
        "hub_upload.py": lambda: run_entry(upload_main, given, "--repo-id", "me/model", "--dry-run"),
        "train.py --init-from": lambda: run_entry(train_main, "--init-from", given, "--output-dir",
                                                  str(tmp_path / "tuned"), "--max-steps", "1"),
        "export.py": lambda: run_entry(export_main, given, "--output-dir", str(tmp_path / "exported")),
    }[command]()
    assert_one_line_error(result, f"{given} is a file, not a model folder: pass its folder, {trained['transformer']}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_missing_folder_whose_path_cannot_be_a_repo_id_is_named_as_a_folder(tmp_path, monkeypatch):
    """`chat.py "runs/my model"` (a folder not there, a space in its name) was tried as a Hub id and answered
    "could not fetch runs/my model from the Hub (HFValidationError); check the repo id"."""
    monkeypatch.chdir(tmp_path)
    for missing in ("runs/my model", "runs/modèle", "runs/a:b"):
        for main, *args in ((chat_main, "--prompt", "hi"), (export_main, "--format", "onnx")):
            assert_one_line_error(run_entry(main, missing, *args),
                                  f"no model folder at {missing}: check the path, or train one with: python train.py")


def test_a_model_s_web_address_is_said_to_be_one_with_its_repository_id(tmp_path, monkeypatch):
    """A Hub page copied from the browser read "no model folder at https://huggingface.co/...", as if mistyped."""
    monkeypatch.chdir(tmp_path)
    by_id = "pass its repository id, me/pocketlm-small"
    for address, fix in (("https://huggingface.co/me/pocketlm-small", by_id),
                         ("https://huggingface.co/me/pocketlm-small/tree/main", by_id), ("hf://me/pocketlm-small", by_id),
                         ("https://example.com/model.tar", "pass a model folder on this machine, or a Hub repository id")):
        for main, *args in ((chat_main, "--prompt", "hi"), (export_main, "--format", "onnx"), (compare_main,),
                            (upload_main, "--repo-id", "me/x", "--dry-run")):
            assert_one_line_error(run_entry(main, address, *args), f"{address} is a web address", fix)
    assert not [*tmp_path.iterdir()]


def test_a_tokenizer_path_that_is_no_folder_is_refused_before_the_data_is_read(trained, tmp_path):
    """--tokenizer of a missing path, or of tokenizer.json itself, was refused after the data was read, with
    transformers' text about malformed Hub ids."""
    tokenizer_file = trained["transformer"] / "tokenizer.json"
    for given, needle in ((str(tmp_path / "nowhere"), f"--tokenizer {tmp_path / 'nowhere'}: no such folder"),
                          (str(tokenizer_file), f"is a file: pass its folder, {trained['transformer']}"),
                          ("https://huggingface.co/me/m", "is a web address, not a model folder or a Hub repository id: "
                                                          "pass its repository id, me/m")):
        result = _train(tmp_path / "corpus.txt", tmp_path / "out", f"--tokenizer={given}")
        assert_one_line_error(result, needle)
        assert not result.stdout  # before anything was read
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["weights truncated", "tokenizer.json missing", "chat template missing",
                                    "config.json with a field of the wrong type"])
def test_the_python_api_raises_a_usage_error_for_a_damaged_folder(damage, trained, tmp_path):
    folder, needle = _damaged_copy(trained, "lstm", damage, tmp_path)
    with pytest.raises(UsageError, match=needle.replace(".", r"\.")):
        ChatInterface(str(folder))
    with pytest.raises(UsageError, match=needle.replace(".", r"\.")):
        prepare_folder(str(folder), str(tmp_path / "hub"), "me/model")


def test_the_real_script_exits_2_for_a_hub_id_it_cannot_fetch(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "chat.py"), "--model", "nobody/not-cached", "--prompt",
                             "hi"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    # A mistyped folder with one slash reads as a Hub id: the line says both, not only the Hub's cache.
    assert_one_line_error(result, "no folder nobody/not-cached here, and the Hub model nobody/not-cached is not in "
                          "the local cache", "check the path, or download the model while online")


# ----------------------------------------------------------------------------------------- malformed data


def _train_on(tmp_path: Path, name: str, content, *extra: str):
    data = tmp_path / name
    if isinstance(content, bytes):
        data.write_bytes(content)
    else:
        data.write_text(content, encoding="utf-8")
    args = ["--model-type=lstm", f"--data={data}", f"--output-dir={tmp_path / 'out'}", "--block-size=32",
            "--batch-size=4", "--max-steps=1", "--samples=0", "--model-config=hidden_size=32",
            "--model-config=embedding_dim=16", *extra]
    return run_entry(train_main, *args)


def _jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


GOOD = [{"text": make_text(i, 3)} for i in range(30)]
CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]}


@pytest.mark.parametrize("case, content, reason", [
    ("bad JSON", _jsonl(*GOOD, "{not json", "[1, 2"), "not valid JSON"),
    ("not an object", _jsonl(*GOOD, [1, 2], "3"), "not a JSON object"),
    ("wrong type", _jsonl(*GOOD, {"text": 42}), "'text' is not a string"),
    ("missing keys", _jsonl(*GOOD, {"body": "no text key", "id": 7}),
     "no 'text', 'messages', 'prompt'+'completion', 'instruction'+'output' or 'conversations'; its keys: body, id; "
     "name the one holding the text with --text-column"),
    ("unknown role", _jsonl(*GOOD, {"messages": [{"role": "bot", "content": "hi"}]}),
     "unknown role 'bot' (use system, user or assistant)"),
    ("empty messages", _jsonl(*GOOD, {"messages": []}), "'messages' is not a non-empty list"),
    ("message without content", _jsonl(*GOOD, {"messages": [{"role": "user"}]}),
     "a message lacks a 'role' or 'content' string"),
    ("empty text", _jsonl(*GOOD, {"text": "   "}), "empty 'text'"),
    ("image part", _jsonl(*GOOD, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "cat.png"}}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A cat."}]}),
     "a message holds a part of type 'image_url', and pocketlm models learn text only"),
    ("text parts without a role", _jsonl(*GOOD, {"messages": [{"content": [{"type": "text", "text": "hi"}]}]}),
     "a message lacks a 'role' or 'content' string"),
    ("text part without text", _jsonl(*GOOD, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
     "a message's content list holds a part that is not {'type': 'text', 'text': '...'}"),
    # OpenAI's tool use: a call without text read as "a message lacks a 'role' or 'content' string", and a call
    # beside a text trained on the text alone, the call lost in silence.
    *[(f"tool call {n}", _jsonl(*GOOD, {"messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": content, "tool_calls": [{"type": "function", "function": {
            "name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "assistant", "content": "Sunny."}]}),
       "a message calls a tool ('tool_calls'), and pocketlm's chat template holds text turns of system, user and "
       "assistant only: leave such records out, or write the call and its result into the turns' text")
      for n, content in enumerate([None, "Let me look.", ""])],
    ("tool result", _jsonl(*GOOD, {"messages": [{"role": "user", "content": "Weather?"},
                                                {"role": "tool", "content": "sunny"},
                                                {"role": "assistant", "content": "Sunny."}]}),
     "a 'tool' message holds a tool's result, and pocketlm's chat template holds text turns of system, user and "
     "assistant only: leave such records out, or write the call and its result into the turns' text"),
    ("sharegpt observation", _jsonl(*GOOD, {"conversations": [{"from": "human", "value": "Weather?"},
                                                             {"from": "observation", "value": "sunny"},
                                                             {"from": "gpt", "value": "Sunny."}]}),
     "a 'observation' message holds a tool's result"),
])
def test_bad_jsonl_records_are_skipped_counted_and_named(case, content, reason, tmp_path):
    result = _train_on(tmp_path, "data.jsonl", content)
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "out" / "training_summary.json").read_text())["data"]["records"]
    skipped = len(content.splitlines()) - len(GOOD)
    (skipped_reason,) = records["skipped"]
    assert skipped_reason.startswith(reason) and records["skipped"][skipped_reason] == skipped, records
    assert records["kept"] + records["duplicates_dropped"] == len(GOOD)  # every good line trained on
    assert records["first_skipped_at"][skipped_reason] == f"{tmp_path / 'data.jsonl'}:{len(GOOD) + 1}"
    assert reason in result.stdout  # on the screen, where the user looks


def test_conversations_in_text_parts_train_as_the_same_conversations_in_strings(tmp_path):
    """OpenAI's fine-tuning layout and TRL's give a message's content as a list of text parts: every such record
    was skipped ("a message lacks a 'role' or 'content' string"). Now they train to the same weights, bitwise."""
    from safetensors.torch import load_file

    chats = [[{"role": "user", "content": make_text(i, 1)}, {"role": "assistant", "content": make_text(i + 50, 1)}]
             for i in range(30)]
    in_parts = [[{"role": m["role"], "content": [{"type": "text", "text": m["content"][:9]},
                                                 {"type": "text", "text": m["content"][9:]}]} for m in chat]
                for chat in chats]
    weights = {}
    for name, records in (("strings", chats), ("parts", in_parts)):
        (tmp_path / name).mkdir()
        result = _train_on(tmp_path / name, "chats.jsonl", _jsonl(*[{"messages": chat} for chat in records]))
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((tmp_path / name / "out" / "training_summary.json").read_text())
        assert summary["data"]["records"]["kept"] == len(chats) and not summary["data"]["records"]["skipped"]
        weights[name] = load_file(tmp_path / name / "out" / "model.safetensors")
    assert all(torch.equal(weights["strings"][key], weights["parts"][key]) for key in weights["strings"])


@pytest.mark.parametrize("case, content, needles", [
    ("no usable record", _jsonl({"body": 1}, {"title": "x"}), ["no usable text", "no 'text', 'messages'", "data.jsonl:1"]),
    ("only bad roles", _jsonl({"messages": [{"role": "narrator", "content": "x"}]}), ["unknown role 'narrator'"]),
    ("empty file", "", ["no usable text", "empty"]),
    ("only whitespace", " \n\n\t\n", ["no usable text", "empty"]),
    ("one line of many duplicates", _jsonl({"text": "same"}, *[{"text": "same"}] * 50, "{bad"),
     ["1 skipped (not valid JSON", "50 exact duplicates"]),
])
def test_data_with_nothing_to_train_on_ends_in_one_line_that_accounts_for_every_record(case, content, needles,
                                                                                      tmp_path):
    result = _train_on(tmp_path, "data.jsonl" if "{" in content or "[" in content else "data.txt", content)
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_text_with_a_byte_order_mark_or_in_utf16_is_read_as_text(encoding, tmp_path):
    text = make_text(1).replace(".\n", ", ça va? 你好 🙂\n")  # in every paragraph, whichever are held out
    result = _train_on(tmp_path, "notes.txt", text.encode(encoding))
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoTokenizer

    vocabulary = AutoTokenizer.from_pretrained(tmp_path / "out").get_vocab()
    assert "你" in vocabulary and "\ufeff" not in vocabulary and "\x00" not in vocabulary


def test_data_read_by_other_pocketlm_code_is_read_again_not_served_from_the_cache(tmp_path, monkeypatch):
    """datasets caches what pocketlm reads under a key of the files, their sizes and times, and the code: it knows
    the code by the names of the functions a transform calls, not by what they do, so a key number bumped by hand
    stood for pocketlm's reading and tokenizing code, and once was not bumped: the first run after a fix to reading
    was served the reading from before it. The key holds a digest of that code now."""
    from pocketlm import data, sources
    from pocketlm.data import reading

    path = tmp_path / "chats.jsonl"
    path.write_text(_jsonl(*[{"messages": [{"role": "user", "content": make_text(i, 1)},
                                           {"role": "assistant", "content": make_text(i + 40, 1)}]}
                             for i in range(20)]))
    assert set(data.load_documents([str(path)])[0]["problem"]) == {""}

    def other_reading(messages, origin: str) -> dict:
        return reading._row(origin=origin, problem="read by other code")

    monkeypatch.setattr(reading, "_conversation_row", other_reading)
    # The same code as far as the key knows: datasets serves what it cached (so the key is what decides).
    assert set(data.load_documents([str(path)])[0]["problem"]) == {""}
    monkeypatch.setattr(sources, "source_digest", lambda *folders: "an edited checkout's")
    assert set(data.load_documents([str(path)])[0]["problem"]) == {"read by other code"}


def test_a_tokenizer_trained_by_other_pocketlm_code_is_trained_again_not_served_from_the_cache(tmp_path,
                                                                                              monkeypatch):
    """Trained tokenizers are kept by the text and settings they came from, and by a number bumped by hand for
    the code that trains them, as the data's caches were: keyed by the code's digest now, as they are."""
    import pocketlm.preparation as preparation
    from pocketlm import sources

    text = make_text(0, 200)
    notes = tmp_path / "notes.txt"
    notes.write_text(text)

    def vocabulary_trained_with() -> dict:
        result = run_entry(train_main, "--model-type=lstm", f"--data={notes}", f"--output-dir={tmp_path / 'out'}",
                           "--overwrite", "--block-size=32", "--max-steps=1", "--samples=0",
                           "--model-config=hidden_size=32", "--model-config=embedding_dim=16")
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads((tmp_path / "out" / "tokenizer.json").read_text())["model"]["vocab"]

    vocabulary = vocabulary_trained_with()
    trained = preparation.train_char_tokenizer

    def other_training(texts):  # stands for other code: a tokenizer that has never seen the text's last letter
        return trained([t.replace(max(text), " ") for t in texts])

    monkeypatch.setattr(preparation, "train_char_tokenizer", other_training)
    for code, same in ((None, True), ("an upgraded pocketlm's", False)):
        if code:
            monkeypatch.setattr(sources, "source_digest", lambda *folders: code)
        now = vocabulary_trained_with()
        assert (now == vocabulary) is same and (max(text) in now) is same


def test_the_code_digest_changes_with_any_edit_to_the_code_that_reads_and_tokenizes(tmp_path):
    from pocketlm import sources

    folders = [tmp_path / "code" / "data", tmp_path / "code" / "tokenization"]
    for folder, package in zip(folders, ("pocketlm/data", "tokenization")):
        shutil.copytree(REPO_ROOT / package, folder, ignore=shutil.ignore_patterns("__pycache__"))
    digest = sources.source_digest.__wrapped__
    before = digest(*folders)
    assert digest(*folders) == before
    reading = folders[0] / "reading.py"
    reading.write_text(reading.read_text().replace("unknown role", "unknown  role"))
    assert digest(*folders) != before
    (folders[1] / "bpe.py").rename(folders[1] / "bpe_moved.py")
    reading.write_text(reading.read_text().replace("unknown  role", "unknown role"))
    assert digest(*folders) != before  # a file moved is other code


def test_a_file_that_changes_while_it_is_read_is_refused(tmp_path, monkeypatch):
    from pocketlm.data import reading

    original = reading.split_into_documents
    target = tmp_path / "growing.txt"

    def growing(lines, total_chars):
        with open(target, "a", encoding="utf-8") as handle:  # another program appends as pocketlm reads
            handle.write("More text arrives.\n")
        yield from original(lines, total_chars)

    monkeypatch.setattr(reading, "split_into_documents", growing)
    result = _train_on(tmp_path, "growing.txt", make_text(2))
    assert_one_line_error(result, "growing.txt changed while it was being read")


def test_a_binary_file_among_text_files_is_reported_and_the_rest_is_trained_on(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "good.txt").write_text(make_text(3))
    (folder / "image.txt").write_bytes(b"\x89PNG\x00\x00\x01binary" * 50)
    result = run_entry(train_main, "--model-type=lstm", f"--data={folder}", f"--output-dir={tmp_path / 'out'}",
                       "--block-size=32", "--batch-size=4", "--max-steps=1", "--samples=0",
                       "--model-config=hidden_size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "out" / "training_summary.json").read_text())["data"]["records"]
    assert list(records["files_not_read"]) == [str(folder / "image.txt")]
    assert "image.txt" in result.stderr + result.stdout


# ------------------------------------------------------------------------------ files of records, compressed files

# Records a spreadsheet or an export holds: commas, quotes, a line break and other scripts inside a field. Each
# is short enough to stay whole (a long record is cut as a long text is: see the layouts below).
RECORDS = [{"text": text} for text in (
    "Plain words, with a comma.", 'She said "hello", then left.', "Two lines\nin one field.", "Ça va? 你好 🙂",
    *(make_text(i, 1)[:150] for i in range(12)))]
CONVERSATION = [{"role": "user", "content": "Hi, how are you?"}, {"role": "assistant", "content": "Well, thanks."}]


def _write_records(path: Path, opener=open) -> None:
    """RECORDS in the format `path`'s name says (a .gz, .bz2 or .xz ending: through `opener`)."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    form = Path(path.name.removesuffix(".gz").removesuffix(".bz2").removesuffix(".xz")).suffix
    if form == ".parquet":
        pq.write_table(pa.table({"id": list(range(len(RECORDS))), "text": [r["text"] for r in RECORDS]}), path)
        return
    excel = path.name.startswith("excel")  # as a spreadsheet in a comma-decimal locale saves: a BOM, semicolons
    with opener(path, "wt", encoding="utf-8-sig" if excel else "utf-8", newline="") as handle:
        if form in (".csv", ".tsv"):
            writer = csv.DictWriter(handle, ["id", "text"], delimiter="\t" if form == ".tsv" else ";" if excel else ",")
            writer.writeheader()
            writer.writerows({"id": i, **record} for i, record in enumerate(RECORDS))
        elif form == ".json":
            json.dump(RECORDS, handle, ensure_ascii=False)
        else:
            handle.write(_jsonl(*RECORDS))


@pytest.mark.parametrize("name, builder", [
    ("data.csv", "csv"), ("data.tsv", "csv"), ("data.json", "json"), ("data.parquet", "parquet"),
    ("data.jsonl", "json"), ("data.csv.gz", "csv"), ("data.json.bz2", "json"), ("data.jsonl.xz", "json"),
    ("excel.csv", "csv"),
])
def test_files_of_records_read_the_text_column_datasets_reads(name, builder, tmp_path):
    import bz2
    import gzip
    import lzma

    import datasets

    from pocketlm import data

    path = tmp_path / name
    _write_records(path, {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open))
    documents, _ = data.load_documents([str(path)])
    options = {"delimiter": "\t"} if ".tsv" in name else {"delimiter": ";"} if "excel" in name else {}
    # Read as transformers' run_clm.py reads such a file: datasets' own builder for the format, its text column.
    expected = datasets.load_dataset(builder, data_files=str(path), split="train", **options)["text"]
    assert documents["text"] == expected == [r["text"] for r in RECORDS]
    assert not any(documents["problem"])


def test_json_records_may_be_wrapped_in_an_object_or_be_json_lines_and_parquet_may_hold_conversations(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pocketlm import data

    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 2, "data": RECORDS}))
    (tmp_path / "lines.json").write_text(_jsonl(*RECORDS))
    pq.write_table(pa.table({"messages": [CONVERSATION]}), tmp_path / "chat.parquet")
    for name in ("wrapped.json", "lines.json"):
        assert data.load_documents([str(tmp_path / name)])[0]["text"] == [r["text"] for r in RECORDS]
    from tokenization import render_chat

    chat = data.load_documents([str(tmp_path / "chat.parquet")])[0]
    assert chat["text"] == [render_chat(CONVERSATION)] and chat["is_chat"] == [True]


@pytest.mark.parametrize("streaming, compressions", [(False, ["gzip", "bz2", "lzma"]), (True, ["gzip"])])
def test_a_compressed_text_file_trains_as_the_file_itself(streaming, compressions, tmp_path):
    import importlib

    text = make_text(4, 120).encode()
    files = {"book.txt": text, **{f"book.txt.{ {'gzip': 'gz', 'bz2': 'bz2', 'lzma': 'xz'}[kind]}":
                                  importlib.import_module(kind).compress(text) for kind in compressions}}
    summaries, weights = [], []
    for name, content in files.items():
        (tmp_path / name).mkdir()
        result = _train_on(tmp_path / name, name, content, "--max-steps=3", *(["--streaming"] if streaming else []))
        assert result.returncode == 0, result.stderr[-3000:]
        summaries.append(json.loads((tmp_path / name / "out" / "training_summary.json").read_text())["data"])
        weights.append((tmp_path / name / "out" / "model.safetensors").read_bytes())
    for summary, model in zip(summaries[1:], weights[1:]):
        assert summary["records"] == summaries[0]["records"]
        assert summary["validation_characters"] == summaries[0]["validation_characters"] > 0
        assert model == weights[0]  # the same pieces, split and batches: bitwise the same model


def _damaged_gzip() -> bytes:
    import gzip

    return gzip.compress(make_text(5).encode())[:-100]


def _parquet_bytes(**columns) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


UNREADABLE = {
    # file name, its bytes, what the line says
    "a damaged gzip file": ("notes.txt.gz", _damaged_gzip, "a damaged gzip file"),
    "CSV without a text column": ("table.csv", lambda: b"title;body\nA;B\n", "no 'text' column (nor 'prompt'+"
                                                                             "'completion' or 'instruction'+'output') "
                                                                             "in its header row ('title;body')"),
    "Parquet without a text column": ("table.parquet", lambda: _parquet_bytes(body=["x"]),
                                      "no 'text', 'messages', 'prompt'+'completion', 'instruction'+'output' or "
                                      "'conversations' column (its columns: body)"),
    "not Parquet inside": ("fake.parquet", lambda: make_text(6).encode(), "not a Parquet file"),
    "Parquet compressed whole": ("table.parquet.gz", lambda: __import__("gzip").compress(_parquet_bytes(text=["x"])),
                                 "gzip-compressed Parquet file: decompress it"),
    "a zip archive": ("corpus.txt", lambda: b"PK\x03\x04" + bytes(200), "a zip archive: unzip it"),
    "zstd": ("corpus.txt.zst", lambda: b"(\xb5/\xfd" + bytes(200), "zstd, which Python cannot read"),
    "a PDF": ("paper.txt", lambda: b"%PDF-1.7\n" + bytes(200), "a PDF: save its text"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_an_unreadable_data_file_alone_is_refused_in_one_line_with_its_fix(case, tmp_path):
    name, content, needle = UNREADABLE[case]
    assert_one_line_error(_train_on(tmp_path, name, content()), name, needle)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_file_given_as_a_dataset_is_pointed_to_data(tmp_path):
    # datasets.load_dataset takes a folder or a Hub name: a file's name it looks up on the Hub, and offline says
    # only that it could not reach it.
    table = tmp_path / "table.csv"
    table.write_text("text\n" + "".join(f'"{r["text"]}"\n' for r in GOOD))
    result = run_entry(train_main, f"--dataset={table}", f"--output-dir={tmp_path / 'out'}", "--max-steps=1")
    assert_one_line_error(result, f"--dataset {table} is a file: pass it as --data {table}")


@pytest.mark.parametrize("builder", ["text", "json", "csv", "parquet"])
def test_a_dataset_named_after_a_file_type_is_pointed_to_data_instead_of_reading_the_folder_one_is_in(
        builder, tmp_path, monkeypatch):
    """`--dataset text` (or json, csv, parquet) names datasets' reader for such files, not a dataset: given no
    files, datasets reads every file of the folder one is in, so a run trained on whatever was there (scripts,
    notes, earlier models' records) without a word, or failed on one of them as if it were the data. It is pointed
    to --data, and the folder's files are left alone."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text(make_text(0))  # what `--dataset text` trained on, unasked
    (tmp_path / "records.jsonl").write_text(json.dumps({"text": make_text(1)}) + "\n")
    result = run_entry(train_main, f"--dataset={builder}", f"--output-dir={tmp_path / 'out'}", "--max-steps=1",
                       "--samples=0")
    suffix = {"text": "txt", "json": "jsonl"}.get(builder, builder)
    assert_one_line_error(result, f"--dataset {builder} names datasets' reader of {builder} files, not a dataset",
                          "the folder you are in", f"pass your files with --data (--data FILE.{suffix})")
    assert not (tmp_path / "out").exists()


def test_a_dataset_path_that_is_not_there_is_said_to_be_missing_not_unreachable_on_the_hub(tmp_path):
    """`--dataset ./mine` that is not there said "Couldn't reach './mine' on the Hub": a path is not a Hub name."""
    for name in ("./mine", str(tmp_path / "mine"), "~/no-such-folder-here", "data/sets/mine", "../mine"):
        result = run_entry(train_main, f"--dataset={name}", f"--output-dir={tmp_path / 'out'}", "--max-steps=1")
        assert_one_line_error(result, f"--dataset {name}: no such folder", "--data")
    assert not (tmp_path / "out").exists()


def test_a_web_address_given_as_data_is_said_to_be_one_with_the_way_to_its_text(tmp_path):
    # It read "no such file or directory; check the path", as if the address were a mistyped file name.
    for flag, address in (("--data", "https://example.com/notes.txt"), ("--data", "hf://datasets/me/notes"),
                          ("--validation-data", "s3://bucket/held-out.txt")):
        data = [] if flag == "--data" else [f"--data={REPO_ROOT / 'README.md'}"]
        result = run_entry(train_main, *data, f"{flag}={address}", f"--output-dir={tmp_path / 'out'}", "--max-steps=1")
        assert_one_line_error(result, f"{flag} {address} is a web address", "curl -LO ADDRESS")
    assert not (tmp_path / "out").exists()


def test_a_dataset_saved_with_save_to_disk_trains_as_datasets_reads_it_and_is_pointed_to_from_data(tmp_path):
    """load_dataset refuses a save_to_disk folder (naming load_from_disk, which a pocketlm user cannot call), and
    --data read its metadata as JSON records without text. As --dataset it is the same data as the Parquet file
    of its rows, read by datasets' own Parquet builder: the same model, bitwise."""
    import datasets

    rows = datasets.Dataset.from_list(GOOD)
    rows.save_to_disk(tmp_path / "saved")
    datasets.DatasetDict({"train": rows, "test": rows.select(range(3))}).save_to_disk(tmp_path / "saved-splits")
    (tmp_path / "parquet").mkdir()
    rows.to_parquet(tmp_path / "parquet" / "train.parquet")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "book.txt").write_text(make_text(5))
    train = ["--block-size=32", "--batch-size=4", "--max-steps=2", "--samples=0", "--model-config=n_layer=1"]
    for name in ("saved", "saved-splits", "parquet"):
        result = run_entry(train_main, f"--dataset={tmp_path / name}", f"--output-dir={tmp_path / f'out-{name}'}",
                           *train)
        assert result.returncode == 0, result.stderr[-3000:]
    weights = {name: (tmp_path / f"out-{name}" / "model.safetensors").read_bytes()
               for name in ("saved", "saved-splits", "parquet")}
    assert weights["saved"] == weights["parquet"] == weights["saved-splits"]  # a DatasetDict trains on its train
    result = run_entry(train_main, f"--data={tmp_path / 'saved'}", f"--output-dir={tmp_path / 'out'}", *train)
    assert_one_line_error(result, "is a dataset saved with datasets' save_to_disk: pass it as --dataset")
    # A folder datasets cannot read as one table (files of other columns) is pointed to --data, which reads each
    # file on its own; an unreachable name says why, in one line.
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.jsonl").write_text(json.dumps({"text": make_text(1)}) + "\n")
    (tmp_path / "mixed" / "b.jsonl").write_text(json.dumps({"count": 3, "when": "today"}) + "\n")
    result = run_entry(train_main, f"--dataset={tmp_path / 'mixed'}", f"--output-dir={tmp_path / 'out'}", *train)
    assert_one_line_error(result, "datasets could not read the folder as one table",
                          f"pass it as --data {tmp_path / 'mixed'}")
    result = run_entry(train_main, "--dataset=nobody/no-such-dataset", f"--output-dir={tmp_path / 'out'}", *train)
    assert_one_line_error(result, "--dataset nobody/no-such-dataset: could not be loaded (")
    # The flag a bad path came in is the one named.
    for validation, needle in ((tmp_path / "saved", "save_to_disk: write its rows to a file"),
                               (tmp_path / "nowhere", "no such file or directory")):
        result = run_entry(train_main, f"--data={tmp_path / 'notes'}", f"--validation-data={validation}",
                           f"--output-dir={tmp_path / 'out'}", *train)
        assert_one_line_error(result, f"--validation-data {validation}", needle)
    # Inside a folder of text, it is named with the fix and the text is trained on.
    shutil.copytree(tmp_path / "saved-splits", tmp_path / "notes" / "rows")
    result = run_entry(train_main, f"--data={tmp_path / 'notes'}", f"--output-dir={tmp_path / 'out'}", *train)
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "out" / "training_summary.json").read_text())["data"]["records"]
    assert records["kept"] > 0
    assert set(records["files_not_read"]) == {str(tmp_path / "notes" / "rows" / name) for name in (
        "dataset_dict.json", "train/state.json", "train/dataset_info.json", "test/state.json",
        "test/dataset_info.json")}
    assert all(f"pass {tmp_path / 'notes' / 'rows'} as --dataset" in why for why in records["files_not_read"].values())


def test_unreadable_data_files_among_good_ones_are_each_named_and_the_rest_is_trained_on(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "good.txt").write_text(make_text(3))
    for name, content, _ in UNREADABLE.values():
        (folder / name).write_bytes(content())
    given = [f"--data={path}" for path in sorted(folder.iterdir())]  # by name: a folder's search skips some
    result = run_entry(train_main, "--model-type=lstm", *given, f"--output-dir={tmp_path / 'out'}",
                       "--block-size=32", "--batch-size=4", "--max-steps=1", "--samples=0",
                       "--model-config=hidden_size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "out" / "training_summary.json").read_text())["data"]["records"]
    assert records["kept"] > 0
    for name, _, needle in UNREADABLE.values():
        assert needle in records["files_not_read"][str(folder / name)]
        said = result.stdout.split(f"{folder / name} not read (")[1]  # the reading line on the screen
        assert needle in said.split(f", {folder}/")[0], said[:300]
    assert len(records["files_not_read"]) == len(UNREADABLE)


@pytest.mark.parametrize("name, content, reason, where", [
    ("data.json", json.dumps([*GOOD, {"text": 42}]), "'text' is not a string", "data.json record 31"),
    ("data.json", json.dumps(GOOD)[:-40], "not valid JSON", "data.json:1:"),
    ("data.json", _jsonl(*GOOD, "{broken"), "not valid JSON", "data.json:31"),
    # Each text spans several lines, quoted: the bad record is named by the line it starts on, the file's last.
    ("data.csv", "text\n" + "".join(f'"{r["text"]}"\n' for r in GOOD) + '""\n', "empty 'text'", "last line"),
    ("data.tsv", "id\ttext\n" + "".join(f'{i}\t"{r["text"]}"\n' for i, r in enumerate(GOOD)) + "30\n",
     "no value for 'text'", "last line"),
    ("data.json", json.dumps([*GOOD, {"text": None, "messages": None}]), "no value for 'text' or 'messages'",
     "data.json record 31"),
])
def test_bad_records_in_json_csv_and_tsv_files_are_skipped_counted_and_named(name, content, reason, where,
                                                                            tmp_path):
    result = _train_on(tmp_path, name, content)
    if reason == "not valid JSON" and where.endswith(":"):  # a JSON document cut short: nothing in it is usable
        assert_one_line_error(result, "no usable text", "not valid JSON", f"{tmp_path / where}")
        return
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "out" / "training_summary.json").read_text())["data"]["records"]
    assert records["skipped"] == {reason: 1}, records
    assert records["kept"] + records["duplicates_dropped"] == len(GOOD)  # every good record trained on
    if where == "last line":
        where = f"{name}:{len(content.splitlines())}"
    assert records["first_skipped_at"][reason] == str(tmp_path / where)
    assert reason in result.stdout


# ------------------------------------------------------------------------- any layout of enough text trains

PROSE = make_text(0, 5200)  # about 1 MB of paragraphs
ONE_LINE = PROSE.replace("\n", " ")[:1_000_000]


def _messages(count: int) -> list[dict]:
    sentences = [s.strip() + "." for s in PROSE.split(".") if s.strip()]
    return [{"role": ("user", "assistant")[i % 2], "content": sentences[i]} for i in range(count)]


# (file name, its content, the text pocketlm reads from it, and whether the run streams)
LAYOUTS = {
    "one line of 1 MB": ("book.txt", ONE_LINE, ONE_LINE),
    "minified, no spaces": ("app.min.js.txt", "".join(f"v{i}=f({i},'{i % 13}');" for i in range(20_000)), None),
    "a line per utterance": ("transcript.txt", "".join(f"{('ANA', 'BO')[i % 2]}: {line}\n" for i, line in
                                                       enumerate(PROSE.replace("\n\n", "\n").splitlines()[:2500])),
                             None),
    "one huge JSONL record": ("dump.jsonl", json.dumps({"text": ONE_LINE[:400_000]}) + "\n", ONE_LINE[:400_000]),
    "one conversation of 3,000 turns": ("chat.jsonl", json.dumps({"messages": _messages(3000)}) + "\n", None),
    "one long record and two short": ("uneven.jsonl", _jsonl({"text": ONE_LINE[:60_000]}, {"text": "A short one."},
                                                             {"text": "Another."}),
                                      ONE_LINE[:60_000] + "A short one." + "Another."),
    "600 characters on one line": ("note.txt", ONE_LINE[:600], ONE_LINE[:600]),
}


def _layout_run(tmp_path: Path, layout: str, *extra: str):
    name, content, _ = LAYOUTS[layout]
    return _train_on(tmp_path, name, content, "--eval-every=1", *extra)


# Streamed too: a layout held out by the hash, one by the tail, and the line-per-utterance transcript.
STREAMED = ("one line of 1 MB", "one long record and two short", "a line per utterance")


@pytest.mark.parametrize("layout, streaming", [(layout, False) for layout in LAYOUTS]
                         + [(layout, True) for layout in STREAMED])
def test_any_layout_of_enough_text_trains_with_a_held_out_part_that_never_overlaps(layout, streaming, tmp_path):
    result = _layout_run(tmp_path, layout, *(["--streaming"] if streaming else []))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["data"]["validation_characters"] > 0 and math.isfinite(summary["best_val_bpc"])
    assert (tmp_path / "out" / "model.safetensors").exists()

    from pocketlm import data

    corpus = data.load_corpus([str(tmp_path / LAYOUTS[layout][0])], seed=1337, streaming=streaming)
    train = [row["text"] for row in corpus.train] if streaming else corpus.train["text"]
    validation = corpus.validation["text"]
    held = sum(map(len, validation)) / (sum(map(len, validation)) + sum(map(len, train)))
    read = LAYOUTS[layout][2]
    if read is not None:  # nothing lost and nothing on both sides: the two parts add up to the text, exactly
        assert sum(map(len, validation)) + sum(map(len, train)) == len(read)
    whole = "\0".join(train)  # and no held-out passage is in training (short ones may recur by chance in prose)
    assert not set(validation) & set(train) and not any(len(piece) >= 200 and piece in whole for piece in validation)
    if layout != "600 characters on one line" and not streaming:
        assert 0.05 <= held <= 0.2, (corpus.validation_rule, held)  # about a tenth, as the hash or the tail holds out
    assert summary["data"]["validation_rule"] == corpus.validation_rule


def test_a_dataset_with_one_huge_row_trains(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"text": ONE_LINE[:300_000]}) + "\n")
    result = run_entry(train_main, "--model-type=lstm", f"--dataset={folder}", f"--output-dir={tmp_path / 'out'}",
                       "--block-size=32", "--batch-size=4", "--max-steps=1", "--samples=0",
                       "--model-config=hidden_size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["data"]["validation_documents"] >= 1 and summary["data"]["train_documents"] >= 10


@pytest.mark.parametrize("content, needles", [
    ("Too short.", ["not enough text for one block of 32 tokens", "1 kept"]),
    ("x" * 12 + "\n\n" + "x" * 12, ["not enough text for one block of 32 tokens"]),
])
def test_text_too_short_for_one_block_is_still_refused_in_one_line(content, needles, tmp_path):
    """Refused after its tokenizer was trained, the run left its folder holding that tokenizer and the lock: a
    folder read as a run's by the next command. It leaves none now."""
    assert_one_line_error(_train_on(tmp_path, "short.txt", content), *needles)
    assert not (tmp_path / "out").exists()


PROSE = make_text(6, 30)


@pytest.mark.parametrize("name, content, said", [
    ("latin.txt", ("Café au lait.\n\n" + PROSE).encode("latin-1"),
     "not UTF-8 text from line 1 on ('Caf\\xe9 au lait.'); if it was saved as Windows-1252 or Latin-1, convert it:"),
    ("stray.txt", PROSE.encode() + b"One stray \x92 quote.\n",
     f"not UTF-8 text from line {PROSE.count(chr(10)) + 1} on ('One stray \\x92 quote.'); if it was saved as"),
    ("mixed.txt", ("Café au lait.\n\n" + PROSE).encode() + b"One stray \x92 quote.\n",
     f"not UTF-8 text from line {PROSE.count(chr(10)) + 3} on ('One stray \\x92 quote.'): it mixes UTF-8 with "
     "another encoding; fix that line, or convert it to UTF-8 text."),
])
def test_text_in_another_encoding_is_named_by_its_first_line_that_is_not_utf8(name, content, said, tmp_path):
    """A text file saved in Windows-1252 or Latin-1, or a UTF-8 one with one such byte pasted in, was refused whole
    as "binary or not UTF-8", leaving the user to search a megabyte for the byte. The refusal names the first line
    that is not UTF-8, and, where all of the file reads as Windows-1252 and none of it as UTF-8 beyond ASCII, the
    command that converts it, which does: the converted file reads as the text that was written."""
    result = _train_on(tmp_path, name, content)
    assert_one_line_error(result, f"{name}: {said}")
    assert not (tmp_path / "out").exists()
    command = re.search(r"convert it: (iconv .*)\.$", result.stderr.strip())
    assert (command is None) == (name == "mixed.txt")
    if command:
        from pocketlm.data import load_documents

        subprocess.run(command.group(1), shell=True, cwd=tmp_path, check=True)
        documents, _ = load_documents([str(tmp_path / name.replace(".txt", ".utf8.txt"))])
        assert "".join(documents["text"]).replace("\n", "") == content.decode("cp1252").replace("\n", "")


@pytest.mark.parametrize("name, content, extra, needle", [
    ("short.txt", "Too short.", [], "not enough text for one block"),
    ("binary.txt", bytes(range(256)) * 10, [], "binary or not UTF-8"),
    ("notes.txt", make_text(5, 20), ["--assistant-only-loss"], "--assistant-only-loss learns only the assistant's"),
    ("notes.txt", make_text(5, 20), ["--tokenizer=MISSING"], "--tokenizer"),
])
def test_a_refused_overwrite_leaves_the_earlier_run_as_it_was(name, content, extra, needle, tmp_path):
    """`--overwrite` removed the earlier run's checkpoints and records, and replaced the tokenizer it resumes with,
    before reading the new run's data: bad data ended with the earlier run lost. The new run takes the folder only
    once every check has passed."""
    out = tmp_path / "out"
    # An earlier run, with its tokenizer aside as a run under way keeps it (where a resume loads it from).
    assert _train_on(tmp_path, "text.txt", make_text(3, 20), "--max-steps=2", "--save-every=1").returncode == 0
    (out / ".tokenizer").mkdir()
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(out / file, out / ".tokenizer" / file)

    def files():
        return {str(path.relative_to(out)): path.read_bytes() for path in out.rglob("*")
                if path.is_file() and path.name != ".lock"}

    before = files()
    assert any(name.startswith("checkpoints/") for name in before) and "metrics.jsonl" in before
    extra = [flag.replace("MISSING", str(tmp_path / "missing")) for flag in extra]
    assert_one_line_error(_train_on(tmp_path, name, content, "--overwrite", *extra), needle)
    assert files() == before


# --------------------------------------------------------------------------------------------- bad flags


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(0))
    return path


def _train(corpus: Path, out: Path, *extra: str):
    return run_entry(train_main, f"--data={corpus}", f"--output-dir={out}", "--block-size=32", "--batch-size=4",
                     "--max-steps=2", "--samples=0", "--model-config=n_layer=1", *extra)


@pytest.mark.parametrize("flag, needle", [
    ("--lr=-1", "--lr must be positive"),
    ("--lr=nan", "--lr must be positive"),
    ("--lr=inf", "--lr must be a finite number"),
    ("--block-size=1", "--block-size must be at least 2"),
    ("--grad-accum=0", "--grad-accum must be positive"),
    ("--save-every=0", "--save-every must be positive"),
    ("--eval-every=-5", "--eval-every must be positive"),
    ("--vocab-size=0", "--vocab-size must be positive"),
    ("--samples=-1", "--samples must be 0 or more"),
    ("--seed=-1", "--seed must be a whole number from 0 to 4294967295, got -1"),
    ("--seed=4294967296", "--seed must be a whole number from 0"),
    ("--model-config=dropout=1.5", "dropout must be a number of at least 0 and below 1, got 1.5"),
    ("--model-config=n_head=3", "n_embd (128) must be a multiple of n_head (3)"),
    ("--model-config=n_layers=4", "did you mean n_layer"),
    ("--model-config=hidden=64", "has no such field"),
    ("--model-config=n_embd=abc", "n_embd must be a whole number of at least 1, got 'abc'"),
    ("--model-config=n_layer=0", "n_layer must be a whole number of at least 1, got 0"),
    ("--model-config=use_cache=maybe", "use_cache must be true or false"),
    ("--model-config=vocab_size=100", "vocab_size: the model takes it from its tokenizer; set the tokenizer's with "
                                      "--vocab-size"),
    ("--model-config=eos_token_id=5", "eos_token_id: the model takes it from its tokenizer; drop it"),
    ("--model-type=lstm --model-config=hidden_size=0", "hidden_size must be a whole number of at least 1"),
    ("--model-type=lstm --model-config=vocab_size=50", "the LSTM's vocabulary is the text's characters"),
])
def test_numbers_out_of_range_and_unknown_config_fields(flag, needle, corpus, tmp_path):
    result = run_entry(train_main, f"--data={corpus}", f"--output-dir={tmp_path / 'out'}", "--max-steps=2",
                       *flag.split())
    assert_one_line_error(result, needle)
    assert not result.stdout  # refused before the data is read and the tokenizer trained, not minutes later
    assert not (tmp_path / "out" / "config.json").exists()


def test_contradictory_flags_are_refused(corpus, trained, tmp_path):
    out = tmp_path / "out"
    for extra, needle in (
        (["--resume", "--overwrite"], "--resume continues the run"),
        (["--resume", f"--init-from={trained['lstm']}"], "--init-from starts a new one"),
        ([f"--dataset={tmp_path}"], "--data and --dataset"),
        ([f"--init-from={trained['lstm']}", f"--tokenizer={trained['lstm']}"], "drop --tokenizer"),
        (["--model-type=transformer", f"--init-from={trained['lstm']}"], "holds an LSTM, not a Transformer"),
        # What --init-from's model or --tokenizer fixes, asked for anyway, was ignored in silence.
        ([f"--init-from={trained['transformer']}", "--model-size=large"], "keeps its own shape: drop --model-size"),
        ([f"--init-from={trained['transformer']}", "--vocab-size=999"], "so its vocabulary: drop --vocab-size"),
        ([f"--tokenizer={trained['transformer']}", "--vocab-size=999"], "the one it has: drop --vocab-size"),
        (["--model-type=lstm", "--vocab-size=1000"], "the LSTM reads characters, as many as the text holds: drop"),
        # A Transformer preset asked of the LSTM was ignored: main.py's default family is the LSTM.
        (["--model-type=lstm", "--model-size=large"], "--model-size large picks a Transformer preset, and this run "
                                                      "trains the lstm: add --model-type transformer"),
    ):
        assert_one_line_error(_train(corpus, out, *extra), needle)
    assert not out.exists()


@pytest.mark.parametrize("main, given, hint, meant", [
    # run_clm.py's and the Trainer's spellings, nanoGPT's, other chat tools': each refused with the option meant.
    (train_main, ["--output_dir", "OUT"], "--output-dir", ["--output-dir", "OUT"]),
    (train_main, ["--max_steps=2"], "--max-steps", ["--max-steps=2"]),
    (train_main, ["--learning_rate", "3e-4"], "--lr", ["--lr", "3e-4"]),
    (train_main, ["--learning-rate=3e-4"], "--lr", ["--lr=3e-4"]),
    (train_main, ["--gradient_accumulation_steps", "2"], "--grad-accum", ["--grad-accum", "2"]),
    (train_main, ["--num_train_epochs", "1"], "--epochs", ["--epochs", "1"]),
    (train_main, ["--per_device_train_batch_size", "4"], "--batch-size", ["--batch-size", "4"]),
    (train_main, ["--train_file", "CORPUS"], "--data", ["--data", "CORPUS"]),
    (train_main, ["--bf16"], "--mixed-precision bf16", ["--mixed-precision", "bf16"]),
    (train_main, ["--n_layer", "1"], "--model-config n_layer=VALUE", ["--model-config", "n_layer=1"]),
    (train_main, ["--dropout", "0.1"], "--model-config dropout=VALUE", ["--model-config", "dropout=0.1"]),
    (train_main, ["--eval-everyy", "1"], "--eval-every", ["--eval-every", "1"]),  # a typo: the closest of ours
    (train_main, ["--Seed", "3"], "--seed", ["--seed", "3"]),
    (chat_main, ["--model_type", "lstm"], "--model-type", ["--model-type", "lstm"]),
    (chat_main, ["--max_length", "5"], "--max-new-tokens", ["--max-new-tokens", "5"]),
    (chat_main, ["--temp", "0.5"], "--temperature", ["--temperature", "0.5"]),
    (compare_main, ["MODEL", "--max_new_tokens", "5"], "--max-new-tokens", ["MODEL", "--max-new-tokens", "5"]),
])
def test_an_option_spelled_as_another_tool_spells_it_is_refused_naming_ours(main, given, hint, meant, corpus,
                                                                            tmp_path):
    """"unrecognized arguments: --learning_rate 3e-4" left the user to search --help; now the line names the option
    meant, and the command with that option in its place parses."""
    from pocketlm.cli import chat_parser, compare_parser, train_parser

    places = {"OUT": str(tmp_path / "out"), "CORPUS": str(corpus), "MODEL": str(tmp_path)}
    given, meant = ([places.get(word, word) for word in words] for words in (given, meant))
    unknown = next(word for word in given if word.startswith("--")).split("=")[0]
    assert_one_line_error(run_entry(main, *given), f"unknown option {unknown} (did you mean {hint}?)")
    assert not (tmp_path / "out").exists()
    parser = {train_main: train_parser, chat_main: chat_parser, compare_main: compare_parser}[main]()
    parser.parse_args(meant)  # the hint is the fix: no error


@pytest.mark.parametrize("prog", ["export.py", "compare.py", "hub_upload.py"])
def test_model_given_as_an_option_to_a_command_that_takes_it_as_its_first_word_names_that_word(prog, tmp_path):
    """chat.py takes --model; export.py, compare.py and hub_upload.py take the model as their first word, and
    `export.py --model models/x` said only "unknown option --model". The line says how the command names it, and the
    command so written parses."""
    from pocketlm.cli import compare_parser, export_parser, upload_parser

    main, parser = {"export.py": (export_main, export_parser), "compare.py": (compare_main, compare_parser),
                    "hub_upload.py": (upload_main, upload_parser)}[prog]
    rest = ["--repo-id", "me/m", "--dry-run"] if prog == "hub_upload.py" else []
    assert_one_line_error(run_entry(main, "--model", str(tmp_path), *rest),
                          f"unknown option --model ({prog} names the model without an option: {prog} MODEL ...)")
    parser().parse_args([str(tmp_path), *rest])


@pytest.mark.parametrize("main, args, needle", [
    # An empty value ("$UNSET") read as the option left out, or as `.`: --data "" trained on the built-in dialogs,
    # --tokenizer "" trained a new tokenizer, export's --output-dir "" wrote into the current folder, compare's
    # --output "" raised ValueError, --commit-message "" let the upload pick its own.
    (train_main, ["--data", ""], "--data was given an empty value"),
    (train_main, ["--data", "CORPUS", ""], "--data was given an empty value"),
    (train_main, ["--output-dir", ""], "--output-dir was given an empty value: give it one, or leave --output-dir out"),
    (train_main, ["--tokenizer", ""], "--tokenizer was given an empty value"),
    (train_main, ["--validation-data", ""], "--validation-data was given an empty value"),
    (train_main, ["--dataset", ""], "--dataset was given an empty value"),
    (train_main, ["--init-from", ""], "--init-from was given an empty value"),
    (chat_main, ["--model", ""], "--model was given an empty value"),
    (chat_main, ["--model", "MODEL", "--prompt", ""], "--prompt was given an empty value"),
    (compare_main, ["MODEL", "--output", ""], "--output was given an empty value"),
    (compare_main, ["MODEL", "--chart", ""], "--chart was given an empty value"),
    (compare_main, [""], "the MODEL argument is empty"),
    (export_main, ["MODEL", "--output-dir", ""], "--output-dir was given an empty value"),
    (export_main, [""], "the MODEL argument is empty"),
    (upload_main, ["MODEL", "--repo-id", "me/m", "--dry-run", "--output-dir", ""], "--output-dir was given an empty"),
    (upload_main, ["MODEL", "--repo-id", "me/m", "--dry-run", "--commit-message", ""], "--commit-message was given"),
])
def test_an_empty_value_is_refused_not_read_as_the_default(main, args, needle, corpus, trained, tmp_path,
                                                            monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    places = {"CORPUS": str(corpus), "MODEL": str(trained["lstm"])}
    assert_one_line_error(run_entry(main, *[places.get(word, word) for word in args]), needle)
    assert not any(work.iterdir())  # nothing trained, exported or written here


def test_an_empty_system_text_is_no_system_text(trained):
    result = run_entry(chat_main, "--model", str(trained["lstm"]), "--system", "", "--prompt", "hi",
                       "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr


def test_a_bare_path_is_refused_naming_the_option_it_belongs_to(corpus, tmp_path):
    assert_one_line_error(run_entry(train_main, str(corpus)), f"unexpected argument '{corpus}'",
                          f"name it with its option, --data {corpus}")
    # chat.py takes its model bare, as compare.py and export.py do: an empty folder is named as no model.
    assert_one_line_error(run_entry(chat_main, str(tmp_path)), f"{tmp_path} holds no model")
    # After --model-config, which takes every KEY=VALUE up to the next option.
    assert_one_line_error(run_entry(train_main, "--model-config", "n_layer=2", str(corpus)),
                          f"got '{corpus}'; a file is named with its option, --data {corpus}")
    assert_one_line_error(run_entry(train_main, "hello"), "unexpected argument 'hello': every value follows its option")
    assert_one_line_error(run_entry(train_main, "--nothing-like-ours"), "unknown option --nothing-like-ours (see")
    assert sorted(tmp_path.iterdir()) == [corpus]  # nothing written


@pytest.mark.parametrize("main, args, fix", [
    (export_main, ["MODEL", "--format", "onnx", "gguf"], "--format onnx,gguf"),
    (export_main, ["--format=transformers", "GGUF", "web", "MODEL"], "--format transformers,GGUF,web"),
    (export_main, ["--format", "onnx", "gguf", "MODEL"], "--format onnx,gguf"),  # gguf was read as the model
    (export_main, ["MODEL", "--gguf-precision", "f16", "q8_0", "--format", "gguf"], "--gguf-precision f16,q8_0"),
    (legacy_main, ["--export", "MODEL", "--format", "onnx", "web"], "--format onnx,web"),
    (upload_main, ["MODEL", "--repo-id", "me/m", "--dry-run", "--formats", "onnx", "gguf"], "--formats onnx,gguf"),
])
def test_values_of_a_comma_list_given_apart_are_refused_with_them_joined(main, args, fix, trained, tmp_path,
                                                                         monkeypatch):
    """`--format onnx gguf` (the shell habit of nargs options) was 'unexpected argument gguf: every value follows
    its option', which says nothing of the commas the option takes."""
    monkeypatch.chdir(tmp_path)
    args = [str(trained["transformer"]) if arg == "MODEL" else arg for arg in args]
    assert_one_line_error(run_entry(main, *args), "takes several values joined by commas, not spaces: " + fix)
    assert sorted(tmp_path.iterdir()) == []  # nothing written
    # A word that is no name the option takes is still only unexpected.
    assert_one_line_error(run_entry(export_main, str(trained["transformer"]), "--format", "onnx", "extra"),
                          "unexpected argument 'extra': every value follows its option")


def test_the_model_fields_the_option_hints_name_are_the_models_own():
    from modeling import GPTConfig, LSTMConfig
    from pocketlm.cli import MODEL_CONFIG_FIELDS

    for field in MODEL_CONFIG_FIELDS:
        assert any(hasattr(config(), field) for config in (GPTConfig, LSTMConfig)), field


@pytest.mark.parametrize("flag, needle", [
    # Each names what the setting takes: the value alone left the user guessing the range.
    ("--temperature=0", "temperature=0.0 is out of range: use a number above 0 (lower is more predictable; for the "
                        "likeliest token every time, switch sampling off: --greedy"),
    ("--top-p=1.5", "top_p=1.5 is out of range: use a number above 0 and at most 1"),
    ("--top-k=-1", "top_k=-1 is out of range: use a whole number, 0 for no limit"),
    ("--max-new-tokens=0", "max_new_tokens=0 is out of range: use a whole number of at least 1"),
    ("--repetition-penalty=0", "repetition_penalty=0.0 is out of range: use a number above 0 (1 leaves"),
])
def test_chat_sampling_settings_out_of_range(flag, needle, trained):
    assert_one_line_error(run_entry(chat_main, "--model", str(trained["lstm"]), flag, "--prompt", "hi"), needle)


@pytest.mark.parametrize("main", [chat_main, compare_main], ids=["chat", "compare"])
@pytest.mark.parametrize("seed", ["-5", "4294967296", "99999999999999999999"])
def test_a_seed_train_py_refuses_is_refused_by_the_chat_and_the_comparison_too(main, seed, trained, tmp_path):
    """chat.py seeded torch with a negative seed and ended in a traceback past 2**64 ('Overflow when unpacking long
    long'); compare.py took both. Every command takes train.py's range, refused before a model is loaded."""
    args = ["--prompt", "hi"] if main is chat_main else ["--output", str(tmp_path / "report.md")]
    assert_one_line_error(run_entry(main, str(trained["lstm"]), f"--seed={seed}", *args),
                          f"--seed must be a whole number from 0 to 4294967295, got {seed}.")
    assert not list(tmp_path.iterdir())


def test_a_model_size_the_chat_would_ignore_is_refused(trained):
    """`--model-size` picks models/transformer-<size>; with --model or --model-type lstm it was ignored."""
    assert_one_line_error(run_entry(chat_main, "--model", str(trained["lstm"]), "--model-size", "medium"),
                          f"--model-size medium picks models/transformer-medium, but --model {trained['lstm']} names")
    assert_one_line_error(run_entry(chat_main, str(trained["lstm"]), "--model-size", "medium"),
                          f"but {trained['lstm']} names another model")
    assert_one_line_error(run_entry(legacy_main, "--chat", "--model-size", "large"),
                          "but --model-type lstm names another model: drop one of them")


def test_assistant_only_loss_on_text_without_conversations_is_refused(tmp_path):
    """`--assistant-only-loss` on plain text trained on every token, in silence: the opposite of what it asks."""
    result = _train_on(tmp_path, "notes.txt", "\n\n".join(f"Note {i}: the river ran past the mill." for i in
                                                            range(60)), "--assistant-only-loss")
    assert_one_line_error(result, "--assistant-only-loss learns only the assistant's turns of conversations, and "
                          "this data holds none (plain text): drop it")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    chats = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                           {"role": "assistant", "content": f"Answer {i}, said plainly."}]} for i in range(60)]
    result = _train_on(tmp_path, "chats.jsonl", "\n".join(json.dumps(chat) for chat in chats), "--assistant-only-loss")
    assert result.returncode == 0, result.stderr[-2000:]


def test_assistant_only_loss_on_long_questions_and_short_answers_trains(tmp_path):
    """Long user turns, short replies: most blocks hold no reply. The LSTM's loss on a batch of them was NaN, the
    step was skipped, and five in a row ended the run with "the loss was not finite ... lower --lr". Such blocks
    are left out and said; a conversation whose training part holds no reply at all is refused in one line."""
    chats = [{"messages": [{"role": "user", "content": make_text(i, 2).replace("\n", " ")},
                           {"role": "assistant", "content": "Yes."}]} for i in range(80)]
    result = _train_on(tmp_path, "chats.jsonl", _jsonl(*chats), "--assistant-only-loss", "--batch-size=1",
                       "--max-steps=30", "--eval-every=30")
    assert result.returncode == 0, result.stderr[-2000:]
    left_out = re.search(r"tokenizing: ([\d,]+) training blocks of 32 tokens \(([\d,]+) more hold no reply token to "
                         r"learn and are left out\)", result.stdout)
    assert left_out and int(left_out[2].replace(",", "")) > int(left_out[1].replace(",", "")), result.stdout
    losses = [json.loads(line).get("train_loss") for line in (tmp_path / "out" / "metrics.jsonl").open()]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses if loss is not None)

    one = {"messages": [{"role": "user", "content": make_text(1, 4).replace("\n", " ")},
                        {"role": "assistant", "content": "Yes."}]}  # its reply falls in the held-out last tenth
    (tmp_path / "one").mkdir()
    result = _train_on(tmp_path / "one", "chat.jsonl", _jsonl(one), "--assistant-only-loss")
    assert_one_line_error(result, "training blocks of 32 tokens holds a token of an assistant's reply, the only "
                          "tokens --assistant-only-loss learns: add conversations with replies, or leave out")
    assert not (tmp_path / "one" / "out").exists()


def test_epochs_given_beside_max_steps_are_said_to_be_unused(tmp_path):
    """`--epochs 5 --max-steps 1` ran one step without a word about the five epochs asked for."""
    result = _train_on(tmp_path, "notes.txt", "\n\n".join(f"Note {i}: the river ran past the mill." for i in
                                                            range(60)), "--epochs=5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "note: --max-steps 1 sets the run's length, so --epochs 5 is not used" in result.stdout
    assert json.loads((tmp_path / "out" / "training_summary.json").read_text())["steps"] == 1


@pytest.mark.parametrize("flags", [["--port", "8000"], ["--share"], ["--host", "0.0.0.0"]])
def test_a_browser_option_without_web_is_refused_not_ignored(flags, trained):
    """`chat.py --port 8000` chatted in the terminal, the port ignored in silence."""
    result = run_entry(chat_main, "--model", str(trained["lstm"]), *flags, "--prompt", "hi")
    assert_one_line_error(result, f"{flags[0]} is for the browser chat: add --web, or drop {flags[0]}")
    assert result.stdout == ""  # no reply was printed


@pytest.mark.parametrize("main, args, needle", [
    # Each was ignored in silence: the page's precision without a page, a dry run's folders in a real upload.
    (export_main, ["MODEL", "--format", "onnx", "--web-precision", "float32", "--output-dir", "OUT"],
     "--web-precision sets the web page's graph: add web to --format, or drop --web-precision"),
    (upload_main, ["MODEL", "--repo-id", "me/m", "--output-dir", "OUT"],
     "--output-dir serves --dry-run: add --dry-run, or drop --output-dir"),
    (upload_main, ["MODEL", "--repo-id", "me/m", "--space-id", "me/s", "--space-output-dir", "OUT"],
     "--space-output-dir serves --dry-run"),
    (upload_main, ["MODEL", "--repo-id", "me/m", "--dry-run", "--space-output-dir", "OUT"],
     "--space-output-dir serves --space-id: add --space-id OWNER/NAME"),
    (upload_main, ["MODEL", "--repo-id", "me/m", "--dry-run", "--static-space-output-dir", "OUT"],
     "--static-space-output-dir serves --static-space"),
    (upload_main, ["MODEL", "--repo-id", "me/m", "--dry-run", "--web-precision", "float32", "--output-dir", "OUT"],
     "--web-precision serves --static-space: add --static-space OWNER/NAME, or drop --web-precision"),
])
def test_an_option_for_another_mode_is_refused_not_ignored(main, args, needle, trained, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # a real upload is refused before it needs one
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    places = {"MODEL": str(trained["transformer"]), "OUT": str(tmp_path / "out")}
    assert_one_line_error(run_entry(main, *[places.get(word, word) for word in args]), needle)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- paths that cannot be written


def test_outputs_below_a_file_or_in_a_missing_folder_are_refused(corpus, trained, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_one_line_error(_train(corpus, blocker / "model"), "is a file, not a folder")
    assert_one_line_error(run_entry(upload_main, str(trained["lstm"]), "--repo-id", "me/m", "--dry-run",
                                    "--output-dir", str(blocker)), "not an empty folder")
    assert_one_line_error(run_entry(compare_main, str(trained["lstm"]), "--output", str(tmp_path / "no" / "c.md")),
                          "does not exist")
    assert blocker.read_text() == "not a folder"
    # llama.cpp's converter and most tools take the file's path: a folder named model.gguf holding
    # transformer-f32.gguf was made instead.
    for name, format_ in (("model.gguf", "gguf"), ("chat.html", "web"), ("model.onnx", "onnx")):
        assert_one_line_error(run_entry(export_main, str(trained["transformer"]), "--format", format_,
                                        "--output-dir", str(tmp_path / name)),
                              "is named like a file, but an export is a folder",
                              f"--output-dir {tmp_path / Path(name).stem}-{format_}")
    for spelled in ("-o", "--outfile", "--out_dir"):
        assert_one_line_error(run_entry(export_main, str(trained["transformer"]), spelled, str(tmp_path / "x")),
                              f"unknown option {spelled} (did you mean --output-dir?)")
        assert_one_line_error(run_entry(compare_main, str(trained["transformer"]), spelled, str(tmp_path / "x.md")),
                              f"unknown option {spelled} (did you mean --output?)")  # compare.py writes one file
    for main in (train_main, chat_main):  # the Trainer's --use_cpu, nanoGPT's --device=cpu habits
        for spelled in ("--use_cpu", "--cpu", "--no-cuda"):
            assert_one_line_error(run_entry(main, spelled), f"unknown option {spelled} (did you mean --device cpu?)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "corpus.txt"]


def test_a_folder_of_the_users_own_files_is_never_made_an_output_folder(tmp_path):
    """`--output-dir notes` (the data's own folder, or `.` in a project) wrote the model among the user's files, and
    the next `--data notes` read the model's JSON files as records; --overwrite replaces a run, not someone's files.
    A run's folder stays reusable with files of the user's added to it."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "book.txt").write_text(make_text(1))
    before = snapshot(notes)
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert_one_line_error(_train(notes, notes, *extra), f"--output-dir {notes} holds files that are not a "
                              "training run's (book.txt): choose a new or empty folder")
        assert snapshot(notes) == before
    run = tmp_path / "run"
    assert _train(notes, run).returncode == 0
    (run / "NOTES.md").write_text("what this model is for")
    result = _train(notes, run, "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "NOTES.md").read_text() == "what this model is for"


def test_a_model_folder_no_run_wrote_is_never_trained_into(trained, corpus, tmp_path, monkeypatch):
    """`train.py --output-dir EXPORT --overwrite` trained into an export folder and kept its GGUF and its record:
    the folder then read as an export of the first model (compare.py reported that model's training, `compare.py`
    without models left it out) beside weights of another. The same for a Hub folder (its card, its exports) and a
    folder that save_pretrained wrote. Refused, even with --overwrite; a run's own folder still takes --overwrite."""
    monkeypatch.setenv("HF_TOKEN", "hf_notARealToken")
    model = str(trained["transformer"])
    assert run_entry(export_main, model, "--format", "gguf", "--output-dir", str(tmp_path / "export")).returncode == 0
    assert run_entry(upload_main, model, "--repo-id", "me/m", "--dry-run", "--output-dir",
                     str(tmp_path / "hub")).returncode == 0
    AutoModelForCausalLM.from_pretrained(model).save_pretrained(tmp_path / "saved")
    for name in ("export", "hub", "saved"):
        before = snapshot(tmp_path / name)
        for extra in ([], ["--overwrite"]):
            assert_one_line_error(_train(corpus, tmp_path / name, *extra),
                                  f"--output-dir {tmp_path / name} holds a model that no training run wrote there",
                                  "choose a new or empty --output-dir")
            assert snapshot(tmp_path / name) == before
    assert _train(corpus, tmp_path / "run").returncode == 0
    assert _train(corpus, tmp_path / "run", "--overwrite").returncode == 0


def test_an_unwritable_output_folder_is_refused(corpus, tmp_path, monkeypatch):
    locked = tmp_path / "read-only"
    locked.mkdir()
    real_access = os.access
    # Root may write anywhere, so the test says what a read-only folder answers.
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked else real_access(path, mode))
    assert_one_line_error(_train(corpus, locked / "model"), "is not writable")


def test_a_model_in_a_read_only_folder_chats_and_its_default_export_or_upload_folder_is_named(trained, tmp_path,
                                                                                              monkeypatch):
    """An export's and an upload's default folder is beside the model: for a model in a shared, read-only folder
    that was a traceback (PermissionError) and "no space left" with the advice to free some. Named in one line,
    before any work; reading the model there (chat, compare) writes nothing beside it."""
    shared = tmp_path / "shared"
    shutil.copytree(trained["lstm"], shared / "lstm")
    real_access = os.access
    # Root may write anywhere, so the test says what a read-only folder answers.
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == shared else real_access(path, mode))
    monkeypatch.setenv("HF_TOKEN", "hf_notARealToken")
    for main, args, made in ((export_main, ["--format", "onnx"], "lstm-onnx"),
                             (upload_main, ["--repo-id", "me/m", "--dry-run"], "lstm-hub")):
        assert_one_line_error(run_entry(main, str(shared / "lstm"), *args),
                              f"--output-dir {shared / made}: {shared} is not writable; pick another --output-dir")
    assert sorted(path.name for path in shared.iterdir()) == ["lstm"]
    assert run_entry(chat_main, str(shared / "lstm"), "--prompt", "hi", "--max-new-tokens", "3").returncode == 0
    # An empty folder made for the output in the read-only one: each output is built beside its folder, and put
    # in its place whole, so that is named too, before any work ("cannot create it" named the folder that was there).
    mine = shared / "mine"
    mine.mkdir()
    for main, args in ((export_main, ["--format", "onnx"]), (upload_main, ["--repo-id", "me/m", "--dry-run"]),
                       (upload_main, ["--repo-id", "me/m", "--dry-run", "--static-space", "me/page",
                                      "--output-dir", str(tmp_path / "hub"), "--static-space-output-dir"])):
        args = [*args, str(mine)] if args[-1].startswith("--static") else [*args, "--output-dir", str(mine)]
        flag = args[-2]
        assert_one_line_error(run_entry(main, str(shared / "lstm"), *args),
                              f"{flag} {mine}: {shared} is not writable; pick another {flag}")
    assert sorted(path.name for path in shared.iterdir()) == ["lstm", "mine"] and not any(mine.iterdir())
    assert not (tmp_path / "hub").exists()  # every folder is checked before the first is built


def test_an_output_folder_that_cannot_be_made_is_named_and_nothing_is_left_on_the_way(corpus, trained, tmp_path,
                                                                                      monkeypatch):
    """Output folders the permission test passes but that cannot be made: a path through a link to a missing folder,
    and a folder its file system refuses (root in /proc, a network mount that squashes root). Each was a traceback
    (FileNotFoundError, FileExistsError, NotADirectoryError), and the export through a dangling link made the
    link's missing target folder and left its half-built export there. An export or upload failing halfway leaves
    none of the folders it made on the way, and an export through a link to an earlier export replaces what the
    link points at, where rmtree refused the link."""
    lstm = str(trained["lstm"])
    monkeypatch.setenv("HF_TOKEN", "hf_notARealToken")
    missing = tmp_path / "gone" / "place"
    (tmp_path / "link").symlink_to(missing)
    squashed = tmp_path / "squashed"
    squashed.mkdir()
    real_mkdir = Path.mkdir

    def refusing_mkdir(self, *args, **kwargs):  # what a mount answers whatever os.access says
        if squashed in self.absolute().parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refusing_mkdir)
    commands = {"train": (train_main, f"--data={corpus}", "--max-steps=1", "--output-dir"),
                "export": (export_main, lstm, "--format", "onnx", "--output-dir"),
                "upload": (upload_main, lstm, "--repo-id", "me/m", "--dry-run", "--output-dir")}
    for name, (main, *args) in commands.items():
        for out, said in ((tmp_path / "link" / "run", f"{tmp_path / 'link'} is a link to {missing}, which does not "
                                                      "exist; create that folder, or pick another --output-dir"),
                          (tmp_path / "link", "which does not exist"),
                          (squashed / "new" / "run", "cannot create it (Permission denied); pick another --output-dir")):
            assert_one_line_error(run_entry(main, *args, str(out)), f"--output-dir {out}", said)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.txt", "link", "squashed"]
    assert not any(squashed.iterdir())
    monkeypatch.undo()

    from pocketlm.export import onnx as onnx_export

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export, "quantize", full_disk)  # fails halfway, after the float32 graph
    monkeypatch.setenv("HF_TOKEN", "hf_notARealToken")
    deep = tmp_path / "new" / "deeper"
    assert_one_line_error(run_entry(export_main, lstm, "--format", "onnx", "--output-dir", str(deep / "out")),
                          f"no space left in {deep}", "free some space and export again")
    assert_one_line_error(run_entry(upload_main, lstm, "--repo-id", "me/m", "--formats", "onnx", "--dry-run",
                                    "--output-dir", str(deep / "hub")),
                          f"cannot write the Hub folder {deep / 'hub'} (No space left on device): free some space")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.txt", "link", "squashed"]
    monkeypatch.undo()

    earlier = tmp_path / "exports" / "lstm-onnx"
    assert run_entry(export_main, lstm, "--format", "web", "--output-dir", str(earlier)).returncode == 0
    (tmp_path / "current").symlink_to(earlier)
    result = run_entry(export_main, lstm, "--format", "onnx", "--output-dir", str(tmp_path / "current"), "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "current").is_symlink() and (earlier / "onnx" / "model.onnx").is_file()
    assert not (earlier / "index.html").exists()  # replaced whole, as an export is
    assert sorted(path.name for path in (tmp_path / "exports").iterdir()) == ["lstm-onnx"]


def test_an_export_or_upload_stopped_halfway_leaves_no_half_built_folder_and_runs_again(trained, tmp_path,
                                                                                        monkeypatch):
    """Ctrl-C (or any failure) while `hub_upload.py --dry-run` built its folder left the half of it written so far,
    which looked like a finished folder to an upload and made the same command refuse it ('not an empty folder').
    Every export, Hub and Space folder is now built aside and put in place whole; a dry run whose Space fails
    removes the model folder it had built too, so the same command runs again; an empty folder the user made for it,
    and a link to one, stay as they were."""
    from pocketlm import hub, spaces

    lstm = str(trained["lstm"])
    monkeypatch.setenv("HF_TOKEN", "hf_notARealToken")
    mine = tmp_path / "mine"
    mine.mkdir()
    (tmp_path / "link").symlink_to(mine)
    upload = ("--repo-id", "me/m", "--dry-run", "--formats", "onnx", "--static-space", "me/page")
    real_card = hub.model_card

    def pressed_ctrl_c(*args, **kwargs):  # the card is written last, after the weights and the ONNX graph
        raise KeyboardInterrupt

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    for out in (tmp_path / "new" / "hub", mine, tmp_path / "link"):
        monkeypatch.setattr(hub, "model_card", pressed_ctrl_c)
        result = run_entry(upload_main, lstm, *upload, "--output-dir", str(out))
        assert result.returncode == 130 and "interrupted" in result.stderr, result.stderr[-2000:]
        monkeypatch.setattr(hub, "model_card", real_card)
        monkeypatch.setattr(spaces, "write_page", full_disk)  # the second folder fails, after the first was built
        assert_one_line_error(run_entry(upload_main, lstm, *upload, "--output-dir", str(out)),
                              f"cannot write the Space folder {out}-static-space (No space left on device): "
                              "free some space")
        assert sorted(path.name for path in tmp_path.iterdir()) == ["link", "mine"], list(tmp_path.rglob("*"))
        assert not any(mine.iterdir()) and (tmp_path / "link").is_symlink()
        monkeypatch.undo()
        monkeypatch.setenv("HF_TOKEN", "hf_notARealToken")
        result = run_entry(upload_main, lstm, *upload, "--output-dir", str(out))  # the same command, once more
        assert result.returncode == 0, result.stderr[-2000:]
        assert (out / "onnx" / "model.onnx").is_file() and (Path(f"{out}-static-space") / "index.html").is_file()
        assert (tmp_path / "link").is_symlink()
        for built in [*tmp_path.iterdir(), *mine.iterdir()]:  # for the next folder to try
            if built.name not in ("link", "mine"):
                shutil.rmtree(built) if built.is_dir() else built.unlink()

    from pocketlm.export import onnx as onnx_export

    monkeypatch.setattr(onnx_export, "write_onnx", pressed_ctrl_c)
    for out in (tmp_path / "exported", mine):
        result = run_entry(export_main, lstm, "--format", "onnx", "--output-dir", str(out))
        assert result.returncode == 130, result.stderr[-2000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link", "mine"] and not any(mine.iterdir())


def test_a_killed_export_leaves_a_hidden_folder_that_the_next_one_clears(trained, tmp_path):
    """An export killed while it builds (SIGKILL, the OOM killer) cannot clean up: its hidden `.NAME.partial-PID`
    folder beside the output stayed for good, the size of an export each time. The next export to that place
    removes those of processes no longer running, and leaves one a running process is building."""
    out, lstm = tmp_path / "out", str(trained["lstm"])
    command = [sys.executable, str(REPO_ROOT / "export.py"), lstm, "--format", "onnx", "--output-dir", str(out)]
    killed = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.partial-*/*")) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    host = socket.gethostname()
    assert [path.name for path in tmp_path.iterdir()] == [f".out.partial-{host}-{killed.pid}"]  # left, alone
    running = tmp_path / f".out.partial-{host}-{os.getpid()}"  # this test's process: building it for all we know
    elsewhere = tmp_path / ".out.partial-another-machine-4194305"  # a shared file system: not this machine's to judge
    for folder in (running, elsewhere):
        folder.mkdir()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([running.name, elsewhere.name, "out"])
    assert (out / "onnx" / "model.onnx").is_file()


def test_a_cache_entry_a_killed_process_was_writing_is_cleared_by_the_next_write(tmp_path):
    """The same for pocketlm's caches (tokenizers, datasets saved from Python, which can be large): a process killed
    while writing an entry left its hidden `.DIGEST-PID` folder for good."""
    from pocketlm.whole_writes import write_folder_whole

    host = socket.gethostname()
    dead = tmp_path / f".0123abcd-{host}-4194305"  # above any pid_max: no process has it
    dead.mkdir()
    (dead / "data-00000-of-00001.arrow").write_bytes(b"half of it")
    running, elsewhere = tmp_path / f".0123abcd-{host}-{os.getppid()}", tmp_path / ".0123abcd-node-7-4194305"
    for folder in (running, elsewhere):
        folder.mkdir()
    write_folder_whole(tmp_path / "0123abcd", lambda scratch: shutil.copytree(REPO_ROOT / "configs", scratch))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([running.name, elsewhere.name, "0123abcd"])


def test_two_onnx_chats_started_together_share_one_cached_export(trained, monkeypatch, tmp_path):
    """Two `chat.py --runtime onnx` of one model started together (two terminals, a server's workers) both export
    it into pocketlm's cache. The one that finished last removed the other's export to put its own in its place,
    under a chat loading those graphs, or stopped with "already exists: pass --overwrite". The first export placed
    stays, and the later one goes. The second chat here is a whole second load, run while the first one exports."""
    from pocketlm import export as export_package

    monkeypatch.setattr("pocketlm.onnx_runtime.EXPORT_CACHE", tmp_path / "cache")
    folder = str(trained["lstm"])
    real_export, other = export_package.export, {}

    def export_while_another_chat_starts(*args, **kwargs):
        if not other:  # this chat's export: the other chat starts, exports and loads meanwhile
            other["chat"] = True
            other["model"] = load_pretrained(folder, runtime="onnx")[0]
            other["graph"] = other["model"].graph_file.stat().st_ino
        return real_export(*args, **kwargs)

    monkeypatch.setattr(export_package, "export", export_while_another_chat_starts)
    model, tokenizer = load_pretrained(folder, runtime="onnx")
    assert model.graph_file == other["model"].graph_file  # both run the graphs placed first, as they were
    assert model.graph_file.stat().st_ino == other["graph"]
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [model.graph_file.parent.parent.name]
    ids = torch.tensor([tokenizer("To be, or not to be")["input_ids"]])
    reference, _ = load_pretrained(folder)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)


def test_two_web_exports_that_fetch_the_javascript_together_share_one_copy(monkeypatch, tmp_path):
    """The same for the page's npm packages, fetched once into pocketlm's cache by the first web export: of two
    first exports at once, the one whose `npm ci` finished last removed the other's packages while that export was
    copying files out of them. npm stands in here as a program that writes the file the cache is checked by, and
    the second export's fetch runs while the first one's npm does."""
    from pocketlm.export import web

    monkeypatch.setattr(web, "NPM_CACHE", tmp_path / "web")
    installs, second = [], {}

    def npm(command, cwd, **kwargs):
        installs.append(cwd)
        if len(installs) == 1:  # the first export's npm: the second export fetches meanwhile
            second["modules"] = web.npm_packages()
        written = Path(cwd) / "node_modules" / web.TRANSFORMERS_JS
        written.parent.mkdir(parents=True)
        written.write_text(f"// installed by npm in {cwd}\n")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(web.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(web.subprocess, "run", npm)
    modules = web.npm_packages()
    assert modules == second["modules"]  # both use the copy placed first, still the one its export copies from
    assert (modules / web.TRANSFORMERS_JS).read_text() == f"// installed by npm in {installs[1]}\n"
    assert [path.name for path in (tmp_path / "web").iterdir()] == [modules.parent.name]


def test_saved_weights_are_readable_as_the_umask_says(corpus, trained, tmp_path, monkeypatch):
    """safetensors 0.8 writes mode 0600 whatever the umask (safetensors#782): a model trained, exported or
    prepared for the Hub by one user did not load for another (a shared machine, a container image built as root,
    a web server), while every file beside it could be read. Each weights file pocketlm writes now has the mode
    of the files beside it."""
    monkeypatch.setenv("HF_TOKEN", "hf_notARealToken")
    previous = os.umask(0o022)
    try:
        assert _train(corpus, tmp_path / "run").returncode == 0
        model = str(trained["transformer"])
        assert run_entry(export_main, model, "--format", "transformers", "--output-dir",
                         str(tmp_path / "export")).returncode == 0
        assert run_entry(upload_main, model, "--repo-id", "me/m", "--dry-run", "--output-dir",
                         str(tmp_path / "hub")).returncode == 0
    finally:
        os.umask(previous)
    weights = sorted(tmp_path.rglob("*.safetensors"))
    # The run's model and checkpoints, the stock GPT-2, the Hub folder's model.
    assert {path.parent.name for path in weights} >= {"run", "step-2", "export", "hub"}, weights
    for path in weights:
        beside = next(path.parent.glob("*.json"))
        assert (path.stat().st_mode & 0o777, beside.stat().st_mode & 0o777) == (0o644, 0o644), path


# -------------------------------------------------------------------------------- one run per output folder


def test_a_run_refused_before_writing_anything_leaves_no_folder_behind(tmp_path):
    """A refused run (data without text) left its output folder, and every folder above it it had made, holding
    only its lock file: a run folder to the next command, and litter. A folder that was there stays."""
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    for out in (tmp_path / "runs" / "new" / "model", tmp_path / "mine"):
        if out.name == "mine":
            out.mkdir()
        result = run_entry(train_main, f"--data={empty}", f"--output-dir={out}", "--max-steps=1")
        assert result.returncode == 2, result.stderr[-2000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty.txt", "mine"]
    assert not any((tmp_path / "mine").iterdir())


def test_a_second_run_on_a_busy_folder_stops_at_once_naming_the_first(corpus, tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "train.py"), f"--data={corpus}", f"--output-dir={out}", "--block-size=32",
         "--batch-size=4", "--max-steps=100000", "--samples=0", "--model-config=n_layer=1", "--save-every=1000"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.1)
        started = time.time()
        second = _train(corpus, out, "--resume")
        assert time.time() - started < 10
        assert_one_line_error(second, "is in use by another training run", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The lock dies with its process: the killed run blocks nothing.
    result = _train(corpus, out, "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]


# --------------------------------------------------------------------------------------------- a full disk


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_a_full_disk_names_the_folder_and_keeps_the_last_good_model_and_checkpoint(corpus, tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    real_disk = _mount_tmpfs(disk, "16m")
    try:
        out = disk / "model"
        assert _train(corpus, out, "--save-every=2", "--eval-every=2").returncode == 0
        before = snapshot(out)
        if real_disk:  # fill the disk to its last few kilobytes
            filler = disk / "filler"
            descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
            os.posix_fallocate(descriptor, 0, shutil.disk_usage(disk).free - 8192)
            os.close(descriptor)
        else:  # what a nearly full disk answers: small appends fit, the files of a save do not
            import builtins

            real_open = builtins.open

            def full_disk_open(path, mode="r", *args, **kwargs):
                saving = any(part in str(path) for part in ("/.saving/", "/.tmp-step-"))
                if saving and any(m in mode for m in "wax"):
                    raise OSError(28, "No space left on device", str(path))
                return real_open(path, mode, *args, **kwargs)

            monkeypatch.setattr(builtins, "open", full_disk_open)
        result = _train(corpus, out, "--resume", "--max-steps=6", "--save-every=2", "--eval-every=2")
        assert_one_line_error(result, f"no space left in {out}", "needs about", "MB")
        monkeypatch.undo()
        kept = {name for name in before if name not in ("metrics.jsonl", ".lock")}  # the log grows, as it should
        after = snapshot(out)
        assert {name: after.get(name) for name in kept} == {name: before[name] for name in kept}
        assert not (out / ".saving").exists() and not list((out / "checkpoints").glob(".tmp-*"))
        from pocketlm.signing import verify

        assert verify(out / "checkpoints" / "step-2") is None
        if real_disk:
            filler.unlink()
        resumed = _train(corpus, out, "--resume", "--max-steps=6", "--save-every=2", "--eval-every=2")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    finally:
        if real_disk:
            subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------------------------- checkpoints and trust


def test_resume_skips_a_damaged_newest_checkpoint_with_a_warning(corpus, tmp_path, caplog):
    out = tmp_path / "run"
    assert _train(corpus, out, "--max-steps=6", "--save-every=2", "--eval-every=2").returncode == 0
    shutil.rmtree(out / "checkpoints" / "step-6")
    _truncate(out / "checkpoints" / "step-4" / "model.safetensors")
    result = _train(corpus, out, "--resume", "--max-steps=6", "--save-every=2", "--eval-every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    warning = next(r.getMessage() for r in caplog.records if "skipped checkpoint" in r.getMessage())
    assert "step-4" in warning and "model.safetensors is damaged" in warning
    assert "resumed from step 2" in result.stdout + result.stderr


# -------------------------------------------------------------------------- a resume notices what changed


@pytest.fixture
def interrupted(tmp_path) -> tuple[Path, Path]:
    """A run of 2 steps on a data folder, checkpointed: what a --resume to step 4 continues."""
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(make_text(0))
    (folder / "b.txt").write_text(make_text(1))
    out = tmp_path / "out"
    first = _train(folder, out, "--save-every=1")
    assert first.returncode == 0, first.stderr[-3000:]
    return folder, out


def test_a_run_on_a_given_tokenizer_resumes_after_that_tokenizer_moved(corpus, tmp_path):
    """A --tokenizer run's resume read the tokenizer from where it had been: moved or deleted since, the run could
    not go on. The run keeps the tokenizer it was given, as it keeps one it trained."""
    given = tmp_path / "my-tokenizer"
    first = _train(corpus, tmp_path / "base", "--max-steps=1")
    assert first.returncode == 0, first.stderr[-3000:]
    AutoTokenizer.from_pretrained(tmp_path / "base").save_pretrained(given)
    out = tmp_path / "out"
    started = _train(corpus, out, f"--tokenizer={given}", "--save-every=1")
    assert started.returncode == 0, started.stderr[-3000:]
    shutil.move(given, tmp_path / "moved")
    # Given only its folder (the run's options, its --tokenizer among them, come from its checkpoint), then as the
    # command that started it: each resume was refused, first as "--tokenizer's vocabulary is the one it has: drop
    # --vocab-size" (the recipe's size recorded beside it), then as "no such folder".
    alone = run_entry(train_main, "--resume", f"--output-dir={out}", "--max-steps=3")
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "resumed from step 2" in alone.stdout + alone.stderr
    again = _train(corpus, out, "--resume", "--max-steps=4", f"--tokenizer={given}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step 3" in again.stdout + again.stderr


def test_a_tokenizer_from_elsewhere_gains_pocketlm_s_special_tokens_and_trains(corpus, tmp_path):
    """`--tokenizer` of a tokenizer pocketlm did not train (GPT-2's has no pad token) stopped with a numpy
    traceback ("int() argument must be ... not 'NoneType'") when the blocks were cut. It keeps its own ids and gains
    pocketlm's special tokens and chat template after them (in place of its own ChatML one), said in a note; the
    model chats and its run resumes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pocketlm.chat import ChatInterface
    from tokenization import SPECIAL_TOKENS

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    backend.train_from_iterator([corpus.read_text()], trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]))
    foreign = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    foreign.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}")
    given = tmp_path / "foreign"
    foreign.save_pretrained(given)
    chats = tmp_path / "chats.jsonl"
    chats.write_text(_jsonl(*[{"messages": [{"role": "user", "content": f"Question {i}?"},
                                            {"role": "assistant", "content": f"Answer {i}."}]} for i in range(60)]))
    for data, extra in ((corpus, []), (chats, ["--assistant-only-loss"])):
        out = tmp_path / f"out-{data.stem}"
        result = _train(data, out, f"--tokenizer={given}", "--save-every=1", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"note: {given} has no {', '.join(SPECIAL_TOKENS)}: added after its own tokens" in result.stdout
        # Its own (ChatML) template is not the one trained with, and the note says so.
        assert ("with pocketlm's chat template in place of its own (the model learns and is prompted with "
                "pocketlm's: its replies end at <|end|>)") in result.stdout
        kept = AutoTokenizer.from_pretrained(out)
        text = "the river ran past the mill"
        assert kept(text).input_ids == foreign(text).input_ids  # its own ids, unchanged
        assert kept.pad_token == "<|pad|>" and len(kept) == len(foreign) + len(SPECIAL_TOKENS)
        assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == len(kept)
        assert isinstance(ChatInterface(str(out), mode="chat", max_new_tokens=4).reply("Hello"), str)
        resumed = _train(data, out, f"--tokenizer={given}", "--resume", "--max-steps=3", *extra)
        assert resumed.returncode == 0 and "resumed from step 2" in resumed.stdout + resumed.stderr, resumed.stderr


def test_a_tokenizer_that_adds_a_bos_to_every_text_is_kept_without_it_so_every_runtime_prompts_as_training_did(
        corpus, tmp_path):
    """A tokenizer from elsewhere whose post-processor puts a BOS before every text (Llama 3's) and here an EOS after
    it: the model trains on text pocketlm frames itself (the end-of-text token after each document, nothing
    before), yet the folder's tokenizer went on adding both, so `tokenizer(text)` (transformers' pipelines,
    transformers.js on the exports) prompted the model with a BOS it never saw and an EOS that says the text is
    over. The run keeps the tokenizer without them, said in a note: its ids for a text are the text's own, and
    transformers' text-generation pipeline, without pocketlm, continues a text as pocketlm's chat does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, pipeline

    from pocketlm.chat import ChatInterface

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    backend.train_from_iterator([corpus.read_text()], trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>", "</s>"]))
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])])
    foreign = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    given, out = tmp_path / "foreign", tmp_path / "out"
    foreign.save_pretrained(given)
    text = "the river ran past the mill"
    assert foreign(text).input_ids[0] == 0 and foreign(text).input_ids[-1] == 1  # as such a tokenizer frames text
    result = _train(corpus, out, f"--tokenizer={given}", "--max-steps=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"note: {given} adds <s> and </s> to every text it encodes: left out" in result.stdout
    kept = AutoTokenizer.from_pretrained(out)
    assert kept(text).input_ids == foreign(text, add_special_tokens=False).input_ids
    assert kept(text, return_offsets_mapping=True)["offset_mapping"] == \
        foreign(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    chat = ChatInterface(str(out), mode="text", do_sample=False, repetition_penalty=1.0, max_new_tokens=8)
    generator = pipeline("text-generation", model=str(out), trust_remote_code=True)
    continued = generator(text, max_new_tokens=8, do_sample=False, repetition_penalty=1.0,
                          return_full_text=False)[0]["generated_text"]
    assert continued == chat.reply(text) and continued.strip()


def _prefix_space_tokenizer(way: str, text: str):
    """A tokenizer from elsewhere that puts a space before every text it encodes, as `way`'s family does: RoBERTa's
    byte-level BPE, Llama 2's as transformers 5 builds it and as its tokenizer.json spells it, a SentencePiece
    Unigram as transformers converts ALBERT's and XLNet's."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "</s>"]
    if way == "roberta":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        backend.decoder, backend.post_processor = decoders.ByteLevel(), processors.ByteLevel(trim_offsets=True)
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif way == "unigram":
        backend = Tokenizer(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
        backend.decoder = decoders.Metaspace(prepend_scheme="always", split=True)
        trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=special, unk_token="<unk>")
    else:  # Llama 2: a BPE falling back to bytes, each word marked with "▁", the text's first one too
        backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        if way == "llama":
            backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
        else:  # "llama-json": as the tokenizer.json published with Llama 2 spells the same
            backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                             decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special + [f"<0x{b:02X}>" for b in range(256)])
    backend.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("way", ["roberta", "llama", "llama-json", "unigram"])
def test_a_tokenizer_that_puts_a_space_before_every_text_is_kept_without_it_so_a_long_text_trains_as_written(
        way, corpus, tmp_path):
    """A tokenizer from elsewhere that puts a space before every text it encodes (RoBERTa's, Llama 2's, ALBERT's): a
    long text is read in pieces, each encoded alone, so training saw a space before every piece the text does not
    hold, and one that decodes back (RoBERTa's) or a text that begins with a space (Llama 2's, whose decoder strips
    one) did not come back as written. The run keeps the tokenizer without that space, said in a note: the pieces
    it trains on decode to the text exactly, its vocabulary is used as before (a text given with its space reads as
    the same ids), and transformers' text-generation pipeline continues a text as pocketlm's chat does."""
    from transformers import pipeline

    from pocketlm import data
    from tokenization import END_OF_TEXT

    text = corpus.read_text()
    foreign = _prefix_space_tokenizer(way, text)
    given, out = tmp_path / "foreign", tmp_path / "out"
    foreign.save_pretrained(given)
    passage = "Crown a of fair day sword."
    assert foreign.convert_ids_to_tokens(foreign(passage).input_ids)[0][0] in "Ġ▁"  # a space marked, as it frames
    result = _train(corpus, out, f"--tokenizer={given}", "--max-steps=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"note: {given} adds a leading space to every text it encodes: left out" in result.stdout
    assert "does not give back the text it reads" not in result.stdout
    kept = AutoTokenizer.from_pretrained(out)
    documents, _ = data.load_documents(data=[str(corpus)])
    assert len(documents) > 10  # the text is read in pieces
    trained_on = [token for row in data.tokenize(documents, kept) for token in row["input_ids"]]
    assert kept.decode(trained_on) == text + END_OF_TEXT
    for probe in (passage, " " + passage, "  two spaces then\n\na line."):
        assert kept.decode(kept(probe).input_ids) == probe
    assert kept(" " + passage).input_ids == foreign(passage, add_special_tokens=False).input_ids
    chat = ChatInterface(str(out), mode="text", do_sample=False, repetition_penalty=1.0, max_new_tokens=8)
    generator = pipeline("text-generation", model=str(out), trust_remote_code=True)
    continued = generator(passage, max_new_tokens=8, do_sample=False, repetition_penalty=1.0,
                          return_full_text=False)[0]["generated_text"]
    assert continued == chat.reply(passage) and continued.strip()


def test_a_run_that_kept_a_framing_tokenizer_resumes_with_it_as_it_stands(corpus, tmp_path, monkeypatch):
    """A run begun before runs left framing out kept the tokenizer as it was given (a leading space, a BOS). Its
    resume took the run's own tokenizer and left the framing out of it, so the resume was refused as "the tokenizer
    is not the one the run trained with" though nothing but pocketlm had changed. A resume continues with the
    run's own tokenizer as it stands: to the same weights as the run resumed by the code that began it."""
    from safetensors.torch import load_file

    from pocketlm import preparation

    given = tmp_path / "foreign"
    _prefix_space_tokenizer("roberta", corpus.read_text()).save_pretrained(given)
    resume = [f"--tokenizer={given}", "--resume", "--max-steps=4"]
    with monkeypatch.context() as older:
        older.setattr(preparation, "without_framing", lambda tokenizer: (tokenizer, []))
        for out in ("before", "after"):
            assert _train(corpus, tmp_path / out, f"--tokenizer={given}", "--save-every=1").returncode == 0
        assert _train(corpus, tmp_path / "before", *resume).returncode == 0
    resumed = _train(corpus, tmp_path / "after", *resume)
    assert resumed.returncode == 0 and "resumed from step 2" in resumed.stdout + resumed.stderr, resumed.stderr
    assert "leading space" not in resumed.stdout
    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("before", "after")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_a_tokenizer_that_does_not_give_back_its_text_is_named_with_what_it_changes(corpus, tmp_path):
    """A WordPiece lowercases and drops spaces, a whitespace-split BPE drops them: trained with either, a model never
    writes what was dropped, and its bits per character (the loss over every character) read lower than a model's
    whose tokenizer keeps every character. It trains, with a note showing the first stretch that comes back changed;
    a byte-level BPE, which keeps every byte, gets none."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = corpus.read_text()
    kinds = {"wordpiece": (models.WordPiece(unk_token="[UNK]"), trainers.WordPieceTrainer, decoders.WordPiece()),
             "split-bpe": (models.BPE(unk_token="[UNK]"), trainers.BpeTrainer, decoders.BPEDecoder()),
             "byte-bpe": (models.BPE(), trainers.BpeTrainer, decoders.ByteLevel())}
    for name, (model, trainer, decoder) in kinds.items():
        backend = Tokenizer(model)
        backend.decoder = decoder
        if name == "byte-bpe":
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            extra = {"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()}
        else:
            backend.pre_tokenizer = pre_tokenizers.Whitespace()
            extra = {}
        if name == "wordpiece":
            backend.normalizer = normalizers.Lowercase()
        backend.train_from_iterator([text], trainer(vocab_size=300, special_tokens=["[UNK]"], **extra))
        given = tmp_path / name
        PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(given)
        result = _train(corpus, tmp_path / f"out-{name}", f"--tokenizer={given}")
        assert result.returncode == 0, result.stderr[-3000:]
        said = [line for line in result.stdout.splitlines() if "does not give back the text it reads" in line]
        # The model card names the tokenizer it was trained with, not pocketlm's own kind for the family.
        hub = tmp_path / f"hub-{name}"
        assert run_entry(upload_main, str(tmp_path / f"out-{name}"), "--repo-id", "me/model", "--dry-run",
                         "--output-dir", str(hub)).returncode == 0
        vocabulary = {"wordpiece": "WordPiece", "split-bpe": "BPE", "byte-bpe": "byte-level BPE"}[name]
        assert f", {vocabulary} vocabulary of {len(AutoTokenizer.from_pretrained(hub))} tokens," in (
            hub / "README.md").read_text()
        if name == "byte-bpe":
            assert said == []
            continue
        assert len(said) == 1, result.stdout
        # The stretch shown is the text's own first change, as the tokenizer gives it back.
        original, back = re.search(r"\((.+) comes back as (.+)\): ", said[0]).groups()
        original, back = ast.literal_eval(original), ast.literal_eval(back)
        loaded = AutoTokenizer.from_pretrained(given)
        given_back = loaded.decode(loaded(text).input_ids)
        assert original in text and back in given_back and original != back
        assert ("\n" not in back) and (back == back.lower() if name == "wordpiece" else " " not in back)


def _resume(folder: Path, out: Path, *extra: str):
    return _train(folder, out, "--resume", "--max-steps=4", *extra)


def _append(folder: Path) -> None:
    with open(folder / "a.txt", "a") as handle:
        handle.write("One more paragraph, appended after the checkpoint.\n")


@pytest.mark.parametrize("change, flags, needles", [
    ("appended to", [], ["a.txt changed (", "bytes then,", "--accept-changes"]),
    ("a file added", [], ["c.txt was added"]),
    ("a file removed", [], ["b.txt is gone"]),
    # Named by its whole path, as another file of its name is in the run: "a.txt was added" read as a contradiction.
    ("a file of a name the run has added", [], ["/texts/more/a.txt was added"]),
    ("batch size", ["--batch-size=8"], ["--batch-size is 8 here, 4 in the run"]),
    ("seed", ["--seed=7"], ["--seed is 7 here, 1337 in the run"]),
    ("block size", ["--block-size=16"], ["--block-size is 16 here, 32 in the run"]),
    ("learning rate", ["--lr=0.01"], ["--lr is 0.01 here"]),
    ("precision", ["--mixed-precision=bf16"], ["--mixed-precision is bf16 here, no in the run"]),
])
def test_a_resume_refuses_a_change_that_decides_the_batches_until_it_is_accepted(change, flags, needles,
                                                                                 interrupted):
    folder, out = interrupted
    if change == "appended to":
        _append(folder)
    elif change == "a file added":
        (folder / "c.txt").write_text(make_text(2))
    elif change == "a file removed":
        (folder / "b.txt").unlink()
    elif change == "a file of a name the run has added":
        (folder / "more").mkdir()
        (folder / "more" / "a.txt").write_text(make_text(2))
    before = snapshot(out)
    refused = _resume(folder, out, *flags)
    assert_one_line_error(refused, "--resume: since the checkpoint at step 2", *needles)
    assert {k: v for k, v in snapshot(out).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}  # nothing written
    accepted = _resume(folder, out, *flags, "--accept-changes")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    output = accepted.stdout + accepted.stderr
    assert "continuing with changes (--accept-changes)" in output and needles[0] in output
    assert (out / "checkpoints" / "step-4").exists()


@pytest.mark.parametrize("change, flags, needle", [
    ("model shape", ["--model-config=n_layer=2"], "--model-config is n_layer=2 here, n_layer=1 in the run"),
    # The folder says it first, with the way to resume it: not --overwrite, which throws the run away.
    ("model family", ["--model-type=lstm"], "holds a Transformer, not an LSTM: to resume its run, drop "
                                            "--model-type (a resume takes the run's own), or pick another --output-dir."),
    ("tokenizer edited", [], "the tokenizer is not the one the run trained with"),
])
def test_a_resume_into_another_model_is_refused_even_with_accept_changes(change, flags, needle, interrupted):
    folder, out = interrupted
    if change == "tokenizer edited":
        tokenizer = next(out.rglob("tokenizer.json"))
        vocabulary = json.loads(tokenizer.read_text())
        vocabulary["model"]["vocab"]["pocketlm-extra-token"] = len(vocabulary["model"]["vocab"])
        tokenizer.write_text(json.dumps(vocabulary))
    if change == "model family":
        flags = [*flags, "--model-config=hidden_size=32"]
        result = run_entry(train_main, f"--data={folder}", f"--output-dir={out}", "--block-size=32", "--batch-size=4",
                           "--samples=0", "--resume", "--max-steps=4", "--accept-changes", *flags)
    else:
        result = _resume(folder, out, *flags, "--accept-changes")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert needle in result.stderr, result.stderr[-3000:]
    assert not (out / "checkpoints" / "step-4").exists()


def test_a_resume_reading_the_same_data_from_another_place_continues_to_the_same_weights(tmp_path):
    """A project folder moved or renamed, or a job started again where the data is mounted elsewhere: the files the
    run read were 'gone' and the same files 'added', and the resume was refused. The same bytes in the same order
    are the same batches: it continues, saying so, to the weights the resume from the old place gives."""
    weights = {}
    for place in ("stays", "moves"):
        folder, out = tmp_path / place / "texts", tmp_path / place / "out"
        folder.mkdir(parents=True)
        for number, name in enumerate(("a.txt", "b.txt")):
            (folder / name).write_text(make_text(number))
        assert _train(folder, out, "--save-every=1").returncode == 0
        if place == "moves":
            folder = folder.rename(tmp_path / place / "renamed")
        resumed = _resume(folder, out)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        output = resumed.stdout + resumed.stderr
        assert "resumed from step 2" in output and "continuing with changes" not in output
        then = tmp_path / place / "texts"
        moved = (f"the data was read from {then / 'a.txt'}, {then / 'b.txt'} and now from {folder / 'a.txt'}, "
                 f"{folder / 'b.txt'}: the same bytes in the same order")
        assert (moved in output) is (place == "moves"), output
        weights[place] = (out / "model.safetensors").read_bytes()
    assert weights["moves"] == weights["stays"]
    # The same bytes in another order are other batches: refused, naming each file.
    folder = tmp_path / "moves" / "renamed"
    (folder / "a.txt").rename(folder / "c.txt")
    assert_one_line_error(_resume(folder, tmp_path / "moves" / "out", "--max-steps=6"), "a.txt is gone",
                          "c.txt was added")


def test_a_resume_continues_with_a_note_where_the_change_cannot_matter(interrupted):
    folder, out = interrupted
    os.utime(folder / "a.txt", ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same bytes
    result = _resume(folder, out, "--eval-every=1", "--samples=1")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "a.txt was touched but holds the same bytes" in output
    assert "--max-steps is 4 here, 2 in the run: the schedule now runs to the new end" in output
    assert "continuing with changes" not in output and (out / "checkpoints" / "step-4").exists()


def test_a_run_on_a_saved_dataset_resumes_though_datasets_wrote_its_cache_beside_it(tmp_path):
    """datasets writes the result of reading a save_to_disk folder into it (`cache-<fingerprint>.arrow`): the
    resume counted those as data added since the checkpoint and refused every such run. Its rows changing is
    still a change."""
    import datasets

    texts = [make_text(0), make_text(1), make_text(2)]
    saved, out = tmp_path / "saved", tmp_path / "out"
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(saved)
    args = [f"--dataset={saved}", f"--output-dir={out}", "--block-size=32", "--batch-size=4", "--samples=0",
            "--model-config=n_layer=1", "--save-every=1"]
    assert run_entry(train_main, *args, "--max-steps=2").returncode == 0
    assert list(saved.glob("cache-*.arrow"))  # what datasets left there
    resumed = run_entry(train_main, *args, "--max-steps=3", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "was added" not in resumed.stdout + resumed.stderr and (out / "checkpoints" / "step-3").exists()
    # Moved: the same rows from another place, said, not refused (as a moved folder of text files).
    moved = saved.rename(tmp_path / "moved")
    args[0] = f"--dataset={moved}"
    resumed = run_entry(train_main, *args, "--max-steps=4", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"the data was read from {saved} and now from {moved}: the same bytes in the same order" in resumed.stdout
    shutil.rmtree(moved)
    datasets.Dataset.from_dict({"text": [*texts, make_text(3)]}).save_to_disk(moved)
    assert_one_line_error(run_entry(train_main, *args, "--max-steps=5", "--resume"),
                          "--resume: since the checkpoint at step 4", "changed (")


def test_an_lstm_run_that_recorded_a_size_or_vocabulary_it_never_read_resumes(tmp_path):
    """Before --model-size and --vocab-size were refused with the LSTM, a run could record them (ignored); its
    resume, now without them, must not read their absence as another model. For the Transformer they are its shape."""
    import torch

    from pocketlm.continuity import compare, fingerprint
    from pocketlm.options import resolve_options
    from pocketlm.training import TrainingOptions

    data = tmp_path / "a.txt"
    data.write_text(make_text(0))
    for family in ("lstm", "transformer"):
        options = resolve_options(TrainingOptions(model_type=family, data=[str(data)],
                                                  output_dir=str(tmp_path / family)))
        now = fingerprint(options, 1, torch.device("cpu"))
        then = {**now, "options": {**now["options"], "model_size": "large", "vocab_size": 1000}}
        if family == "lstm":
            assert compare(then, now, step=2, accept_changes=False) == []
        else:
            with pytest.raises(UsageError, match="--model-size is small here, large in the run"):
                compare(then, now, step=2, accept_changes=False)


def test_a_resume_given_only_its_folder_continues_the_run_as_it_was_started(corpus, tmp_path):
    """`train.py --resume --output-dir RUN` compared the run with the defaults and refused it ("--model-config is none
    here, n_layer=1 in the run"), unless every option was typed again; an option left out of a resume is now the
    run's own, and the resumed run ends bitwise the uninterrupted one. An option given again that differs is still
    a change."""
    started = tmp_path / "run"
    options = [f"--data={corpus}", "--block-size=32", "--batch-size=8", "--lr=0.01", "--seed=5", "--max-steps=4",
               "--save-every=2", "--eval-every=2", "--vocab-size=300", "--samples=0",
               "--model-config=n_layer=1,n_embd=32,n_head=2"]
    assert run_entry(train_main, f"--output-dir={started}", *options).returncode == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(started, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-4")  # as if stopped after step 2's checkpoint
    result = run_entry(train_main, "--resume", f"--output-dir={resumed}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step 2" in result.stdout + result.stderr
    for name in ("model.safetensors", "checkpoints/step-4/model.safetensors", "checkpoints/step-4/optimizer.bin"):
        assert (resumed / name).read_bytes() == (started / name).read_bytes(), name
    assert_one_line_error(run_entry(train_main, "--resume", f"--output-dir={resumed}", "--batch-size=4"),
                          "--batch-size is 4 here, 8 in the run")


def test_a_resume_computing_with_other_threads_says_its_last_bits_will_differ(interrupted, tmp_path):
    """Threads change the order in which a matrix product adds: a resume with other threads than the run's says so,
    and it is true (its weights differ from a resume with the run's threads, which is bitwise reproducible and says
    nothing of the kind)."""
    import torch

    folder, out = interrupted
    threads = torch.get_num_threads()
    if threads == 1:
        pytest.skip("one CPU thread: no fewer to resume with")
    copies = {name: tmp_path / name for name in ("same", "again", "fewer")}
    for copy in copies.values():
        shutil.copytree(out, copy)
    results = {}
    try:
        for name, copy in copies.items():
            torch.set_num_threads(threads - 1 if name == "fewer" else threads)
            results[name] = _resume(folder, copy)
    finally:
        torch.set_num_threads(threads)
    assert all(result.returncode == 0 for result in results.values()), results
    said = results["fewer"].stdout + results["fewer"].stderr
    assert f"CPU threads {threads - 1} here, {threads} in the run" in said and "last bits may differ" in said
    assert "computed differently" not in results["same"].stdout + results["same"].stderr

    def weights(run: Path) -> bytes:
        return (run / "checkpoints" / "step-4" / "model.safetensors").read_bytes()

    assert weights(copies["same"]) == weights(copies["again"]) != weights(copies["fewer"])


def test_a_home_or_a_cache_that_cannot_be_kept_stops_a_command_before_it_works(corpus, tmp_path):
    """pocketlm's home (POCKETLM_HOME: the key that signs checkpoints), datasets' cache (HF_DATASETS_CACHE) or the
    Hub's folder (HF_HOME) where no folder can be made (under a file here; a read-only home in a container): a run
    read and trained, then stopped at its first checkpoint with a traceback and nothing saved, or stopped in
    datasets' traceback (streams read through its cache too), and a Hub model was "could not fetch ...; check the
    repo id". Each stops first, set the way a user sets it, in one line naming the folder and the variable that
    moves it, and leaves no output folder."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")

    def train_into(name: str, *extra: str) -> list[str]:
        return [str(REPO_ROOT / "train.py"), f"--data={corpus}", f"--output-dir={tmp_path / name}", "--block-size=32",
                "--max-steps=2", "--samples=0", "--model-config=n_layer=1", *extra]

    cases = {"home": ("POCKETLM_HOME", train_into("home"), "cannot keep the key that signs checkpoints at"),
             "datasets": ("HF_DATASETS_CACHE", train_into("datasets"), "cannot keep datasets' cache at"),
             "datasets-streaming": ("HF_DATASETS_CACHE", train_into("datasets-streaming", "--streaming"),
                                    "cannot keep datasets' cache at"),
             "hub": ("HF_HOME", [str(REPO_ROOT / "chat.py"), "--model", "someone/model", "--prompt", "Hi"],
                     "cannot use the Hub's folder")}
    # Without HF_TOKEN (the suite's own, never sent), as most users run: huggingface_hub reads HF_HOME's token file.
    environment = {name: value for name, value in os.environ.items() if name != "HF_TOKEN"}
    processes = {name: subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={**environment, variable: str(blocked / "folder")})
                 for name, (variable, command, _) in cases.items()}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        variable, _, needle = cases[name]
        assert_one_line_error(subprocess.CompletedProcess([], process.returncode, stdout, stderr),
                              f"{needle} {blocked / 'folder'}", "(Not a directory)", f"set {variable}")
        assert not (tmp_path / name).exists(), name


def test_a_home_that_cannot_be_kept_is_said_in_one_line_by_every_command_that_keeps_something_there(
        trained, monkeypatch, tmp_path):
    """The caches in pocketlm's home: --runtime onnx's export, the web page's npm packages, a dataset object handed
    to the Python API. Each said nothing of the home (an error about an --output-dir no one passed, or a
    traceback); each now names its folder and POCKETLM_HOME, and writes nothing elsewhere."""
    import datasets

    from pocketlm.training import TrainingOptions, train

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setattr("pocketlm.onnx_runtime.EXPORT_CACHE", blocked / "onnx")
    monkeypatch.setattr("pocketlm.export.web.NPM_CACHE", blocked / "web")
    monkeypatch.setattr("pocketlm.data.reading.IN_MEMORY_DATASETS", blocked / "datasets")
    fix = "(Not a directory): set POCKETLM_HOME to a folder you can write"
    model = str(trained["transformer"])
    assert_one_line_error(run_entry(chat_main, "--model", model, "--runtime", "onnx", "--prompt", "Hi"),
                          f"cannot keep the ONNX export that --runtime onnx runs at {blocked / 'onnx'} {fix}")
    if shutil.which("npm"):  # without npm, the page says to install it first
        assert_one_line_error(run_entry(export_main, model, "--format", "web", "--output-dir", str(tmp_path / "web")),
                              f"cannot keep the web page's npm packages at {blocked / 'web'} {fix}")
    texts = datasets.Dataset.from_dict({"text": [make_text(seed, 3) for seed in range(30)]})
    with pytest.raises(UsageError, match=re.escape(f"the dataset handed to train() at {blocked / 'datasets'} {fix}")):
        train(TrainingOptions(dataset=texts, output_dir=str(tmp_path / "api"), max_steps=1, block_size=32, samples=0))
    assert not (tmp_path / "web").exists() and not (tmp_path / "api").exists()


def test_a_resume_by_other_pocketlm_code_says_its_last_bits_may_differ(interrupted, tmp_path):
    """An upgrade, or an edited checkout, between a kill and its resume continues the run with other code: the resume
    says so, and it is true. Resumed by copies of the project, one as it is (bitwise this checkout's resume,
    nothing said) and one whose model computes its last layer norm otherwise (other weights, and the note
    naming pocketlm's source, not its unchanged version number)."""
    from pocketlm import __version__
    from pocketlm.continuity import source_version

    folder, out = interrupted
    reference = tmp_path / "resumed-here"
    shutil.copytree(out, reference)
    assert _resume(folder, reference).returncode == 0
    copies = {name: tmp_path / f"{name}-project" for name in ("same", "edited")}
    for copy in copies.values():
        for package in ("pocketlm", "modeling", "tokenization"):
            shutil.copytree(REPO_ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO_ROOT / "train.py", copy)
    gpt = copies["edited"] / "modeling" / "gpt" / "modeling_gpt.py"
    before = "self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)"
    assert before in gpt.read_text()
    gpt.write_text(gpt.read_text().replace(before, before.replace("layer_norm_epsilon", "layer_norm_epsilon * 100")))
    runs, commands = {}, []
    for name, copy in copies.items():
        runs[name] = tmp_path / name
        shutil.copytree(out, runs[name])
        commands.append([sys.executable, str(copy / "train.py"), f"--data={folder}", f"--output-dir={runs[name]}",
                         "--resume", "--max-steps=4", "--samples=0"])
    same, edited = run_at_once(*commands, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert same.returncode == 0 and edited.returncode == 0, (same.stderr[-3000:], edited.stderr[-3000:])
    said = edited.stdout + edited.stderr
    assert f"pocketlm {__version__} (source " in said and f", {source_version()} in the run" in said, said[-3000:]
    assert "last bits may differ" in said
    assert "computed differently" not in same.stdout + same.stderr

    def weights(run: Path) -> bytes:
        return (run / "checkpoints" / "step-4" / "model.safetensors").read_bytes()

    assert weights(runs["same"]) == weights(reference) != weights(runs["edited"])


def test_an_accepted_learning_rate_is_the_one_the_resumed_steps_use(interrupted, tmp_path):
    folder, out = interrupted
    result = _resume(folder, out, "--lr=0.01", "--accept-changes")
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = _train(folder, tmp_path / "fresh", "--lr=0.01", "--max-steps=4")
    assert fresh.returncode == 0, fresh.stderr[-3000:]

    def lr_at_step_4(run: Path) -> float:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return next(r["lr"] for r in records if r.get("step") == 4 and "lr" in r)

    # The schedule of a run started with --lr 0.01, not the checkpoint's saved one.
    assert lr_at_step_4(out) == pytest.approx(lr_at_step_4(tmp_path / "fresh"), rel=1e-9)


def test_a_resume_past_a_torn_line_in_the_metrics_keeps_every_good_record(interrupted, caplog):
    folder, out = interrupted
    metrics = out / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"step": 2, "val_lo')  # a line cut short, as a full disk leaves it
    result = _resume(folder, out, "--eval-every=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert any("metrics.jsonl: skipped 1 damaged line" in r.getMessage() for r in caplog.records)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert records[: len(good.splitlines())] == [json.loads(line) for line in good.splitlines()]
    assert [r["step"] for r in records if "val_loss" in r][-2:] == [3, 4]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.writing"))  # records are written aside and renamed into place


def test_accept_changes_without_resume_is_refused(corpus, tmp_path):
    assert_one_line_error(_train(corpus, tmp_path / "out", "--accept-changes"), "--accept-changes", "add --resume")


@pytest.mark.parametrize("tampering", ["no manifest", "a pickle replaced", "a manifest from elsewhere",
                                       "the key made anew"])
def test_resume_refuses_checkpoints_pocketlm_did_not_write(tampering, corpus, tmp_path, monkeypatch):
    """A checkpoint pocketlm cannot vouch for is refused, nothing touched, and the line gives the two ways on; where
    this user's key is newer than the checkpoint (a cleaned ~/.cache), it says so, and the way that keeps the
    weights works."""
    out = tmp_path / "run"
    assert _train(corpus, out, "--max-steps=2", "--save-every=2", "--eval-every=2").returncode == 0
    checkpoint = out / "checkpoints" / "step-2"
    said = "its manifest was not signed by pocketlm for this user"
    if tampering == "no manifest":
        (checkpoint / "pocketlm-manifest.json").unlink()
        said = "it has no pocketlm manifest"
    elif tampering == "a pickle replaced":
        import pickle

        (checkpoint / "random_states_0.pkl").write_bytes(pickle.dumps({"not": "ours"}))
        said = "random_states_0.pkl is damaged, missing or was changed"
    elif tampering == "a manifest from elsewhere":
        manifest = json.loads((checkpoint / "pocketlm-manifest.json").read_text())
        manifest["hmac"] = "0" * 64
        (checkpoint / "pocketlm-manifest.json").write_text(json.dumps(manifest))
    else:
        monkeypatch.setattr("pocketlm.signing.KEY_FILE", tmp_path / "cleaned-home" / "checkpoint-key")
        said = "is newer than the checkpoint: the key it was signed with was removed, or POCKETLM_HOME points"
    before = snapshot(out)
    result = _train(corpus, out, "--resume", "--max-steps=4")
    way_on = f"--init-from {checkpoint} --output-dir NEW_FOLDER"
    assert_one_line_error(result, "no checkpoint pocketlm can trust", "pickles", said, "start over with --overwrite",
                          way_on)
    assert snapshot(out) == before
    if tampering == "the key made anew":
        kept = run_entry(train_main, f"--data={corpus}", f"--output-dir={tmp_path / 'new'}",
                         f"--init-from={checkpoint}", "--block-size=32", "--max-steps=1", "--samples=0")
        assert kept.returncode == 0, kept.stderr[-3000:]


# ---------------------------------------------------------------------------------------- optional extras


EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime", "gguf")  # setup.cfg's `export` extra


@pytest.mark.parametrize("missing, command, needles", [
    (EXPORT_PACKAGES, lambda m, out: (export_main, m["transformer"], "--format", "onnx", "--output-dir", out),
     ["--format onnx:", "onnx, onnxscript and onnxruntime are not installed"]),
    (["gguf"], lambda m, out: (export_main, m["transformer"], "--format", "all", "--output-dir", out),
     ["--format gguf:", "gguf is not installed"]),
    (["onnxscript"], lambda m, out: (export_main, m["transformer"], "--format", "web", "--output-dir", out),
     ["--format web:", "onnxscript is not installed"]),
    (EXPORT_PACKAGES, lambda m, out: (upload_main, m["transformer"], "--repo-id", "me/m", "--dry-run",
                                      "--formats", "onnx,gguf", "--output-dir", out),
     ["--formats onnx,gguf:", "onnx, onnxscript, onnxruntime and gguf are not installed"]),
    (["onnxruntime"], lambda m, out: (upload_main, m["lstm"], "--repo-id", "me/m", "--dry-run", "--static-space",
                                      "me/page", "--output-dir", out),
     ["--static-space:", "onnxruntime is not installed"]),
    (EXPORT_PACKAGES, lambda m, out: (chat_main, m["transformer"], "--runtime", "onnx", "--prompt", "Hi"),
     ["--runtime onnx:", "onnx, onnxscript and onnxruntime are not installed"]),
    (["gradio"], lambda m, out: (chat_main, m["lstm"], "--web"), ["--web:", "gradio is not installed"]),
    (["tensorboard"], lambda m, out: (train_main, f"--data={REPO_ROOT / 'README.md'}", f"--output-dir={out}",
                                      "--report-to=tensorboard", "--max-steps=1"),
     ["--report-to tensorboard:", "tensorboard is not installed"]),
], ids=["onnx", "gguf-in-all", "web", "upload-formats", "static-space", "runtime-onnx", "chat-web", "tensorboard"])
def test_a_command_that_needs_an_optional_extra_not_installed_names_it_in_one_line_and_writes_nothing(
        missing, command, needles, trained, tmp_path, monkeypatch):
    """A base install (the README's first command) lacks the optional extras: `export.py --format onnx` there
    stopped with a traceback ("No module named 'onnx'") after loading the model, and `--report-to tensorboard`
    named an install (`pip install 'pocketlm[tensorboard]'`) of a package the index does not hold. Each command
    names, in one line before any work, what is not installed and the extra that brings it, as the README installs
    the project."""
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: its import fails, find_spec finds none
    out = str(tmp_path / "out")
    extra = {"gradio": "web", "tensorboard": "tensorboard"}.get(missing[0], "export")
    main, *args = command({family: str(folder) for family, folder in trained.items()}, out)
    assert_one_line_error(run_entry(main, *args), *needles, f"the optional extra {extra}: pip install -e '.[{extra}]'")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------- kill points


def test_runs_killed_just_before_a_save_is_published_resume_to_identical_weights():
    """A short form of bench/kill_points.py (a kill before every change to the disk there): killed with a checkpoint
    written but not yet renamed into place, in the middle of removing the oldest checkpoint, with a tokenizer not
    yet renamed into the cache, and halfway through a finished run's removal of its own tokenizer (which a resume
    used to load, half gone, instead of the whole one beside the model).

    With strace (.ci/run installs it and sets POCKETLM_REQUIRE_STRACE=1) the bench also records every system call
    that writes a file, native code's included: each file but the lock and the metrics log must be written aside
    and renamed in (the summary, loss curve and run tokenizer once were not), and what was being written aside is
    left cut in half after the kill, as a kill in the middle of a native write leaves it."""
    wanted = (r"rename run:checkpoints/\.tmp-step-2 |remove run:checkpoints/step-1/model|rename home:tokenizers/"
              r"|remove run:\.tokenizer[^ ]*/tokenizer_config\.json")
    tear = ["--tear"] if shutil.which("strace") or os.environ.get("POCKETLM_REQUIRE_STRACE") else []
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "kill_points.py"), "--steps", "4",
                             "--matching", wanted, "--jobs", "2", *tear], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["trials"] == 4 and summary["bitwise identical to the uninterrupted run"] == 4
    assert all(said in result.stdout for said in ("resumed from step 1", "resumed from step 4", "started afresh"))
    if tear:
        assert summary["written in place and should not be"] == []
        # the checkpoint not yet renamed and the tokenizer not yet in the cache
        assert summary["trials with files torn before the resume"] == 2
