"""Which transformers releases run a saved pocketlm model: each in its own virtualenv, without pocketlm.

For every version asked for, a virtualenv gets torch and that transformers (with the tokenizers and hub it asks
for); a tiny model of each family, saved by this checkout with its tokenizer, is loaded there through
`trust_remote_code` and decodes greedily. The table says, per family, whether the tokens equal this environment's,
or the one line the model's code raised. Below a family's MIN_TRANSFORMERS that line must name the version to
install; at or above it, the tokens must be the same. A third column loads the GPT's stock GPT-2 export
(`export.py --format transformers`) without remote code: the folder meant for every other tool, 4.x ones
included, must decode the GPT's own tokens there too. With `--optimum`, a fourth runs the GPT's ONNX export through
optimum's ORTModelForCausalLM, installed where optimum-onnx allows (transformers < 4.58, so not beside pocketlm).
Each is called as users call it: everything the tokenizer returns goes to the model.

    python bench/transformers_versions.py                          # 4.46.3 4.57.6 5.0.0 5.10.4 5.17.0 5.23.0, this one
    python bench/transformers_versions.py --versions 5.17.0 --keep /tmp/venvs   # reuse virtualenvs between runs
    python bench/transformers_versions.py --versions 4.57.6 --optimum --keep /tmp/venvs
"""

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch
import transformers
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from modeling import GPTConfig, GPTForCausalLM, LSTMConfig, LSTMForCausalLM  # noqa: E402
from modeling.gpt.configuration_gpt import MIN_TRANSFORMERS as GPT_MINIMUM  # noqa: E402
from modeling.lstm.configuration_lstm import MIN_TRANSFORMERS as LSTM_MINIMUM  # noqa: E402
from pocketlm.export import export  # noqa: E402
from tokenization import save_tokenizer, train_bpe_tokenizer, train_char_tokenizer  # noqa: E402

FAMILIES = ("transformer", "lstm", "gpt2 export", "onnx export (optimum)")
OPTIMUM_BELOW = "4.58"  # optimum-onnx's own pin on transformers

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 30
LOAD = textwrap.dedent(
    """
    import json, sys
    import torch, transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    results = {}
    for family, folder in json.loads(sys.argv[1]).items():
        remote_code = family in ("transformer", "lstm")  # the exports must load as any GPT-2 does
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote_code)
            if family == "onnx export (optimum)":
                try:
                    from optimum.onnxruntime import ORTModelForCausalLM
                except ImportError:
                    results[family] = f"not installed here (optimum-onnx: transformers < {sys.argv[2]})"
                    continue

                model = ORTModelForCausalLM.from_pretrained(folder, subfolder="onnx", file_name="model.onnx")
            else:
                model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote_code).eval()
            # As users call it: everything the tokenizer returns goes to the model.
            inputs = tokenizer("To be, or not", return_tensors="pt")
            with torch.no_grad():
                results[family] = model.generate(**inputs, max_new_tokens=16, do_sample=False)[0].tolist()
        except Exception as error:
            results[family] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    print("RESULT", transformers.__version__, json.dumps(results))
    """
)


def save_models(folder: Path) -> dict[str, tuple[str, list[int]]]:
    """Tiny models of both families with their tokenizers; each folder and its greedy tokens here."""
    saved = {}
    for family in ("transformer", "lstm"):
        torch.manual_seed(0)
        tokenizer = train_bpe_tokenizer([TEXT], vocab_size=300) if family == "transformer" else train_char_tokenizer([TEXT])
        if family == "transformer":
            model = GPTForCausalLM(GPTConfig(vocab_size=len(tokenizer), block_size=64, n_layer=2, n_head=2, n_embd=32))
        else:
            model = LSTMForCausalLM(LSTMConfig(vocab_size=len(tokenizer), embedding_dim=16, hidden_size=32))
        target = folder / family
        model.eval().save_pretrained(target)
        save_tokenizer(tokenizer, target)
        ids = tokenizer("To be, or not", return_tensors="pt").input_ids
        with torch.no_grad():
            saved[family] = (str(target), model.generate(ids, max_new_tokens=16, do_sample=False)[0].tolist())
    export(saved["transformer"][0], "transformers", folder / "gpt2-export")
    saved["gpt2 export"] = (str(folder / "gpt2-export"), saved["transformer"][1])  # the GPT's own tokens
    export(saved["transformer"][0], "onnx", folder / "onnx-export")
    saved["onnx export (optimum)"] = (str(folder / "onnx-export"), saved["transformer"][1])
    return saved


def virtualenv(version: str, root: Path, optimum: bool) -> Path:
    python = root / f"transformers-{version}" / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(python.parents[1])], check=True)
        # torch 2.13.0's CPU build lies on this disk; the rest comes from the package index.
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}",
                        f"transformers=={version}"], check=True)
    if optimum and Version(version) < Version(OPTIMUM_BELOW):
        subprocess.run([str(python), "-m", "pip", "install", "-q", "optimum-onnx[onnxruntime]",
                        f"transformers=={version}"], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=["4.46.3", "4.57.6", "5.0.0", "5.10.4", "5.17.0", "5.23.0"])
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the virtualenvs in this folder")
    parser.add_argument("--optimum", action="store_true",
                        help=f"install optimum-onnx where transformers < {OPTIMUM_BELOW} and run the ONNX export there")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        saved = save_models(Path(scratch) / "models")
        folders = json.dumps({family: folder for family, (folder, _) in saved.items()})
        rows = []
        for version in [*args.versions, "this environment"]:
            python = Path(sys.executable) if version == "this environment" else virtualenv(version, root,
                                                                                             args.optimum)
            # A clean process outside the checkout, so only the saved folders' own code is found.
            result = subprocess.run([str(python), "-c", LOAD, folders, OPTIMUM_BELOW], capture_output=True,
                                    text=True, cwd=scratch, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                      "HF_MODULES_CACHE": str(Path(scratch) / f"modules-{version}")})
            line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT")), None)
            if line is None:
                rows.append((version, {"error": result.stderr.strip().splitlines()[-1][:200]}))
                continue
            _, found, outcome = line.split(" ", 2)
            rows.append((found, json.loads(outcome)))
    print(f"saved by transformers {transformers.__version__}; minimum: GPT {GPT_MINIMUM}, LSTM {LSTM_MINIMUM}")
    print(f"{'transformers':<14}" + "".join(f"{family:<44}" for family in FAMILIES))
    for version, outcome in rows:
        cells = []
        for family in FAMILIES:
            value = outcome.get(family, outcome.get("error"))
            cells.append("same tokens" if value == saved[family][1] else str(value))
        print(f"{version:<14}" + "".join(f"{cell[:42]:<44}" for cell in cells))


if __name__ == "__main__":
    main()
