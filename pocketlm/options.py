"""What a training run is told: every option, its default, its help and its check, in one place.

`train.py`'s command line is generated from these fields, so the library and the command line cannot disagree.
Each default lives once: here when it is the same for both families, in the family's recipe (`configs/*.json`)
when it is not; a field whose default is None is filled from the recipe by `resolve_options`.
"""

import argparse
import dataclasses
import difflib
import inspect
import json
import math
import numbers
import os
import re
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from configs import load_recipe

# The command line's choices (the checks below ask modeling) and the seed's range, every command's.
from .choices import DEVICES, MODEL_SIZES, MODEL_TYPES, check_seed
from .errors import WEB_ADDRESS, UsageError, require_extra, web_address_said
from .wording import a_family

RECIPE = "recipe: configs/<model-type>.json"


# A comma starts a new pair only where a KEY= follows, so that a value may hold commas of its own.
_NEXT_PAIR = re.compile(r",\s*(?=[A-Za-z_][A-Za-z0-9_]*=)")


def _key_values(text: str) -> list[tuple[str, object]]:
    """--model-config's KEY=VALUE, or several joined by commas as run_clm.py's --config_overrides takes them; a value
    is read as JSON when it is JSON (numbers, booleans), else as text."""
    pairs = []
    for pair in _NEXT_PAIR.split(text.strip()):
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            # --model-config takes every word up to the next option: a file left after it was meant for --data.
            file = f"; a file is named with its option, --data {text}" if Path(text).expanduser().exists() else ""
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. n_layer=4, or n_layer=4,n_embd=128), got "
                                             f"{text!r}{file}")
        try:
            pairs.append((key.strip(), json.loads(value)))
        except ValueError:
            pairs.append((key.strip(), value))
    return pairs


def _whole_or_fraction(text: str) -> int | float:
    """A number of passes as the Trainer's num_train_epochs takes it, 0.5 too; a whole one stays an int, so a run's
    record and resume command say `--epochs 30`, not 30.0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of passes such as 3 or 0.5, got {text!r}") from None
    return int(value) if value.is_integer() else value


def option(default, help: str, **argument):
    """A field of TrainingOptions with what `train.py`'s argument for it needs besides its name and default."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, **argument})


