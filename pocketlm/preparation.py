"""A training run's setup: everything the loop works with, built once and returned whole as a `Run`.

`prepare` reads the text, trains or loads the tokenizer, builds the model, cuts the blocks, plans the steps,
makes the optimizer and restores a checkpoint when resuming; each piece is one function that returns what it
builds. The loop itself is in `training.py`.

The minutes before the first step are made visible: each preparation stage says what it starts, what it produced
and how long it took, and the times go into training_summary.json. (On a 52 MB corpus, reading, training the
tokenizer and tokenizing once took about 100 seconds with nothing on screen.)
"""

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from configs import load_recipe
from modeling import PRESETS, GPTConfig, GPTForCausalLM, LSTMConfig, LSTMForCausalLM
from tokenization import (END_OF_TURN, characters_without_a_token, first_change, save_tokenizer,
                          train_bpe_tokenizer, train_char_tokenizer, with_special_tokens, without_framing)

from . import continuity, data
from .checkpoints import CheckpointManager
from .errors import UsageError
from .generation import default_generation_config
from .home import HOME
from .export.gpt2 import from_gpt2
from .loading import is_gpt2, load_gpt2, load_pretrained, tokenizer_source
from .metrics import MetricsLog
from .options import TrainingOptions
from .run_folder import TOKENIZER_FILE, RunFolder
from .sources import cache_key
from .whole_writes import write_folder_whole
from .wording import counted, listed


@dataclass
class Plan:
    """How long the run is and how often it evaluates and saves, in optimizer steps."""

    total_steps: int
    eval_every: int
    save_every: int
    tokens_per_step: int  # across every process and micro-step
    block_size: int  # tokens per training block
    masked_training: bool  # learning the assistant's replies alone
    grad_clip: float


@dataclass
class Run:
    """Everything a training run's loop works with. `model` and `optimizer` are accelerate's wrapped ones."""

    options: TrainingOptions
    folder: RunFolder
    accelerator: Accelerator
    stages: "Stages"  # the preparation stages and their times
    corpus: data.Corpus
    tokenizer: object
    batches: object  # data.blocks' BlockBatches or StreamBatches
    validation: data.ValidationSet
    plan: Plan
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    checkpoints: CheckpointManager
    metrics: MetricsLog
    state: dict  # step, tokens, best results: what a checkpoint restores
    decided_by: dict  # the data, tokenizer and options that decide the run, recorded with each checkpoint
    process_group: object = field(default=None, repr=False)  # held until the wrapped model is let go: release()

    def release(self) -> None:
        """Let go of the wrapped model, then of the process group: in that order, or a run can hang as it ends.

        Right after a collective, gloo's worker thread is still releasing its tensors, which takes the GIL. A group
        freed along with DDP's reducer waits for that thread while holding the GIL, and neither moves; a group
        freed from Python's own reference waits with the GIL released. (Before this order was kept, one
        two-process run in about sixty hung here, with the CPUs busy.)
        """
        group, self.process_group = self.process_group, None
        self.model = self.accelerator.unwrap_model(self.model)
        self.accelerator.free_memory()  # accelerate's own references to the wrapped model, and a gc pass
        del group


