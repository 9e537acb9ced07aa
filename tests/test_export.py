"""export.py: each format proven in its own runtime with the same greedy tokens as the pocketlm model.

The stock GPT-2 loads in a process that cannot import pocketlm; the ONNX graphs run in onnxruntime from a process
that cannot import pocketlm either; the GGUF runs in llama.cpp itself (llama-cpp-python); `transformers serve`
answers the official OpenAI client.
"""

import contextlib
import copy
import ctypes
import json
import os
import re
import socket
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (COUNTS_RECURRENT_TOKENS, PROJECT_FREE_PRELUDE, REPO_ROOT, SAMPLE_TEXT, TINY_SHAPES,
                      assert_one_line_error, free_port, make_text, run_entry, train_tiny_models, with_decisive_weights)
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

from modeling import GPTConfig, GPTForCausalLM
from pocketlm.chat import ChatInterface
from pocketlm.choices import GGUF_BY_LLAMA_CPP
from pocketlm.cli import chat_main, compare_main, export_main, legacy_main, train_main, upload_main
from pocketlm.errors import UsageError
from pocketlm.export.gpt2 import from_gpt2
from pocketlm.loading import load_pretrained
from pocketlm.wording import listed
from tokenization import PLAIN_CHAT_TEMPLATE

PROMPTS = ["Hello!", "What is your favorite book?", "Tell me a joke about computers, please."]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    # Long enough that greedy decoding does not sit on near-ties: the same tokens mean something.
    return train_tiny_models(tmp_path_factory, "export", max_steps=60, eval_every=60)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict[str, Path]:
    """Every format of each family, written once through the command line."""
    folders = {}
    for family, model in trained.items():
        out = tmp_path_factory.mktemp(f"exported-{family}") / "all"
        result = run_entry(export_main, str(model), "--format", "all", "--output-dir", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        assert "trained on plain text" not in result.stdout  # a chat model's exports carry its template
        # Each format said as it starts, once (the page's own graph is not a second ONNX export).
        said = [line for line in result.stderr.splitlines() if line.startswith("writing ")]
        graphs, page = "writing the ONNX graphs, float32 and int8 ...", "writing the web page, its graph int8 ..."
        assert said == {"transformer": ["writing a stock transformers GPT-2 ...", graphs,
                                        f"writing {model.name}-f32.gguf ...", page],
                        "lstm": [graphs, page]}[family], result.stderr
        folders[family] = out
    return folders


def chat_prompt(tokenizer, text: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]


def greedy(model, prompts: list[list[int]], pad_id: int, new_tokens: int = NEW_TOKENS) -> list[list[int]]:
    """Greedy continuations of `prompts` decoded together as one left-padded batch through generate()."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, repetition_penalty=1.0, pad_token_id=pad_id)
    return out[:, width:].tolist()


def teacher_forced(model, prompt: list[int], continuation: list[int]) -> torch.Tensor:
    """The model's logits for each token of `continuation` in turn, read in one forward over prompt and
    continuation: what each step of a runtime's decoding must give, whatever its cache."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + continuation])).logits[0]
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(continuation)]


def run_without_pocketlm(script: str, tmp_path: Path) -> list:
    """Run `script` in a process that cannot import pocketlm; its last line of output, read as JSON."""
    code = PROJECT_FREE_PRELUDE.format(root=str(REPO_ROOT)) + textwrap.dedent(script)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- transformers


STOCK_GPT2 = """
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompts, new_tokens = {folder!r}, {prompts!r}, {new_tokens}
model = AutoModelForCausalLM.from_pretrained(folder).eval()  # no trust_remote_code
tokenizer = AutoTokenizer.from_pretrained(folder)
rendered = [tokenizer.apply_chat_template([{{"role": "user", "content": p}}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"] for p in prompts]
batch = tokenizer.pad({{"input_ids": rendered}}, return_tensors="pt")  # left padding, as the tokenizer says
out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                     repetition_penalty=1.0, output_logits=True, return_dict_in_generate=True)
single = model.generate(torch.tensor([rendered[0]]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                        do_sample=False, repetition_penalty=1.0)
with torch.no_grad():
    logits = model(torch.tensor([rendered[1]])).logits[0].tolist()
steps = torch.stack(out.logits, 1).tolist()  # each row's logits at each decoding step
print(json.dumps([type(model).__name__, model.config.model_type, rendered,
                  out.sequences[:, batch["input_ids"].shape[1]:].tolist(), single[0, len(rendered[0]):].tolist(),
                  model.generation_config.to_dict()["eos_token_id"], logits, steps]))
"""


def test_the_gpt_exports_as_a_stock_gpt2_that_decodes_the_same_greedy_tokens_without_pocketlm(trained, exported,
                                                                                          tmp_path):
    model, tokenizer = load_pretrained(str(trained["transformer"]))
    rendered = [chat_prompt(tokenizer, text) for text in PROMPTS]
    expected = greedy(model, rendered, tokenizer.pad_token_id)
    alone = greedy(model, rendered[:1], tokenizer.pad_token_id)[0]
    assert expected[0] == alone  # the padded batch decodes as the prompts do one by one
    script = STOCK_GPT2.format(folder=str(exported["transformer"]), prompts=PROMPTS, new_tokens=NEW_TOKENS)
    name, model_type, their_prompts, batch, single, eos, logits, steps = run_without_pocketlm(script, tmp_path)
    assert (name, model_type) == ("GPT2LMHeadModel", "gpt2")
    with torch.no_grad():
        assert (torch.tensor(logits) - model(torch.tensor([rendered[1]])).logits[0]).abs().max() < 1e-4
    assert their_prompts == rendered  # the same tokenizer and chat template
    assert batch == expected and single == alone
    for row, prompt in enumerate(rendered):  # each step's logits, padded rows included, not only its top token
        assert (torch.tensor(steps[row]) - teacher_forced(model, prompt, expected[row])).abs().max() < 1e-4, row
    assert sorted(eos) == sorted(model.generation_config.eos_token_id)  # it stops where a reply ends


STOCK_GPT2_AS_4X = """
import json, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
# transformers 4.x's tokenizers return token_type_ids too, unless the tokenizer names its inputs, and GPT-2 adds
# their embeddings to its input; 5.x dropped them from the default. Set back to 4.x's to read the export as it does.
transformers.PreTrainedTokenizerBase.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
folder, texts, new_tokens = {folder!r}, {texts!r}, {new_tokens}
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
batch = tokenizer(texts, padding=True, return_tensors="pt")  # everything it returns goes in, as users write it
out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                     repetition_penalty=1.0)
logits = model(**tokenizer(texts[1], return_tensors="pt")).logits[0].tolist()
print(json.dumps([sorted(batch.keys()), out[:, batch["input_ids"].shape[1]:].tolist(), logits]))
"""


def test_the_stock_gpt2_export_hands_gpt2_only_the_inputs_the_model_reads_as_transformers_4_reads_it(
        trained, exported, tmp_path):
    """Tools that run a GPT-2 folder often pin transformers 4.x (optimum's ONNX exporter and runtime, < 4.58). Its
    tokenizers returned token_type_ids as well, so `model.generate(**tokenizer(texts))` there added token 0's
    embedding at every position and decoded other tokens, and optimum refused them. The export's tokenizer names
    the two inputs the model reads (`bench/transformers_versions.py` runs it in 4.46.3 and 4.57.6 themselves)."""
    model, tokenizer = load_pretrained(str(trained["transformer"]))
    expected = greedy(model, [tokenizer(text).input_ids for text in PROMPTS], tokenizer.pad_token_id)
    script = STOCK_GPT2_AS_4X.format(folder=str(exported["transformer"]), texts=PROMPTS, new_tokens=NEW_TOKENS)
    names, batch, logits = run_without_pocketlm(script, tmp_path)
    with torch.no_grad():
        own = model(torch.tensor([tokenizer(PROMPTS[1]).input_ids])).logits[0]
    assert (torch.tensor(logits) - own).abs().max() < 1e-4, names  # the model's own predictions
    assert batch == expected and names == ["attention_mask", "input_ids"]


STOCK_GPT2_CLASSIFIER = """
import json, torch
from transformers import AutoTokenizer, GPT2ForSequenceClassification
folder, texts, head, labels = {folder!r}, {texts!r}, {head!r}, {labels!r}
model = GPT2ForSequenceClassification.from_pretrained(folder, num_labels=len(head)).eval()
with torch.no_grad():
    model.score.weight.copy_(torch.tensor(head))
tokenizer = AutoTokenizer.from_pretrained(folder)
scores = []
for side in ("left", "right"):
    tokenizer.padding_side = side
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    # GPT-2 counts positions from the row's first slot, padding or not; generate() passes them from the first real
    # token, as pocketlm's model counts them itself.
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(**batch, position_ids=positions, labels=torch.tensor(labels))
    scores.append([out.logits.tolist(), out.loss.item()])
print(json.dumps(scores))
"""


def test_a_trained_gpt_loads_as_a_classifier_that_scores_as_gpt2_s_own_does_on_its_export(trained, exported,
                                                                                         tmp_path):
    """AutoModelForSequenceClassification builds the classifier Trainer, TRL's RewardTrainer and PEFT fine-tune from
    a trained folder; the reference is transformers' GPT2ForSequenceClassification on the stock export, given the
    same head, in a process without pocketlm: the same scores and loss on padded batches, left or right."""
    from transformers import AutoModelForSequenceClassification

    texts = ["Hello!", "What is your favorite book?", "Tell me a joke about computers, please."]
    labels = [2, 0, 1]
    model = AutoModelForSequenceClassification.from_pretrained(str(trained["transformer"]), num_labels=3).eval()
    assert type(model).__name__ == "GPTForSequenceClassification"
    _, tokenizer = load_pretrained(str(trained["transformer"]))
    ours = []
    for side in ("left", "right"):
        tokenizer.padding_side = side
        with torch.no_grad():
            out = model(**tokenizer(texts, padding=True, return_tensors="pt"), labels=torch.tensor(labels))
        ours.append((out.logits, out.loss))
    with torch.no_grad():  # one text alone, unpadded: padding changes nothing
        alone = model(**tokenizer(texts[:1], return_tensors="pt")).logits
    torch.testing.assert_close(alone[0], ours[0][0][0], rtol=1e-4, atol=1e-5)
    script = STOCK_GPT2_CLASSIFIER.format(folder=str(exported["transformer"]), texts=texts,
                                          head=model.score.weight.tolist(), labels=labels)
    for (logits, loss), (their_logits, their_loss) in zip(ours, run_without_pocketlm(script, tmp_path)):
        torch.testing.assert_close(torch.tensor(their_logits), logits, rtol=1e-4, atol=1e-4)
        assert abs(their_loss - loss.item()) < 1e-4


