"""Publish a trained model to the Hugging Face Hub: build the repository folder (model card included), then upload it.

The folder holds only what a Hub model repository needs, and loads anywhere with
`AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)`: the family's source files travel with it.
"""

import os
import re
import shutil
from importlib import resources
from pathlib import Path

import yaml

from modeling import MIN_TRANSFORMERS
from tokenization import save_tokenizer

from .errors import HubError, UsageError
from .generation import sample_outputs
from .loading import check_model_folder, load_pretrained, model_family
from .run_folder import LOSS_CURVE_FILE, SUMMARY_FILE, RunFolder

CARD_FILE = "README.md"


# ------------------------------------------------------------------------------------------------ the folder


def _require_model_folder(model_dir: Path) -> str:
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir} is not a folder: pass the folder train.py wrote, e.g. models/transformer-small.")
    family = model_family(str(model_dir))
    check_model_folder(model_dir)
    return family


_HUB_DATASET_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def public_data_name(summary: dict, override: str | None = None) -> str:
    """What the card says the model was trained on: `override`, else the file and folder names the run recorded,
    never a local path (a user's is /home/<name>/<private folder>)."""
    if override:
        return override
    data = summary.get("data", {})
    if data.get("name"):
        return data["name"]
    options = summary.get("options", {})
    if options.get("dataset"):
        return options["dataset"] if _is_hub_dataset(options["dataset"]) else Path(options["dataset"]).name
    if options.get("data"):
        return ", ".join(Path(path).name for path in options["data"])
    return data.get("source", "unknown text") if not data.get("source", "").startswith(("/", ".", "~")) else "local text"


def _is_hub_dataset(name: str | None) -> bool:
    """A Hub dataset id ("owner/name" or "name"), not a path on this machine."""
    return bool(name) and _HUB_DATASET_ID.fullmatch(name) is not None and not Path(name).expanduser().exists()


def model_card(model, family: str, summary: dict, samples: list[str], repo_id: str, license_id: str,
               has_curve: bool, data_name: str | None = None) -> str:
    """The repository's README.md: YAML metadata the Hub reads, then what a reader needs to use the model."""
    params = sum(p.numel() for p in model.parameters())
    source = public_data_name(summary, data_name)
    dataset_on_hub = summary.get("options", {}).get("dataset")
    dataset_on_hub = dataset_on_hub if _is_hub_dataset(dataset_on_hub) else None
    bpc, ppl = summary.get("best_val_bpc"), summary.get("best_val_ppl")
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "license": license_id,
        "tags": ["pocketlm", "text-generation", "custom_code", "gpt" if family == "transformer" else "lstm"],
    }
    if dataset_on_hub:
        metadata["datasets"] = [dataset_on_hub]
    if bpc is not None:
        metadata["model-index"] = [{
            "name": repo_id.split("/")[-1],
            "results": [{
                "task": {"type": "text-generation", "name": "Text generation"},
                "dataset": {"name": source, "type": dataset_on_hub or "custom"},
                "metrics": [
                    {"type": "bits_per_character", "value": round(bpc, 4), "name": "Validation bits per character"},
                    {"type": "perplexity", "value": round(ppl, 3), "name": "Validation perplexity (per token)"},
                ],
            }],
        }]
    config, minimum = model.config, MIN_TRANSFORMERS[family]
    if family == "transformer":
        architecture = (f"GPT-style decoder-only Transformer: {config.n_layer} pre-norm blocks, width {config.n_embd}, "
                        f"{config.n_head} heads, context window {config.block_size} tokens, byte-level BPE vocabulary "
                        f"of {config.vocab_size} tokens, input and output embeddings tied")
    else:
        architecture = (f"character-level LSTM: {config.num_layers} layers of {config.hidden_size} units, "
                        f"{config.embedding_dim}-wide embeddings, {config.vocab_size} characters and special tokens")
    options = summary.get("options", {})
    hyper = ["model_type", "model_size", "lr", "batch_size", "block_size", "grad_accum", "epochs", "max_steps",
             "mixed_precision", "seed"]
    rows = "\n".join(f"| {name} | {options[name]} |" for name in hyper if options.get(name) is not None)
    sample_text = "\n\n".join(f"```text\n{sample}\n```" for sample in samples)
    curve = f"![training and validation loss]({LOSS_CURVE_FILE})\n" if has_curve else ""
    record = _training_record(summary, rows, source) if summary else (
        f"## Training\n\nNo training record ({SUMMARY_FILE}) was found beside this model.\n")
    body = f"""# {repo_id.split('/')[-1]}

A small language model trained with pocketlm: a {architecture}.
It has {params:,} parameters.

## How to use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)
messages = [{{"role": "user", "content": "Hello!"}}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
reply = model.generate(**prompt, max_new_tokens=60)
print(tokenizer.decode(reply[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True))
```

`trust_remote_code=True` lets transformers run the model's own `configuration_*.py` and `modeling_*.py`, which are
part of this repository. They need torch and transformers>={minimum} (older releases stop with an error naming
this version). With pocketlm installed, `python chat.py --model {repo_id}` chats with it in a terminal.

{record}
{curve}
## Samples

Generated when this repository was prepared (temperature 0.7, top-k 50, top-p 0.9, repetition penalty 1.2):

{sample_text}

## Limitations

This is a small model trained on a small corpus: it imitates the style and vocabulary of its training text, makes
factual and grammatical mistakes, and knows nothing beyond that text. It reflects any biases of its data. Do not
use it for decisions or advice.
"""
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def _documents(data: dict) -> str:
    validation = f"{data['validation_documents']:,} validation documents"
    if data["train_documents"] is None:  # a streamed corpus is never counted
        return f"training documents streamed, {validation}"
    return f"{data['train_documents']:,} training and {validation}"


