"""The model card: the README.md of a model repository on the Hub, YAML metadata first, then what a reader needs.

It names the training data by its file and folder names (or what the user calls it), never by a path of the
machine it was trained on.
"""

import re
from pathlib import Path

import yaml

from modeling import MIN_TRANSFORMERS
from tokenization import CHARACTER_LEVEL, tokenizer_kind

from .run_folder import LOSS_CURVE_FILE, SUMMARY_FILE
from .wording import counted, fenced, in_markdown

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


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
        return options["dataset"] if _is_hub_id(options["dataset"]) else Path(options["dataset"]).name
    if options.get("data"):
        return ", ".join(Path(path).name for path in options["data"])
    return data.get("source", "unknown text") if not data.get("source", "").startswith(("/", ".", "~")) else "local text"


def _is_hub_id(name: str | None) -> bool:
    """A Hub dataset or model id ("owner/name" or "name"), not a path on this machine."""
    return bool(name) and _HUB_ID.fullmatch(name) is not None and not Path(name).expanduser().exists()


def model_card(model, tokenizer, family: str, summary: dict, samples: list[str], repo_id: str, license_id: str,
               has_curve: bool, data_name: str | None = None, formats: list[str] = (),
               gguf_precisions: tuple[str, ...] = ("f32",), is_chat: bool = True) -> str:
    """The repository's README.md: YAML metadata the Hub reads, then what a reader needs to use the model (as a chat,
    or, `is_chat` false, as a text to continue), and how to run each export the repository carries (`formats`, its
    GGUF files in `gguf_precisions`)."""
    source = public_data_name(summary, data_name)
    metadata = card_metadata(family, summary, repo_id, license_id, source, is_chat)
    metadata["tags"] += list(formats)
    sample_text = "\n\n".join(fenced(sample) for sample in samples)
    curve = f"![training and validation loss]({LOSS_CURVE_FILE})\n" if has_curve else ""
    record = _training_record(summary, source) if summary else (
        f"## Training\n\nNo training record ({SUMMARY_FILE}) was found beside this model.\n")
    body = f"""# {repo_id.split('/')[-1]}

A small language model {_how_made(summary)}: a {architecture(model.config, family, tokenizer_kind(tokenizer))}.
It has {sum(p.numel() for p in model.parameters()):,} parameters.

{_how_to_use(repo_id, MIN_TRANSFORMERS[family], is_chat)}
{_elsewhere(repo_id, family, formats, model.config, gguf_precisions, is_chat)}{record}
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


def card_metadata(family: str, summary: dict, repo_id: str, license_id: str, data_name: str,
                  is_chat: bool = True) -> dict:
    """The card's YAML header: what the Hub indexes (library, task, license, tags, data, results). A model trained
    on conversations is tagged "conversational", the Hub's tag for chat models; the repository carries no training
    record, so this tag is how chat.py tells a downloaded plain-text model (loading.trained_on_chat)."""
    dataset_on_hub = summary.get("options", {}).get("dataset")
    dataset_on_hub = dataset_on_hub if _is_hub_id(dataset_on_hub) else None
    config = summary.get("options", {}).get("dataset_config") if dataset_on_hub else None  # wikitext's, say
    bpc, ppl = summary.get("best_val_bpc"), summary.get("best_val_ppl")
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "license": license_id,
        "tags": ["pocketlm", "text-generation", "custom_code", "gpt" if family == "transformer" else "lstm",
                 *(["conversational"] if is_chat else [])],
    }
    if dataset_on_hub:
        metadata["datasets"] = [dataset_on_hub]
    base = summary.get("options", {}).get("init_from")
    if _is_hub_id(base):  # the Hub shows the model it was fine-tuned from, and links the two
        metadata["base_model"] = base
    if bpc is not None:
        metadata["model-index"] = [{
            "name": repo_id.split("/")[-1],
            "results": [{
                "task": {"type": "text-generation", "name": "Text generation"},
                "dataset": {"name": data_name, "type": dataset_on_hub or "custom",
                            **({"config": config} if config else {})},
                "metrics": [
                    {"type": "bits_per_character", "value": round(bpc, 4), "name": "Validation bits per character"},
                    {"type": "perplexity", "value": round(ppl, 3), "name": "Validation perplexity (per token)"},
                ],
            }],
        }]
    return metadata


def architecture(config, family: str, kind: str) -> str:
    """The model's shape in one phrase, with its tokenizer's `kind` (tokenization.tokenizer_kind): pocketlm's own
    is a byte-level BPE for the Transformer and characters for the LSTM, a --tokenizer from elsewhere another."""
    vocabulary = (f"{config.vocab_size} characters and special tokens" if kind == CHARACTER_LEVEL
                  else f"{kind} vocabulary of {config.vocab_size} tokens")
    if family == "transformer":
        return (f"GPT-style decoder-only Transformer: {counted(config.n_layer, 'pre-norm block')}, width "
                f"{config.n_embd}, {counted(config.n_head, 'head')}, context window {config.block_size} tokens, "
                f"{vocabulary}, "
                + ("input and output embeddings tied" if config.tie_word_embeddings else "an output head of its own"))
    return (f"{'character' if kind == CHARACTER_LEVEL else 'token'}-level LSTM: "
            f"{counted(config.num_layers, 'layer')} of {config.hidden_size} units, {config.embedding_dim}-wide "
            f"embeddings, {vocabulary}")


def _how_to_use(repo_id: str, minimum: str, is_chat: bool) -> str:
    """The snippet that runs the model as it was trained: a chat turn through the chat template, or, for a model
    trained on plain text (which never saw the template's role tokens), a text to continue."""
    load = f"""from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)"""
    if is_chat:
        run = """messages = [{"role": "user", "content": "Hello!"}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
reply = model.generate(**prompt, max_new_tokens=60)
print(tokenizer.decode(reply[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True))"""
        terminal = f"`python chat.py --model {repo_id}` chats with it in a terminal"
    else:
        run = """prompt = tokenizer("The ", return_tensors="pt")
text = model.generate(**prompt, max_new_tokens=60)
print(tokenizer.decode(text[0], skip_special_tokens=True))"""
        terminal = (f"`python chat.py --model {repo_id}` continues what you type in a terminal (it was trained on "
                    "plain text, not conversations: give it the start of a text, not a question)")
    return f"""## How to use

```python
{load}
{run}
```

`trust_remote_code=True` lets transformers run the model's own `configuration_*.py` and `modeling_*.py`, which are
part of this repository. They need torch and transformers>={minimum} (older releases stop with an error naming
this version). With pocketlm installed, {terminal}.
"""


def _documents(data: dict) -> str:
    validation = f"{data['validation_documents']:,} validation documents"
    if data["train_documents"] is None:  # a streamed corpus is never counted
        return f"training documents streamed, {validation}"
    return f"{data['train_documents']:,} training and {validation}"


# What the stock GPT-2 of a model trained on plain text lacks, and what serves it (export.write_formats).
_NO_TEMPLATE = """ Trained on plain text, the model has no chat
template: the server's `/v1/completions` continues a text sent to it."""

# Each GGUF precision, as the card says it.
GGUF_WORDS = {"f32": "float32", "f16": "float16", "q8_0": "8-bit Q8_0", "q5_0": "5-bit Q5_0", "q4_0": "4-bit Q4_0",
              "q6_k": "6-bit Q6_K", "q5_k_m": "5-bit Q5_K_M", "q4_k_m": "4-bit Q4_K_M", "q3_k_m": "3-bit Q3_K_M"}


def _elsewhere(repo_id: str, family: str, formats: list[str], config, gguf_precisions: tuple[str, ...],
               is_chat: bool) -> str:
    """How to run each export in its own runtime, with the paths it has in this repository (hub.py's layout); a
    plain-text model's exports carry no chat template (export.write_formats), so they are run as text to continue."""
    if not formats:
        return ""
    name = repo_id.split("/")[-1]
    parts = ["## Run it without pocketlm\n"]
    if "transformers" in formats:
        parts.append(f"""**transformers, no remote code.** `gpt2/` holds this model as a stock GPT-2 (the same weights and
tokenizer; the same greedy tokens):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo_id}", subfolder="gpt2")
tokenizer = AutoTokenizer.from_pretrained("{repo_id}", subfolder="gpt2")
```

An OpenAI-compatible server: `hf download {repo_id} --include "gpt2/*" --local-dir {name}`, then
`transformers serve {name}/gpt2` (with `pip install 'transformers[serving]'`).{"" if is_chat else _NO_TEMPLATE}
""")
    if "gguf" in formats:
        files = ", ".join(f"`{name}-{precision}.gguf` ({GGUF_WORDS[precision]})" for precision in gguf_precisions)
        if is_chat:
            parts.append(f"""**llama.cpp and ollama.** {files}: GPT-2 architecture, with the tokenizer and chat template;
`llama-cli -hf {repo_id} -p "Hello"`, `llama-server -hf {repo_id}` (OpenAI-compatible), or
`ollama run hf.co/{repo_id}`.
""")
        else:
            parts.append(f"""**llama.cpp and ollama.** {files}: GPT-2 architecture, with the tokenizer and no chat template,
as the model was trained on plain text: it continues the text it is given, as with `llama-server -hf {repo_id}`'s
`/completion` endpoint, or `ollama run hf.co/{repo_id}`.
""")
    if "onnx" in formats and family == "transformer":
        parts.append(f"""**onnxruntime and transformers.js.** `gpt2/onnx/model.onnx` (float32) and `model_quantized.onnx`
(int8 weights) take GPT-2's ONNX inputs (`input_ids`, `attention_mask`, `position_ids`,
`past_key_values.{{i}}.key|value`) and return `logits` and `present.{{i}}.key|value`. In JavaScript:

```js
import {{ env, pipeline }} from "@huggingface/transformers";
env.remotePathTemplate = "{{model}}/resolve/{{revision}}/gpt2/";  // the GPT-2 folder of this repository
const chat = await pipeline("text-generation", "{repo_id}", {{ dtype: "q8" }});
```
""")
    if "onnx" in formats and family == "lstm":
        parts.append(f"""**onnxruntime.** `onnx/model.onnx` (float32) and `onnx/model_quantized.onnx` (int8 weights) take
`input_ids` and the state `h`, `c` ({config.num_layers} × batch × {config.hidden_size}, zeros to start) and return
`logits`, `h_out` and `c_out`; feed the state back with each next token (a character, for the character tokenizer):

```python
import numpy as np, onnxruntime
from huggingface_hub import hf_hub_download
from transformers import PreTrainedTokenizerFast

session = onnxruntime.InferenceSession(hf_hub_download("{repo_id}", "onnx/model.onnx"))
tokenizer = PreTrainedTokenizerFast.from_pretrained("{repo_id}")  # the tokenizer's files alone: no remote code
state = np.zeros(({config.num_layers}, 1, {config.hidden_size}), np.float32)
logits, h, c = session.run(None, {{"input_ids": np.array([tokenizer("Hello")["input_ids"]]), "h": state, "c": state}})
```
""")
    return "\n".join(parts) + "\n"


HYPER_PARAMETERS = ("model_type", "model_size", "model_config", "init_from", "lr", "batch_size", "block_size",
                    "grad_accum", "epochs", "max_steps", "mixed_precision", "seed")


def _how_made(summary: dict) -> str:
    """"trained with pocketlm", or for a fine-tune the model it started from: a Hub id linked to its page (as the
    metadata's base_model links it), a local folder by its name, never its path."""
    base = summary.get("options", {}).get("init_from")
    if not base:
        return "trained with pocketlm"
    named = (f"[{in_markdown(base)}](https://huggingface.co/{base})" if _is_hub_id(base) else
             f"a local model, {in_markdown(Path(base).name)}")
    return f"fine-tuned with pocketlm from {named}"


def _training_record(summary: dict, data_name: str) -> str:
    data, options = summary["data"], dict(summary.get("options", {}))
    if options.get("model_type") == "lstm" or options.get("init_from"):
        options["model_size"] = None  # a Transformer preset, which neither the LSTM nor a fine-tuned model read
    changed = options.get("model_config") or {}  # the preset's fields the run set otherwise
    options["model_config"] = ", ".join(f"{key}={value}" for key, value in changed.items()) or None
    if options.get("init_from"):  # a Hub id as it is; a local folder by its name, never its path
        base = options["init_from"]
        options["init_from"] = base if _is_hub_id(base) else f"a local model, {Path(base).name}"
    rows = "\n".join(f"| {name} | {in_markdown(str(options[name]))} |" for name in HYPER_PARAMETERS
                     if options.get(name) is not None)
    # A file or dataset name is the user's: '#', '*' or '|' in it read as a heading, emphasis or a table cell.
    return f"""## Training data

Trained on {in_markdown(data_name)}: {_documents(data)}
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