def test_the_gpt_goes_through_transformers_torch_export_recipe_and_decodes_the_same_greedy_tokens(trained):
    """ExecuTorch's way in, transformers' TorchExportableModuleForDecoderOnlyLM (a static cache under torch.export),
    refused a trained model: its generation config left `use_cache` unset, which a built-in model's says."""
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    model, tokenizer = load_pretrained(str(trained["transformer"]))
    model.generation_config.cache_implementation = "static"  # the recipe's one ask, as of a built-in model
    graph = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=96).export(
        input_ids=torch.tensor([[tokenizer.eos_token_id]])).module()  # any one token: it takes one at a time
    rendered = [chat_prompt(tokenizer, text) for text in PROMPTS]
    expected = greedy(model, rendered, tokenizer.pad_token_id)
    ends = model.generation_config.eos_token_id  # which greedy()'s min_new_tokens holds back
    for prompt, tokens in zip(rendered, expected):
        # As ExecuTorch's runner feeds it: a token and its position per call. (The recipe's own generate() feeds
        # the prompt's last token twice, so it does not decode as generate() does, for GPT-2 either.)
        ids = prompt + []
        for position, token in enumerate(prompt):
            logits = graph(input_ids=torch.tensor([[token]]), cache_position=torch.tensor([position]))
        while len(ids) < len(prompt) + NEW_TOKENS:
            ids.append(int(logits.reshape(-1).index_fill(0, torch.tensor(ends), -torch.inf).argmax()))
            logits = graph(input_ids=torch.tensor([ids[-1:]]), cache_position=torch.tensor([len(ids) - 1]))
        assert ids[len(prompt):] == tokens


def test_an_lstm_asked_for_a_format_it_lacks_is_refused_in_one_line_naming_the_ones_it_has(trained, tmp_path):
    for format_name in ("transformers", "gguf", "onnx,gguf"):
        result = run_entry(export_main, str(trained["lstm"]), "--format", format_name, "--output-dir",
                           str(tmp_path / "out"))
        assert_one_line_error(result, "cannot be exported as", "choose onnx, web or all")
    assert not (tmp_path / "out").exists()
    assert_one_line_error(run_entry(export_main, str(trained["lstm"]), "--format", "tflite"), "unknown format")
    for nothing, needle in ((",", "no format named: choose onnx, web or all"), (" , ", "no format named"),
                            ("", "--format was given an empty value")):  # an empty folder would read as done
        result = run_entry(export_main, str(trained["lstm"]), "--format", nothing, "--output-dir",
                           str(tmp_path / "out"))
        assert_one_line_error(result, needle)
    assert not (tmp_path / "out").exists()


def test_a_format_named_twice_is_written_once_into_the_default_folder_beside_the_model(trained, tmp_path,
                                                                                       monkeypatch):
    """`--format onnx,ONNX` named the default folder `MODEL-onnx-onnx`; and the default folder went into the
    folder the user was in, not beside the model its name reads as (`<MODEL>-<format>`), as an upload's does."""
    model = tmp_path / "models" / "mine"
    shutil.copytree(trained["lstm"], model)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run_entry(export_main, str(model), "--format", "onnx,ONNX")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in model.parent.iterdir()) == ["mine", "mine-onnx"]
    assert not any(elsewhere.iterdir())
    assert result.stdout.startswith(f"wrote {model.parent / 'mine-onnx'} ")
    # From inside the model's folder, `.` is the model: its export goes beside it, named after it.
    monkeypatch.chdir(model)
    assert run_entry(export_main, ".", "--format", "web").returncode == 0
    assert sorted(path.name for path in model.parent.iterdir()) == ["mine", "mine-onnx", "mine-web"]
    # From the folder above, the path printed is the one to type.
    monkeypatch.chdir(tmp_path)
    result = run_entry(export_main, "models/mine/", "--format", "onnx")
    assert_one_line_error(result, "models/mine-onnx already exists")


def test_an_existing_output_folder_is_kept_unless_overwrite_and_a_failed_export_leaves_nothing(trained, tmp_path,
                                                                                              monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    lstm = str(trained["lstm"])
    assert_one_line_error(run_entry(export_main, lstm, "--format", "onnx", "--output-dir", str(out)),
                          "already exists", "--overwrite")
    # --overwrite replaces an export, never a folder of the user's own files.
    assert_one_line_error(run_entry(export_main, lstm, "--format", "onnx", "--output-dir", str(out), "--overwrite"),
                          "holds files it did not write (mine.txt)", "nothing there was touched")
    assert (out / "mine.txt").read_text() == "keep me"
    (out / "mine.txt").unlink()
    # An empty folder is fine; a format's name is read as llama.cpp's and ONNX's own docs write it, too.
    assert run_entry(export_main, lstm, "--format", " ONNX", "--output-dir", str(out)).returncode == 0
    assert (out / "onnx" / "model.onnx").is_file()
    first = sorted(str(p.relative_to(out)) for p in out.rglob("*"))

    from pocketlm.export import onnx as onnx_export

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export, "quantize", full_disk)  # fails halfway, after the float32 graph
    result = run_entry(export_main, lstm, "--format", "onnx", "--output-dir", str(out), "--overwrite")
    assert_one_line_error(result, "no space left", "free some space and export again")  # export.py has no --resume
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == first  # the old export stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # and nothing half-written beside it
    monkeypatch.undo()
    # An earlier export is replaced whole (the page where the graphs were), but not once the user adds a file.
    assert run_entry(export_main, lstm, "--format", "web", "--output-dir", str(out), "--overwrite").returncode == 0
    assert not (out / "onnx").exists() and (out / "index.html").exists()
    (out / "notes").mkdir()
    (out / "notes" / "deploy.md").write_text("how I host it")
    assert_one_line_error(run_entry(export_main, lstm, "--format", "onnx", "--output-dir", str(out), "--overwrite"),
                          "holds files it did not write (notes/deploy.md)")
    assert (out / "notes" / "deploy.md").exists() and (out / "index.html").exists()
    (tmp_path / "a-file").write_text("keep me")
    assert_one_line_error(run_entry(export_main, lstm, "--format", "onnx", "--output-dir", str(tmp_path / "a-file"),
                                    "--overwrite"), "is a file: choose a folder")
    assert (tmp_path / "a-file").read_text() == "keep me"


def test_an_export_never_replaces_the_model_it_reads_or_the_folder_the_user_is_in(trained, tmp_path, monkeypatch):
    """--overwrite replaces the export's folder whole: asked for `.`, or a folder holding the model, it removed
    the model itself (or, for `.` without --overwrite, ended in a traceback)."""
    project = tmp_path / "project"
    shutil.copytree(trained["lstm"], project / "model")
    (project / "notes.txt").write_text("keep me")
    before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    monkeypatch.chdir(project)
    for output, needle in ((".", "holds the model being exported"), ("model", "holds the model being exported"),
                           (str(tmp_path), "holds the model being exported")):
        for extra in ([], ["--overwrite"]):
            result = run_entry(export_main, "model", "--format", "onnx", "--output-dir", output, *extra)
            assert_one_line_error(result, f"--output-dir {output} {needle}")
    monkeypatch.chdir(project / "model")  # the model elsewhere, the output the folder the user is in
    result = run_entry(export_main, str(trained["lstm"]), "--format", "onnx", "--output-dir", ".", "--overwrite")
    assert_one_line_error(result, "--output-dir . is the folder you are in")
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == before


def test_main_py_exports_too(trained, tmp_path, monkeypatch):
    out = tmp_path / "legacy"
    result = run_entry(legacy_main, "--export", str(trained["transformer"]), "--format", "transformers",
                       "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    # Without MODEL, the one --model-type and --model-size pick, as main.py --chat does: repeating the training's
    # flags was refused, 'unknown option --model-size'.
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_entry(legacy_main, "--export", "--model-type", "transformer", "--model-size", "medium"),
                          "no trained model in models/transformer-medium: name one (main.py --export MODEL), or train "
                          "one with: python main.py --train --model-type transformer --model-size medium")
    shutil.copytree(trained["transformer"], tmp_path / "models" / "transformer-medium")
    result = run_entry(legacy_main, "--export", "--model-type", "transformer", "--model-size", "medium", "--format",
                       "transformers")
    assert result.returncode == 0 and "wrote models/transformer-medium-transformers (" in result.stdout, result.stderr
    assert json.loads((tmp_path / "models" / "transformer-medium-transformers" / "config.json").read_text()) == \
        json.loads((out / "config.json").read_text())
    for args, other in (([str(out)], "MODEL"), (["--model-type", "lstm"], "--model-type lstm")):
        assert_one_line_error(run_entry(legacy_main, "--export", *args, "--model-size", "large"),
                              f"--model-size large picks models/transformer-large, but {other} names another model")


# ------------------------------------------------------------------------------------------------------ ONNX


