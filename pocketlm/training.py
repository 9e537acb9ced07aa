"""The training loop: a plain accelerate loop from text to a `save_pretrained` folder.

`train(TrainingOptions(...))` is the whole job; `train.py` only parses arguments into the options. The same code
runs on one CPU, one GPU, or under `accelerate launch --num_processes N` (DDP), and resumes exactly. The setup
lives in `preparation.py`; what is here reads top to bottom: step, log, evaluate, checkpoint, until done.
"""

import contextlib
import dataclasses
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from modeling import MODEL_TYPES

from .errors import TrainingDiverged, full_disk_says
from .generation import sample_outputs
from .options import TrainingOptions, resolve_options
from .preparation import Run, any_process, prepare
from .run_folder import RunFolder
from .signing import check_key
from .scoring import sum_token_losses
from .wording import listed

MAX_NONFINITE_STEPS = 5  # consecutive non-finite losses before the run gives up
LOG_EVERY = 10  # steps between train-loss records in metrics.jsonl


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    best_val_loss: float
    best_val_bpc: float
    tokens_per_second: float
    interrupted: bool = False
    samples: list[str] = field(default_factory=list)
    stopped_by: str | None = None  # the signal that stopped the run: SIGINT (Ctrl-C), SIGTERM or SIGUSR1


def train(options: TrainingOptions) -> TrainResult:
    """Train a model on the user's text (or the built-in dialogs) and leave the best one in `output_dir`."""
    with full_disk_says(Path(options.output_dir or "models")):
        options = resolve_options(options)
        folder = RunFolder(options.output_dir)
        folder.check_writable()
        folder.check_is_a_run_folder()
        check_key()  # every run saves a checkpoint, signed with it
    # Taken before anything in the folder is read or cleared, by the main process of a multi-process run.
    with folder.lock() if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext():
        # Any write of the run (tokenizer, metrics, curve, summary) may meet a full disk; the saves say how much
        # they needed.
        with full_disk_says(folder.path):
            if options.auto_resume and folder.has_checkpoints():  # a restarted job: continue, as --resume would
                options = dataclasses.replace(options, resume=True, init_from=None)
            folder.check_reusable(options.model_type, MODEL_TYPES, options.resume, options.overwrite)
            run = prepare(options, folder)
            try:
                return run_loop(run)
            finally:
                run.release()


