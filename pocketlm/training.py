"""The training loop: a plain accelerate loop from text to a `save_pretrained` folder.

`train(TrainingOptions(...))` is the whole job; `train.py` only parses arguments into the options. The same
code runs on one CPU, one GPU, or under `accelerate launch --num_processes N` (DDP), and resumes exactly.
"""

import contextlib
import difflib
import importlib.util
import inspect
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from configs import load_recipe
from modeling import MODEL_TYPES, PRESETS, GPTConfig, GPTForCausalLM, LSTMConfig, LSTMForCausalLM
from tokenization import save_tokenizer, train_bpe_tokenizer, train_char_tokenizer

from . import data
from .checkpoints import CheckpointManager, FolderLock, full_disk_says, replace_model_files
from .errors import UsageError
from .generation import default_generation_config, sample_outputs
from .loading import check_model_folder, load_pretrained, model_family
from .metrics import MetricsLog
from .progress import Stages
from .scoring import characters_of, sum_token_losses


SHUFFLE_BUFFER_BLOCKS = 1000  # a streamed corpus is shuffled within a window of this many blocks
MAX_NONFINITE_STEPS = 5  # consecutive non-finite losses before the run gives up
LOG_EVERY = 10  # steps between train-loss records in metrics.jsonl
SUMMARY_FILE = "training_summary.json"  # what the run saw and reached, for the model card


class TrainingDiverged(RuntimeError):
    """The loss stayed non-finite: the run stopped, the last good checkpoint and model are untouched."""


@dataclass
class TrainingOptions:
    """Everything `train.py` accepts. `None` means "the model family's recipe in configs/ decides"."""

    model_type: str | None = None  # transformer or lstm; default transformer, or --init-from's family
    model_size: str = "small"
    data: list[str] | None = None
    dataset: str | None = None
    streaming: bool = False  # read the corpus as a stream, never whole (needs max_steps)
    validation_data: list[str] | None = None  # files to validate on instead of a held-out share of the data
    output_dir: str | None = None
    epochs: int | None = None
    max_steps: int | None = None
    lr: float | None = None
    warmup_steps: int | None = None  # linear warm-up, then cosine decay to min_lr_ratio x lr
    min_lr_ratio: float | None = None
    weight_decay: float | None = None  # AdamW's, on matrices only
    batch_size: int | None = None
    block_size: int | None = None
    grad_accum: int = 1
    mixed_precision: str = "no"
    save_every: int | None = None
    eval_every: int | None = None
    seed: int = 1337
    resume: bool = False
    overwrite: bool = False
    tokenizer: str | None = None
    vocab_size: int | None = None
    init_from: str | None = None
    compile: bool = False
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, about a third more time
    assistant_only_loss: bool | None = None  # on conversations, learn only the assistant's replies (recipe)
    report_to: str = "none"
    model_config: dict = field(default_factory=dict)  # overrides of the model config, e.g. {"n_layer": 2}
    keep_checkpoints: int = 3
    samples: int = 3  # sample outputs printed at the end

    def command_line(self) -> str:
        """A `train.py` command that reproduces these options (used in the resume hint)."""
        parts = ["python train.py"]
        for name, value in asdict(self).items():
            default = TrainingOptions.__dataclass_fields__[name].default
            flag = "--" + name.replace("_", "-")
            if name in ("resume", "overwrite") or value in (None, False, {}) or value == default:
                continue
            if value is True:
                parts.append(flag)
            elif name in ("data", "validation_data"):
                parts.extend(f"{flag} {v}" for v in value)
            elif name == "assistant_only_loss":
                parts.append(flag if value else "--no-assistant-only-loss")
            elif name == "model_config":
                parts.extend(f"{flag} {k}={v}" for k, v in value.items())
            else:
                parts.append(f"{flag} {value}")
        return " ".join(parts)


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    best_val_loss: float
    best_val_bpc: float
    tokens_per_second: float
    interrupted: bool = False
    samples: list[str] = field(default_factory=list)


# -------------------------------------------------------------------------------------------- options, model