ONNX_GREEDY = """
import json, numpy as np, onnxruntime
folder, prompt, new_tokens, family = {folder!r}, {prompt!r}, {new_tokens}, {family!r}
config = json.load(open(folder + "/config.json"))
results = {{}}
for graph in ("model.onnx", "model_quantized.onnx"):
    session = onnxruntime.InferenceSession(folder + "/onnx/" + graph)
    names = [value.name for value in session.get_inputs()], [value.name for value in session.get_outputs()]
    if family == "transformer":
        heads, width = config["n_head"], config["n_embd"] // config["n_head"]
        past = {{f"past_key_values.{{i}}.{{k}}": np.zeros((1, heads, 0, width), np.float32)
                for i in range(config["n_layer"]) for k in ("key", "value")}}
        feed = {{"input_ids": np.array([prompt]), "attention_mask": np.ones((1, len(prompt)), np.int64),
                "position_ids": np.arange(len(prompt))[None], **past}}
    else:
        state = np.zeros((config["num_layers"], 1, config["hidden_size"]), np.float32)
        feed = {{"input_ids": np.array([prompt]), "h": state, "c": state}}
    tokens, first_logits, steps, total = [], None, [], len(prompt)
    for step in range(new_tokens):
        out = session.run(None, feed)
        first_logits = out[0][0].tolist() if first_logits is None else first_logits
        steps.append(out[0][0, -1].tolist())  # each decoding step's, through the cache or the state
        token = int(out[0][0, -1].argmax())
        tokens.append(token)
        total += 1
        if family == "transformer":
            feed = {{"input_ids": np.array([[token]]), "attention_mask": np.ones((1, total), np.int64),
                    "position_ids": np.array([[total - 1]]),
                    **{{f"past_key_values.{{i}}.{{k}}": out[1 + 2 * i + j]
                       for i in range(config["n_layer"]) for j, k in enumerate(("key", "value"))}}}}
        else:
            feed = {{"input_ids": np.array([[token]]), "h": out[1], "c": out[2]}}
    results[graph] = {{"names": names, "tokens": tokens, "logits": first_logits, "steps": steps}}
print(json.dumps(results))
"""


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_onnx_graphs_decode_the_same_greedy_tokens_in_onnxruntime(family, trained, exported, tmp_path):
    model, tokenizer = load_pretrained(str(trained[family]))
    prompt = chat_prompt(tokenizer, PROMPTS[1])
    expected = greedy(model, [prompt], tokenizer.pad_token_id)[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0]
    script = ONNX_GREEDY.format(folder=str(exported[family]), prompt=prompt, new_tokens=NEW_TOKENS, family=family)
    results = run_without_pocketlm(script, tmp_path)
    float32, int8 = results["model.onnx"], results["model_quantized.onnx"]
    assert float32["tokens"] == expected
    assert (torch.tensor(float32["logits"]) - logits).abs().max() < 1e-4
    # Every decoding step's logits, not only its top token: a tiny model's greedy reply repeats a token or two,
    # which a cache or state read wrongly could still pick.
    assert (torch.tensor(float32["steps"]) - teacher_forced(model, prompt, expected)).abs().max() < 1e-4
    # int8 weights stray; how far is measured in BENCHMARKS.md (bench/runtimes.py): here, that it still predicts.
    agree = (torch.tensor(int8["logits"]).argmax(-1) == logits.argmax(-1)).float().mean()
    assert agree > 0.8, agree
    inputs, outputs = float32["names"]
    if family == "transformer":
        layers = model.config.n_layer
        assert inputs == ["input_ids", "attention_mask", "position_ids",
                          *[f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")]]
        assert outputs == ["logits", *[f"present.{i}.{k}" for i in range(layers) for k in ("key", "value")]]
        assert json.loads((exported[family] / "config.json").read_text())["model_type"] == "gpt2"
    else:
        assert (inputs, outputs) == (["input_ids", "h", "c"], ["logits", "h_out", "c_out"])


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_chat_on_the_onnx_runtime_replies_as_pytorch_does_under_one_seed(family, trained, monkeypatch, tmp_path):
    """Seeded before loading, as `chat.py --seed` seeds: the first ONNX run, which exports, drew from the seeded
    stream and replied otherwise than every later one, which reads the cache."""
    monkeypatch.setattr("pocketlm.onnx_runtime.EXPORT_CACHE", tmp_path / "cache")
    replies = []
    for runtime in ("torch", "onnx", "onnx"):  # the first ONNX chat exports, the second finds the export cached
        torch.manual_seed(5)
        chat = ChatInterface(str(trained[family]), runtime=runtime, max_new_tokens=20)
        replies.append([chat.reply(text) for text in PROMPTS[:2]])  # sampled, with the chat's settings
    assert replies[0] == replies[1] == replies[2]
    assert type(chat.model).__name__ == "OnnxCausalLM" and len(list((tmp_path / "cache").iterdir())) == 1


def test_the_onnx_runtime_exports_again_for_other_pocketlm_code(trained, monkeypatch, tmp_path):
    """--runtime onnx kept its export under a digest of the model's files alone: after an upgrade, or an edit, of
    the code that traces and runs the graphs, it ran the graphs the older code had traced. The key holds a digest of
    pocketlm's source too. The stand-in for an older trace is the graphs of a model of other weights. (One key for
    both families: the LSTM, whose export takes a second where the GPT's takes three, stands for both.)"""
    from pocketlm import sources

    monkeypatch.setattr("pocketlm.onnx_runtime.EXPORT_CACHE", tmp_path / "cache")
    folder = trained["lstm"]
    model, tokenizer = load_pretrained(str(folder))
    ids = torch.tensor([tokenizer("To be, or not to be")["input_ids"]])
    with torch.no_grad():
        expected = model(ids).logits

    def onnx_logits() -> tuple[torch.Tensor, Path]:
        onnx_model, _ = load_pretrained(str(folder), runtime="onnx")
        with torch.no_grad():
            return onnx_model(ids).logits, onnx_model.graph_file.parent.parent

    first, cached = onnx_logits()
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-4)
    other, _ = load_pretrained(str(with_decisive_weights(folder, tmp_path / "other")), runtime="onnx")
    shutil.rmtree(cached / "onnx")
    shutil.copytree(other.graph_file.parent, cached / "onnx")
    served, exported = onnx_logits()
    assert exported == cached and not torch.allclose(served, expected, atol=1e-2)  # the same code reads its cache
    monkeypatch.setattr(sources, "source_digest", lambda *folders: "an upgraded pocketlm's")
    again, exported = onnx_logits()
    assert exported != cached
    torch.testing.assert_close(again, expected, rtol=1e-4, atol=1e-4)


def test_chat_and_compare_run_the_stock_gpt2_export_as_its_model_and_the_other_tools_name_the_model(trained, exported,
                                                                                                 tmp_path):
    """export.py's GPT-2 folder was "a 'gpt2' model, not a pocketlm transformer or lstm" to chat and compare, the
    two tools that check an export is the model it came from; the tools that need the model itself say which."""
    replies = {}
    for name, folder in (("model", trained["transformer"]), ("export", exported["transformer"])):
        chat = ChatInterface(str(folder), max_new_tokens=20)
        torch.manual_seed(5)
        replies[name] = [chat.reply(text) for text in PROMPTS[:2]]  # sampled, with the chat's settings
        assert type(chat.model).__name__ == {"model": "GPTForCausalLM", "export": "GPT2LMHeadModel"}[name]
    assert replies["export"] == replies["model"]
    report = tmp_path / "comparison.md"
    result = run_entry(compare_main, str(trained["transformer"]), str(exported["transformer"]), "--output",
                       str(report), "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|") for line in report.read_text().splitlines() if line.startswith("| ") and "bits" not in line]
    assert len(rows) == 2 and rows[0][5] == rows[1][5]  # bits/char on the model's own validation text, equal
    assert [row[2].strip() for row in rows] == ["transformer", "transformer, stock GPT-2 export"]
    for family, folder in exported.items():
        origin = trained[family].resolve()
        needle = f"is export.py's {'transformers, onnx, gguf, web' if family == 'transformer' else 'onnx, web'} export "
        tools = [(export_main, [str(folder), "--format", "onnx", "--output-dir", str(tmp_path / "again")]),
                 (upload_main, [str(folder), "--repo-id", "me/m", "--dry-run", "--output-dir", str(tmp_path / "hub")])]
        if family == "lstm":  # the GPT's export holds a stock GPT-2, which --init-from takes as any other
            tools.append((train_main, ["--init-from", str(folder), "--output-dir", str(tmp_path / "tuned")]))
        for main, args in tools:
            assert_one_line_error(run_entry(main, *args), needle,
                                  f"of {origin}, for other runtimes: use {origin} itself")
    assert not any((tmp_path / name).exists() for name in ("again", "hub", "tuned"))


