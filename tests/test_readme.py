"""The README promises what the code does: its preset table is generated, its commands are the CI's."""

from pathlib import Path

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