# Options that contradict each other: each pair, and why.
CONTRADICTIONS = [
    ("resume", "overwrite", "--resume continues the run in the folder, --overwrite throws it away: pass one"),
    ("resume", "init_from", "--resume continues a run, --init-from starts a new one from a model: pass one"),
    ("data", "dataset", "--data and --dataset both name the training text: pass one"),
    ("tokenizer", "init_from", "--init-from brings its model's own tokenizer: drop --tokenizer"),
]


def resolve_options(options: TrainingOptions) -> TrainingOptions:
    """Fill recipe defaults and refuse impossible or contradictory values with a message naming the fix."""
    for first, second, why in CONTRADICTIONS:
        if getattr(options, first) and getattr(options, second):
            raise UsageError(f"contradictory options: {why}.")
    if options.init_from:
        if Path(options.init_from).expanduser().is_dir():
            check_model_folder(Path(options.init_from).expanduser())
        found = model_family(options.init_from)
        if options.model_type and options.model_type != found:
            raise UsageError(f"--init-from {options.init_from} holds a {found} model, not a {options.model_type}: "
                             f"drop --model-type or pass --model-type {found}.")
        options.model_type = found
    options.model_type = options.model_type or "transformer"
    if options.model_type not in MODEL_TYPES:
        raise UsageError(f"unknown model type {options.model_type!r}: choose transformer or lstm.")
    if options.model_size not in PRESETS:
        raise UsageError(f"unknown model size {options.model_size!r}: choose one of {', '.join(PRESETS)}.")
    if options.mixed_precision not in ("no", "fp16", "bf16"):
        raise UsageError(f"unknown --mixed-precision {options.mixed_precision!r}: choose no, fp16 or bf16.")
    if options.report_to not in ("none", "tensorboard"):
        raise UsageError(f"unknown --report-to {options.report_to!r}: choose none or tensorboard.")
    if options.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        # accelerate would otherwise drop the tracker without a word.
        raise UsageError("--report-to tensorboard needs the tensorboard package: pip install 'pocketlm[tensorboard]'.")
    recipe = load_recipe(options.model_type)
    for name in ("lr", "batch_size", "epochs", "vocab_size", "block_size", "assistant_only_loss", "warmup_steps",
                 "min_lr_ratio", "weight_decay"):
        if getattr(options, name) is None:
            setattr(options, name, recipe.get(name))
    if options.block_size is None:
        options.block_size = PRESETS[options.model_size]["block_size"]
    for name in ("lr", "batch_size", "epochs", "max_steps", "grad_accum", "save_every", "eval_every", "block_size",
                 "vocab_size", "keep_checkpoints"):
        value = getattr(options, name)
        if value is not None and not value > 0:  # also refuses NaN
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}.")
    if not math.isfinite(options.lr):
        raise UsageError(f"--lr must be a finite number, got {options.lr}.")
    for name in ("samples", "warmup_steps", "weight_decay"):
        if not getattr(options, name) >= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(options, name)}.")
    if not 0 <= options.min_lr_ratio <= 1:
        raise UsageError(f"--min-lr-ratio must be between 0 and 1, got {options.min_lr_ratio}.")
    if options.streaming and options.max_steps is None:
        raise UsageError("--streaming reads the corpus without counting it first: pass --max-steps N as well.")
    if options.block_size < 2:
        raise UsageError(f"--block-size must be at least 2 tokens, got {options.block_size}.")
    _check_model_config(options)
    if options.output_dir is None:
        suffix = "lstm" if options.model_type == "lstm" else f"transformer-{options.model_size}"
        options.output_dir = str(Path("models") / suffix)
    return options


def _check_model_config(options: TrainingOptions) -> None:
    """Refuse a --model-config field the family's config does not have (a typo would train the default and save
    the stray key), or one that --init-from's model already fixes."""
    config_class = LSTMConfig if options.model_type == "lstm" else GPTConfig
    known = [name for name in inspect.signature(config_class.__init__).parameters if name not in ("self", "kwargs")]
    for name in options.model_config:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"--model-config {name}: the {options.model_type} has no such field; {hint}"
                             f"choose from {', '.join(known)}.")
    if options.init_from and options.model_config:
        raise UsageError("--model-config shapes a new model; --init-from's model keeps its own: drop one of them.")
    dropout = options.model_config.get("dropout")
    if dropout is not None and not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise UsageError(f"--model-config dropout must be at least 0 and below 1, got {dropout}.")