@dataclass
class TrainingOptions:
    """Everything `train.py` accepts; None means "the model family's recipe in configs/ decides"."""

    model_type: str | None = option(None, "model family (default: transformer, or --init-from's family)",
                                    choices=MODEL_TYPES)
    model_size: str = option("small", "Transformer preset", choices=MODEL_SIZES)
    # Several paths after one flag, as the shell expands `--data notes/*.txt`, and the flag repeatable.
    data: list[str] | None = option(None, "files, folders or quoted patterns ('notes/**/*.md'): text (.txt, .md, or "
                                    "any other name), records (.jsonl, .json, .csv, .tsv, .parquet), each maybe "
                                    ".gz/.bz2/.xz", action="extend", nargs="+", metavar="PATH")
    dataset: str | None = option(None, "anything datasets.load_dataset takes, or a folder datasets' save_to_disk "
                                       "wrote, with a text or messages column (or TRL's, Alpaca's or ShareGPT's)",
                                 metavar="NAME_OR_PATH")
    dataset_config: str | None = option(None, "the configuration of --dataset to read, where it has several "
                                              "(wikitext's wikitext-2-raw-v1)", metavar="NAME")
    text_column: str | None = option(None, "the column or key of --data's records (CSV, JSON, Parquet) or --dataset's "
                                           "rows that holds the text, a string, or a conversation, a list of "
                                           "messages, where it is not 'text' (a CSV's 'content', a dataset's 'story')",
                                     metavar="NAME")
    streaming: bool = option(False, "read the data as a stream, never whole, for corpora larger than memory "
                                    "(needs --max-steps)", action="store_true")
    validation_data: list[str] | None = option(
        None, "validate on these files or folders instead of a held-out 10%% of the data", action="extend",
        nargs="+", metavar="PATH")
    output_dir: str | None = option(None, "where the model goes (default: models/lstm or models/transformer-<size>; "
                                          "with --init-from, models/<its name>-tuned)")
    epochs: float | None = option(None, f"passes over the training data, a fraction too (0.5) ({RECIPE})",
                                  type=_whole_or_fraction)
    max_steps: int | None = option(None, "optimizer steps; wins over --epochs", type=int)
    lr: float | None = option(None, f"peak learning rate ({RECIPE})", type=float)
    warmup_steps: int | None = option(None, "steps of linear warm-up before the cosine decay, at most a tenth of the "
                                            f"run ({RECIPE})", type=int)
    min_lr_ratio: float | None = option(None, f"where the cosine decay ends, as a fraction of --lr ({RECIPE})",
                                        type=float)
    weight_decay: float | None = option(None, f"AdamW weight decay on weight matrices ({RECIPE})", type=float)
    grad_clip: float | None = option(None, f"clip the gradients' norm to this, 0 for no clipping ({RECIPE})",
                                     type=float)
    batch_size: int | None = option(None, f"blocks per device per micro-step ({RECIPE})", type=int)
    block_size: int | None = option(None, "tokens per training block (default: the preset's context, or "
                                          f"--init-from's model's; lstm: {RECIPE})", type=int)
    grad_accum: int = option(1, "micro-steps per optimizer step", type=int)
    mixed_precision: str = option("no", "autocast precision", choices=["no", "fp16", "bf16"])
    device: str = option("auto", "where to train: auto (a CUDA GPU when one is visible, else the CPU), cpu (with a GPU "
                                 "there too) or cuda", choices=DEVICES)
    save_every: int | None = option(None, "steps between checkpoints (default: about four per run, at most the "
                                          "recipe's)", type=int)
    eval_every: int | None = option(None, "steps between validation passes (default: about ten per run, at most the "
                                          "recipe's)", type=int)
    eval_tokens: int = option(65_536, "validation tokens an evaluation scores: past this, a fixed sample of blocks "
                                        "drawn once per run (0: all of them)", type=int)
    keep_checkpoints: int = option(3, "how many of the newest checkpoints to keep", type=int)
    seed: int = option(1337, "seed for initialisation, data order and split", type=int)
    resume: bool = option(False, "continue from the newest checkpoint in the output folder", action="store_true")
    overwrite: bool = option(False, "replace the training run in the output folder (its model, checkpoints and "
                                    "records; never a folder no run wrote)", action="store_true")
    auto_resume: bool = option(False, "resume when the output folder has a checkpoint, else start a new run: one "
                                      "command for a job a scheduler may stop and start again", action="store_true")
    accept_changes: bool = option(False, "with --resume, continue although the data or the options that decide the "
                                         "batches changed since the checkpoint", action="store_true")
    tokenizer: str | None = option(None, "use this tokenizer (a folder, or a Hub id: gpt2) instead of training one",
                                   metavar="PATH_OR_REPO")
    vocab_size: int | None = option(None, f"BPE vocabulary size ({RECIPE})", type=int)
    init_from: str | None = option(None, "fine-tune this pocketlm model (a folder, Hub repo id, checkpoint or PEFT "
                                   "adapter), or a stock GPT-2 (gpt2 from the Hub's cache), instead of starting fresh",
                                   metavar="PATH_OR_REPO")
    compile: bool = option(False, "torch.compile the model", action="store_true")
    gradient_checkpointing: bool = option(
        False, "recompute activations in backward instead of keeping them: less memory, slower steps",
        action="store_true")
    assistant_only_loss: bool | None = option(None, f"on conversations, learn only the assistant's replies ({RECIPE})",
                                              action=argparse.BooleanOptionalAction)
    report_to: str = option("none", "also log to TensorBoard", choices=["none", "tensorboard"])
    # Several fields after one flag (`n_layer=4 n_embd=128`, as HfArgumentParser and accelerate take lists), joined
    # by commas as run_clm.py's --config_overrides, or the flag repeated.
    model_config: dict = option(dict, "override model config fields, e.g. n_layer=4, or n_layer=4 n_embd=128 "
                                "(or n_layer=4,n_embd=128); repeatable", type=_key_values, action="extend", nargs="+",
                                metavar="KEY=VALUE")
    samples: int = option(3, "sample outputs to print at the end", type=int)

    def __post_init__(self):
        # The Python API takes paths as a caller has them: `data="book.txt"` was read as the list of its letters
        # ("--data b: no such file"), and a Path object reached the run's JSON records.
        for name in ("data", "validation_data"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                value = [value]
            if isinstance(value, (list, tuple)):  # anything else is named by the type check below
                setattr(self, name, [os.fspath(path) if isinstance(path, os.PathLike) else path for path in value])
        for name in ("dataset", "output_dir", "tokenizer", "init_from"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            # The command line converts its strings by each option's type; a value of another type given from
            # Python went on to fail deep inside (max_steps="3": "'>' not supported between 'str' and 'int'").
            if spec.name != "dataset" and not _is_a(value, spec.type):  # dataset takes a datasets object too
                raise UsageError(f"TrainingOptions({spec.name}={value!r}): {spec.name} takes {_described(spec.type)}.")
            if isinstance(value, numbers.Number) and type(value) not in (bool, int, float):  # numpy's: as Python's
                setattr(self, spec.name, int(value) if isinstance(value, numbers.Integral) else float(value))
        if self.dataset is not None and not isinstance(self.dataset, str):  # a datasets.Dataset object, say
            from .data.reading import dataset_on_disk

            self.dataset = dataset_on_disk(self.dataset)

    def command_line(self) -> str:
        """A `train.py` command that reproduces these options (used in the resume hint)."""
        parts = ["python train.py"]
        for spec in dataclasses.fields(self):
            value, flag = getattr(self, spec.name), "--" + spec.name.replace("_", "-")
            if spec.name in ("resume", "overwrite", "accept_changes", "auto_resume") or value in (None, False, {}) or value == spec.default:
                continue
            if value is True:
                parts.append(flag)
            elif spec.name == "assistant_only_loss":
                parts.append(flag if value else "--no-assistant-only-loss")
            elif spec.name == "model_config":
                parts.extend(f"{flag} " + shlex.quote(f"{k}={v if isinstance(v, str) else json.dumps(v)}")
                             for k, v in value.items())
            elif isinstance(value, list):
                parts.extend(f"{flag} {shlex.quote(str(v))}" for v in value)
            else:
                parts.append(f"{flag} {shlex.quote(str(value))}")
        return " ".join(parts)


def _is_a(value, annotation) -> bool:
    """Whether `value` is of a field's annotated type: None, bool, int (not a bool), float (an int too), str, a
    dict, a list of strings, or a union of those."""
    if isinstance(annotation, types.UnionType):
        return any(_is_a(value, part) for part in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return isinstance(value, list) and all(_is_a(item, typing.get_args(annotation)[0]) for item in value)
    if annotation is float:  # numpy's numbers too
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return isinstance(value, type(None) if annotation is None else annotation)


def _described(annotation) -> str:
    """A field's annotated type in words: "a whole number or None"."""
    if isinstance(annotation, types.UnionType):
        return " or ".join(_described(part) for part in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return "a path or a list of paths"
    return {None: "None", type(None): "None", bool: "True or False", int: "a whole number", float: "a number",
            str: "a string", dict: "a dict of config fields ({'n_layer': 4})"}[annotation]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument per option, named, defaulted and explained by its field."""
    for spec in dataclasses.fields(TrainingOptions):
        argument = dict(spec.metadata)
        default = [] if spec.name == "model_config" else spec.default  # extend's start; the options take a dict
        if default not in (None, False, []):
            argument["help"] += " (default: %(default)s)"
        parser.add_argument("--" + spec.name.replace("_", "-"), default=default, **argument)


def from_arguments(arguments: argparse.Namespace, given: set[str] | None = None) -> TrainingOptions:
    """The options of a command line; for a resume, those not `given` on it are the run's own
    (continuity.continued)."""
    fields = [pair for pairs in arguments.model_config for pair in pairs]  # each value's pairs, in order
    options = TrainingOptions(**{**vars(arguments), "model_config": dict(fields)})
    if given is not None and (options.resume or options.auto_resume):
        from .continuity import continued  # it reads the run's checkpoint: torch, only when resuming

        return continued(options, given)
    return options


# ----------------------------------------------------------------------------------------------- checking


# Options that contradict each other: each pair, and why.
CONTRADICTIONS = [
    ("resume", "overwrite", "--resume continues the run in the folder, --overwrite throws it away: pass one"),
    ("resume", "init_from", "--resume continues a run, --init-from starts a new one from a model: pass one"),
    ("auto_resume", "overwrite", "--auto-resume continues the run in the folder, --overwrite throws it away: pass one"),
    ("auto_resume", "resume", "--auto-resume already resumes when there is a checkpoint: pass one"),
    ("data", "dataset", "--data and --dataset both name the training text: pass one"),
    ("tokenizer", "init_from", "--init-from brings its model's own tokenizer: drop --tokenizer"),
    ("vocab_size", "init_from", "--init-from brings its model's own tokenizer, and so its vocabulary: drop --vocab-size"),
    ("vocab_size", "tokenizer", "--tokenizer's vocabulary is the one it has: drop --vocab-size"),
]
POSITIVE = ("lr", "batch_size", "epochs", "max_steps", "grad_accum", "save_every", "eval_every", "block_size",
            "vocab_size", "keep_checkpoints")
# --grad-clip 0 switches clipping off, as nanoGPT's grad_clip=0.0 and the Trainer's max_grad_norm=0 do.
NOT_NEGATIVE = ("samples", "warmup_steps", "weight_decay", "eval_tokens", "grad_clip")


def resolve_options(options: TrainingOptions) -> TrainingOptions:
    """A copy of `options` with the recipe's defaults filled in; an impossible or contradictory value is refused
    with a message naming the fix."""
    # The model code and the run folder's are imported here, not at the top, so that `train.py --help` and a
    # mistyped option answer before torch and transformers load (seconds).
    from modeling import PRESETS

    from .loading import context_window, model_name
    from .run_folder import default_output_dir, tuned_output_dir

    options = dataclasses.replace(options, model_config=dict(options.model_config))
    for first, second, why in CONTRADICTIONS:
        if getattr(options, first) and getattr(options, second):
            raise UsageError(f"contradictory options: {why}.")
    if options.text_column is not None and not (options.data or options.dataset):  # the built-in dialogs have none
        raise UsageError("--text-column names the column of --data's or --dataset's records that holds the text: add "
                         "one of them, or drop --text-column.")
    if options.dataset_config is not None and not options.dataset:
        raise UsageError("--dataset-config picks a configuration of --dataset: add --dataset, or drop "
                         "--dataset-config.")
    if options.text_column is not None and not options.text_column.strip():
        raise UsageError("--text-column was given an empty name: name the column that holds the text.")
    if options.accept_changes and not (options.resume or options.auto_resume):
        raise UsageError("--accept-changes accepts changes to a run being resumed: add --resume, or drop it.")
    options.model_type = _family(options)
    if options.model_type == "lstm" and options.vocab_size is not None:  # it was ignored in silence
        raise UsageError("--vocab-size sizes the Transformer's BPE; the LSTM reads characters, as many as the text "
                         "holds: drop --vocab-size.")
    if options.tokenizer and not options.resume:  # a resume reads the copy its run kept, wherever this one went
        _check_tokenizer_path(options.tokenizer)
    if options.model_size not in PRESETS:
        raise UsageError(f"unknown model size {options.model_size!r}: choose one of {', '.join(PRESETS)}.")
    if options.device not in DEVICES:
        raise UsageError(f"unknown --device {options.device!r}: choose {', '.join(DEVICES)}.")
    if options.device == "cuda":
        from .loading import resolve_device

        resolve_device("cuda")  # before any work: none visible is said as chat.py says it
    if options.compile:
        _check_compiler()
    for name, values in (("mixed_precision", ("no", "fp16", "bf16")), ("report_to", ("none", "tensorboard"))):
        if getattr(options, name) not in values:
            raise UsageError(f"unknown --{name.replace('_', '-')} {getattr(options, name)!r}: choose "
                             f"{', '.join(values)}.")
    if options.report_to == "tensorboard":  # accelerate would otherwise drop the tracker without a word
        require_extra("tensorboard", ("tensorboard",), "--report-to tensorboard")
    recipe = load_recipe(options.model_type)
    for spec in dataclasses.fields(options):
        if getattr(options, spec.name) is None and spec.name in recipe:
            setattr(options, spec.name, recipe[spec.name])
    _check_model_config(options)
    if options.block_size is None:  # the model's context: --init-from's, else the preset's or --model-config's
        options.block_size = ((context_window(options.init_from) if options.init_from else None)
                              or options.model_config.get("block_size", PRESETS[options.model_size]["block_size"]))
    _check_numbers(options)
    if options.streaming and options.max_steps is None:
        raise UsageError("--streaming reads the corpus without counting it first: pass --max-steps N as well.")
    if options.output_dir is None:
        options.output_dir = str(tuned_output_dir(model_name(options.init_from)) if options.init_from else
                                 default_output_dir(options.model_type, options.model_size))
    if options.init_from:
        _check_output_keeps(options.init_from, options.output_dir)
    return options


def _check_output_keeps(init_from: str, output_dir: str) -> None:
    """Refuse an output folder that is --init-from's model or holds it (its run, for a checkpoint): the run would
    write its model over the one it starts from, and --overwrite would remove that run's checkpoints."""
    from .loading import model_name
    from .run_folder import tuned_output_dir

    base, out = Path(init_from).expanduser(), Path(output_dir).expanduser()
    if base.exists() and (out.resolve() == base.resolve() or out.resolve() in base.resolve().parents):
        raise UsageError(f"--output-dir {output_dir} holds --init-from's model, which this run would replace: pass "
                         f"another --output-dir, or leave it out for {tuned_output_dir(model_name(init_from))}.")


def _family(options: TrainingOptions) -> str:
    """The model family: --model-type, else --init-from's, else the Transformer."""
    import modeling

    from .adapters import adapter_of
    from .loading import check_model_folder, model_family

    if options.init_from:
        # First: an export is named as one, not as a folder missing files; a PEFT adapter starts from its merge, a
        # stock GPT-2 from its weights in pocketlm's GPT.
        found = model_family(options.init_from, adapters=True, imports=True)
        if Path(options.init_from).expanduser().is_dir() and not adapter_of(options.init_from):
            check_model_folder(Path(options.init_from).expanduser())
        if options.model_type and options.model_type != found:
            raise UsageError(f"--init-from {options.init_from} holds {a_family(found)}, not "
                             f"{a_family(options.model_type)}: drop --model-type or pass --model-type {found}.")
        if options.model_size != TrainingOptions.model_size:  # the preset would be ignored in silence
            raise UsageError(f"contradictory options: --init-from's model keeps its own shape: drop --model-size "
                             f"{options.model_size}.")
        return found
    family = options.model_type or "transformer"
    if family not in modeling.MODEL_TYPES:
        raise UsageError(f"unknown model type {family!r}: choose transformer or lstm.")
    if family == "lstm" and options.model_size != TrainingOptions.model_size:  # it was ignored in silence
        raise UsageError(f"--model-size {options.model_size} picks a Transformer preset, and this run trains the lstm: "
                         "add --model-type transformer, or drop --model-size (the LSTM's shape: --model-config "
                         "hidden_size=N,num_layers=N).")
    return family


def _check_compiler() -> None:
    """torch.compile's default backend (inductor) builds the model's kernels with a C++ compiler, and Triton's
    launcher on a GPU with one: without it, a run read its data and stopped at the first step with torch's traceback.
    Asked the way inductor asks (the compiler named by CXX, else g++, runs), before any work."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # a torch that finds its compiler elsewhere says so itself
        return
    try:
        get_cpp_compiler()
    except RuntimeError:  # inductor's InvalidCxxCompiler
        raise UsageError("--compile: torch.compile found no working C++ compiler to build the model's kernels with: "
                         "install g++ (apt-get install g++) or name one in CXX, or drop --compile.") from None


def _check_tokenizer_path(given: str) -> None:
    """A --tokenizer that names a path must be a folder (a saved tokenizer's, or a model's), and one that names a
    Hub repository (`gpt2`, `owner/name`) must be in the cache or on a Hub that can be reached: refused here, before
    the data is read, instead of by transformers as a malformed Hub id or in its words."""
    from .loading import hub_file, is_hub_id
    from .run_folder import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

    path = Path(given).expanduser()
    if path.is_file():
        fix = (f"pass its folder, {path.parent}" if (path.parent / TOKENIZER_FILE).is_file()
               else "pass the folder a tokenizer was saved in (a model folder works)")
        raise UsageError(f"--tokenizer {given} is a file: {fix}.")
    if not path.exists() and WEB_ADDRESS.match(given):
        raise UsageError(f"--tokenizer {web_address_said(given)}")
    if not path.exists() and not is_hub_id(given):
        raise UsageError(f"--tokenizer {given}: no such folder; pass the folder a tokenizer was saved in (a model "
                         "folder works).")
    if not path.exists():
        hub_file(given, TOKENIZER_CONFIG_FILE)


def _check_numbers(options: TrainingOptions) -> None:
    for name in POSITIVE:
        value = getattr(options, name)
        if value is not None and not value > 0:  # also refuses NaN
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}.")
    for name in ("lr", "epochs"):
        if getattr(options, name) is not None and not math.isfinite(getattr(options, name)):
            raise UsageError(f"--{name} must be a finite number, got {getattr(options, name)}.")
    for name in NOT_NEGATIVE:
        if not getattr(options, name) >= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(options, name)}.")
    if not 0 <= options.min_lr_ratio <= 1:
        raise UsageError(f"--min-lr-ratio must be between 0 and 1, got {options.min_lr_ratio}.")
    if options.block_size < 2:
        raise UsageError(f"--block-size must be at least 2 tokens, got {options.block_size}.")
    check_seed(options.seed)


# --model-config fields a new model takes from its tokenizer: set by hand, the model disagrees with its tokenizer
# (an index error in training, or generation that never stops).
FROM_THE_TOKENIZER = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")


# --model-config fields a fine-tuned model may take otherwise than it was trained with: they change no weight
# (nanoGPT's finetuning raises the dropout the same way).
FINE_TUNING_FIELDS = ("dropout",)


def _check_model_config(options: TrainingOptions) -> None:
    """Refuse a --model-config field the family's config does not have (a typo would train the default and save
    the stray key), one the tokenizer decides, one that shapes --init-from's model (which keeps its shape), or a
    value the config refuses: here, before the data is read and the tokenizer trained, not minutes later."""
    from modeling import GPTConfig, LSTMConfig

    config_class = LSTMConfig if options.model_type == "lstm" else GPTConfig
    known = [name for name in inspect.signature(config_class.__init__).parameters if name not in ("self", "kwargs")]
    for name in options.model_config:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            settable = [field for field in known if field not in FROM_THE_TOKENIZER]
            raise UsageError(f"--model-config {name}: the {options.model_type} has no such field; {hint}"
                             f"choose from {', '.join(settable)}.")
        if name in FROM_THE_TOKENIZER:
            fix = "drop it"
            if name == "vocab_size":
                fix = ("drop it: the LSTM's vocabulary is the text's characters" if options.model_type == "lstm"
                       else "set the tokenizer's with --vocab-size")
            raise UsageError(f"--model-config {name}: the model takes it from its tokenizer; {fix}.")
    if options.init_from:
        shaping = [name for name in options.model_config if name not in FINE_TUNING_FIELDS]
        if shaping:
            raise UsageError(f"--model-config {shaping[0]} shapes a new model; --init-from's model keeps its own: "
                             f"with --init-from only {', '.join(FINE_TUNING_FIELDS)} may be set.")
    try:
        if options.model_type == "lstm":
            config_class(**options.model_config)
        else:
            config_class.from_preset(options.model_size, **options.model_config)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--model-config: {error}")