def prepare(options: TrainingOptions, folder: RunFolder) -> Run:
    """Set up a training run of resolved `options` in `folder` (checked and locked by the caller)."""
    accelerator = start_accelerator(options, folder)
    # Held until the wrapped model is let go: see Run.release().
    group = torch.distributed.group.WORLD if torch.distributed.is_initialized() else None
    try:
        set_seed(options.seed)
        set_up_vector_math()
        stages = Stages(show=accelerator.is_main_process)
        checkpoints = CheckpointManager(folder.checkpoints, accelerator, keep=options.keep_checkpoints)
        decided_by = continuity.fingerprint(options, accelerator.num_processes, accelerator.device)
        # What a resume continues is checked before any reading: a changed option or file is named at once.
        resumed_from = checkpoints.newest_trusted() if options.resume else None
        if resumed_from:
            _compare(resumed_from, decided_by, options, accelerator)
        corpus = read_corpus(options, accelerator, stages)
        if options.assistant_only_loss and not corpus.is_chat:  # it would learn every token, not what was asked
            raise UsageError("--assistant-only-loss learns only the assistant's turns of conversations, and this data "
                             "holds none (plain text): drop it, or train on records with a messages column.")
        tokenizer = load_or_train_tokenizer(options, folder, corpus, accelerator, stages)
        decided_by = continuity.with_tokenizer(decided_by, tokenizer)
        if resumed_from:
            _compare(resumed_from, decided_by, options, accelerator, quiet=True)
        model = build_model(options, tokenizer, resumed_from[1] if resumed_from else None)
        block_size = min(options.block_size, _window(model) or options.block_size)
        if block_size < options.block_size and accelerator.is_main_process:  # said: the blocks asked for are not cut
            longer = ("--init-from's model has no longer one" if options.init_from else
                      f"a longer one: --model-config block_size={options.block_size}")
            print(f"block size: {block_size} tokens, the model's context window, not the {options.block_size} set "
                  f"by --block-size ({longer})")
        masked = bool(options.assistant_only_loss and corpus.is_chat)
        batches, validation = cut_blocks(options, corpus, tokenizer, block_size, masked, accelerator, stages)
        plan = make_plan(options, batches, block_size, masked, accelerator.num_processes)
        optimizer = make_optimizer(model, options.lr, options.weight_decay)
        warmup = warmup_of(options.warmup_steps, plan.total_steps)
        schedule = make_schedule(optimizer, warmup, plan.total_steps, options.min_lr_ratio)
        if warmup < options.warmup_steps and accelerator.is_main_process:  # said: the schedule asked for is not run
            print(f"warm-up: {counted(warmup, 'step')}, a tenth of this {plan.total_steps:,}-step run, "
                  f"not the {options.warmup_steps} set by --warmup-steps or configs/{options.model_type}.json")
        if accelerator.is_main_process:
            print(describe_run(options, model, plan, accelerator, folder, resumed=bool(resumed_from)))
        if options.compile:
            # Module.compile compiles the call in place: unlike torch.compile's wrapper, the parameter names keep
            # no "_orig_mod." prefix, so checkpoints resume with or without --compile.
            model.compile()
        # For the full-disk message before the first checkpoint exists: weights and AdamW's two moments.
        checkpoints.expected_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
        model, optimizer = accelerator.prepare(model, optimizer)
        if not options.resume and accelerator.is_main_process:
            # Every check passed: only now does --overwrite forget the earlier run, so a refused one loses nothing.
            folder.start_new_run(options.overwrite)
        # The schedule is stepped by hand once per optimizer step; accelerate's wrapper would step it per process.
        accelerator.register_for_checkpointing(schedule)
        metrics = MetricsLog(folder.metrics_file, accelerator)
        state = resume(checkpoints, resumed_from, metrics, accelerator) if resumed_from else fresh_state()
        if resumed_from:
            continuity.apply_accepted(optimizer, schedule, resumed_from[1].get("decided_by"), options)
        if options.report_to == "tensorboard":
            accelerator.init_trackers("tensorboard", config={k: str(v) for k, v in vars(options).items()})
    except BaseException:
        if not options.resume and accelerator.is_main_process:
            folder.discard_staged_tokenizer()  # a refused run leaves nothing of its own behind
        accelerator.free_memory()
        del group
        raise
    return Run(options=options, folder=folder, accelerator=accelerator, stages=stages, corpus=corpus,
               tokenizer=tokenizer, batches=batches, validation=validation, plan=plan, model=model,
               optimizer=optimizer, schedule=schedule, checkpoints=checkpoints, metrics=metrics, state=state,
               decided_by=decided_by, process_group=group)


def _preset_of(config) -> str | None:
    """The preset whose shape a GPT has: none for one --init-from started from or --model-config reshaped."""
    return next((name for name, shape in PRESETS.items()
                 if all(getattr(config, field) == value for field, value in shape.items() if field != "block_size")),
                None)


