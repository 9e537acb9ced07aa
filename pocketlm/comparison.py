"""Models side by side on one number: bits per character on the same text, with their size, decoding speed and
replies to the same prompts under one seed. `compare.py` prints it as a table, writes it as markdown and draws it.

Bits per character divides the summed loss by the text's characters, not tokens, so an LSTM reading characters
and a Transformer reading BPE tokens compare on it.
"""

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch

from tokenization import first_change

from . import data
from .errors import UsageError
from .choices import BALANCED_SAMPLING
from .generation import (SAMPLE_QUESTIONS, chat_reply, complete, context_window, fit_to_context,
                         sampling_arguments)
from .adapters import adapter_of
from .loading import (as_model, default_runtime, export_record, holds_only_graphs, is_gpt2, load_pretrained,
                      local_folder, model_family, trained_mode, training_summary)
from .scoring import bits_per_character
from .wording import in_markdown

DEFAULT_PROMPTS = SAMPLE_QUESTIONS[:3]
SPEED_TOKENS = 64  # new tokens per timed generation
SPEED_ROUNDS = 3  # timed generations per model; the median counts


@dataclass
class ModelReport:
    """What `compare_models` measured of one model."""

    name: str
    family: str
    parameters: int
    disk_bytes: int
    bits_per_char: float
    tokens_per_second: float
    time_to_first_token: float  # seconds
    replies: list[str] = field(default_factory=list)
    # The first stretch of the scored text its tokenizer gives back changed, and as what (a WordPiece lowercases):
    # it scores only what it keeps, against every character. None when it keeps them all.
    changed_text: tuple[str, str] | None = None


# ------------------------------------------------------------------------------------------------ the text


def comparison_text(models: list[str], paths: list[str] | None = None, dataset: str | None = None,
                    text_column: str | None = None, dataset_config: str | None = None
                    ) -> tuple[datasets.Dataset, str]:
    """The documents every model is scored on, and what they are in words.

    `paths` or `dataset` when given (all of it, deduplicated, its text in `text_column` where given, `dataset` in
    its configuration `dataset_config`); else the validation documents held out by the run of the first of
    `models` that pocketlm trained (`compare.py gpt2 models/gpt2-tuned` scores both on the fine-tune's), read again
    from the data its training summary names; else the built-in corpus's validation split.
    """
    if paths or dataset:
        report = data.ReadReport()
        documents, source = data.load_documents(paths, dataset, report=report, text_column=text_column,
                                                dataset_config=dataset_config)
        documents = data.deduplicate(data.keep_readable_records(documents, report), report=report)
        if len(documents) == 0:
            raise UsageError(f"{source}: holds no usable text to score the models on ({report.describe()}).")
        return documents, source
    runs = ((model, training_summary(model).get("options")) for model in models)
    trained, options = next(((model, options) for model, options in runs if options), (None, None))
    if options:  # a pocketlm run: its data, split again by its seed, gives back its validation documents
        try:
            corpus = data.load_corpus(options.get("data"), options.get("dataset"), options.get("seed", 1337),
                                      options.get("validation_data"), text_column=options.get("text_column"),
                                      dataset_config=options.get("dataset_config"))
            return corpus.validation, f"the validation documents of {trained}'s run ({corpus.source})"
        except UsageError:
            pass  # the run's data moved or changed: fall back to the built-in corpus, and say so
    corpus = data.load_corpus(seed=1337)
    return corpus.validation, f"the validation split of the built-in corpus ({data.DEFAULT_CORPUS_NAME})"


def read_prompts(path: str | None) -> list[str]:
    if path is None:
        return list(DEFAULT_PROMPTS)
    try:
        prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--prompts {path}: cannot be read ({getattr(error, 'strerror', None) or error}); "
                         "pass a UTF-8 text file with one prompt per line.")
    if not prompts:
        raise UsageError(f"--prompts {path}: holds no prompt; write one prompt per line.")
    return prompts


# ------------------------------------------------------------------------------------------------ measuring


def _disk_bytes(model_dir: str, model) -> int:
    """Bytes of the weights file(s) as stored (the local folder, or the Hub cache's copy); an export's ONNX graph
    holds its weights."""
    if getattr(model, "graph_file", None) is not None:
        return model.graph_file.stat().st_size
    return sum(f.stat().st_size for f in local_folder(model_dir).glob("*.safetensors"))