def test_a_part_of_what_pocketlm_wrote_given_for_a_model_is_named_with_the_folder_to_pass(trained, exported,
                                                                                          tmp_path):
    """A run's checkpoints/, an export's onnx/ or its web page were "no model: point at a folder train.py wrote",
    a graph in onnx/ "a file: point at a folder train.py wrote", and the web page's own model folder "incomplete:
    train it again" (chat) or "a stock GPT-2 that chat.py runs" (the others): each tool names what it was given and
    the folder to pass, and writes nothing."""
    run, export = trained["transformer"], exported["transformer"]
    newest = max((run / "checkpoints").glob("step-*"), key=lambda path: int(path.name[5:]))
    page = export / "web"
    cases = {
        run / "checkpoints": f"holds a run's checkpoints: pass the run, {run}, or one checkpoint, {newest} (the newest)",
        newest / "model.safetensors": f"is a file, not a model folder: pass its folder, {newest}",
        export / "onnx": f"is a folder inside {export}, which holds the model: pass {export}",
        export / "onnx" / "model.onnx": f"is a file, not a model folder: pass its folder, {export}",
        page: f"is export.py's web page, which runs the model in a browser (python -m http.server -d {page}): the "
              f"tools here take {run.resolve()}",
        page / "model": f"is the model of export.py's web page in {page}, which runs the model in a browser",
    }
    for given, needle in cases.items():
        for main, args in ((chat_main, ["--model", str(given), "--prompt", "Hi"]),
                           (compare_main, [str(given), "--output", str(tmp_path / "c.md")]),
                           (export_main, [str(given), "--format", "onnx", "--output-dir", str(tmp_path / "out")]),
                           (upload_main, [str(given), "--repo-id", "me/m", "--dry-run", "--output-dir",
                                          str(tmp_path / "hub")]),
                           (train_main, ["--init-from", str(given), "--output-dir", str(tmp_path / "tuned"),
                                         "--max-steps", "1"])):
            assert_one_line_error(run_entry(main, *args), f"{given} {needle}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_compare_runs_an_export_of_onnx_graphs_in_onnxruntime_as_its_model(family, trained, exported, tmp_path):
    """`compare.py MODEL ONNX-EXPORT`, the check of an export a user reaches for, refused the export with "add
    --runtime onnx", a flag compare.py does not have; a web page's export was "no model (no config.json)"."""
    graphs = exported[family]
    if family == "transformer":  # its `all` export holds a stock GPT-2, which runs in torch: the ONNX export alone
        graphs = tmp_path / "onnx"
        assert run_entry(export_main, str(trained[family]), "--format", "onnx", "--output-dir", str(graphs)
                         ).returncode == 0
    report = tmp_path / "comparison.md"
    result = run_entry(compare_main, str(trained[family]), str(graphs), "--output", str(report),
                       "--max-new-tokens", "12")
    assert result.returncode == 0, result.stderr[-2000:]
    text = report.read_text()
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ") and "bits" not in line]
    assert [row[2].strip() for row in rows] == [family, f"{family}, ONNX export in onnxruntime"]
    assert rows[0][3] == rows[1][3] and rows[0][5] == rows[1][5]  # the same parameters; bits/char to 3 decimals
    assert float(rows[1][4].split("kB")[0].split("MB")[0]) > 0  # the graph's bytes, where the weights are
    replies = re.findall(r"^- `[^`]+`: (.*)$", text, flags=re.M)
    assert len(replies) == 6 and replies[0::2] == replies[1::2]  # the same sampled replies under one seed
    page = tmp_path / "page"
    assert run_entry(export_main, str(trained[family]), "--format", "web", "--output-dir", str(page)).returncode == 0
    for main in (compare_main, chat_main):
        assert_one_line_error(run_entry(main, str(page), *(["--prompt", "hi"] if main is chat_main else [])),
                              f"is export.py's web export of {trained[family].resolve()}, for other runtimes")


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_chat_on_the_onnx_runtime_runs_an_export_s_own_graphs(family, trained, exported, monkeypatch, tmp_path):
    """`chat.py --model EXPORT --runtime onnx` refused the folder export.py had just written its graphs into."""
    monkeypatch.setattr("pocketlm.onnx_runtime.EXPORT_CACHE", tmp_path / "cache")
    replies = {}
    for name, folder, runtime in (("model", trained[family], "torch"), ("export", exported[family], "onnx")):
        chat = ChatInterface(str(folder), runtime=runtime, max_new_tokens=20)
        torch.manual_seed(5)
        replies[name] = [chat.reply(text) for text in PROMPTS[:2]]
    assert replies["export"] == replies["model"]
    assert chat.model.folder == exported[family] and not (tmp_path / "cache").exists()  # nothing exported again
    if family == "lstm":  # ONNX graphs only: chat.py runs them without --runtime (it told the user to add one),
        # as compare.py does; the torch runtime, asked for, says what runs them, not that weights are missing.
        replies = [run_entry(chat_main, str(folder), "--prompt", PROMPTS[0], "--seed", "5", "--max-new-tokens", "12")
                   for folder in (trained["lstm"], exported["lstm"])]
        assert replies[0].returncode == 0 and replies[0].stdout == replies[1].stdout, replies
        assert type(ChatInterface(str(exported["lstm"])).model).__name__ == "OnnxCausalLM"  # and from Python
        assert_one_line_error(run_entry(chat_main, "--model", str(exported["lstm"]), "--prompt", "hi", "--runtime",
                                        "torch"),
                              f"holds export.py's ONNX graphs of {trained['lstm'].resolve()}, no weights for torch: "
                              "run them in onnxruntime (--runtime onnx, runtime='onnx' from Python)")
        with pytest.raises(UsageError, match="runtime='onnx' from Python"):
            load_pretrained(exported["lstm"])
        assert type(load_pretrained(exported["lstm"], runtime="onnx")[0]).__name__ == "OnnxCausalLM"


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_the_onnx_runtime_goes_on_from_the_cache_it_returned_as_one_generation(family, exported):
    """generate() continued from the sequences and the cache it returned (transformers' way to go on with a
    conversation) reads only the new tokens: the ONNX LSTM's state counts what it has read, as the PyTorch one's."""
    if family == "lstm" and not COUNTS_RECURRENT_TOKENS:
        pytest.skip("transformers 5.24 keeps no token count for a recurrent state")
    model, tokenizer = load_pretrained(exported[family], runtime="onnx")
    prompt = torch.tensor([chat_prompt(tokenizer, PROMPTS[1])])
    options = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id, "return_dict_in_generate": True,
               "output_logits": True}
    whole = model.generate(prompt, max_new_tokens=10, min_new_tokens=10, **options)  # no stop at end of turn
    first = model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **options)
    second = model.generate(first.sequences, cache=first.cache, max_new_tokens=6, min_new_tokens=6, **options)
    assert second.sequences.tolist() == whole.sequences.tolist()
    torch.testing.assert_close(torch.stack(first.logits + second.logits), torch.stack(whole.logits))


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_the_onnx_runtime_decodes_a_left_padded_batch_as_the_pytorch_model_does(family, trained, monkeypatch,
                                                                                 tmp_path):
    """The ONNX LSTM refused a padded batch ("reads unpadded batches only"), so beam search and batched prompts
    needed the PyTorch model; it reads padding as that one does now, its state unchanged through a row's padding.
    Greedy, beam search and seeded sampling of several sequences each, on weights that decide (tokens that vary)."""
    monkeypatch.setattr("pocketlm.onnx_runtime.EXPORT_CACHE", tmp_path / "cache")
    folder = str(with_decisive_weights(trained[family], tmp_path / "model"))
    models = [load_pretrained(folder, runtime=runtime)[0] for runtime in ("torch", "onnx")]
    tokenizer = load_pretrained(folder)[1]
    batch = tokenizer(["To be, or not to be", "a", "that is the question"], return_tensors="pt", padding=True)
    assert not batch["attention_mask"].all()
    with torch.no_grad():
        torch_logits, onnx_logits = (model(**batch).logits for model in models)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(onnx_logits[real], torch_logits[real], rtol=1e-4, atol=1e-4)
    for options in ({"do_sample": False}, {"num_beams": 3, "num_return_sequences": 2, "do_sample": False},
                    {"do_sample": True, "num_return_sequences": 2, "top_k": 5}):
        decoded = []
        for model in models:
            torch.manual_seed(0)
            decoded.append(model.generate(**batch, max_new_tokens=12, min_new_tokens=12,
                                          pad_token_id=tokenizer.pad_token_id, **options))
        assert decoded[0].tolist() == decoded[1].tolist(), options
        assert len(set(decoded[0][0, -12:].tolist())) > 3  # tokens that vary: a comparison that can fail


# ------------------------------------------------------------------------------------------------------ GGUF


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        if os.environ.get("POCKETLM_REQUIRE_LLAMA_CPP"):
            raise
        pytest.skip("llama-cpp-python is not installed: it is source-only on PyPI (a ~10-minute C++ build); "
                    ".ci/run installs the prebuilt wheel from ../shared/wheels/")
    return llama_cpp


PROBES = ["Hello!", "héllo wörld 日本語 🤖", "tabs\tand  double  spaces\r\nand CRLF", "don't it's we'll 1234567",
          "<|user|>Hi!<|end|><|assistant|>", "   leading spaces", ""]


def test_a_lora_adapter_chats_compares_exports_and_trains_as_the_model_it_merges_into(trained, tmp_path, monkeypatch):
    """What README's PEFT example saves, a folder holding only an adapter, was "no model (no config.json)" to every
    tool. Chat, compare and export now merge it into the model it was trained on (its adapter_config.json says
    which): the stock GPT-2 export decodes the adapted model's greedy tokens without pocketlm, and chat and compare
    give what the merged model saved as a folder gives, and training from it what training from that folder gives.
    The upload, which publishes a model folder's files, says how to merge."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_pretrained(str(trained["transformer"]))
    rendered = [chat_prompt(tokenizer, text) for text in PROMPTS]
    before = greedy(model, rendered, tokenizer.pad_token_id)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                                            task_type="CAUSAL_LM"))
    taught = torch.tensor([rendered[0] + tokenizer("fortune fortune fortune")["input_ids"]])
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    lora.train()
    for _ in range(30):
        lora(input_ids=taught, labels=taught).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lora.eval()
    lora.save_pretrained(tmp_path / "adapter")  # names the model folder it was loaded from as its base
    merged = lora.merge_and_unload()
    expected = greedy(merged, rendered, tokenizer.pad_token_id)
    assert expected != before  # the adapter changes what the model says
    merged.save_pretrained(tmp_path / "merged")  # the merge the refusals below describe, with the tokenizer
    tokenizer.save_pretrained(tmp_path / "merged")

    loaded, _ = load_pretrained(str(tmp_path / "adapter"))
    assert greedy(loaded, rendered, tokenizer.pad_token_id) == expected
    out = tmp_path / "export"
    result = run_entry(export_main, str(tmp_path / "adapter"), "--format", "transformers", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    script = STOCK_GPT2.format(folder=str(out), prompts=PROMPTS, new_tokens=NEW_TOKENS)
    assert run_without_pocketlm(script, tmp_path)[3] == expected

    monkeypatch.setattr("pocketlm.onnx_runtime.EXPORT_CACHE", tmp_path / "cache")
    replies = {}
    for name in ("adapter", "merged"):
        chat = ChatInterface(str(tmp_path / name), max_new_tokens=20)
        torch.manual_seed(5)
        replies[name] = [chat.reply(text) for text in PROMPTS[:2]]  # sampled, with the chat's settings
    chat = ChatInterface(str(tmp_path / "adapter"), runtime="onnx", max_new_tokens=20)  # merged, then exported
    torch.manual_seed(5)
    replies["onnx"] = [chat.reply(text) for text in PROMPTS[:2]]
    assert replies["adapter"] == replies["merged"] == replies["onnx"]
    report = tmp_path / "comparison.md"
    result = run_entry(compare_main, str(tmp_path / "adapter"), str(tmp_path / "merged"), "--output", str(report),
                       "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|") for line in report.read_text().splitlines() if line.startswith("| ") and "bits" not in line]
    assert len(rows) == 2 and rows[0][5] == rows[1][5]  # bits/char, equal
    assert [row[2].strip() for row in rows] == ["transformer, PEFT adapter", "transformer"]

    # Training goes on from the adapter as from its merge saved as a model folder: every weight, bitwise. It failed
    # first as "holds a PEFT adapter" (refused), then with "does not require grad" (PEFT had frozen the model's
    # weights), then in other weights (PEFT drew the adapter's layers from the run's seeded random stream).
    weights = {}
    for name in ("adapter", "merged"):
        result = run_entry(train_main, "--init-from", str(tmp_path / name), "--output-dir", str(tmp_path / f"t-{name}"),
                           "--max-steps", "3", "--samples", "0", "--seed", "3")
        assert result.returncode == 0, result.stderr[-3000:]
        weights[name] = load_file(tmp_path / f"t-{name}" / "model.safetensors")
    assert weights["adapter"].keys() == weights["merged"].keys()
    assert all(torch.equal(weights["adapter"][key], weights["merged"][key]) for key in weights["adapter"])
    started = load_file(tmp_path / "merged" / "model.safetensors")
    assert all(not torch.equal(started[key], weights["adapter"][key]) for key in started)  # each one trained

    result = run_entry(upload_main, str(tmp_path / "adapter"), "--repo-id", "me/m", "--dry-run", "--output-dir",
                       str(tmp_path / "hub"))
    assert_one_line_error(result, "holds a PEFT adapter, not a model: merge it into its model",
                          "save_pretrained(FOLDER)")
    assert not (tmp_path / "hub").exists()


def test_a_classifier_or_an_adapter_the_tools_cannot_run_is_refused_in_one_line(trained, tmp_path):
    """A reward model or classifier: the GPT's loaded as a language model in silence (its head is the embedding),
    the LSTM's was "weights that do not fit" its config."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    for family, model in trained.items():
        classifier = AutoModelForSequenceClassification.from_pretrained(str(model), num_labels=1)
        classifier.save_pretrained(tmp_path / f"reward-{family}")
        load_pretrained(str(model))[1].save_pretrained(tmp_path / f"reward-{family}")
    get_peft_model(classifier, LoraConfig(r=2, target_modules=["embed_tokens"], task_type="SEQ_CLS")).save_pretrained(
        tmp_path / "reward-adapter")
    adapter_config = json.loads((tmp_path / "reward-adapter" / "adapter_config.json").read_text())
    (tmp_path / "orphan").mkdir()
    (tmp_path / "orphan" / "adapter_config.json").write_text(json.dumps({**adapter_config, "task_type": "CAUSAL_LM",
                                                                         "base_model_name_or_path": None}))
    cases = {"reward-transformer": "holds a GPTForSequenceClassification (a classifier or reward model), not a "
                                   "language model: load it with AutoModelForSequenceClassification",
             "reward-lstm": "holds a LSTMForSequenceClassification (a classifier or reward model)",
             "reward-adapter": "holds a PEFT adapter for a SEQ_CLS model, not a language model",
             "orphan": "holds a PEFT adapter naming no model it was trained on: set base_model_name_or_path"}
    for name, needle in cases.items():
        for main, args in ((chat_main, ["--model", str(tmp_path / name), "--prompt", "Hi"]),
                           (export_main, [str(tmp_path / name), "--format", "onnx", "--output-dir",
                                          str(tmp_path / "out")])):
            assert_one_line_error(run_entry(main, *args), needle)
    assert not (tmp_path / "out").exists()