def _training_record(summary: dict, rows: str, data_name: str) -> str:
    data = summary["data"]
    return f"""## Training data

{data_name}: {_documents(data)}
(exact duplicates removed; split by document, so validation text never appears in training), about
{data['train_tokens']:,} training tokens{' read from a stream' if data.get('streaming') else ''}.

## Training

| setting | value |
|---|---|
{rows}
| steps | {summary['steps']} |
| processes | {summary['num_processes']} |

## Results

| metric | validation |
|---|---|
| loss (nats per token) | {summary['best_val_loss']:.4f} |
| perplexity (per token) | {summary['best_val_ppl']:.2f} |
| bits per character | {summary['best_val_bpc']:.4f} |

Bits per character is the total validation loss in bits divided by the characters of the validation text, so
models with different tokenizers compare on it.
"""


def prepare_folder(model_dir: str, output_dir: str, repo_id: str, license_id: str = "mit", seed: int = 0,
                   data_name: str | None = None) -> Path:
    """Build, in `output_dir` (new or empty), exactly the folder that would be uploaded to `repo_id`.

    `data_name` is what the card calls the training data (default: the file and folder names the run recorded).
    """
    source, target = Path(model_dir), Path(output_dir)
    family = _require_model_folder(source)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} is not an empty folder: choose a new --output-dir, nothing there was touched.")
    model, tokenizer = load_pretrained(str(source))
    summary = RunFolder(source).read_summary()
    is_chat = summary.get("data", {}).get("is_chat", True)
    samples = sample_outputs(model, tokenizer, is_chat, count=3, seed=seed)
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
        # save_pretrained (not a copy) writes auto_map and the family's source files from the installed code.
        model.save_pretrained(target)
        save_tokenizer(tokenizer, target)
        has_curve = RunFolder(source).loss_curve.exists()
        if has_curve:
            shutil.copy2(RunFolder(source).loss_curve, target / LOSS_CURVE_FILE)
        card = model_card(model, family, summary, samples, repo_id, license_id, has_curve, data_name)
        (target / CARD_FILE).write_text(card, encoding="utf-8")
    except OSError as error:
        if created:
            shutil.rmtree(target, ignore_errors=True)  # no half-built folder left to upload by mistake
        raise UsageError(f"cannot write the Hub folder {target} ({error.strerror or error}): "
                         "free some space or choose another --output-dir.")
    return target