def run_loop(run: Run) -> TrainResult:
    """Step until the plan's last step (or Ctrl-C), evaluating and checkpointing on the way; then finish."""
    state, plan, accelerator = run.state, run.plan, run.accelerator
    run.model.train()
    started, start_step = time.perf_counter(), state["step"]
    if start_step >= plan.total_steps and accelerator.is_main_process:  # a finished run resumed as it was
        print(f"the run is already at step {start_step} of {plan.total_steps}: nothing to train; pass a larger "
              "--max-steps (or --epochs) to go on")
    bar = tqdm(total=plan.total_steps, initial=start_step, disable=not accelerator.is_main_process, unit="step",
               dynamic_ncols=True)
    interrupted, nonfinite, computed_by, window_losses = False, 0, None, []
    with _StopFlag() as stop, contextlib.closing(bar):  # closed however the loop ends, before any error line
        while state["step"] < plan.total_steps:
            loss = optimizer_step(run, state["step"])
            nonfinite = 0 if math.isfinite(loss) else nonfinite + 1
            if nonfinite:  # the step is skipped: the weights stay those of checkpoint `state["step"]`
                computed_by = state["step"] if nonfinite == 1 else computed_by
                check_weights(run, computed_by)  # gone to inf or NaN, they never come back
            if nonfinite >= MAX_NONFINITE_STEPS:
                bar.close()
                raise diverged(run, f"the loss was not finite for {nonfinite} steps in a row at step {state['step']}",
                               bad_from=computed_by)
            state["step"] = step = state["step"] + 1
            state["tokens"] += plan.tokens_per_step
            speed = (step - start_step) * plan.tokens_per_step / max(time.perf_counter() - started, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{speed:,.0f}", refresh=False)
            window_losses.append(loss)
            if step % LOG_EVERY == 0 or step == plan.total_steps:
                run.metrics.write({"step": step, "train_loss": sum(window_losses) / len(window_losses),
                                   "lr": run.schedule.get_last_lr()[0], "tokens_per_second": speed,
                                   "tokens": state["tokens"]})
                window_losses = []
            # Checked before evaluating: a scheduler's SIGTERM leaves seconds, which go to the checkpoint.
            interrupted = any_process(accelerator, stop.raised)
            if step % plan.eval_every == 0 and step < plan.total_steps and not interrupted:
                record = evaluate_and_keep_best(run, step, computed_by if nonfinite else None)
                if accelerator.is_main_process:
                    bar.write(describe_evaluation(record))
            # Not while the loss is not finite: the weights computed it, and may be what the run diverged to.
            if (step % plan.save_every == 0 and not nonfinite) or interrupted:
                save_checkpoint(run)
            if interrupted:
                break
    speed = (state["step"] - start_step) * plan.tokens_per_step / max(time.perf_counter() - started, 1e-9)
    return finish(run, interrupted, speed, stop.name if interrupted else None, trained=state["step"] > start_step,
                  doubtful_from=computed_by if nonfinite else None)


def optimizer_step(run: Run, step: int) -> float:
    """One optimizer step over `grad_accum` micro-batches; returns the mean loss (maybe non-finite)."""
    options, accelerator, model = run.options, run.accelerator, run.model
    loss_sum = torch.zeros((), device=accelerator.device)
    for micro in range(options.grad_accum):
        batch = run.batches.batch(step * options.grad_accum + micro)
        inputs = {name: value.to(accelerator.device, non_blocking=True) for name, value in batch.items()}
        last = micro == options.grad_accum - 1
        # Skip the gradient all-reduce on all but the last micro-batch of an accumulation.
        with accelerator.no_sync(model) if not last else contextlib.nullcontext():
            loss = model(**inputs, use_cache=False).loss / options.grad_accum
            accelerator.backward(loss)
        loss_sum += loss.detach()
    # An infinite limit clips nothing but still measures the norm, which the check below reads.
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), run.plan.grad_clip or math.inf)
    loss_value = accelerator.reduce(loss_sum, "mean").item()  # the step's one host sync
    # Under fp16 the scaler skips steps whose gradients overflowed; otherwise skip non-finite ones here.
    if math.isfinite(loss_value) and (options.mixed_precision == "fp16" or math.isfinite(float(grad_norm))):
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.schedule.step()
    return loss_value


def evaluate_and_keep_best(run: Run, step: int, computed_by: int | None = None) -> dict:
    """Validation loss, perplexity and bits/char (and, on conversations, bits/char of the assistant's replies); the
    output folder gets the model if it is the best yet: by validation loss, or, when training on replies alone, by
    the replies' bits/char. A loss that is not finite ends the run (`diverged`): the weights are those of
    checkpoint `computed_by`, the step's own unless the steps since it were skipped."""
    # Looked at before evaluating: afterwards the main process may already be writing the model, and every process
    # must make the same choice (under FSDP or DeepSpeed, gathering the weights is collective).
    no_model_yet = not run.folder.has_model()
    validation, state = run.validation, run.state
    started = time.perf_counter()
    val_nats, assistant_nats = evaluate(run)
    record = {
        "step": step,
        "val_loss": val_nats / validation.targets,
        "val_ppl": math.exp(min(val_nats / validation.targets, 50)),
        "val_bpc": val_nats / math.log(2) / validation.characters,
        "eval_seconds": round(time.perf_counter() - started, 3),
    }
    if assistant_nats is not None and validation.assistant_characters:
        record["val_assistant_bpc"] = assistant_nats / math.log(2) / validation.assistant_characters
    run.metrics.write(record)
    if not math.isfinite(record["val_loss"]):  # checked before the model is written, even as the run's first
        raise diverged(run, f"the validation loss is {record['val_loss']} at step {step}",
                       bad_from=step if computed_by is None else computed_by)
    by = "val_assistant_bpc" if run.plan.masked_training and "val_assistant_bpc" in record else "val_loss"
    best = state.get("best_val_assistant_bpc" if by == "val_assistant_bpc" else "best_val_loss")
    if record[by] < (math.inf if best is None else best) or no_model_yet:
        state["best_val_loss"], state["best_val_bpc"] = record["val_loss"], record["val_bpc"]
        state["best_val_assistant_bpc"] = record.get("val_assistant_bpc")
        # Every process takes part: under FSDP or DeepSpeed each holds a shard of the weights.
        weights = run.accelerator.get_state_dict(run.model)
        if run.accelerator.is_main_process:
            run.folder.write_model(run.accelerator.unwrap_model(run.model), run.tokenizer, weights)
    run.accelerator.wait_for_everyone()
    return record