def describe_run(options: TrainingOptions, model, plan: Plan, accelerator: Accelerator, folder: RunFolder,
                 resumed: bool) -> str:
    """The run in one line before its first step, as the Trainer's "Running training" block and nanoGPT's parameter
    count say it: which model and how large, how long, on what, and into which folder."""
    preset = _preset_of(model.config) if options.model_type != "lstm" else None
    what = "the LSTM" if options.model_type == "lstm" else f"the {preset} Transformer" if preset else "the Transformer"
    if options.init_from:
        what = f"{what} from {options.init_from}"
    parameters = sum(p.numel() for p in model.parameters())  # a tied head counted once, as save_pretrained stores it
    if accelerator.device.type == "cuda":
        device = torch.cuda.get_device_name(accelerator.device)
    else:
        device = f"the {accelerator.device.type.upper()} ({counted(torch.get_num_threads(), 'thread')})"
    if accelerator.num_processes > 1:
        device = f"{accelerator.num_processes} processes, each on {device}"
    precision = "float32" if options.mixed_precision == "no" else f"{options.mixed_precision} mixed precision"
    length = f"on to step {plan.total_steps:,}" if resumed else f"for {counted(plan.total_steps, 'step')}"
    return (f"training {what} ({parameters:,} parameters) {length}, {plan.tokens_per_step:,} tokens a step, on "
            f"{device}, {precision}, into {folder.path}")


# The float functions torch computes with MKL's vector math (VML) on CPUs, where it was built with MKL.
MKL_VECTOR_MATH = ("exp", "log", "log2", "log10", "sqrt", "tanh", "erf", "erfc", "erfinv",
                   "sin", "cos", "tan", "asin", "acos", "atan", "trunc")


def set_up_vector_math() -> None:
    """Call each of MKL's vector-math functions once, from this thread alone, before a step calls one on all.

    A process's first call of one that torch splits over threads can, rarely, compute one thread's share with
    another of MKL's kernels (for exp, its low-accuracy AVX2 one: within 1.5e-4, where the usual is within a last
    bit), as both threads set MKL's vector math up at once. That step's loss and gradients then differ from an
    identical later step's, and the run from an uninterrupted one of the same seed; a resume's first step is a
    process's first too. With the CPU busy, 9 of 106 fresh processes computed their first training step so; with
    this first, 0 of 80 (BENCHMARKS.md, "Faults"; `python bench/first_step.py` compares the two).
    """
    if torch.backends.mkl.is_available():
        one = torch.full((1,), 0.5)
        for name in MKL_VECTOR_MATH:
            getattr(torch, name)(one)


def start_accelerator(options: TrainingOptions, folder: RunFolder) -> Accelerator:
    # accelerate keeps one process-wide state; a second train() call from Python may ask for another precision.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=options.mixed_precision, cpu=options.device == "cpu",
                              log_with="tensorboard" if options.report_to == "tensorboard" else None,
                              project_dir=str(folder.path))
    if options.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        _fp16_on_cpu(accelerator)
    asked_to_shard = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked_to_shard and accelerator.distributed_type != DistributedType.FSDP:
        # accelerate 1.15 shards only on accelerators (AcceleratorState: FSDP for MULTI_GPU and its kin); on CPU
        # processes it runs the config as DDP without a word. Said once, so no one counts on memory they lack.
        accelerator.print(f"note: FSDP was asked for, but accelerate runs it as {accelerator.distributed_type.value} "
                          "on CPU processes: every process holds the whole model (FSDP shards on GPUs)")
    return accelerator


def _fp16_on_cpu(accelerator: Accelerator) -> None:
    """fp16 autocast with a loss scaler on CPU processes, as on a GPU. accelerate 1.15 turns both off on a CPU
    (its fp16 there computes in float32, without a word), though torch has float16 autocast and GradScaler("cpu")
    for it; set before `prepare`, accelerate wraps the forward in that autocast, scales the loss in `backward`,
    unscales before clipping, skips the steps whose gradients overflowed and checkpoints the scaler."""
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu")


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True when `flag` is true in any process, so all act alike (one all-reduce, several processes only)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum").item())