def test_the_gguf_file_runs_in_llama_cpp_with_our_tokens_and_our_greedy_decoding(trained, exported):
    llama_cpp = _llama_cpp()
    model, tokenizer = load_pretrained(str(trained["transformer"]))
    gguf = next(exported["transformer"].glob("*.gguf"))
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=model.config.block_size, logits_all=True, verbose=False,
                          n_threads=2)
    try:
        for text in PROBES:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text)["input_ids"], text
        prompt = chat_prompt(tokenizer, PROMPTS[1])
        assert_llama_cpp_decodes(llm, model, prompt, greedy(model, [prompt], tokenizer.pad_token_id)[0])
        assert llm.metadata["tokenizer.chat_template"] and llm.metadata["general.architecture"] == "gpt2"
    finally:
        llm.close()


TRANSFORMERS_GGUF = """
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, name, context = {folder!r}, {name!r}, {context}
probes, prompt, new_tokens = {probes!r}, {prompt!r}, {new_tokens}
try:  # transformers reads GGUF's context_length into n_ctx, a field GPT2Config no longer has (README)
    AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    without_positions = "loaded"
except RuntimeError as error:
    without_positions = str(error)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, n_positions=context).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                     repetition_penalty=1.0, output_logits=True, return_dict_in_generate=True)
with torch.no_grad():
    logits = model(torch.tensor([prompt])).logits[0].tolist()
rendered = tokenizer.apply_chat_template([{{"role": "user", "content": {message!r}}}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]
print(json.dumps([type(model).__name__, without_positions, [tokenizer(text)["input_ids"] for text in probes],
                  rendered, out.sequences[0, len(prompt):].tolist(), logits, tokenizer.eos_token,
                  torch.cat(out.logits).tolist()]))
"""


def test_the_gguf_file_reads_back_into_transformers_with_our_tokens_and_our_logits(trained, tmp_path):
    """transformers' own GGUF reader (`from_pretrained(folder, gguf_file=...)`, which dequantizes into its GPT-2),
    in a process without pocketlm, is a second runtime for the file llama.cpp runs: the same token ids for every
    probe, the chat template's prompt, the same logits and greedy tokens. It needs the context given as
    `n_positions`, and the file in a folder of its own, as `--format gguf` writes it (README)."""
    model, tokenizer = load_pretrained(str(trained["transformer"]))
    result = run_entry(export_main, str(trained["transformer"]), "--format", "gguf", "--output-dir",
                       str(tmp_path / "gguf"))
    assert result.returncode == 0, result.stderr[-3000:]
    gguf = next((tmp_path / "gguf").glob("*.gguf"))
    prompt = chat_prompt(tokenizer, PROMPTS[1])
    script = TRANSFORMERS_GGUF.format(folder=str(gguf.parent), name=gguf.name, context=model.config.block_size,
                                      probes=PROBES, prompt=prompt, new_tokens=NEW_TOKENS, message=PROMPTS[1])
    name, without_positions, ids, rendered, tokens, logits, eos, steps = run_without_pocketlm(script, tmp_path)
    assert name == "GPT2LMHeadModel" and eos == tokenizer.eos_token
    assert rendered == prompt  # the file's chat template, as transformers renders it
    assert "ignore_mismatched_sizes" in without_positions and model.config.block_size != 1024  # its wpe: 1,024 rows
    assert ids == [tokenizer(text)["input_ids"] for text in PROBES]
    with torch.no_grad():
        ours = model(torch.tensor([prompt])).logits[0]
    assert torch.allclose(torch.tensor(logits), ours, atol=1e-4), (torch.tensor(logits) - ours).abs().max()
    assert tokens == greedy(model, [prompt], tokenizer.pad_token_id)[0]
    assert (torch.tensor(steps) - teacher_forced(model, prompt, tokens)).abs().max() < 1e-4  # every step's


def assert_llama_cpp_decodes(llm, model, prompt: list[int], expected: list[int]) -> None:
    """llama.cpp's greedy tokens after `prompt` are `expected`, the model's own, each step's logits the model's
    for the same tokens; where the tokens part (llama.cpp's CPU GELU reads a 16-bit table: a near-tie may flip),
    its teacher-forced top-1 agrees with the model's at 99% of the positions."""
    llm.reset()
    llm.eval(prompt)
    tokens, steps = [], []
    for _ in range(len(expected)):
        steps.append(torch.tensor(np.array(llm.scores[llm.n_tokens - 1])))
        tokens.append(int(steps[-1].argmax()))
        llm.eval(tokens[-1:])
    # Each step's logits through llama.cpp's key/value cache, against one forward over the tokens it chose (3e-5
    # measured here; a position or cache read wrongly moves them by a tenth of the logits' size).
    assert (torch.stack(steps) - teacher_forced(model, prompt, tokens)).abs().max() < 1e-3
    if tokens != expected:
        sequence = prompt + expected
        llm.reset()
        llm.eval(sequence)
        with torch.no_grad():
            ours = model(torch.tensor([sequence])).logits[0].argmax(-1)
        theirs = torch.tensor(llm.scores[: len(sequence)]).argmax(-1)
        assert (ours == theirs).float().mean() >= 0.99, (tokens, expected)
    assert len(tokens) >= 20


# The weight matrices a GGUF file stores at its precision, under llama.cpp's gpt2 names, and the model's own names.
GGUF_MATRICES = {"token_embd.weight": "model.wte.weight", "output.weight": "lm_head.weight",
                 **{f"blk.{{i}}.{theirs}.weight": f"model.h.{{i}}.{ours}.weight" for theirs, ours in (
                     ("attn_qkv", "attn.c_attn"), ("attn_output", "attn.c_proj"), ("ffn_up", "mlp.c_fc"),
                     ("ffn_down", "mlp.c_proj"))}}


MATRIX_ENDINGS = tuple(name.split("}.")[-1] for name in GGUF_MATRICES)


def llama_cpp_runs_the_weights_it_holds(folder: Path, file: Path) -> None:
    """llama.cpp's logits on the GGUF `file` of the model in `folder` are the model's with the weights gguf's own
    reader gives back from the file (gguf.quants.dequantize: the formats implemented again, apart from llama.cpp),
    and its greedy tokens theirs."""
    import gguf

    llama_cpp = _llama_cpp()
    stored = {tensor.name: tensor for tensor in gguf.GGUFReader(file).tensors}
    model, tokenizer = load_pretrained(str(folder))
    state = {}
    for theirs, ours in GGUF_MATRICES.items():
        for layer in range(model.config.n_layer):
            tensor = stored[theirs.format(i=layer)]
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            shape = model.state_dict()[ours.format(i=layer)].shape
            state[ours.format(i=layer)] = torch.from_numpy(values.reshape(shape).astype(np.float32))
    as_stored, _ = load_pretrained(str(folder))
    as_stored.load_state_dict(state, strict=False)
    assert not torch.equal(as_stored.lm_head.weight, model.lm_head.weight)  # rounded: another model, near it

    prompt = chat_prompt(tokenizer, PROMPTS[1])
    sequence = prompt + greedy(as_stored, [prompt], tokenizer.pad_token_id)[0]
    llm = llama_cpp.Llama(model_path=str(file), n_ctx=model.config.block_size, logits_all=True, verbose=False,
                          n_threads=2)
    try:
        llm.eval(sequence)
        theirs = torch.tensor(np.array(llm.scores[: len(sequence)]))
    finally:
        llm.close()
    with torch.no_grad():
        ours = as_stored(torch.tensor([sequence])).logits[0]
    # llama.cpp rounds the activations too (to float16, or 8 bits for the block formats) and reads GELU from a
    # 16-bit table: close, not equal; a weight read at the wrong scale or in the wrong order is off by the logits'
    # own size.
    assert (theirs - ours).abs().max() < 2e-2 * ours.abs().max(), (theirs - ours).abs().max()
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() >= 0.99


def matrix_bytes(file: Path) -> int:
    import gguf

    return sum(int(tensor.n_bytes) for tensor in gguf.GGUFReader(file).tensors if tensor.name.endswith(MATRIX_ENDINGS))