def evaluate(run: Run) -> tuple[float, float | None]:
    """Total validation loss in nats over every real validation token, summed across processes; and over the
    assistant's replies alone when the blocks carry an assistant mask (else None)."""
    accelerator, blocks = run.accelerator, run.validation.blocks
    mine = {name: rows[accelerator.process_index :: accelerator.num_processes] for name, rows in blocks.items()}
    totals = sum_token_losses(run.model, mine, run.batches.batch_size, accelerator.device, accelerator.autocast)
    total, assistant = accelerator.reduce(totals, "sum").tolist()
    return total, (assistant if "assistant_mask" in blocks else None)


def describe_evaluation(record: dict) -> str:
    """One line for an evaluation: "step 500: val loss 1.5617, 2.253 bits/char[, replies ... bits/char]"."""
    replies = f", replies {record['val_assistant_bpc']:.3f} bits/char" if "val_assistant_bpc" in record else ""
    return f"step {record['step']}: val loss {record['val_loss']:.4f}, {record['val_bpc']:.3f} bits/char{replies}"


def diverged(run: Run, what: str, bad_from: int) -> TrainingDiverged:
    """The error that ends a run whose numbers have gone to inf or NaN. The weights of checkpoint `bad_from` computed
    them: it and any later checkpoint are removed (a resume would pick the newest and diverge again), and the error
    says what is kept. The model in the folder is one whose validation loss was finite."""
    removed = run.checkpoints.discard_from(bad_from)
    latest = run.checkpoints.latest()
    if run.folder.has_model():
        kept = (f"the last good checkpoint and model in {run.folder.path} are intact" if latest else
                f"the last good model in {run.folder.path} is intact")
    else:
        kept = (f"the last good checkpoint, {latest}, is intact" if latest else
                "nothing good was saved" if removed else "nothing was saved")
    if removed:
        kept += f" ({listed(removed)}, whose weights computed it, {'were' if len(removed) > 1 else 'was'} removed)"
    return TrainingDiverged(f"{what}: lower --lr ({run.options.lr:g} here) or use --mixed-precision bf16; {kept}.")


def check_weights(run: Run, step: int) -> None:
    """Stop the run, before anything is saved, once a weight is no longer a finite number: a learning rate too high
    for the model can carry the weights there in a step whose own loss was finite, and every step after computes
    NaN, which a short run would otherwise have saved as its model. Every process takes part (each checks its own
    weights: a shard of them under FSDP or DeepSpeed)."""
    finite = torch.stack([torch.isfinite(p).all() for p in run.model.parameters()]).all().item()
    if any_process(run.accelerator, not finite):
        raise diverged(run, f"the weights are no longer finite numbers after step {step}", bad_from=step)


def save_checkpoint(run: Run) -> None:
    check_weights(run, run.state["step"])
    # The model's config too: a run started from --init-from has its model's shape, which its options cannot
    # rebuild on a resume.
    model_config = run.accelerator.unwrap_model(run.model).config.to_dict()
    run.checkpoints.save(run.state["step"], run.state, {"options": asdict(run.options), "decided_by": run.decided_by,
                                                        "model_config": model_config})