# --------------------------------------------------------------------------------------------- the stages


class Stages:
    """Times named stages; the main process prints a line as each starts and ends (others stay quiet)."""

    def __init__(self, show: bool = True):
        self.show = show
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, starting: str) -> Iterator[dict]:
        """Run the body as stage `name`. The body may set `result["done"]` to say what it produced."""
        if self.show:
            tqdm.write(f"{starting} ...")
        result: dict = {}
        started = time.perf_counter()
        with _datasets_progress(self.show):
            yield result
        self.seconds[name] = round(time.perf_counter() - started, 2)
        if self.show:
            tqdm.write(f"{name}: {result.get('done', 'done')} ({_duration(self.seconds[name])})")


@contextlib.contextmanager
def _datasets_progress(show: bool):
    """datasets' own bars (rows read, documents tokenized, with rate and time left) during a stage, if shown."""
    was_enabled = datasets.is_progress_bar_enabled()
    if show:
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# ------------------------------------------------------------------------------------------ text and tokens


def _describe_input(options: TrainingOptions) -> str:
    if options.dataset:
        described = f"the dataset {data.with_config(options.dataset, options.dataset_config)}"
    elif not options.data:
        described = f"the built-in corpus, {data.DEFAULT_CORPUS_NAME}"
    else:
        described = ", ".join(options.data)
    if options.validation_data:
        described += f", and for validation {', '.join(options.validation_data)}"
    return described


def read_corpus(options: TrainingOptions, accelerator: Accelerator, stages: Stages) -> data.Corpus:
    with stages.stage("reading", f"reading {_describe_input(options)}") as stage:
        with accelerator.main_process_first():
            corpus = data.load_corpus(options.data, options.dataset, options.seed, options.validation_data,
                                      streaming=options.streaming, text_column=options.text_column,
                                      dataset_config=options.dataset_config)
        stage["done"] = corpus.report.describe()
    return corpus


# Trained tokenizers, by the text and settings they came from and the code that trained them (`cache_key`).
TOKENIZER_CACHE = HOME / "tokenizers"


def _given_tokenizer(tokenizer, name: str, corpus: data.Corpus, speaks: bool, fine_tuning: bool = False):
    """A tokenizer the run did not train (--tokenizer's, or --init-from's model's), ready to train with: one from
    elsewhere lacks what blocks are cut and conversations written with (said, and added), may not give back the
    text it reads (said, with the first change), and may have no token for some of its characters (said, with how
    much of the text they are: a character model fine-tuned on a text in another script). Only the process that
    `speaks` prints, and reads the text."""
    own_template = tokenizer.chat_template
    tokenizer, added = with_special_tokens(tokenizer)
    tokenizer, framing = without_framing(tokenizer)
    if not speaks:
        return tokenizer
    if added:
        # A template of its own (ChatML's, say) goes: conversations are trained, cut and prompted as pocketlm's.
        replaced = (" in place of its own (the model learns and is prompted with pocketlm's: its replies end at "
                    f"{END_OF_TURN})") if own_template and own_template != tokenizer.chat_template else ""
        print(f"note: {name} has no {', '.join(added)}: added after its own tokens ({len(tokenizer):,} in all), "
              f"with pocketlm's chat template{replaced}")
    if framing:
        print(f"note: {name} adds {' and '.join(dict.fromkeys(framing))} to every text it encodes: left out, as "
              "pocketlm frames text itself (the end-of-text token after each document, nothing before)")
    change = first_change(tokenizer, corpus.tokenizer_texts()[0])
    if change:
        print(f"note: {name} does not give back the text it reads ({change[0]!r} comes back as {change[1]!r}): "
              "the model learns and writes only what it keeps, and its bits per character, which count every "
              "character, read lower than a tokenizer's that keeps them all")
    unknown, total = characters_without_a_token(tokenizer, corpus.tokenizer_texts()[0])
    if unknown:
        named = [repr(character) for character in sorted(unknown, key=unknown.get, reverse=True)[:8]]
        share = sum(unknown.values()) / total
        them = "them" if len(unknown) > 1 else "it"
        print(f"note: {name} has no token for {listed(named + ['others'] * (len(unknown) > 8), 'or')} "
              f"({f'{share:.1%}' if share >= 0.001 else 'under 0.1%'} of the text): the model reads {them} as "
              f"{tokenizer.unk_token} and cannot write {them}"
              + (" (a new run, without --init-from, learns them)" if fine_tuning else ""))
    return tokenizer