def build_model(options: TrainingOptions, tokenizer, recipe: dict):
    """A fresh model of the chosen family, sized by its preset and the tokenizer's vocabulary."""
    special = {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "dropout": recipe["dropout"],
    }
    try:
        if options.model_type == "lstm":
            return LSTMForCausalLM(LSTMConfig(**{**special, **options.model_config}))
        config = GPTConfig.from_preset(options.model_size, **{**special, **options.model_config})
    except (TypeError, ValueError) as error:
        raise UsageError(f"--model-config: {error}")
    return GPTForCausalLM(config)


def _check_output_path(out: Path) -> None:
    """Refuse an output folder that cannot be created or written, before anything is read or trained."""
    for parent in [out, *out.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--output-dir {out}: {parent} is a file, not a folder; pick another --output-dir.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"--output-dir {out}: {parent} is not writable; pick another --output-dir.")
            return


def _check_output_dir(options: TrainingOptions) -> None:
    """Refuse to clobber another family's model or an earlier run's checkpoints unless asked to."""
    out = Path(options.output_dir)
    config_path = out / "config.json"
    if config_path.exists() and not options.overwrite:
        try:
            found = json.loads(config_path.read_text()).get("model_type")
        except (ValueError, AttributeError):
            raise UsageError(f"{config_path} is not a model's config: pick another --output-dir, or pass --overwrite "
                             "to replace what is there.")
        if found != MODEL_TYPES[options.model_type]:
            raise UsageError(
                f"{out} holds a {found} model, not a {options.model_type}: pick another --output-dir "
                "or pass --overwrite to replace it."
            )
    has_checkpoints = any((out / "checkpoints").glob("step-*"))
    if options.resume and not has_checkpoints:
        raise UsageError(f"--resume: no checkpoint in {out / 'checkpoints'}; drop --resume to start a new run.")
    if has_checkpoints and not options.resume and not options.overwrite:
        raise UsageError(
            f"{out} has checkpoints of an earlier run: pass --resume to continue it or --overwrite to start over."
        )


def _load_or_train_tokenizer(options: TrainingOptions, corpus: data.Corpus, accelerator: Accelerator,
                             stages: Stages):
    out = Path(options.output_dir)
    run_tokenizer = out / ".tokenizer" if (out / ".tokenizer").exists() else out  # gone once a run completes
    source = options.tokenizer or options.init_from or (str(run_tokenizer) if options.resume else None)
    if source:
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise UsageError(f"could not load a tokenizer from {source} ({error}); pass --tokenizer PATH.")
    kind = "character" if options.model_type == "lstm" else f"byte-level BPE ({options.vocab_size:,}-token)"
    with stages.stage("tokenizer", f"training the {kind} tokenizer") as stage:
        if accelerator.is_main_process:
            texts = corpus.tokenizer_texts()
            if options.model_type == "lstm":
                tokenizer = train_char_tokenizer(texts)
            else:
                try:
                    length = None if corpus.streaming else len(texts)
                    tokenizer = train_bpe_tokenizer(texts, vocab_size=options.vocab_size, length=length,
                                                    show_progress=stages.show and sys.stderr.isatty())
                except ValueError as error:
                    raise UsageError(str(error))
            save_tokenizer(tokenizer, out / ".tokenizer")
            stage["done"] = f"{len(tokenizer):,} tokens"
        accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(out / ".tokenizer")


