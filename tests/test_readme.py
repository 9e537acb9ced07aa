"""The README promises what the code does: its preset table is generated, its commands are the CI's."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pocketlm.presets import preset_table

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_preset_table_is_the_generated_one():
    start, end = "<!-- presets:start -->\n", "\n<!-- presets:end -->"
    assert README[README.index(start) + len(start) : README.index(end)] == preset_table()


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```")[1].strip().splitlines()
    commands = [line for line in first_block if not line.startswith(("bash", "sh", "#"))]
    assert len(commands) == 2
    assert commands[0].endswith("python train.py")
    assert "pytest" in commands[1]


def _command_lines() -> list[tuple[str, list[str]]]:
    """Each `python SCRIPT.py ...` the README shows, in a code block or inline, as (script, its arguments); the
    README's `[--private]` marks an optional part, read as written."""
    found = re.findall(r"python (train|chat|compare|export|hub_upload)\.py([^`#\n|]*)", README)
    return [(script, shlex.split(rest.replace("[", "").replace("]", ""))) for script, rest in found]


@pytest.mark.parametrize("script, args", _command_lines(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_command_line_the_readme_shows_parses(script, args):
    """An option renamed or made positional left the README's lines giving "unknown option"; each line must parse
    as the script parses it (running them all would take the suite's hours)."""
    from pocketlm import cli

    parser = {"train": cli.train_parser, "chat": cli.chat_parser, "compare": cli.compare_parser,
              "export": cli.export_parser, "hub_upload": cli.upload_parser}[script]()
    parser.parse_args(args)  # exits 2 with the reason where it would not parse


def _example(name: str) -> str:
    """The code block that follows `<!-- example: name -->` in the README."""
    after = README.split(f"<!-- example: {name} -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from pocketlm.training import TrainingOptions, train

    out = tmp_path_factory.mktemp("readme-model")
    train(TrainingOptions(output_dir=str(out), model_config={"n_layer": 2, "n_head": 2, "n_embd": 32},
                          block_size=32, batch_size=4, max_steps=2, vocab_size=300, samples=0))
    return out


@pytest.mark.parametrize("name", ["peft", "trl", "trainer", "reward", "api", "plain"])
def test_the_readme_python_examples_run(name, tiny_folder, tmp_path):
    # Run as written, on a tiny model in place of models/transformer-small, in a folder of its own; the API
    # example's training run shrunk to a tiny model and two steps on a short book.txt.
    code = _example(name).replace("models/transformer-small", str(tiny_folder))
    if name == "api":
        from conftest import make_text

        (tmp_path / "book.txt").write_text(make_text(3))
        shrunk = code.replace('model_size="small", data=["book.txt"], epochs=3',
                              'data=["book.txt"], max_steps=2, block_size=32, batch_size=4, vocab_size=300, samples=0, '
                              'model_config={"n_layer": 2, "n_head": 2, "n_embd": 32}')
        assert shrunk != code
        code = shrunk
    script = tmp_path / f"example_{name}.py"  # not peft.py: it would shadow the package
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    # AutoTokenizer reads config.json first: without trust_remote_code (or pocketlm's types registered) transformers
    # stops to ask whether to run the folder's code, 15 s in a terminal, and warns of a model "of type ``".
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr, result.stdout[-2000:]
    made = {"peft": "models/lora-adapter/adapter_model.safetensors", "trl": "models/sft", "trainer": "models/trainer",
            "reward": "models/reward/adapter_model.safetensors", "api": "models/transformer-small/model.safetensors"}
    assert name not in made or (tmp_path / made[name]).exists()
    assert name != "plain" or result.stdout.strip()  # the reply, printed
    assert name != "api" or "\ntext\n" in result.stdout  # trained on book.txt, the model continues text
