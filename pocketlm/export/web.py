"""A static chat page that runs the model in the reader's browser: no server beyond one that serves files, no Python.

    site/
        index.html, chat.js, style.css     the page (web_page/; chat.js follows the terminal chat's rules)
        pocketlm.json                      what the page runs: the family, the model's name and files, defaults
        model/                             the ONNX graph (int8 by default), its config and tokenizer
        vendor/                            transformers.js and onnxruntime-web, copied from their npm packages

The JavaScript is vendored, not fetched from a CDN, so the page works with no network beyond its own server and
keeps working offline once loaded. It comes from the npm packages pinned by web_page/package-lock.json, installed
once with `npm ci` into pocketlm's cache; only the four files the page loads are copied into each page, and their
licences with them (THIRD_PARTY_NOTICES.txt). The GPT runs through transformers.js (its text-generation pipeline and
the tokenizer's chat template); the LSTM, an architecture transformers.js does not know, through onnxruntime-web and
a short loop in chat.js, with transformers.js's tokenizer, which reads any the model was trained with. Both use onnxruntime-web's WebAssembly build without WebGPU, half the size of the one
transformers.js asks for by default.
"""

import hashlib
import html
import json
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from tokenization import END_OF_TEXT, END_OF_TURN

from ..errors import UsageError
from ..choices import BALANCED_SAMPLING, DEFAULT_MAX_NEW_TOKENS, OPTION_RANGES
from ..generation import context_window
from ..home import HOME, unusable
from ..loading import trained_mode
from ..run_folder import WEB_PAGE_FILE
from ..whole_writes import write_folder_whole
from .onnx import FLOAT32_FILE, INT8_FILE, ONNX_DIR

PAGE = resources.files("pocketlm.export") / "web_page"
PAGE_FILES = ("index.html", "chat.js", "style.css")
MODEL_DIR = "model"
VENDOR_DIR = "vendor"
NPM_CACHE = HOME / "web"
# What the page loads from the npm packages: both families read their tokenizer with transformers.js (the GPT runs
# in it too) and share onnxruntime-web's WebAssembly build.
RUNTIME_FILES = ("onnxruntime-web/dist/ort.wasm.bundle.min.mjs", "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
                 "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm")
TRANSFORMERS_JS = "@huggingface/transformers/dist/transformers.web.min.js"
PRECISIONS = {"int8": ("q8", INT8_FILE), "float32": ("fp32", FLOAT32_FILE)}  # transformers.js's name, the graph


def npm_packages() -> Path:
    """The page's npm packages (node_modules), installed once from the committed lockfile into pocketlm's cache,
    under a folder named by the lockfile's digest, so a changed lockfile installs afresh."""
    lock = PAGE / "package-lock.json"
    folder = NPM_CACHE / hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    if (folder / "node_modules" / TRANSFORMERS_JS).is_file():
        return folder / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise UsageError("the web page's JavaScript comes from npm packages (pinned in pocketlm's "
                         "export/web_page/package-lock.json): install Node.js 18 or newer with npm, then export again.")
    try:
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise unusable(NPM_CACHE, error, "the web page's npm packages") from None
    print(f"fetching the page's JavaScript from npm (once; kept in {folder}) ...", file=sys.stderr)
    started = time.perf_counter()

    def install(scratch: Path) -> None:
        scratch.mkdir()
        for name in ("package.json", "package-lock.json"):
            (scratch / name).write_bytes((PAGE / name).read_bytes())
        # --ignore-scripts: nothing is built or downloaded beyond the registry's tarballs (onnxruntime-node, which
        # transformers.js pulls in for Node.js, would fetch GPU binaries from elsewhere).
        done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=scratch,
                              capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["npm ci failed"])[-1]
            raise UsageError(f"could not fetch the page's JavaScript with npm ({reason}): check that the npm "
                             "registry can be reached, then export again.")

    shutil.rmtree(folder, ignore_errors=True)  # an install an older pocketlm left unfinished there
    # Placed whole: another export's first fetch, at the same time, may place the packages first and be copying
    # from them.
    write_folder_whole(folder, install)
    print(f"fetched in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return folder / "node_modules"


def write_page(folder: Path, family: str, name: str, window: int | None, precision: str,
               hub: dict | None = None, mode: str = "chat") -> None:
    """The page's own files, its settings and the vendored JavaScript into `folder`. `hub` (repo, revision,
    subfolder) points the page at a model repository instead of a `model/` folder beside it. `mode` is chat.py's:
    "text" for a model trained on plain text, which the page asks to continue what is typed."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --web-precision {precision!r}: choose {', '.join(PRECISIONS)}.")
    modules = npm_packages()
    folder.mkdir(parents=True, exist_ok=True)
    for file_name in PAGE_FILES:
        text = (PAGE / file_name).read_text(encoding="utf-8")
        (folder / file_name).write_text(text.replace("{{name}}", html.escape(name)), encoding="utf-8")
    dtype, graph = PRECISIONS[precision]
    settings = {
        "family": family, "name": name, "model": MODEL_DIR, "hub": hub, "dtype": dtype, "graph": graph,
        "window": window, "use_context": family == "transformer",  # the LSTM answers each message on its own
        "mode": mode,
        "defaults": {**BALANCED_SAMPLING, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS}, "ranges": OPTION_RANGES,
        "stop_tokens": [END_OF_TEXT, END_OF_TURN],
    }
    (folder / WEB_PAGE_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    vendor = folder / VENDOR_DIR
    vendor.mkdir(exist_ok=True)
    for source in (*RUNTIME_FILES, TRANSFORMERS_JS):
        shutil.copy2(modules / source, vendor / Path(source).name)
    (vendor / "THIRD_PARTY_NOTICES.txt").write_text(_notices(modules), encoding="utf-8")


def write_web(model, tokenizer, family: str, folder: Path, name: str, precision: str = "int8") -> None:
    """The whole page for `model`, its ONNX graph of `precision` in model/ beside it, in the mode the model was
    trained for."""
    from . import write_onnx_model

    mode = trained_mode(model)
    write_page(folder, family, name, context_window(model), precision, mode=mode)
    # model/ is a transformers.js model of its own: a plain text model's carries no template, as no export does.
    write_onnx_model(model, tokenizer, family, folder / MODEL_DIR, is_chat=mode == "chat")
    unused = PRECISIONS["float32" if precision == "int8" else "int8"][1]
    (folder / MODEL_DIR / ONNX_DIR / unused).unlink()  # one graph is enough: the page loads only its own


def _notices(modules: Path) -> str:
    """What is copied from whom, under which licence, with the licences' texts."""
    packages = [("@huggingface/transformers", "Apache-2.0", "Copyright Hugging Face"),
                ("onnxruntime-web", "MIT", "Copyright (c) Microsoft Corporation")]
    lines = ["pocketlm's chat page copies these files, unchanged, from the npm packages below.", ""]
    for package, licence, holder in packages:
        version = json.loads((modules / package / "package.json").read_text())["version"]
        lines.append(f"{package} {version} ({licence}, {holder})")
    lines += ["", "=" * 79, "", MIT_LICENCE.strip()]
    lines += ["", "=" * 79, "", (modules / "@huggingface/transformers/LICENSE").read_text().strip()]
    return "\n".join(lines) + "\n"


MIT_LICENCE = """
onnxruntime-web: MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation the
rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the
Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""