@pytest.mark.parametrize("precision", ["f16", "q8_0", "q5_0", "q4_0"])
def test_a_smaller_gguf_holds_the_model_at_its_precision_and_llama_cpp_runs_it(precision, trained, tmp_path):
    """export.py wrote float32 GGUF files only, where llama.cpp's users keep f16 or its block formats (half, a
    quarter to a seventh of the bytes). `--gguf-precision` writes each, several at once, and llama.cpp runs the
    weights each holds (llama_cpp_runs_the_weights_it_holds)."""
    import gguf

    out, name = tmp_path / "out", trained["transformer"].name
    result = run_entry(export_main, str(trained["transformer"]), "--format", "gguf", "--gguf-precision",
                       f"{precision},F32", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    files = {kind: out / f"{name}-{kind}.gguf" for kind in (precision, "f32")}
    assert sorted(path.name for path in out.glob("*.gguf")) == sorted(path.name for path in files.values())
    kind = gguf.GGMLQuantizationType[precision.upper()]
    for tensor in gguf.GGUFReader(files[precision]).tensors:  # the norms, biases and positions stay float32
        assert tensor.tensor_type == (kind if tensor.name.endswith(MATRIX_ENDINGS) else
                                      gguf.GGMLQuantizationType.F32), tensor.name
    block, block_bytes = gguf.GGML_QUANT_SIZES[kind]  # 32 numbers in 34, 22 or 18 bytes; 1 in 2 for f16
    assert matrix_bytes(files[precision]) / matrix_bytes(files["f32"]) == block_bytes / (block * 4)
    llama_cpp_runs_the_weights_it_holds(trained["transformer"], files[precision])


@pytest.fixture(scope="module")
def wide_gpt(tmp_path_factory) -> Path:
    """A GPT 256 numbers wide: the k-quants store a row in blocks of 256 (a narrower one falls back to a 32-number
    block format), trained long enough that its greedy tokens are not near-ties."""
    shape = {"n_layer": 1, "n_head": 4, "n_embd": 256, "block_size": 64}
    return train_tiny_models(tmp_path_factory, "wide", {"transformer": shape}, max_steps=30, vocab_size=300,
                             eval_every=30)["transformer"]


@pytest.mark.parametrize("precision", GGUF_BY_LLAMA_CPP)
def test_a_k_quant_gguf_is_made_by_llama_cpp_s_own_quantizer_and_runs_as_the_weights_it_holds(precision, wide_gpt,
                                                                                               trained, tmp_path):
    """llama.cpp's users keep k-quants (Q4_K_M is what ollama pulls by default), which pocketlm could not write.
    export.py hands the float32 file to llama.cpp's own quantizer: each weight matrix is in a k-quant format, the
    file is a fraction of float32's, and llama.cpp runs the weights it holds as gguf's reader reads them back."""
    import gguf

    out, name = tmp_path / "out", wide_gpt.name
    result = run_entry(export_main, str(wide_gpt), "--format", "gguf", "--gguf-precision", f"{precision},f32",
                       "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.splitlines() == [f"writing {name}-{kind}.gguf ..." for kind in (precision, "f32")]  # no log
    files = {kind: out / f"{name}-{kind}.gguf" for kind in (precision, "f32")}
    assert sorted(path.name for path in out.iterdir() if path.suffix != ".json") == sorted(
        path.name for path in files.values())  # the float32 file it was made from is gone
    reader = gguf.GGUFReader(files[precision])
    file_type = reader.fields["general.file_type"]
    assert file_type.parts[file_type.data[0]][0] == gguf.LlamaFileType[f"MOSTLY_{precision.upper()}"]
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    matrices = {tensor_name: kind for tensor_name, kind in types.items() if tensor_name.endswith(MATRIX_ENDINGS)}
    assert all(kind.endswith("_K") for kind in matrices.values()), matrices
    assert f"Q{precision[1]}_K" in matrices.values(), matrices
    assert set(types.values()) - set(matrices.values()) == {"F32"}  # norms, biases and positions as they were
    bits = 32 * matrix_bytes(files[precision]) / matrix_bytes(files["f32"])
    assert int(precision[1]) < bits < int(precision[1]) + 2.5, bits
    llama_cpp_runs_the_weights_it_holds(wide_gpt, files[precision])
    # Rows narrower than 256 (this model's 32, the small preset's 128): llama.cpp falls back to a 32-number block
    # format, which its log says and the export says after the file, naming the formats the file holds.
    narrow = run_entry(export_main, str(trained["transformer"]), "--format", "gguf", "--gguf-precision", precision,
                       "--output-dir", str(tmp_path / "narrow"))
    assert narrow.returncode == 0, narrow.stderr[-3000:]
    file = next((tmp_path / "narrow").glob("*.gguf"))
    fallen = sorted({tensor.tensor_type.name for tensor in gguf.GGUFReader(file).tensors
                     if tensor.name.endswith(MATRIX_ENDINGS)})
    assert fallen and not any(kind.endswith("_K") for kind in fallen), fallen
    assert f"weight matrices are in llama.cpp's fallback {listed(fallen)}, not a k-quant: k-quants store rows in " \
           "blocks of 256 numbers, and theirs are 32" in narrow.stderr, narrow.stderr
    llama_cpp_runs_the_weights_it_holds(trained["transformer"], file)


# Tokens added as fine-tuning adds them: a special one, plain ones, one with a space and one not ASCII.
ADDED_SPECIAL, ADDED_PLAIN = ["<|tool|>"], ["pocketlm", "naïve", "two words"]
ADDED_PROBES = ["<|tool|>search(q)<|end|>", "pocketlm is naïve, in two words", "x<|tool|>pocketlm<|tool|>",
                "two  words two words", "naïveté"]

TRANSFORMERS_GGUF_TOKENS = """
import json
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained({folder!r}, gguf_file={name!r})
ids = [tokenizer(text)["input_ids"] for text in {probes!r}]
print(json.dumps([ids, [tokenizer.decode(each) for each in ids]]))
"""


def test_tokens_added_to_the_tokenizer_stay_whole_in_llama_cpp_and_transformers_gguf_reader(bpe_tokenizer,
                                                                                           tmp_path):
    """Fine-tuning often adds tokens (`add_special_tokens`, `add_tokens`) and resizes the embedding. The GGUF typed
    only pocketlm's own role tokens as special, so llama.cpp cut an added token's text into BPE pieces: other ids
    for the same prompt than transformers gives, a tool token typed in a prompt never the one token the model
    learned. Added special tokens are control tokens and the others user-defined, as llama.cpp's own converter
    types them: llama.cpp and transformers' GGUF reader (without pocketlm) tokenize and decode every probe as the
    tokenizer does (llama.cpp's text back is the probe's; transformers' is what the tokenizer decodes, whose
    byte-level decoder reads an added token's "ï" as a byte), and llama.cpp keeps a plain added token whole where
    it keeps control tokens out of a user's text."""
    tokenizer = copy.deepcopy(bpe_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ADDED_SPECIAL})
    tokenizer.add_tokens(ADDED_PLAIN)
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(vocab_size=len(tokenizer), block_size=64, n_layer=1, n_head=2, n_embd=32))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    result = run_entry(export_main, str(tmp_path / "model"), "--format", "gguf", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    gguf = next((tmp_path / "out").glob("*.gguf"))
    probes = PROBES + ADDED_PROBES
    expected = [tokenizer(text)["input_ids"] for text in probes]
    added = set(tokenizer.convert_tokens_to_ids(ADDED_SPECIAL + ADDED_PLAIN))
    assert all(added & set(ids) for ids in expected[len(PROBES):])  # each probe holds an added token
    llama_cpp = _llama_cpp()
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=64, verbose=False, n_threads=2)
    try:
        for text, ids in zip(probes, expected):
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
            assert llm.detokenize(ids, special=True).decode() == text
        plain = "a pocketlm for two words"
        assert llm.tokenize(plain.encode(), add_bos=False, special=False) == tokenizer(plain)["input_ids"]
        assert tokenizer.convert_tokens_to_ids("<|tool|>") not in llm.tokenize(b"<|tool|>", add_bos=False,
                                                                              special=False)
    finally:
        llm.close()
    # transformers' reader respells a token outside the byte alphabet into it ("two words" as "twoĠwords"), and
    # then finds no user-defined "two words" to keep whole: its own limit (README), so those probes are left out.
    probes, expected = zip(*[(text, ids) for text, ids in zip(probes, expected) if "two words" not in text])
    ids, texts = run_without_pocketlm(TRANSFORMERS_GGUF_TOKENS.format(folder=str(gguf.parent), name=gguf.name,
                                                                      probes=list(probes)), tmp_path)
    assert ids == list(expected) and texts == [tokenizer.decode(each) for each in expected]


# A byte-level BPE may split text before merging in other ways than pocketlm's (GPT-2's pattern): one given to
# `train.py --tokenizer` from Llama 3, Qwen2, GPT-4o or SmolLM. The probes tell the ways apart: digits in runs,
# contractions in capitals, line breaks after punctuation, letters after a case change.
SPLIT_PROBES = ["1234567 12 345 6789012", "DON'T IT'S We'LL it's", "$$$ ...!!! ?\n\n!", "HelloWorld camelCaseXML",
                "x=42;y=3.14159", "a  b   c\n\n\nd", "xqj"]
SPLIT_TEXT = SAMPLE_TEXT + "".join(text + " " for text in PROBES + SPLIT_PROBES) * 3


def _split_pattern(pattern: str):
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def byte_level_bpe(pre_tokenizer, normalizer=None, ignore_merges: bool = False):
    """A byte-level BPE trained on SPLIT_TEXT, splitting with `pre_tokenizer`. Its vocabulary also holds "xqj" where
    merging gives "x" "qj", so that `ignore_merges` (take a word the vocabulary holds whole) changes the ids."""
    from tokenizers import Tokenizer, decoders, models, trainers

    from tokenization import SPECIAL_TOKENS
    from tokenization.bpe import BYTE_ALPHABET
    from tokenization.special_tokens import wrap

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder = normalizer, pre_tokenizer, decoders.ByteLevel()
    tokenizer.train_from_iterator([SPLIT_TEXT], trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=BYTE_ALPHABET))
    spec = json.loads(tokenizer.to_str())
    for token in ("qj", "xq", "xqj"):
        spec["model"]["vocab"].setdefault(token, len(spec["model"]["vocab"]))
    spec["model"]["merges"] += [["q", "j"], ["x", "q"], ["xq", "j"]]
    spec["model"]["ignore_merges"] = ignore_merges
    return wrap(Tokenizer.from_str(json.dumps(spec)))


def _save_gpt(tokenizer, folder: Path) -> Path:
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(vocab_size=len(tokenizer), block_size=64, n_layer=1, n_head=2, n_embd=32))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


SPLITTINGS_TAKEN = ["llama3", "llama3-merging", "qwen2-nfc", "gpt-4o", "smollm-digits"]


def _pre_tokenizers():
    """The ways of splitting tested: {name: (pre-tokenizer, normalizer, ignore_merges)} that llama.cpp names, and
    {name: (..., what the refusal says)} that it cannot."""
    from tokenizers import normalizers, pre_tokenizers

    # The patterns as transformers' GGUF reader spells Llama 3's, Qwen2's and GPT-4o's (their tokenizer.json's).
    from transformers.integrations.gguf.gguf_tokenizer_mapping import _GPT4O_SPLIT as GPT4O_PATTERN
    from transformers.integrations.gguf.gguf_tokenizer_mapping import _LLAMA3_SPLIT as LLAMA3_PATTERN
    from transformers.integrations.gguf.gguf_tokenizer_mapping import _QWEN2_SPLIT as QWEN2_PATTERN

    digits = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False)])
    taken = {"llama3": (_split_pattern(LLAMA3_PATTERN), None, True),
             "llama3-merging": (_split_pattern(LLAMA3_PATTERN), None, False),
             "qwen2-nfc": (_split_pattern(QWEN2_PATTERN), normalizers.NFC(), False),
             "gpt-4o": (_split_pattern(GPT4O_PATTERN), None, False),
             "smollm-digits": (digits, None, False)}
    whitespace = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    refused = {"a prefix space": (pre_tokenizers.ByteLevel(add_prefix_space=True), None, False, "add_prefix_space"),
               "lowercase": (pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.Lowercase(), False,
                             "normalizes text first (Lowercase)"),
               "another pattern": (_split_pattern(r"\w+|\s+|[^\w\s]+"), None, False, r"the pattern '\\w+|\\s+|"),
               "qwen2 taking words whole": (_split_pattern(QWEN2_PATTERN), None, True, "ignore_merges"),
               "whitespace then bytes": (whitespace, None, False, "splits it with WhitespaceSplit then ByteLevel")}
    return taken, refused