def load_or_train_tokenizer(options: TrainingOptions, folder: RunFolder, corpus: data.Corpus,
                            accelerator: Accelerator, stages: Stages):
    """A resumed run's own tokenizer, --tokenizer's or --init-from's; else one trained on the training text."""
    source = options.tokenizer or (tokenizer_source(options.init_from) if options.init_from else None)
    if options.resume:
        own = folder.tokenizer_to_resume()
        # What the run trained with, kept with it: --tokenizer's folder may have moved or changed since. (A run
        # begun before runs kept a given tokenizer has none of its own until it saved a model.)
        if (own / TOKENIZER_FILE).is_file() or source is None:
            source = str(own)
    if source:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:  # in transformers' words, the first line of them
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UsageError(f"could not load a tokenizer from {source} ({reason.rstrip('.')}); pass --tokenizer PATH.")
        # Not a resume's own, which is what the run trained with, as it stands: GPT-2's has no pad token to cut
        # blocks with, and a character model's no token for a character its text never held.
        if not options.resume:
            tokenizer = _given_tokenizer(tokenizer, source, corpus, accelerator.is_main_process,
                                         fine_tuning=bool(options.init_from))
        if not options.resume:
            # Kept with the run, as a trained one is: a resume reads it there, since --init-from is not carried over
            # to it (a run killed before it saved a model had no tokenizer to resume with).
            if accelerator.is_main_process:
                folder.stage_run_tokenizer(tokenizer)
            accelerator.wait_for_everyone()
        return tokenizer
    kind = "character" if options.model_type == "lstm" else f"byte-level BPE ({options.vocab_size:,}-token)"
    # An Arrow corpus's fingerprint names its text exactly: the same text and settings train the same tokenizer,
    # so a second run reuses the first's (and, through it, its tokenized blocks). A stream is not fingerprinted.
    cached = None if corpus.streaming else TOKENIZER_CACHE / cache_key(
        "tokenizer", corpus.train._fingerprint, options.model_type, options.vocab_size)
    with stages.stage("tokenizer", f"training the {kind} tokenizer") as stage:
        if accelerator.is_main_process:
            if cached is not None and cached.is_dir():
                tokenizer = AutoTokenizer.from_pretrained(cached)
                stage["done"] = f"{len(tokenizer):,} tokens, the one trained on this text before ({cached})"
            else:
                tokenizer = _train_tokenizer(options, corpus, stages.show)
                stage["done"] = f"{len(tokenizer):,} tokens"
                if cached is not None:
                    _keep(tokenizer, cached)
            folder.stage_run_tokenizer(tokenizer)
        accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(folder.staged_tokenizer)


def _train_tokenizer(options: TrainingOptions, corpus: data.Corpus, show: bool):
    if options.model_type == "lstm":
        return train_char_tokenizer(corpus.tokenizer_texts(every_character=True)[0])
    texts, length = corpus.tokenizer_texts()
    try:
        return train_bpe_tokenizer(texts, vocab_size=options.vocab_size, length=length,
                                   show_progress=show and sys.stderr.isatty())
    except ValueError as error:
        raise UsageError(str(error))


def _keep(tokenizer, folder: Path) -> None:
    """Save `tokenizer` into the cache `folder`, whole or not at all."""
    with contextlib.suppress(OSError):  # a full or read-only cache costs the reuse, not the run
        write_folder_whole(folder, lambda scratch: save_tokenizer(tokenizer, scratch))