def finish(run: Run, interrupted: bool, speed: float, stopped_by: str | None = None, trained: bool = True,
           doubtful_from: int | None = None) -> TrainResult:
    """Final checkpoint and evaluation, loss curve, samples and the run's summary. A resume that `trained` no step
    of a run that had ended adds no evaluation to the metrics and keeps the summary, with its measured speed. A run
    whose last losses were not finite (computed by checkpoint `doubtful_from`'s weights, the steps since skipped)
    is evaluated first: a bad batch, or a run that diverged, which the evaluation stops before a checkpoint keeps
    its weights."""
    state, folder, accelerator = run.state, run.folder, run.accelerator
    ended = {} if trained or not accelerator.is_main_process else folder.read_summary()
    ended = ended if ended.get("steps") == state["step"] else {}  # else it did not reach its summary: finish it
    # The main process's folder decides for all: the evaluation below is one every process takes part in.
    skip_evaluation = any_process(accelerator, bool(ended))
    evaluate_now = not skip_evaluation and (not interrupted or not folder.has_model())
    doubtful = evaluate_now and doubtful_from is not None
    record = evaluate_and_keep_best(run, state["step"], doubtful_from) if doubtful else None
    if not interrupted and not run.checkpoints.has(state["step"]):
        save_checkpoint(run)  # so a later run can extend this one
    if evaluate_now:
        accelerator.print(describe_evaluation(record or evaluate_and_keep_best(run, state["step"])))
    samples = []
    if accelerator.is_main_process:
        run.metrics.plot(folder.loss_curve)
        if not interrupted:
            folder.forget_run_tokenizer()
        if run.options.samples:
            best = AutoModelForCausalLM.from_pretrained(folder.path).to(accelerator.device).eval()
            samples = sample_outputs(best, run.tokenizer, run.corpus.is_chat, run.options.samples,
                                     seed=run.options.seed)
        if not skip_evaluation:
            folder.write_summary(summary(run, speed))
    # The others wait for the main process's plot and samples, so that all leave the process group together.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if interrupted:
        again = ("run the same command to continue" if run.options.auto_resume else
                 f"resume with: {run.options.command_line()} --resume")
        what = "interrupted" if stopped_by in (None, "SIGINT") else f"stopped by {stopped_by}"
        accelerator.print(f"{what} at step {state['step']}: checkpoint saved; {again}")
    return TrainResult(output_dir=folder.path, steps=state["step"],
                       best_val_loss=ended.get("best_val_loss", state["best_val_loss"]),
                       best_val_bpc=ended.get("best_val_bpc", state["best_val_bpc"]), tokens_per_second=speed,
                       interrupted=interrupted, samples=samples, stopped_by=stopped_by)


def summary(run: Run, speed: float) -> dict:
    """training_summary.json: what the run read, how it was set up, how long it prepared, what it reached."""
    corpus, state, plan = run.corpus, run.state, run.plan
    return {
        "data": {"source": corpus.source, "is_chat": corpus.is_chat, "streaming": corpus.streaming,
                 # A stream is never counted: report what the run read instead of what the corpus holds.
                 "train_documents": None if corpus.streaming else len(corpus.train),
                 "validation_documents": len(corpus.validation),
                 "train_tokens": state["tokens"] if corpus.streaming else run.batches.count * (plan.block_size - 1),
                 "validation_characters": run.validation.characters, "validation_rule": corpus.validation_rule,
                 "validation_scored": run.validation.scored,
                 "name": corpus.name,
                 "records": corpus.report.summary()},
        "preparation_seconds": run.stages.seconds,
        "options": {**asdict(run.options), "block_size": plan.block_size, "batch_size": run.batches.batch_size},
        "steps": state["step"], "num_processes": run.accelerator.num_processes,
        "best_val_loss": state["best_val_loss"], "best_val_bpc": state["best_val_bpc"],
        "best_val_ppl": math.exp(min(state["best_val_loss"], 50)), "tokens_per_second": speed,
        "best_val_assistant_bpc": state.get("best_val_assistant_bpc"),
    }


# What stops a run between steps, with a checkpoint: Ctrl-C, and what schedulers send before they kill a job
# (SLURM: SIGTERM at preemption or the time limit, SIGUSR1 ahead of it with --signal; Kubernetes: SIGTERM).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class _StopFlag:
    """Set by a stop signal; the loop checks it between steps so a checkpoint is never half-written."""

    def __init__(self):
        self.raised, self.name = False, None
        self._previous = {}

    def __enter__(self):
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.raised and signum == signal.SIGINT:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.raised = True
        self.name = self.name or signal.Signals(signum).name

    def __exit__(self, *exc):
        for number, previous in self._previous.items():
            signal.signal(number, previous)


__all__ = ["TrainingOptions", "TrainResult", "train"]