@pytest.mark.parametrize("way", SPLITTINGS_TAKEN)
def test_a_byte_level_bpe_that_splits_text_another_way_tokenizes_in_llama_cpp_as_it_does(way, tmp_path):
    """The GGUF named GPT-2's pre-tokenizer whatever the tokenizer's own splitting was, so a model trained with a
    tokenizer that splits as Llama 3's, Qwen2's, GPT-4o's or SmolLM's does read, in llama.cpp, every prompt with a
    digit run, a capitalised contraction or a line break after punctuation as other ids, in silence. The file names
    the way the tokenizer splits (and whether it takes a word its vocabulary holds whole, as llama.cpp does under
    Llama 3's name alone): llama.cpp's ids are the tokenizer's for every probe, with or without its BOS option."""
    taken = _pre_tokenizers()[0]
    assert sorted(taken) == sorted(SPLITTINGS_TAKEN)
    pre_tokenizer, normalizer, ignore_merges = taken[way]
    tokenizer = byte_level_bpe(pre_tokenizer, normalizer, ignore_merges)
    assert len(tokenizer("xqj")["input_ids"]) == (1 if ignore_merges else 2)  # the crafted word decides
    folder = _save_gpt(tokenizer, tmp_path / "model")
    result = run_entry(export_main, str(folder), "--format", "gguf", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    llama_cpp = _llama_cpp()
    llm = llama_cpp.Llama(model_path=str(next((tmp_path / "out").glob("*.gguf"))), n_ctx=64, verbose=False,
                          n_threads=2)
    try:
        for text in PROBES + SPLIT_PROBES:
            ids = tokenizer(text)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
            assert llm.tokenize(text.encode(), special=True) == ids, text  # no BOS: pocketlm's prompts have none
    finally:
        llm.close()


def test_a_byte_level_bpe_that_splits_text_as_llama_cpp_cannot_is_refused_in_gguf_and_left_out_of_all(tmp_path):
    """Where llama.cpp has no name for the tokenizer's way of splitting text (a prefix space, a normaliser, another
    pattern, taking words whole with a pattern other than Llama 3's), a GGUF file would read prompts as other
    tokens: named, GGUF is refused in one line saying what the tokenizer does, nothing written; in "all" it is
    left out with that line and the other formats are written."""
    for way, (pre_tokenizer, normalizer, ignore_merges, said) in _pre_tokenizers()[1].items():
        folder = _save_gpt(byte_level_bpe(pre_tokenizer, normalizer, ignore_merges), tmp_path / way)
        result = run_entry(export_main, str(folder), "--format", "gguf", "--output-dir", str(tmp_path / "out"))
        assert_one_line_error(result, "llama.cpp would read prompts as other tokens", said, "nothing was written")
        assert not (tmp_path / "out").exists()
    result = run_entry(export_main, str(folder), "--format", "all", "--output-dir", str(tmp_path / "all"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "left out gguf: llama.cpp splits a prompt" in result.stderr
    assert not list((tmp_path / "all").rglob("*.gguf")) and (tmp_path / "all" / "model.safetensors").is_file()


def test_a_model_trained_with_a_tokenizer_that_adds_a_leading_space_exports_to_gguf_as_llama_cpp_reads_it(tmp_path):
    """A byte-level BPE that puts a space before every text (RoBERTa's) has no name in llama.cpp (refused above),
    but a run keeps it without that space (tests/test_faults.py): the model trained with it exports to GGUF, and
    llama.cpp reads every probe as the run's tokenizer does."""
    from tokenizers import pre_tokenizers

    given, corpus, model, out = tmp_path / "given", tmp_path / "corpus.txt", tmp_path / "model", tmp_path / "out"
    byte_level_bpe(pre_tokenizers.ByteLevel(add_prefix_space=True)).save_pretrained(given)
    corpus.write_text(SPLIT_TEXT * 4, encoding="utf-8")
    trained = run_entry(train_main, f"--data={corpus}", f"--tokenizer={given}", f"--output-dir={model}",
                        "--block-size=32", "--batch-size=4", "--max-steps=2", "--samples=0", "--model-config=n_layer=1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = run_entry(export_main, str(model), "--format", "gguf", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    tokenizer = load_pretrained(str(model))[1]
    llm = _llama_cpp().Llama(model_path=str(next(out.glob("*.gguf"))), n_ctx=64, verbose=False, n_threads=2)
    try:
        for text in PROBES + SPLIT_PROBES:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text)["input_ids"], text
    finally:
        llm.close()


def test_gguf_precision_is_refused_where_it_would_be_ignored_or_is_unknown(trained, tmp_path):
    model = str(trained["transformer"])
    for args, needle in ((["--format", "gguf", "--gguf-precision", "q4"], "unknown --gguf-precision 'q4': choose "
                                                                          "f32, f16, q8_0, q5_0, q4_0"),
                         (["--format", "gguf", "--gguf-precision", ","], "unknown --gguf-precision ','"),
                         (["--format", "onnx", "--gguf-precision", "f16"], "--gguf-precision sets the GGUF file's "
                                                                           "weights: add gguf to --format")):
        assert_one_line_error(run_entry(export_main, model, *args, "--output-dir", str(tmp_path / "out")), needle)
    assert_one_line_error(run_entry(upload_main, model, "--repo-id", "me/m", "--dry-run", "--gguf-precision", "f16",
                                    "--output-dir", str(tmp_path / "hub")),
                          "--gguf-precision serves --formats: add --formats gguf")
    lstm = str(trained["lstm"])  # whose `all` holds no GGUF: the precision would be ignored
    for main, args in ((export_main, [lstm, "--format", "all"]),
                       (upload_main, [lstm, "--repo-id", "me/m", "--dry-run", "--formats", "all"])):
        assert_one_line_error(run_entry(main, *args, "--gguf-precision", "q8_0", "--output-dir", str(tmp_path / "out")),
                              "--gguf-precision sets the GGUF file's weights, and the LSTM has no GGUF file")
    assert not (tmp_path / "out").exists() and not (tmp_path / "hub").exists()
    # The Python API takes them as the command line spells them: a string was read letter by letter.
    from pocketlm.export import export

    written = export(model, "gguf", tmp_path / "api", gguf_precisions="f16,q8_0")
    assert [path.name for path in written] == [f"{trained['transformer'].name}-{kind}.gguf" for kind in ("f16", "q8_0")]
    with pytest.raises(UsageError, match="unknown --gguf-precision 'q4'"):
        export(model, ["gguf"], tmp_path / "api-2", gguf_precisions=["q4"])


def test_a_k_quant_without_llama_cpp_s_quantizer_is_refused_before_any_work(trained, tmp_path, monkeypatch):
    """llama.cpp's quantizer comes with llama-cpp-python, which the extras leave out (a C++ build of minutes): a
    k-quant without it is refused in one line naming the install and the way round it, by export.py, hub_upload.py's
    dry run (as its real run would) and the Python API, before anything is written."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed: find_spec finds none
    model, out = str(trained["transformer"]), tmp_path / "out"
    needles = ["--gguf-precision q4_k_m is made by llama.cpp's own quantizer", "pip install llama-cpp-python",
               "run llama.cpp's llama-quantize on it; nothing was written"]
    assert_one_line_error(run_entry(export_main, model, "--format", "gguf", "--gguf-precision", "f16,q4_k_m",
                                    "--output-dir", str(out)), *needles)
    assert_one_line_error(run_entry(upload_main, model, "--repo-id", "me/m", "--dry-run", "--formats", "gguf",
                                    "--gguf-precision", "q4_k_m", "--output-dir", str(out)), *needles)
    from pocketlm.export import export

    with pytest.raises(UsageError, match="q4_k_m is made by llama.cpp's own quantizer"):
        export(model, "gguf", out, gguf_precisions="q4_k_m")
    assert not out.exists()


def test_llama_cpp_s_chat_completion_renders_the_conversation_as_pocketlm_does(trained, exported):
    """What `llama-server` and llama-cpp-python's chat completion send the model comes from the chat template the
    GGUF carries: the same prompt as pocketlm's chat for a multi-turn conversation with a system text, its content
    as strings or as OpenAI's text parts, and a reply that ends where pocketlm's ends (at the end-of-turn)."""
    llama_cpp = _llama_cpp()
    model, tokenizer = load_pretrained(str(trained["transformer"]))
    llm = llama_cpp.Llama(model_path=str(next(exported["transformer"].glob("*.gguf"))), n_ctx=model.config.block_size,
                          verbose=False, n_threads=2)
    try:
        chat = ChatInterface(model, tokenizer, system="Be brief.", do_sample=False, repetition_penalty=1.0,
                             max_new_tokens=NEW_TOKENS)
        chat.history = [{"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": "Hi! How are you?"}]
        ours = chat.prompt_ids(PROMPTS[1], NEW_TOKENS)
        strings = [{"role": "system", "content": "Be brief."}, *chat.history, {"role": "user", "content": PROMPTS[1]}]
        parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in strings]
        for messages in (strings, parts):
            out = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=NEW_TOKENS,
                                             repeat_penalty=1.0)
            assert out["usage"]["prompt_tokens"] == len(ours)
            assert out["choices"][0]["finish_reason"] in ("stop", "length")
            assert "<|end|>" not in out["choices"][0]["message"]["content"]
    finally:
        llm.close()
    # llama.cpp's built-in formats (its chat without Jinja) take the template for Phi-3's, as README says.
    array = (llama_cpp.llama_chat_message * len(strings))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in strings])
    rendered = ctypes.create_string_buffer(4096)
    size = llama_cpp.llama_chat_apply_template(PLAIN_CHAT_TEMPLATE.encode(), array, len(strings), True, rendered, 4096)
    phi3 = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in strings) + "<|assistant|>\n"
    assert rendered.raw[:size].decode() == phi3 and phi3 != tokenizer.decode(ours)


# ------------------------------------------------------------------------------ a model trained on plain text


TEXT = "The king speaks"


@pytest.fixture(scope="module")
def prose_exported(tmp_path_factory) -> tuple[Path, Path]:
    """A GPT trained on plain text (pseudo-prose, not conversations), and its export for the other runtimes."""
    data = tmp_path_factory.mktemp("prose") / "prose.txt"
    data.write_text(make_text(3, 120), encoding="utf-8")
    model = train_tiny_models(tmp_path_factory, "prose", {"transformer": TINY_SHAPES["transformer"]}, max_steps=60,
                              eval_every=60, data=[str(data)])["transformer"]
    out = tmp_path_factory.mktemp("prose-export") / "export"
    result = run_entry(export_main, str(model), "--format", "transformers,onnx,gguf", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("was trained on plain text, so its exports carry no chat template: transformers, onnxruntime and "
            "llama.cpp continue the text they are given") in result.stdout  # said, not left to surprise
    return model, out


STOCK_CONTINUATION = """
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text, new_tokens = {folder!r}, {text!r}, {new_tokens}
model = AutoModelForCausalLM.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
ids = tokenizer(text, return_tensors="pt").input_ids
out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                     do_sample=False, repetition_penalty=1.0)
try:
    tokenizer.apply_chat_template([{{"role": "user", "content": text}}], add_generation_prompt=True)
    refused = None
except ValueError as error:
    refused = str(error)
print(json.dumps([tokenizer.chat_template, refused, out[0, ids.shape[1]:].tolist()]))
"""


def test_the_exports_of_a_plain_text_model_carry_no_chat_template_and_continue_text_in_each_runtime(prose_exported,
                                                                                                    tmp_path):
    """A model trained on a book never saw the chat template's role tokens, yet its exports carried the template,
    and other runtimes take a template as the way to talk to a model (llama.cpp's llama-cli turns to conversation
    when the file has one; transformers' pipelines and servers apply it to messages). Its exports carry none: each
    runtime continues the text it is given, with the model's own greedy tokens, and is told there is no chat."""
    model_dir, out = prose_exported
    model, tokenizer = load_pretrained(str(model_dir))
    prompt = tokenizer(TEXT).input_ids
    expected = greedy(model, [prompt], tokenizer.pad_token_id)[0]
    # transformers, in a process without pocketlm: the same continuation, and its own refusal of a chat.
    template, refused, continued = run_without_pocketlm(
        STOCK_CONTINUATION.format(folder=str(out), text=TEXT, new_tokens=NEW_TOKENS), tmp_path)
    assert template is None and "chat template" in refused and continued == expected
    assert not (out / "chat_template.jinja").exists()  # the ONNX graphs' tokenizer is the same folder's
    # llama.cpp: a file without a template (llama-cli stays in completion), the same greedy tokens.
    llama_cpp = _llama_cpp()
    llm = llama_cpp.Llama(model_path=str(next(out.glob("*.gguf"))), n_ctx=model.config.block_size, logits_all=True,
                          verbose=False, n_threads=2)
    try:
        assert "tokenizer.chat_template" not in llm.metadata
        assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == prompt
        assert_llama_cpp_decodes(llm, model, prompt, expected)
    finally:
        llm.close()
    # pocketlm's own chat runs the export as text, in torch and in onnxruntime, and names the missing template
    # when asked to chat.
    reference = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, repetition_penalty=1.0)
    for runtime in ("torch", "onnx"):
        chat = ChatInterface(str(out), runtime=runtime, max_new_tokens=8, do_sample=False, repetition_penalty=1.0)
        assert chat.mode == "text" and chat.prompt_ids(TEXT, 8) == prompt
        assert chat.reply(TEXT) == tokenizer.decode(reference[0, len(prompt):], skip_special_tokens=True)
    assert_one_line_error(run_entry(chat_main, "--model", str(out), "--mode", "chat", "--prompt", TEXT),
                          "has no chat template", "drop --mode chat")
    # The model itself keeps its template: chatting with it in onnxruntime (exported into pocketlm's cache, without
    # one) builds the prompt torch's chat builds.
    as_chat = {runtime: ChatInterface(str(model_dir), runtime=runtime, mode="chat") for runtime in ("torch", "onnx")}
    assert as_chat["onnx"].prompt_ids(TEXT, 8) == as_chat["torch"].prompt_ids(TEXT, 8) != prompt


def test_the_web_page_of_a_plain_text_model_carries_no_chat_template_either(prose_exported, tmp_path):
    """The page's model/ folder is a transformers.js model of its own, which a reader may take into an app: a plain
    text model's carried the chat template every other export leaves out, though the page itself continues text."""
    model_dir, _ = prose_exported
    page = tmp_path / "page"
    result = run_entry(export_main, str(model_dir), "--format", "web", "--output-dir", str(page),
                       "--web-precision", "float32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((page / "pocketlm.json").read_text())["mode"] == "text"
    assert not (page / "model" / "chat_template.jinja").exists()
    assert "chat_template" not in json.loads((page / "model" / "tokenizer_config.json").read_text())


STOCK_GPT2_LOGITS = """
import json, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({folder!r}).eval()
with torch.no_grad():
    print(json.dumps(model(torch.tensor([{ids!r}])).logits[0].tolist()))
"""


@pytest.mark.parametrize("shape", [{"bias": False}, {"tie_word_embeddings": False},
                                   {"bias": False, "tie_word_embeddings": False, "n_head": 1},
                                   {"padded_vocabulary": True}],
                         ids=["no-biases", "untied-head", "both-one-head", "padded-vocabulary"])
def test_every_shape_the_gpt_config_allows_exports_to_the_same_function(shape, bpe_tokenizer, tmp_path):
    """A head untied by `--model-config tie_word_embeddings=false` went into the stock GPT-2 tied to the embedding:
    other logits, in silence; an embedding padded to a multiple of 64 past the tokenizer (TRL's and Unsloth's
    resize) stopped the GGUF export with a traceback. Each runtime's logits are checked against the model's, on
    weights far from their initial values (a head and an embedding that happen to be alike would hide it). And back:
    the stock GPT-2 taken into a pocketlm GPT (`--init-from`) computes them too."""
    torch.manual_seed(0)
    shape = dict(shape)
    rows = -(-len(bpe_tokenizer) // 64) * 64 if shape.pop("padded_vocabulary", False) else len(bpe_tokenizer)
    config = GPTConfig(**{"vocab_size": rows, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32,
                          "dropout": 0.0, **shape})
    model = GPTForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(tmp_path / "model")
    bpe_tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "export"
    result = run_entry(export_main, str(tmp_path / "model"), "--format", "transformers,onnx,gguf", "--output-dir",
                       str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    ids = bpe_tokenizer("To be, or not to be, that is the question.")["input_ids"]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0]
    stock = run_without_pocketlm(STOCK_GPT2_LOGITS.format(folder=str(out), ids=ids), tmp_path)
    torch.testing.assert_close(torch.tensor(stock), expected, rtol=1e-4, atol=1e-4)
    back = from_gpt2(GPT2LMHeadModel.from_pretrained(out)).eval()  # what --init-from makes of that GPT-2
    with torch.no_grad():
        torch.testing.assert_close(back(torch.tensor([ids])).logits[0], expected, rtol=1e-5, atol=1e-5)
    onnx_model, _ = load_pretrained(str(out), runtime="onnx")
    with torch.no_grad():
        torch.testing.assert_close(onnx_model(torch.tensor([ids])).logits[0], expected, rtol=1e-4, atol=1e-4)
    llama_cpp = _llama_cpp()
    llm = llama_cpp.Llama(model_path=str(next(out.glob("*.gguf"))), n_ctx=64, logits_all=True, verbose=False,
                          n_threads=2)
    try:
        llm.eval(ids)
        # llama.cpp's CPU GELU reads a 16-bit table: close (within 3e-3 here), not equal; a wrong head is off by 1.
        torch.testing.assert_close(torch.tensor(llm.scores[: len(ids)]), expected, rtol=1e-2, atol=1e-2)
    finally:
        llm.close()


def test_a_gpt_with_a_character_tokenizer_leaves_gguf_out_and_says_why(char_tokenizer, tmp_path):
    """A Transformer trained with a character tokenizer (`--tokenizer` of an LSTM's folder) was written into a GGUF
    file llama.cpp refused to load: its vocabulary holds byte-level BPEs only. Named, GGUF is refused in one line;
    in "all" it is left out with a line saying why; the other formats are written, in export and upload alike."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=len(char_tokenizer), block_size=64, n_layer=2, n_head=2, n_embd=32)
    GPTForCausalLM(config).save_pretrained(tmp_path / "model")
    char_tokenizer.save_pretrained(tmp_path / "model")
    why = "a GGUF file carries a byte-level BPE (llama.cpp's gpt2 vocabulary), and this model's tokenizer is a " \
          "character-level one"
    for formats in ("gguf", "onnx,gguf"):
        result = run_entry(export_main, str(tmp_path / "model"), "--format", formats, "--output-dir",
                           str(tmp_path / "one"))
        assert_one_line_error(result, why, "nothing was written")
        assert not (tmp_path / "one").exists()
    result = run_entry(export_main, str(tmp_path / "model"), "--format", "all", "--output-dir", str(tmp_path / "all"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"left out gguf: {why}." in result.stderr
    assert not list((tmp_path / "all").rglob("*.gguf")) and (tmp_path / "all" / "model.safetensors").is_file()
    assert (tmp_path / "all" / "onnx" / "model.onnx").is_file() and (tmp_path / "all" / "web" / "index.html").is_file()
    result = run_entry(upload_main, str(tmp_path / "model"), "--repo-id", "me/m", "--dry-run", "--formats", "all",
                       "--output-dir", str(tmp_path / "hub"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"left out gguf: {why}." in result.stderr
    assert not list((tmp_path / "hub").rglob("*.gguf")) and list((tmp_path / "hub").rglob("model.onnx"))


# ------------------------------------------------------------------------------------------- transformers serve


@contextlib.contextmanager
def served(folder: Path, tmp_path: Path):
    """`transformers serve` on 127.0.0.1, pinned to `folder` as README's command runs it: an OpenAI client for it."""
    from openai import OpenAI

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", "--host", "127.0.0.1",
                               "--port", str(port), str(folder)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 240
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert server.poll() is None and time.time() < deadline, server.communicate()[0][-3000:]
            time.sleep(0.3)
        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_transformers_serve_answers_an_openai_client_with_the_local_greedy_text(exported, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = exported["transformer"]
    with served(folder, tmp_path) as client:
        stream = client.chat.completions.create(model=str(folder), messages=[{"role": "user", "content": PROMPTS[1]}],
                                                stream=True, temperature=0, max_tokens=NEW_TOKENS)
        pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
        # OpenAI's other form of a message, its content as text parts: the same conversation, the same reply.
        parted = client.chat.completions.create(
            model=str(folder), messages=[{"role": "user", "content": [{"type": "text", "text": PROMPTS[1]}]}],
            temperature=0, max_tokens=NEW_TOKENS).choices[0].message.content
    # Greedy generation done locally with the same stock folder and its own generation settings.
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    prompt = torch.tensor([chat_prompt(tokenizer, PROMPTS[1])])
    out = model.generate(prompt, do_sample=False, max_new_tokens=NEW_TOKENS)
    assert len(pieces) > 1  # streamed, piece by piece
    assert "".join(pieces) == tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True) == parted


def test_transformers_serve_continues_the_text_of_a_plain_text_model_s_export_and_refuses_a_chat(prose_exported,
                                                                                                 tmp_path):
    """The export of a model trained on plain text, served: its completions endpoint continues a text with the
    local greedy text, and its chat endpoint, finding no chat template, does not answer."""
    from openai import OpenAIError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = prose_exported[1]
    with served(folder, tmp_path) as client:
        continued = client.completions.create(model=str(folder), prompt=TEXT, temperature=0,
                                              max_tokens=NEW_TOKENS).choices[0].text
        with pytest.raises(OpenAIError):
            client.chat.completions.create(model=str(folder), messages=[{"role": "user", "content": TEXT}],
                                           temperature=0, max_tokens=NEW_TOKENS)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer(TEXT, return_tensors="pt").input_ids
    out = model.generate(prompt, do_sample=False, max_new_tokens=NEW_TOKENS)
    assert continued == tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)