def cut_blocks(options: TrainingOptions, corpus: data.Corpus, tokenizer, block_size: int, masked: bool,
               accelerator: Accelerator, stages: Stages) -> tuple[object, data.ValidationSet]:
    """This process's training batches and the validation set, both in blocks of `block_size` tokens.

    Assistant masks are cut beside the tokens: to train on replies alone, and to score the replies on their own in
    any chat corpus.
    """
    with stages.stage("tokenizing", "tokenizing the documents") as stage:
        with accelerator.main_process_first():
            validation = data.validation_set(corpus.validation, tokenizer, block_size,
                                             with_assistant_mask=corpus.is_chat, max_tokens=options.eval_tokens,
                                             seed=options.seed)
            batches = data.training_batches(corpus.train, tokenizer, block_size, options.batch_size, options.seed,
                                            accelerator.process_index, accelerator.num_processes, masked)
        if any_process(accelerator, not batches.has_a_block()):  # every process stops, or none waits on a stopped one
            if not corpus.streaming and batches.left_out:
                raise UsageError(f"none of the {counted(batches.left_out, 'training block')} of {block_size} tokens "
                                 "holds a token of an assistant's reply, the only tokens --assistant-only-loss "
                                 "learns: add conversations with replies, or leave out --assistant-only-loss.")
            holding = " holding a reply token" if masked else ""
            raise UsageError(f"not enough text for one block of {block_size} tokens{holding} "
                             f"({corpus.report.describe()}): add text or pass a smaller --block-size.")
        blocks = "streamed training blocks" if corpus.streaming else counted(batches.count, "training block")
        blocks += f" of {block_size} tokens"
        if masked:  # said: an epoch is then a pass over fewer blocks than the text makes
            blocks += (" holding a reply token" if corpus.streaming or not batches.left_out else
                       f" ({batches.left_out:,} more hold no reply token to learn and are left out)")
        scored = "" if validation.scored == "all of it" else f"; each evaluation scores {validation.scored}"
        if batches.batch_size < options.batch_size:  # said, since it changes the tokens per step the user asked for
            per_process = " per process" if accelerator.num_processes > 1 else ""
            scored += (f"; fewer blocks than --batch-size {options.batch_size}, so a batch is "
                       f"{counted(batches.batch_size, 'block')}{per_process}")
        stage["done"] = f"{blocks}, {validation.tokens:,} validation tokens{scored}"
    return batches, validation


# ------------------------------------------------------------------------------------------------ the model


def _window(model) -> int | None:
    return getattr(model.config, "block_size", None)


def build_model(options: TrainingOptions, tokenizer, resumed: dict | None = None):
    """--init-from's model, or a fresh one of the chosen family sized by its preset and the tokenizer's vocabulary
    (for a resumed run started from --init-from, by the config its checkpoint recorded, as no preset rebuilds that
    shape; the checkpoint's weights then replace the fresh ones); its generation settings and the tokenizer's window
    set for what the run will save."""
    if options.init_from and is_gpt2(options.init_from):
        model = _imported_gpt2(options.init_from, tokenizer, options.model_config.get("dropout")).train()
    elif options.init_from:
        # Checked: a damaged folder ends in one line; a PEFT adapter comes merged. --model-config may set its
        # dropout (only that: checked with the options).
        model = load_pretrained(options.init_from, config=options.model_config)[0].train()
    elif resumed and resumed.get("options", {}).get("init_from") and resumed.get("model_config"):
        model_class = LSTMForCausalLM if options.model_type == "lstm" else GPTForCausalLM
        model = model_class(model_class.config_class.from_dict(resumed["model_config"]))
    else:
        model = _fresh_model(options, tokenizer)
    if options.gradient_checkpointing:
        # transformers 5.24 renamed it; the old name still works there but warns.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    tokenizer.model_max_length = _window(model) or tokenizer.model_max_length
    model.generation_config = default_generation_config(tokenizer)
    return model


