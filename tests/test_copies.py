"""The deliberate copies stay alike: what the two model families repeat (each travels to the Hub alone) and what the
Space app repeats (it runs without pocketlm) is marked, as transformers marks its own, with

    # Copied from <module>.<name>[ with A->B, C->D]

above a function, class or assignment; the copy must read exactly as the original with each A replaced by B."""

import ast
import inspect
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from modeling import GPTForCausalLM, GPTModel, LSTMForCausalLM, LSTMModel

MARKER = "# Copied from "
COPYING_FILES = [*sorted((REPO_ROOT / "modeling").rglob("*.py")), REPO_ROOT / "pocketlm" / "space_app.py"]


def _definition(tree: ast.Module, qualname: str) -> ast.AST:
    """The function, class or assignment that `qualname` ("Class.method", "CONSTANT", "f.__signature__") names."""
    for node in tree.body:  # an assignment at the top of the module, its target written out
        if isinstance(node, ast.Assign) and any(ast.unparse(t) == qualname for t in node.targets):
            return node
    body, found = tree.body, None
    for part in qualname.split("."):
        found = next((node for node in body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                      and node.name == part), None)
        if found is None:
            raise LookupError(qualname)
        body = found.body
    return found


def _start(node: ast.AST) -> int:
    """The first line of a definition, its decorators included."""
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def _source(path: Path, node: ast.AST) -> str:
    lines = path.read_text().splitlines()
    return inspect.cleandoc("\n".join(lines[_start(node) - 1 : node.end_lineno]))


def _original(reference: str) -> tuple[Path, str]:
    """The file and qualified name a marker's dotted reference points at."""
    parts = reference.split(".")
    for split in range(len(parts), 0, -1):
        path = REPO_ROOT.joinpath(*parts[:split]).with_suffix(".py")
        if path.is_file():
            return path, ".".join(parts[split:])
    raise LookupError(f"no file for {reference}")


def drifted_copies(path: Path, text: str | None = None) -> list[str]:
    """What differs between each marked copy in `path` (or in `text`, read as that file) and its original."""
    text = path.read_text() if text is None else text
    tree, lines, problems = ast.parse(text), text.splitlines(), []
    for number, line in enumerate(lines, 1):
        if not line.strip().startswith(MARKER):
            continue
        reference, _, replacements = line.strip()[len(MARKER):].partition(" with ")
        start = _first_code_line(lines, number)
        copy = next(node for node in ast.walk(tree) if isinstance(node, ast.stmt) and _start(node) == start)
        original_path, qualname = _original(reference)
        expected = _source(original_path, _definition(ast.parse(original_path.read_text()), qualname))
        for pair in filter(None, (p.strip() for p in replacements.split(","))):
            old, new = pair.split("->")
            expected = expected.replace(old, new)
        found = inspect.cleandoc("\n".join(lines[start - 1 : copy.end_lineno]))
        if found != expected:
            problems.append(f"{path.relative_to(REPO_ROOT)}:{number}: differs from {reference}")
    return problems


def _first_code_line(lines: list[str], marker_line: int) -> int:
    """The first line after the marker (1-based `marker_line`) that is not a comment: where the copy starts."""
    number = marker_line + 1
    while lines[number - 1].strip().startswith("#"):
        number += 1
    return number


def test_the_deliberate_copies_read_exactly_as_their_originals():
    markers = sum(path.read_text().count(MARKER) for path in COPYING_FILES)
    assert markers >= 7  # the version guard, auto_map, from_pretrained, the hook check, the cache field, ...
    problems = [problem for path in COPYING_FILES for problem in drifted_copies(path)]
    assert not problems, "\n".join(problems)


def test_a_copy_that_drifts_is_caught():
    path = REPO_ROOT / "modeling" / "lstm" / "configuration_lstm.py"
    text = path.read_text()
    drifted = text.replace('f"installed: pip install -U', 'f"installed; pip install -U', 1)
    assert drifted != text
    assert drifted_copies(path, drifted) == [
        "modeling/lstm/configuration_lstm.py:" + str(text.splitlines().index(
            "# Copied from modeling.gpt.configuration_gpt.require_transformers") + 1)
        + ": differs from modeling.gpt.configuration_gpt.require_transformers"]
    renamed = text.replace('"AutoModel": "modeling_lstm.LSTMModel"', '"AutoModel": "modeling_lstm.LSTMBase"')
    assert len(drifted_copies(path, renamed)) == 1


@pytest.mark.parametrize("gpt, lstm", [(GPTForCausalLM, LSTMForCausalLM), (GPTModel, LSTMModel)])
def test_the_two_families_take_the_same_forward_arguments(gpt, lstm):
    # position_ids is the one difference: a recurrent model has no positions (its state carries where it is).
    gpt_arguments = list(inspect.signature(gpt.forward).parameters)
    lstm_arguments = list(inspect.signature(lstm.forward).parameters)
    assert [name for name in gpt_arguments if name != "position_ids"] == lstm_arguments


def test_the_space_app_fits_replies_into_the_window_by_the_chat_rule():
    from pocketlm.generation import reply_budget

    tree = ast.parse((REPO_ROOT / "pocketlm" / "space_app.py").read_text())
    namespace: dict = {}
    exec(compile(ast.Module(body=[_definition(tree, "reply_budget")], type_ignores=[]), "space_app", "exec"),
         namespace)
    for window in (None, 1, 64, 256, 1024):
        for asked in (1, 16, 128, 600, 5000):
            assert namespace["reply_budget"](window, asked) == reply_budget(window, asked)