# ----------------------------------------------------------------------------------------------- the Space

GRADIO_VERSION = "6.31.0"  # the Gradio the Space's app is tested with (tests/test_web.py)


def prepare_space(output_dir: str, repo_id: str, space_id: str, family: str, license_id: str = "mit") -> Path:
    """Build, in `output_dir` (new or empty), a Gradio Space that chats with the model repository `repo_id`:
    app.py, requirements.txt (torch, transformers, gradio; not pocketlm) and a README with the Space's metadata."""
    target = Path(output_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} is not an empty folder: choose a new --space-output-dir, nothing there was touched.")
    template = resources.files("pocketlm").joinpath("space_app.py").read_text(encoding="utf-8")
    default = 'os.environ.get("POCKETLM_MODEL", "pocketlm/model")'
    if default not in template:
        raise RuntimeError("pocketlm/space_app.py lost its MODEL_ID line")  # a packaging mistake, not user input
    app = template.replace(default, f'os.environ.get("POCKETLM_MODEL", "{repo_id}")')
    minimum = MIN_TRANSFORMERS[family]
    metadata = {"title": space_id.split("/")[-1], "emoji": "💬", "colorFrom": "indigo", "colorTo": "blue",
                "sdk": "gradio", "sdk_version": GRADIO_VERSION, "app_file": "app.py", "pinned": False,
                "license": license_id, "models": [repo_id],
                "short_description": "Chat with a small language model trained with pocketlm"}
    readme = ("---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n\n"
              f"# Chat with {repo_id}\n\nA Gradio chat with [{repo_id}](https://huggingface.co/{repo_id}), a small "
              "language model trained with pocketlm. The app loads the model with `trust_remote_code=True` and "
              "needs only torch, transformers and gradio.\n")
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
        (target / "app.py").write_text(app, encoding="utf-8")
        (target / "requirements.txt").write_text(
            f"torch\ntransformers>={minimum}\ngradio=={GRADIO_VERSION}\n", encoding="utf-8")
        (target / "README.md").write_text(readme, encoding="utf-8")
    except OSError as error:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise UsageError(f"cannot write the Space folder {target} ({error.strerror or error}): choose another folder.")
    return target


# ---------------------------------------------------------------------------------------------------- upload


def resolve_token(token: str | None) -> str:
    """--token, else HF_TOKEN, else a saved `hf auth login`; never printed or written by pocketlm."""
    from huggingface_hub import get_token

    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise UsageError("no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token.")
    return token


def upload(folder: Path, repo_id: str, token: str, private: bool = False, commit_message: str | None = None,
           revision: str | None = None, repo_type: str = "model") -> str:
    """Create `repo_id` (a model repository, or a Gradio Space) if needed and upload `folder`; returns its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        space = {"space_sdk": "gradio"} if repo_type == "space" else {}
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, **space)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision, repo_type=repo_type,
                          commit_message=commit_message or f"Upload pocketlm {repo_type}")
    except OfflineModeIsEnabled:
        raise HubError("the Hub is switched off here (HF_HUB_OFFLINE=1): unset it and connect to upload.")
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401,):
            raise HubError("the Hub rejected the token: log in again with `hf auth login` or pass a valid --token.")
        if status in (403, 404):
            raise HubError(f"no permission to write to {repo_id}: use a repo id under your own name or organisation.")
        raise HubError(f"the Hub answered {status}: {_without(token, str(error).splitlines()[0])}")
    except Exception as error:  # connection refused, DNS failure, timeouts: the HTTP client's own types
        raise HubError(f"could not reach the Hub ({_without(token, type(error).__name__)}): check the connection.")
    return str(url).rstrip("/")


def _without(token: str, text: str) -> str:
    return text.replace(token, "***") if token else text