@torch.no_grad()
def decoding_speed(model, tokenizer, prompt: str, new_tokens: int = SPEED_TOKENS, rounds: int = SPEED_ROUNDS
                   ) -> tuple[float, float]:
    """Median tokens/s of a `new_tokens`-token sampled reply to `prompt`, and the median time to its first token.
    A prompt longer than the model's window keeps its newest tokens, as the replies' prompts do (`fit_to_context`),
    and a window too small for `new_tokens` times the reply that fits."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False, verbose=False).input_ids.to(model.device)
    ids, new_tokens = fit_to_context(ids, model, new_tokens)
    options = sampling_arguments(model.generation_config, BALANCED_SAMPLING)

    def timed(count: int) -> float:
        started = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=count, min_new_tokens=count,
                       **options)
        return time.perf_counter() - started

    timed(2)  # warm-up: first calls pay for allocations and lazy initialisation
    first = statistics.median(timed(1) for _ in range(rounds))
    whole = statistics.median(timed(new_tokens) for _ in range(rounds))
    return new_tokens / whole, first


def _replies(model, tokenizer, prompts: list[str], is_chat: bool, seed: int, max_new_tokens: int) -> list[str]:
    replies = []
    for prompt in prompts:
        torch.manual_seed(seed)
        if is_chat:
            replies.append(chat_reply(model, tokenizer, [{"role": "user", "content": prompt}], max_new_tokens,
                                      **BALANCED_SAMPLING))
        else:
            replies.append(prompt + complete(model, tokenizer, prompt, max_new_tokens, **BALANCED_SAMPLING))
    return replies


def _scoring_block_size(model, model_dir: str) -> int:
    """The block size the model was validated at in training (so the number matches its own record), else its
    whole context window, else 256 tokens."""
    recorded = training_summary(model_dir).get("options", {}).get("block_size")
    window = context_window(model)
    return min(recorded or window or 256, window or recorded or 256)


def _family_label(model_dir: str, family: str) -> str:
    """The family as the report shows it, saying when the model ran as an export or an adapter merged into its
    model: the comparison a user makes to check one against the other would otherwise show two alike rows."""
    folder = as_model(model_dir)
    if adapter_of(folder) is not None:
        return f"{family}, PEFT adapter"
    if holds_only_graphs(folder):
        return f"{family}, ONNX export in onnxruntime"
    if export_record(folder) is not None:
        return f"{family}, stock GPT-2 export"
    if is_gpt2(folder):  # the Hub's gpt2, or a model repository's gpt2/ folder
        return f"{family}, stock GPT-2"
    return family


def compare_models(models: list[str], documents: datasets.Dataset, prompts: list[str], seed: int = 0,
                   max_new_tokens: int = 60, device: str = "cpu", progress=print) -> list[ModelReport]:
    """Measure every model on the same documents, prompts and seed."""
    models = [os.fspath(model_dir) for model_dir in models]  # Paths from the Python API read as the CLI's strings
    for model_dir in models:
        model_family(model_dir, exports=True, adapters=True)  # every name checked before minutes are spent on the first
    reports = []
    for model_dir in models:
        progress(f"measuring {model_dir} ...")
        # An export of ONNX graphs alone runs in onnxruntime, on the CPU: comparing it with its model checks it.
        runtime = default_runtime(model_dir)
        model, tokenizer = load_pretrained(model_dir, "cpu" if runtime == "onnx" else device, runtime=runtime)
        family = _family_label(model_dir, model_family(model_dir, exports=True, adapters=True))
        score = bits_per_character(model, tokenizer, documents, _scoring_block_size(model, model_dir),
                                   shown_as="scoring")
        is_chat = trained_mode(model_dir, tokenizer) == "chat"
        speed_prompt = (tokenizer.apply_chat_template([{"role": "user", "content": prompts[0]}],
                                                      add_generation_prompt=True, tokenize=False)
                        if is_chat else prompts[0])
        tokens_per_second, first = decoding_speed(model, tokenizer, speed_prompt)
        reports.append(ModelReport(
            name=model_dir, family=family, parameters=model.num_parameters(),
            disk_bytes=_disk_bytes(model_dir, model), bits_per_char=score["bits_per_char"],
            tokens_per_second=tokens_per_second, time_to_first_token=first,
            replies=_replies(model, tokenizer, prompts, is_chat, seed, max_new_tokens),
            changed_text=first_change(tokenizer, (row["text"] for row in documents)),
        ))
    return reports


# ------------------------------------------------------------------------------------------------ showing


def _size(count: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.2f}{suffix}{unit}"
    return f"{count:.0f}{unit}"


def table_rows(reports: list[ModelReport]) -> list[list[str]]:
    header = ["model", "family", "parameters", "size on disk", "bits/char", "tokens/s", "first token"]
    rows = [[r.name, r.family, _size(r.parameters), _size(r.disk_bytes, "B"),
             f"{r.bits_per_char:.3f}{'*' if r.changed_text else ''}",
             f"{r.tokens_per_second:,.0f}", f"{r.time_to_first_token * 1000:.1f} ms"] for r in reports]
    return [header, *rows]


def footnotes(reports: list[ModelReport]) -> list[str]:
    """A line for each score marked with *: a tokenizer that changes the text scores fewer characters than it
    is charged for, so its bits per character read lower than they would keeping them all."""
    return [f"* {r.name}: its tokenizer does not give back the text ({r.changed_text[0]!r} comes back as "
            f"{r.changed_text[1]!r}), so its bits per character count only what it keeps: not comparable"
            for r in reports if r.changed_text]


def terminal_table(reports: list[ModelReport]) -> str:
    rows = table_rows(reports)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in rows)


# What marks a report and a chart as compare.py's own, which a later comparison may replace.
REPORT_TITLE = "# Model comparison"
CHART_SOFTWARE = "pocketlm compare.py"


def check_replaceable(output: Path, chart: Path) -> None:
    """Refuse, before any work, a report or chart path that holds a file compare.py did not write: `--output
    notes.md` replaced the notes. An earlier comparison's report (its title) and chart (its PNG's Software text,
    or, from before that was written, the report's link to it) are replaced."""
    ours = output.is_file() and output.read_bytes().startswith(REPORT_TITLE.encode() + b"\n")
    if output.exists() and not ours:
        raise UsageError(f"{output} exists and compare.py did not write it: pick another --output, or move it away.")
    if chart.exists() and not (_chart_software(chart) == CHART_SOFTWARE or
                               ours and f"]({chart.name})" in output.read_text(encoding="utf-8", errors="replace")):
        raise UsageError(f"{chart} exists and compare.py did not write it: pick another --chart (the chart's path, by "
                         f"default the report's with .png), or move it away.")