def _imported_gpt2(path_or_repo: str, tokenizer, dropout: float | None):
    """The stock GPT-2 at `path_or_repo` as a pocketlm GPT, its vocabulary grown to `tokenizer`'s (GPT-2's own
    tokenizer gains pocketlm's pad and chat tokens after its own: their embeddings start at the mean of the others,
    transformers' way) and its end and pad tokens the tokenizer's."""
    model = from_gpt2(load_gpt2(path_or_repo)[0], dropout)
    if len(tokenizer) > model.config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    model.config.eos_token_id, model.config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.config.bos_token_id = None  # pocketlm frames text with nothing before it (tokenization.without_framing)
    return model


def _fresh_model(options: TrainingOptions, tokenizer):
    special = {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "dropout": load_recipe(options.model_type)["dropout"],
    }
    # --model-config was checked against the config with the options (which refuse the fields the tokenizer sets
    # here); its dropout overrides the recipe's.
    fields = {**special, **options.model_config}
    if options.model_type == "lstm":
        return LSTMForCausalLM(LSTMConfig(**fields))
    return GPTForCausalLM(GPTConfig.from_preset(options.model_size, **fields))


# ----------------------------------------------------------------------------------- steps and optimizer


def make_plan(options: TrainingOptions, batches, block_size: int, masked: bool, num_processes: int) -> Plan:
    recipe = load_recipe(options.model_type)
    if options.max_steps:  # always so when streaming: a stream's length is unknown
        total = options.max_steps
    else:
        # Rounded up, as the Trainer rounds num_train_epochs: half a pass of 5 steps is 3.
        total = max(1, math.ceil(options.epochs * max(1, batches.per_epoch // options.grad_accum)))
    # Unless asked otherwise, short runs still evaluate about ten times and checkpoint about four times.
    return Plan(total_steps=total,
                eval_every=options.eval_every or min(recipe["eval_every_at_most"], max(10, total // 10)),
                save_every=options.save_every or min(recipe["save_every_at_most"], max(10, total // 4)),
                tokens_per_step=block_size * batches.batch_size * options.grad_accum * num_processes,
                block_size=block_size, masked_training=masked, grad_clip=options.grad_clip)


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # Decay matrices only: decaying biases, norms and embeddings' rows of rare tokens hurts small models.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)
    except (RuntimeError, TypeError):  # fused kernels are missing for some device and dtype pairs
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def warmup_of(warmup_steps: int, total_steps: int) -> int:
    """The warm-up a run of `total_steps` takes: at most a tenth of it, so that a short run reaches its peak rate."""
    return min(warmup_steps, max(1, total_steps // 10))


def make_schedule(optimizer, warmup_steps: int, total_steps: int, min_ratio: float):
    """Linear warm-up over `warmup_steps` (warmup_of's), then cosine decay to `min_ratio` of the peak rate."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------------------- the state


def fresh_state() -> dict:
    return {"step": 0, "best_val_loss": math.inf, "best_val_bpc": math.inf, "tokens": 0}


def _compare(resumed_from: tuple[Path, dict], decided_by: dict, options: TrainingOptions, accelerator: Accelerator,
             quiet: bool = False) -> None:
    """Stop a resume whose run changed in a way that matters (`continuity`), or print what changed that does not."""
    checkpoint, record = resumed_from
    notes = continuity.compare(record.get("decided_by"), decided_by, record.get("step", 0), options.accept_changes)
    if not quiet:
        for note in notes:
            accelerator.print(f"note: {note}")


def resume(checkpoints: CheckpointManager, resumed_from: tuple[Path, dict], metrics: MetricsLog,
           accelerator: Accelerator) -> dict:
    """Every process's state restored from the checkpoint `newest_trusted` found; the step counters it recorded."""
    checkpoint, record = resumed_from
    state = checkpoints.load(checkpoint, record)
    metrics.truncate_after(state["step"])
    accelerator.print(f"resumed from step {state['step']} ({checkpoint})")
    return state
