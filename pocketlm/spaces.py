"""The Spaces that `hub_upload.py` publishes beside a model: a Gradio app that chats with it on the Space's server,
or a static page that chats with it in each visitor's browser.

Both load the model from its model repository, so a new upload of the model updates them. The Gradio app needs only
torch, transformers and gradio (pocketlm/space_app.py); the static page is the one `export.py --format web` writes,
pointed at the repository's ONNX graphs instead of a folder beside it (transformers.js fetches the GPT's itself).
"""

from importlib import resources
from pathlib import Path

import yaml

from modeling import MIN_TRANSFORMERS

from .choices import WEB_PRECISIONS
from .export.web import write_page
from .hub import STOCK_SUBFOLDER
from .loading import local_folder, model_family, trained_mode
from .whole_writes import build_folder, check_new_folder

GRADIO_VERSION = "6.31.0"  # the Gradio the Space's app is tested with (tests/test_web.py)
# And the Python, CI's: a Space runs 3.10 unless its README names another. A string: YAML reads 3.10 as 3.1.
PYTHON_VERSION = "3.11"


def prepare_space(output_dir: str, repo_id: str, space_id: str, family: str, license_id: str = "mit",
                  mode: str = "chat") -> Path:
    """Build, in `output_dir` (new or empty), a Gradio Space that chats with the model repository `repo_id`:
    app.py, requirements.txt (torch, transformers, gradio; not pocketlm) and a README with the Space's metadata.
    `mode` is chat.py's: "text" for a model trained on plain text, which the app asks to continue what is typed."""
    template = resources.files("pocketlm").joinpath("space_app.py").read_text(encoding="utf-8")
    app = template
    for variable, default, value in (("POCKETLM_MODEL", "pocketlm/model", repo_id), ("POCKETLM_MODE", "chat", mode)):
        line = f'os.environ.get("{variable}", "{default}")'
        if line not in app:  # a packaging mistake, not user input
            raise RuntimeError(f"pocketlm/space_app.py lost its {variable} line")
        app = app.replace(line, f'os.environ.get("{variable}", "{value}")')
    readme = _readme(space_id, repo_id, license_id, {"sdk": "gradio", "sdk_version": GRADIO_VERSION,
                                                    "python_version": PYTHON_VERSION, "app_file": "app.py"},
                     f"A Gradio chat with [{repo_id}](https://huggingface.co/{repo_id}), a small language model trained "
                     "with pocketlm. The app loads the model with `trust_remote_code=True` and needs only torch, "
                     "transformers and gradio.")

    def write(target: Path) -> None:
        (target / "app.py").write_text(app, encoding="utf-8")
        (target / "requirements.txt").write_text(
            f"torch\ntransformers>={MIN_TRANSFORMERS[family]}\ngradio=={GRADIO_VERSION}\n", encoding="utf-8")
        (target / "README.md").write_text(readme, encoding="utf-8")

    return _build(Path(output_dir), "--space-output-dir", write)


def prepare_static_space(output_dir: str, repo_id: str, space_id: str, model_dir: str, license_id: str = "mit",
                         precision: str = WEB_PRECISIONS[0]) -> Path:
    """Build, in `output_dir` (new or empty), a static Space (`sdk: static`) whose page chats with the model in the
    visitor's browser, loading its ONNX graph of `precision` from the model repository `repo_id`."""
    from transformers import AutoConfig

    family = model_family(model_dir)
    window = getattr(AutoConfig.from_pretrained(local_folder(model_dir)), "max_position_embeddings", None)
    hub = {"repo": repo_id, "revision": "main", "subfolder": STOCK_SUBFOLDER if family == "transformer" else ""}
    readme = _readme(space_id, repo_id, license_id, {"sdk": "static", "app_file": "index.html"},
                     f"A chat with [{repo_id}](https://huggingface.co/{repo_id}), a small language model trained with "
                     "pocketlm, that runs in your browser: the page fetches the model's ONNX graph from its repository "
                     "once, and nothing you type leaves the page.")

    def write(target: Path) -> None:
        write_page(target, family, repo_id, window, precision, hub=hub, mode=trained_mode(model_dir))
        (target / "README.md").write_text(readme, encoding="utf-8")

    return _build(Path(output_dir), "--static-space-output-dir", write)


def _readme(space_id: str, repo_id: str, license_id: str, sdk: dict, body: str) -> str:
    metadata = {"title": space_id.split("/")[-1], "emoji": "💬", "colorFrom": "indigo", "colorTo": "blue", **sdk,
                "pinned": False, "license": license_id, "models": [repo_id],
                "short_description": "Chat with a small language model trained with pocketlm"}
    return ("---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n\n"
            f"# Chat with {repo_id}\n\n{body}\n")


def _build(target: Path, flag: str, write) -> Path:
    """Run `write` into `target`, new or empty, whole or not at all: a failed or interrupted write leaves no
    half-built folder to upload by mistake (whole_writes.build_folder)."""
    check_new_folder(target, flag)
    build_folder(target, write, flag, what="Space folder")
    return target