def _chart_software(path: Path) -> str | None:
    """The Software text of a PNG file, None for any other file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.info.get("Software")
    except (OSError, UnidentifiedImageError):
        return None


def markdown(reports: list[ModelReport], text: str, prompts: list[str], seed: int, chart: str | None) -> str:
    rows = table_rows(reports)
    lines = [REPORT_TITLE, "",
             f"Bits per character on {text} (lower is better); decoding speed of a {SPEED_TOKENS}-token sampled reply, "
             f"median of {SPEED_ROUNDS}; replies sampled with seed {seed}.", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]]
    if footnotes(reports):
        lines += ["", *(f"\\{line}" for line in footnotes(reports))]
    if chart:
        lines += ["", f"![bits per character and decoding speed]({chart})"]
    lines += ["", "## Replies"]
    for index, prompt in enumerate(prompts):
        lines += ["", f"**{in_markdown(prompt)}**", ""]
        lines += [f"- `{r.name}`: {in_markdown(r.replies[index]) or '(an empty reply)'}".replace("\n", " ")
                  for r in reports]
    return "\n".join(lines) + "\n"


def draw_chart(reports: list[ModelReport], path: Path) -> None:
    """Bits per character (the one number) and decoding speed, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [Path(r.name).name or r.name for r in reports]
    figure, (score, speed) = plt.subplots(1, 2, figsize=(10, 0.6 * len(reports) + 1.6))
    for axes, values, label, fmt in ((score, [r.bits_per_char for r in reports], "bits per character (lower is better)",
                                      "{:.3f}"),
                                     (speed, [r.tokens_per_second for r in reports], "decoding tokens/s", "{:,.0f}")):
        bars = axes.barh(names, values, color="#4c72b0")
        axes.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3)
        axes.set_xlabel(label)
        axes.invert_yaxis()
        axes.margins(x=0.25)
    speed.set_yticklabels([])
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": CHART_SOFTWARE})  # a later comparison may replace it
    plt.close(figure)