def _enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in backward instead of keeping them (transformers' own mechanism)."""
    # transformers 5.24 renamed it; the old name still works there but warns.
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def _describe_input(options: TrainingOptions) -> str:
    if options.dataset:
        return f"the dataset {options.dataset}"
    if not options.data:
        return f"the built-in corpus, {data.DEFAULT_CORPUS_NAME}"
    return ", ".join(options.data)


# ------------------------------------------------------------------------------------------------- the loop


def _make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # Decay matrices only: decaying biases, norms and embeddings' rows of rare tokens hurts small models.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
    except (RuntimeError, TypeError):  # fused kernels are missing for some device and dtype pairs
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def _make_schedule(optimizer, warmup_steps: int, total_steps: int, min_ratio: float):
    """Linear warm-up, then cosine decay to `min_ratio` of the peak learning rate."""
    warmup_steps = min(warmup_steps, max(1, total_steps // 10))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class BlockBatches:
    """Deterministic batches of training blocks: a seeded shuffle per epoch, sharded across processes.

    Batch k of the whole run is a pure function of (seed, k), which is what makes resuming exact.
    """

    def __init__(self, blocks, batch_size: int, seed: int, rank: int, world: int):
        self.blocks = blocks.with_format("torch")
        self.count = len(blocks)
        self.batch_size = min(batch_size, max(1, self.count // world))
        self.seed, self.rank, self.world = seed, rank, world
        self.per_epoch = max(1, self.count // (self.batch_size * world))
        self._epoch, self._order = None, None

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        epoch, index = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.count, generator=generator)
        start = (index * self.world + self.rank) * self.batch_size
        rows = self._order[torch.arange(start, start + self.batch_size) % self.count]
        return with_labels(self.blocks[rows.tolist()])


def with_labels(blocks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's inputs for a batch of blocks: the ids, and as labels the ids, or, when the blocks carry an
    assistant mask, only the tokens of the assistant's replies (the rest -100, which the loss ignores)."""
    ids = blocks["input_ids"]
    mask = blocks.get("assistant_mask")
    return {"input_ids": ids, "labels": ids if mask is None else ids.masked_fill(mask == 0, -100)}


class StreamBatches:
    """Batches of training blocks read from a streamed corpus, shuffled within a window, one share per process.

    Batch k is the k-th batch of a seeded pass over the stream (passes continue into the next epoch), so
    resuming at step k replays the first k batches without training on them: exact, at the price of
    re-reading and re-tokenizing that much text.
    """

    def __init__(self, blocks, batch_size: int, seed: int):
        self.blocks = blocks.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER_BLOCKS)
        self.batch_size = batch_size
        self.epoch, self._next, self._rows = 0, 0, None

    def has_a_block(self) -> bool:
        return next(iter(self.blocks), None) is not None

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        if self._rows is None or k < self._next:
            self.epoch, self._next = 0, 0
            self._start_pass()
        while self._next < k:
            self._take()
        rows = self._take()
        return with_labels({name: torch.tensor([row[name] for row in rows]) for name in rows[0]})

    def _start_pass(self) -> None:
        self.blocks.set_epoch(self.epoch)  # a new shuffle each epoch
        self._rows = iter(self.blocks)

    def _take(self) -> list[dict]:
        batch = []
        while len(batch) < self.batch_size:
            row = next(self._rows, None)
            if row is None:
                self.epoch += 1
                self._start_pass()
                continue
            batch.append(row)
        self._next += 1
        return batch


def describe_evaluation(record: dict) -> str:
    """One line for an evaluation: "step 500: val loss 1.5617, 2.253 bits/char[, replies ... bits/char]"."""
    replies = f", replies {record['val_assistant_bpc']:.3f} bits/char" if "val_assistant_bpc" in record else ""
    return f"step {record['step']}: val loss {record['val_loss']:.4f}, {record['val_bpc']:.3f} bits/char{replies}"


def evaluate(model, accelerator: Accelerator, blocks: dict[str, list], pad_id: int, batch_size: int
             ) -> tuple[float, float | None]:
    """Total validation loss in nats over every real validation token, summed across processes; and over the
    assistant's replies alone when the blocks carry an assistant mask (else None)."""
    mine = {name: rows[accelerator.process_index :: accelerator.num_processes] for name, rows in blocks.items()}
    totals = sum_token_losses(model, mine, pad_id, batch_size, accelerator.device, accelerator.autocast)
    total, assistant = accelerator.reduce(totals, "sum").tolist()
    return total, (assistant if "assistant_mask" in blocks else None)


class _StopFlag:
    """Set by Ctrl-C; the loop checks it between steps so a checkpoint is never half-written."""

    def __init__(self):
        self.raised = False

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.raised:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)


def train(options: TrainingOptions) -> TrainResult:
    """Train a model on the user's text (or the built-in dialogs) and leave the best one in `output_dir`."""
    with full_disk_says(Path(options.output_dir or "models")):
        trainer = Trainer(options)
    try:
        # Any write of the run (metrics, curve, summary) may meet a full disk; the saves say how much they needed.
        with full_disk_says(trainer.out):
            return trainer.run()
    finally:
        trainer.release()


class Trainer:
    """One training run: set up data, model and optimizer once, then step, evaluate and save until done."""

    def __init__(self, options: TrainingOptions):
        self.options = options = resolve_options(options)
        self.recipe = load_recipe(options.model_type)
        self.out = Path(options.output_dir)
        _check_output_path(self.out)
        # Taken before anything in the folder is read or cleared, by the main process of a multi-process run.
        self.lock = FolderLock(self.out)
        if os.environ.get("RANK", "0") == "0":
            self.lock.acquire()
        self.accelerator = self._process_group = None
        try:
            _check_output_dir(options)
            if options.mixed_precision == "fp16" and not torch.cuda.is_available():
                raise UsageError("--mixed-precision fp16 needs a CUDA GPU; use bf16 on the CPU, or no.")
            # accelerate keeps one process-wide state; a second train() call from Python may ask for another
            # precision.
            AcceleratorState._reset_state()
            GradientState._reset_state()
            self.accelerator = Accelerator(
                mixed_precision=options.mixed_precision,
                log_with="tensorboard" if options.report_to == "tensorboard" else None,
                project_dir=options.output_dir,
            )
            # Held until the wrapped model is let go: see release().
            self._process_group = torch.distributed.group.WORLD if torch.distributed.is_initialized() else None
            set_seed(options.seed)
            self.checkpoints = CheckpointManager(self.out / "checkpoints", self.accelerator,
                                                 keep=options.keep_checkpoints)
            if options.overwrite and self.accelerator.is_main_process:
                self.checkpoints.remove_all()
                for stale in ("metrics.jsonl", "loss_curve.png"):
                    (self.out / stale).unlink(missing_ok=True)
            self._prepare_data_and_model()
            self._prepare_optimization()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let go of the wrapped model, then of the process group: in that order, or a run can hang as it ends.
        Then of the output folder's lock.

        Right after a collective, gloo's worker thread is still releasing its tensors, which takes the GIL. A group
        freed along with DDP's reducer waits for that thread while holding the GIL, and neither moves; a group
        freed from Python's own reference waits with the GIL released. (Before this order was kept, one
        two-process run in about sixty hung here, with the CPUs busy.)
        """
        group, self._process_group = self._process_group, None
        if self.accelerator is not None:
            if getattr(self, "model", None) is not None:
                self.model = self.accelerator.unwrap_model(self.model)
            self.accelerator.free_memory()  # accelerate's own references to the wrapped model, and a gc pass
        del group
        self.lock.release()

    def _prepare_data_and_model(self) -> None:
        options, accelerator = self.options, self.accelerator
        self.stages = stages = Stages(show=accelerator.is_main_process)
        with stages.stage("reading", f"reading {_describe_input(options)}") as stage:
            with accelerator.main_process_first():
                self.corpus = corpus = data.load_corpus(
                    options.data, options.dataset, options.seed, options.validation_data, streaming=options.streaming
                )
            stage["done"] = corpus.report.describe()
        self.tokenizer = tokenizer = _load_or_train_tokenizer(options, corpus, accelerator, stages)
        if options.init_from:
            model = load_pretrained(options.init_from)[0].train()  # checked: a damaged folder ends in one line
        else:
            model = build_model(options, tokenizer, self.recipe)
        if options.gradient_checkpointing:
            _enable_gradient_checkpointing(model)
        window = getattr(model.config, "block_size", None)
        self.block_size = block_size = min(options.block_size, window) if window else options.block_size
        tokenizer.model_max_length = window or tokenizer.model_max_length
        model.generation_config = default_generation_config(tokenizer)
        self.model = model
        # Assistant masks: to train on replies alone, and to score the replies on their own in any chat corpus.
        self.masked_training = masked_training = bool(options.assistant_only_loss and corpus.is_chat)
        with stages.stage("tokenizing", "tokenizing the documents") as stage:
            with accelerator.main_process_first():
                val_ids = data.tokenize(corpus.validation, tokenizer, with_assistant_mask=corpus.is_chat)
                if corpus.streaming:
                    # Each process tokenizes only its share of the documents, as training reads them.
                    mine = split_dataset_by_node(corpus.train, accelerator.process_index, accelerator.num_processes)
                    self.train_blocks = data.training_blocks(
                        data.tokenize(mine, tokenizer, with_assistant_mask=masked_training), block_size, masked_training)
                    self.batches = StreamBatches(self.train_blocks, options.batch_size, options.seed)
                    enough = self.batches.has_a_block()
                else:
                    self.train_blocks = data.training_blocks(
                        data.tokenize(corpus.train, tokenizer, with_assistant_mask=masked_training), block_size,
                        masked_training)
                    self.batches = BlockBatches(self.train_blocks, options.batch_size, options.seed,
                                                accelerator.process_index, accelerator.num_processes)
                    enough = len(self.train_blocks) > 0
            if _any_process(accelerator, not enough):  # every process stops, or none waits on a stopped one
                raise UsageError(
                    f"not enough text for one block of {block_size} tokens ({corpus.report.describe()}): add text "
                    "or pass a smaller --block-size."
                )
            self.val_blocks, stream_length = data.validation_blocks(val_ids, block_size, tokenizer.pad_token_id)
            stage["done"] = (f"{'streamed' if corpus.streaming else f'{len(self.train_blocks):,}'} training blocks of "
                             f"{block_size} tokens, {stream_length:,} validation tokens")
        self.val_targets = max(1, stream_length - 1)  # every validation token but the first is predicted
        self.val_chars = characters_of(corpus.validation)
        self.val_assistant_chars = sum(data.count_assistant_characters(t) for t in corpus.validation["text"])

    def _prepare_optimization(self) -> None:
        options, recipe, accelerator = self.options, self.recipe, self.accelerator
        if options.max_steps:  # always so when streaming: a stream's length is unknown
            self.total_steps = options.max_steps
        else:
            self.total_steps = options.epochs * max(1, self.batches.per_epoch // options.grad_accum)
        # Unless asked otherwise, short runs still evaluate about ten times and checkpoint about four times.
        self.eval_every = options.eval_every or min(recipe["eval_every"], max(10, self.total_steps // 10))
        self.save_every = options.save_every or min(recipe["save_every"], max(10, self.total_steps // 4))
        optimizer = _make_optimizer(self.model, options.lr, options.weight_decay)
        self.schedule = _make_schedule(optimizer, options.warmup_steps, self.total_steps, options.min_lr_ratio)
        if options.compile:
            # Module.compile compiles the call in place: unlike torch.compile's wrapper, the parameter names keep
            # no "_orig_mod." prefix, so checkpoints resume with or without --compile.
            self.model.compile()
        # For the full-disk message before the first checkpoint exists: weights and AdamW's two moments.
        self.checkpoints.expected_bytes = 3 * sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.model, self.optimizer = accelerator.prepare(self.model, optimizer)
        # The schedule is stepped by hand once per optimizer step; accelerate's wrapper would step it per process.
        accelerator.register_for_checkpointing(self.schedule)
        self.metrics = MetricsLog(self.out, accelerator)
        self.tokens_per_step = (
            self.block_size * self.batches.batch_size * options.grad_accum * accelerator.num_processes
        )
        self.state = {"step": 0, "best_val_loss": math.inf, "best_val_bpc": math.inf, "tokens": 0}
        if options.resume:
            self.state = self.checkpoints.load_latest()
            self.metrics.truncate_after(self.state["step"])
            accelerator.print(f"resumed from step {self.state['step']} ({self.checkpoints.latest()})")
        if options.report_to == "tensorboard":
            accelerator.init_trackers("tensorboard", config={k: str(v) for k, v in asdict(options).items()})

    # ------------------------------------------------------------------------------------------------ steps

    def optimizer_step(self, step: int) -> float:
        """One optimizer step over `grad_accum` micro-batches; returns the mean loss (maybe non-finite)."""
        options, accelerator, model = self.options, self.accelerator, self.model
        loss_sum = torch.zeros((), device=accelerator.device)
        for micro in range(options.grad_accum):
            batch = self.batches.batch(step * options.grad_accum + micro)
            inputs = {name: value.to(accelerator.device, non_blocking=True) for name, value in batch.items()}
            last = micro == options.grad_accum - 1
            # Skip the gradient all-reduce on all but the last micro-batch of an accumulation.
            with accelerator.no_sync(model) if not last else contextlib.nullcontext():
                loss = model(**inputs, use_cache=False).loss / options.grad_accum
                accelerator.backward(loss)
            loss_sum += loss.detach()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), self.recipe["grad_clip"])
        loss_value = accelerator.reduce(loss_sum, "mean").item()  # the step's one host sync
        # Under fp16 the scaler skips steps whose gradients overflowed; otherwise skip non-finite ones here.
        if math.isfinite(loss_value) and (options.mixed_precision == "fp16" or math.isfinite(float(grad_norm))):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        return loss_value

    def evaluate_and_keep_best(self, step: int) -> dict:
        """Validation loss, perplexity and bits/char (and, on conversations, bits/char of the assistant's replies);
        the output folder gets the model if it is the best yet: by validation loss, or, when training on replies
        alone, by the replies' bits/char."""
        # Looked at before evaluating: afterwards the main process may already be writing the model, and every
        # process must make the same choice (under FSDP or DeepSpeed, gathering the weights is collective).
        no_model_yet = not (self.out / "model.safetensors").exists()
        val_nats, assistant_nats = evaluate(self.model, self.accelerator, self.val_blocks,
                                            self.tokenizer.pad_token_id, self.options.batch_size)
        record = {
            "step": step,
            "val_loss": val_nats / self.val_targets,
            "val_ppl": math.exp(min(val_nats / self.val_targets, 50)),
            "val_bpc": val_nats / math.log(2) / self.val_chars,
        }
        if assistant_nats is not None and self.val_assistant_chars:
            record["val_assistant_bpc"] = assistant_nats / math.log(2) / self.val_assistant_chars
        self.metrics.write(record)
        by = "val_assistant_bpc" if self.masked_training and "val_assistant_bpc" in record else "val_loss"
        best = self.state.get("best_val_assistant_bpc" if by == "val_assistant_bpc" else "best_val_loss")
        if record[by] < (math.inf if best is None else best) or no_model_yet:
            self.state["best_val_loss"], self.state["best_val_bpc"] = record["val_loss"], record["val_bpc"]
            self.state["best_val_assistant_bpc"] = record.get("val_assistant_bpc")
            # Every process takes part: under FSDP or DeepSpeed each holds a shard of the weights.
            weights = self.accelerator.get_state_dict(self.model)
            if self.accelerator.is_main_process:
                replace_model_files(self.accelerator.unwrap_model(self.model), self.tokenizer, self.out, weights)
        self.accelerator.wait_for_everyone()
        return record

    # --------------------------------------------------------------------------------------------- the run

    def run(self) -> TrainResult:
        state, accelerator = self.state, self.accelerator
        self.model.train()
        started, start_step = time.perf_counter(), state["step"]
        bar = tqdm(total=self.total_steps, initial=start_step, disable=not accelerator.is_main_process,
                   unit="step", dynamic_ncols=True)
        interrupted, nonfinite, window_losses = False, 0, []
        with _StopFlag() as stop, contextlib.closing(bar):  # closed however the loop ends, before any error line
            while state["step"] < self.total_steps:
                loss = self.optimizer_step(state["step"])
                nonfinite = 0 if math.isfinite(loss) else nonfinite + 1
                if nonfinite >= MAX_NONFINITE_STEPS:
                    bar.close()
                    raise TrainingDiverged(
                        f"the loss was not finite for {nonfinite} steps in a row at step {state['step']}: lower "
                        f"--lr or use --mixed-precision bf16; the last good checkpoint and model in {self.out} "
                        "are intact."
                    )
                state["step"] = step = state["step"] + 1
                state["tokens"] += self.tokens_per_step
                speed = (step - start_step) * self.tokens_per_step / max(time.perf_counter() - started, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{speed:,.0f}", refresh=False)
                window_losses.append(loss)
                if step % LOG_EVERY == 0 or step == self.total_steps:
                    self.metrics.write({"step": step, "train_loss": sum(window_losses) / len(window_losses),
                                        "lr": self.schedule.get_last_lr()[0], "tokens_per_second": speed,
                                        "tokens": state["tokens"]})
                    window_losses = []
                if step % self.eval_every == 0 and step < self.total_steps:
                    record = self.evaluate_and_keep_best(step)
                    if accelerator.is_main_process:
                        bar.write(describe_evaluation(record))
                interrupted = _any_process(accelerator, stop.raised)
                if step % self.save_every == 0 or interrupted:
                    self.checkpoints.save(step, state, self.options)
                if interrupted:
                    break
        bar.close()
        speed = (state["step"] - start_step) * self.tokens_per_step / max(time.perf_counter() - started, 1e-9)
        return self.finish(interrupted, speed)

    def finish(self, interrupted: bool, speed: float) -> TrainResult:
        """Final checkpoint and evaluation, loss curve, samples and the run's summary."""
        state, out, accelerator = self.state, self.out, self.accelerator
        if not interrupted and not (out / "checkpoints" / f"step-{state['step']}").exists():
            self.checkpoints.save(state["step"], state, self.options)  # so a later run can extend this one
        if not interrupted or not (out / "model.safetensors").exists():
            accelerator.print(describe_evaluation(self.evaluate_and_keep_best(state["step"])))
        samples = []
        if accelerator.is_main_process:
            self.metrics.plot()
            if not interrupted:
                shutil.rmtree(out / ".tokenizer", ignore_errors=True)
            if self.options.samples:
                best = AutoModelForCausalLM.from_pretrained(out).to(accelerator.device).eval()
                samples = sample_outputs(best, self.tokenizer, self.corpus.is_chat, self.options.samples,
                                         seed=self.options.seed)
            (out / SUMMARY_FILE).write_text(json.dumps(self.summary(speed), indent=2) + "\n")
        # The others wait for the main process's plot and samples, so that all leave the process group together.
        accelerator.wait_for_everyone()
        accelerator.end_training()
        if interrupted:
            accelerator.print(f"interrupted at step {state['step']}: checkpoint saved; "
                              f"resume with: {self.options.command_line()} --resume")
        return TrainResult(output_dir=out, steps=state["step"], best_val_loss=state["best_val_loss"],
                           best_val_bpc=state["best_val_bpc"], tokens_per_second=speed, interrupted=interrupted,
                           samples=samples)

    def summary(self, speed: float) -> dict:
        corpus, state = self.corpus, self.state
        return {
            "data": {"source": corpus.source, "is_chat": corpus.is_chat, "streaming": corpus.streaming,
                     # A stream is never counted: report what the run read instead of what the corpus holds.
                     "train_documents": None if corpus.streaming else len(corpus.train),
                     "validation_documents": len(corpus.validation),
                     "train_tokens": state["tokens"] if corpus.streaming else len(self.train_blocks) * (self.block_size - 1),
                     "validation_characters": self.val_chars, "name": corpus.name,
                     "records": corpus.report.summary()},
            "preparation_seconds": self.stages.seconds,
            "options": {**asdict(self.options), "block_size": self.block_size, "batch_size": self.batches.batch_size},
            "steps": state["step"], "num_processes": self.accelerator.num_processes,
            "best_val_loss": state["best_val_loss"], "best_val_bpc": state["best_val_bpc"],
            "best_val_ppl": math.exp(min(state["best_val_loss"], 50)), "tokens_per_second": speed,
            "best_val_assistant_bpc": state.get("best_val_assistant_bpc"),
        }


def _any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True when any process was interrupted, so all stop at the same step (one all-reduce, DDP only)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum").item())
