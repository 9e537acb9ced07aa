"""Command-line front ends: argument parsing and one call into the library each.

Problems the user can fix end as one line on stderr and exit status 2; a diverged run exits 1; a run stopped
with Ctrl-C saves a checkpoint and exits 130.
"""

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from .choices import (
    BALANCED_SAMPLING, CHAT_MODES, DEFAULT_MAX_NEW_TOKENS, DEVICES, DTYPES, EXPORT_FORMATS, GGUF_PRECISIONS,
    MODEL_SIZES, MODEL_TYPES, RUNTIMES, WEB_HOST, WEB_PORT, WEB_PRECISIONS, check_seed,
)
from .errors import HubError, TrainingDiverged, UsageError, require_extra
from .wording import counted, listed

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def _speaks() -> bool:
    """Whether this process says what it finds. accelerate launch and torchrun start one process per device, each
    running the same command on the same machine's files, and pocketlm's checks agree across them (the loss is
    reduced before it is judged, too little text is agreed on, and a check one process makes alone is the main
    process's): so the first process on each machine speaks for it, and another machine, which may lack a file
    this one has, speaks for itself. The launcher's summary still names every process that stopped."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def _quiet_libraries(datasets_too: bool = False) -> None:
    """Keep the libraries' own chatter (warnings, progress bars) out of the command's output. Only the libraries the
    command uses are loaded here: chat, compare and upload never import the training code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if not _speaks():
        logging.getLogger("pocketlm").setLevel(logging.ERROR)
    # transformers imports torchao, where it is installed, whenever a model loads (its quantizers' registry), and
    # torchao's import warns about its GPU kernels on a CPU machine, about Triton, and through torch about its
    # enums: five lines on every command that say nothing about the user's work.
    for library in ("torchao", "torch.utils._pytree"):
        logging.getLogger(library).setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" bars would break our own
    if datasets_too:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()


def _run(job: Callable[[], int | None]) -> int:
    """Run `job`, turning pocketlm's user-facing errors into one line and an exit status."""
    # A terminal or pipe whose encoding lacks a character (PYTHONIOENCODING=ascii, a Latin-1 locale) stopped a
    # command with UnicodeEncodeError at the first reply or sample that held one: it is written escaped (\u2603)
    # instead, as standard error already writes it.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    # And a line read in another encoding stopped the chat with UnicodeDecodeError: its bytes are kept as Python
    # keeps them in file names, which the chat names in one line (chat.check_text).
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    try:
        return job() or 0
    except UsageError as error:
        _say(f"error: {error}")
        return EXIT_USAGE
    except (TrainingDiverged, HubError) as error:
        _say(f"error: {error}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("\ninterrupted")
        return EXIT_INTERRUPTED


def _say(line: str) -> None:
    if _speaks():
        print(line, file=sys.stderr)


# Options as transformers' run_clm.py and Trainer, nanoGPT or other chat tools spell them (dashes for underscores),
# and ours: a user who brings their habits gets the option they meant, not only "unrecognized arguments".
OTHER_TOOLS_NAMES = {
    "learning-rate": "--lr", "num-train-epochs": "--epochs", "max-iters": "--max-steps",
    "per-device-train-batch-size": "--batch-size", "train-batch-size": "--batch-size",
    "gradient-accumulation-steps": "--grad-accum", "max-grad-norm": "--grad-clip", "lr-warmup-steps": "--warmup-steps",
    "train-file": "--data", "validation-file": "--validation-data", "dataset-name": "--dataset",
    "dataset-config-name": "--dataset-config", "text-column-name": "--text-column",
    "dataset-text-field": "--text-column",
    "tokenizer-name": "--tokenizer", "model-name-or-path": "--init-from", "save-steps": "--save-every",
    "eval-steps": "--eval-every", "eval-interval": "--eval-every", "save-total-limit": "--keep-checkpoints",
    "resume-from-checkpoint": "--resume", "overwrite-output-dir": "--overwrite", "fp16": "--mixed-precision fp16",
    "bf16": "--mixed-precision bf16", "model-path": "--model", "max-length": "--max-new-tokens",
    "max-tokens": "--max-new-tokens", "temp": "--temperature", "use-cpu": "--device cpu", "no-cuda": "--device cpu",
    "cpu": "--device cpu", "cuda": "--device cuda", "gpu": "--device cuda",
}
# Where to write: a folder for train.py and export.py, compare.py's report file.
OTHER_TOOLS_NAMES.update({name: ("--output-dir", "--output")
                          for name in ("o", "out", "out-dir", "outdir", "outfile", "output", "save-dir")})
# Model shape fields, which nanoGPT takes as options of their own (tests/test_faults.py keeps them the models').
MODEL_CONFIG_FIELDS = ("n_layer", "n_head", "n_embd", "dropout", "num_hidden_layers", "num_attention_heads",
                       "hidden_size", "num_layers", "embedding_dim")
OTHER_TOOLS_NAMES.update({field.replace("_", "-"): f"--model-config {field}=VALUE" for field in MODEL_CONFIG_FIELDS})


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line, with the fix, instead of the usage block.

    Abbreviations are off: main.py forwards unknown options, and `--model` must not be read as `--model-type`.
    `path_option` is what a bare word that names a file or folder was likely meant for (`train.py notes.txt`);
    `comma_lists` are the options that take several values joined by commas (`--format onnx,gguf`).
    """

    def __init__(self, *args, path_option: str | None = None, may_be_empty: tuple[str, ...] = (),
                 comma_lists: dict[str, list[str]] | None = None, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.path_option = path_option
        self.may_be_empty = may_be_empty  # the options an empty value means something for (--system '')
        self.comma_lists = comma_lists or {}  # each option with the names it takes
        self.given: list[str] = []

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n" if _speaks() else None)

    def parse_args(self, args=None, namespace=None):
        self.given = list(sys.argv[1:] if args is None else args)
        namespace, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(self.unknown_arguments(unknown))
        self.refuse_empty_values(namespace)
        return namespace

    def refuse_empty_values(self, namespace: argparse.Namespace) -> None:
        """An empty value (`--output-dir ""`, `--data "$UNSET"`) read as the option left out, or as `.`: the run went
        to the default folder, trained on the built-in data or wrote into the current folder. Refused instead."""
        for action in self._actions:
            value = getattr(namespace, action.dest, None)
            given = value if isinstance(value, list) else [value]
            if "" not in given or action.default == "" or action.dest in self.may_be_empty:
                continue
            if action.option_strings:
                name = max(action.option_strings, key=len)
                self.error(f"{name} was given an empty value: give it one, or leave {name} out for its default")
            self.error(f"the {action.metavar or action.dest} argument is empty: name one")

    def unknown_arguments(self, unknown: list[str]) -> str:
        """What is wrong with the arguments no option took, and the option each was likely meant to be."""
        options = [word.split("=", 1)[0] for word in unknown if word.startswith("-") and not _is_number(word)]
        if options:
            return "unknown option " + ", ".join(f"{name}{self._meant(name)}" for name in options)

        word = unknown[0]
        if joined := self._joined_with_commas():
            option, values = joined
            return f"{option} takes several values joined by commas, not spaces: {option} {','.join(values)}"
        if self.path_option and Path(word).expanduser().exists():
            return f"unexpected argument {word!r}: name it with its option, {self.path_option} {word}"
        return f"unexpected argument {word!r}: every value follows its option"

    def _joined_with_commas(self) -> tuple[str, list[str]] | None:
        """The comma-list option and the values it was likely given, where names it takes follow its value apart
        (`--format onnx gguf`, `--format=onnx gguf MODEL`): a shell habit, which left words no option took."""
        for index, token in enumerate(self.given):
            option, equals, value = token.partition("=")
            names = self.comma_lists.get(option)
            if names is None:
                continue
            if not equals:
                value = self.given[index + 1] if index + 1 < len(self.given) else ""
            following = []
            for word in self.given[index + (1 if equals else 2):]:
                if word.lower() not in names:
                    break
                following.append(word)
            if value and following:
                return option, [value, *following]
        return None

    def _meant(self, name: str) -> str:
        import difflib

        ours = [option for option in self._option_string_actions if option.startswith("--")]
        spelled = "--" + name.lstrip("-").replace("_", "-").lower()
        others = OTHER_TOOLS_NAMES.get(spelled[2:], ())
        other = next((o for o in ([others] if isinstance(others, str) else others) if o.split(" ")[0] in ours), None)
        positional = next((action for action in self._actions if not action.option_strings
                           and action.dest.startswith("model")), None)
        if spelled == "--model" and "--model" not in ours and positional is not None:
            # chat.py takes --model; export.py, compare.py and hub_upload.py take the model as their first word.
            return f" ({self.prog} names the model without an option: {self.prog} {positional.metavar or 'MODEL'} ...)"
        if spelled in ours and spelled != name:
            meant = spelled
        elif other:
            meant = other
        else:
            meant = next(iter(difflib.get_close_matches(spelled, ours, n=1, cutoff=0.75)), None)
        return f" (did you mean {meant}?)" if meant else ""


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------- train


def train_parser() -> argparse.ArgumentParser:
    from .options import add_arguments

    parser = _Parser(
        prog="train.py", path_option="--data",
        description="Train a pocketlm model on your text (or the built-in English dialogs) with accelerate.",
        epilog="Several processes: accelerate launch --num_processes N train.py ... ; "
        "defaults marked 'recipe' come from configs/<model-type>.json.",
    )
    add_arguments(parser)  # every option of TrainingOptions, with its help and default
    return parser


def train_main(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    _quiet_libraries(datasets_too=True)

    def job():
        from .options import from_arguments
        from .training import train

        given = _given_options(train_parser(), argv)
        if {"epochs", "max_steps"} <= given and _speaks():  # said, not left silent
            print(f"note: --max-steps {args.max_steps} sets the run's length, so --epochs {args.epochs} is not used "
                  "(as in the Trainer, steps win)")
        result = train(from_arguments(args, given=given))
        for sample in result.samples:
            print(f"\n{sample}")
        if not result.interrupted and _speaks():
            speed = f" at {result.tokens_per_second:,.0f} tokens/s" if result.tokens_per_second else ""
            print(f"\nsaved {result.output_dir} (best validation {result.best_val_bpc:.3f} bits/char, "
                  f"loss {result.best_val_loss:.4f}) after {counted(result.steps, 'step')}{speed}")
        if not result.interrupted:
            return 0
        # As a shell reports a process a signal stopped: 128 + its number (130 for Ctrl-C, 143 for SIGTERM).
        return 128 + signal.Signals[result.stopped_by].value if result.stopped_by else EXIT_INTERRUPTED

    return _run(job)


# ----------------------------------------------------------------------------------------- the old main.py


def _best_mixed_precision() -> str:
    """bf16 where the hardware does it (recent GPUs, any CPU), else fp16."""
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16"


def legacy_main(argv: list[str] | None = None) -> int:
    """The old system's `main.py --train|--chat|--compare|--export`, forwarding every other option to train.py,
    chat.py, compare.py or export.py."""
    parser = _Parser(
        prog="main.py",
        description="pocketlm's original command line; see train.py --help and chat.py --help for every option.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train a model (train.py)")
    mode.add_argument("--chat", action="store_true", help="chat with a trained model (chat.py)")
    mode.add_argument("--compare", action="store_true", help="compare trained models (compare.py)")
    mode.add_argument("--export", action="store_true", help="export a model for other runtimes (export.py)")
    parser.add_argument("--model-type", choices=MODEL_TYPES, help="default: lstm, or the model a run continues or "
                                                                "starts from")
    parser.add_argument(
        "--mixed-precision", nargs="?", const="auto", choices=["auto", "no", "fp16", "bf16"],
        help="bare: bf16 where supported, else fp16",
    )
    args, rest = parser.parse_known_args(argv)
    if args.compare:
        return compare_main(rest)
    if args.export:
        return _run(lambda: export_main(_export_the_default_model(args.model_type or "lstm", rest)))
    model_type = args.model_type or (None if args.train and _continues_a_model(rest) else "lstm")
    forwarded = [*(["--model-type", model_type] if model_type else []), *rest]
    if args.train:
        if args.mixed_precision:
            precision = _best_mixed_precision() if args.mixed_precision == "auto" else args.mixed_precision
            forwarded += ["--mixed-precision", precision]
        return train_main(forwarded)
    return _run(lambda: chat_main(_chat_on_output_dir(forwarded)))


def _continues_a_model(argv: list[str]) -> bool:
    """Whether main.py --train's other options start from a model (--init-from) or continue a run (--resume, or
    --auto-resume where its folder has a checkpoint): that model's family is the run's, not main.py's default
    LSTM, which forwarded stopped the run with "drop --model-type", an option the user never gave."""
    from .run_folder import RunFolder, default_output_dir

    given, _ = train_parser().parse_known_args(argv)
    folder = Path(given.output_dir) if given.output_dir else default_output_dir("lstm")
    return bool(given.init_from or given.resume or (given.auto_resume and RunFolder(folder).has_checkpoints()))


def _export_the_default_model(model_type: str, argv: list[str]) -> list[str]:
    """main.py --export without a MODEL exports the one --model-type and --model-size pick, as main.py --chat chats
    with it: a user repeats the training's flags, and was told 'unknown option --model-size'."""
    from .run_folder import RunFolder, default_output_dir

    sizes = _Parser(prog="main.py", add_help=False)
    sizes.add_argument("--model-size", choices=MODEL_SIZES, default="small")
    picked, rest = sizes.parse_known_args(argv)
    size, size_given = picked.model_size, len(rest) < len(argv)
    parser = export_parser()
    next(action for action in parser._actions if action.dest == "model").nargs = "?"  # the one thing looked at
    named = parser.parse_known_args(rest)[0].model is not None
    if size_given and (named or model_type == "lstm"):
        raise _size_ignored(size, "MODEL" if named else "--model-type lstm")
    if named:
        return rest
    folder = RunFolder(default_output_dir(model_type, size))
    if not folder.config_file.is_file():
        flags = "--model-type lstm" if model_type == "lstm" else f"--model-type transformer --model-size {size}"
        raise UsageError(f"no trained model in {folder.path}: name one (main.py --export MODEL), or train one with: "
                         f"python main.py --train {flags}")
    return [str(folder.path), *rest]


def _size_ignored(size: str, other: str) -> UsageError:
    """--model-size picks the default Transformer's folder: beside a model named otherwise (`other`) it would be
    ignored in silence."""
    return UsageError(f"--model-size {size} picks models/transformer-{size}, but {other} names another model: drop "
                      "one of them.")


def _chat_on_output_dir(argv: list[str]) -> list[str]:
    """main.py --chat takes the --output-dir main.py --train was given as the model to chat with (chat.py's
    --model): a user repeats the training's command line, and was told 'unknown option --output-dir'. The folder
    then decides the model, so the --model-size that picks a default folder, repeated with it, is left out."""
    parser = _Parser(prog="main.py", add_help=False)
    parser.add_argument("--output-dir")
    parser.add_argument("--model-size")
    known, rest = parser.parse_known_args(argv)
    if known.output_dir is None:
        return argv
    if any(arg == "--model" or arg.startswith("--model=") for arg in rest):
        raise UsageError("--output-dir and --model both name the model to chat with: give one.")
    return ["--model", known.output_dir, *rest]


def _given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The options written on the command line, as against those left at their defaults."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


# ----------------------------------------------------------------------------------------------------- chat


def chat_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="chat.py", path_option="--model", may_be_empty=("system",),
                     description="Chat with a trained pocketlm model in the terminal.")
    add = parser.add_argument
    # Positional as in compare.py, export.py and hub_upload.py; --model as main.py and older commands spell it.
    add("model_path", nargs="*", metavar="MODEL", help="a model folder or Hub repo id, the same as --model")
    add("--model", metavar="PATH_OR_REPO", help="a model folder or Hub repo id (default: from --model-type/--model-size)")
    add("--model-type", choices=MODEL_TYPES, default="transformer", help="picks models/<type> by default")
    add("--model-size", choices=MODEL_SIZES, default="small", help="picks models/transformer-<size> by default")
    add("--temperature", type=float, help=f"sampling temperature (default {BALANCED_SAMPLING['temperature']})")
    add("--top-k", type=int, help=f"sample among the k likeliest tokens (default {BALANCED_SAMPLING['top_k']})")
    add("--top-p", type=float, help=f"nucleus sampling mass (default {BALANCED_SAMPLING['top_p']})")
    add("--repetition-penalty", type=float,
        help=f"penalise repeated tokens (default {BALANCED_SAMPLING['repetition_penalty']})")
    add("--max-new-tokens", type=int, help=f"longest reply, in tokens (default {DEFAULT_MAX_NEW_TOKENS})")
    add("--greedy", action="store_true", help="always take the likeliest token (no sampling)")
    add("--seed", type=int, help="seed the sampler for reproducible replies")
    add("--device", default="auto", choices=DEVICES)
    add("--dtype", default="float32", choices=DTYPES,
        help="precision of the weights while chatting; float16 and bfloat16 read half the bytes per token; "
             "int8 (CPU only) quantizes the linear layers, faster from the medium preset up")
    add("--runtime", choices=RUNTIMES,
        help="run the model in PyTorch (default; onnxruntime for export.py's graphs alone), or in onnxruntime "
             "(exported once, then cached; about four times as fast "
             "on a CPU; with --dtype int8, its int8 graph)")
    add("--system", metavar="TEXT", help="system text that opens the conversation")
    context = parser.add_mutually_exclusive_group()
    context.add_argument("--context", dest="context", action="store_true", default=None,
                         help="keep the conversation (default for the transformer)")
    context.add_argument("--no-context", dest="context", action="store_false",
                         help="answer each message on its own (default for the lstm)")
    add("--mode", choices=list(CHAT_MODES),
        help="chat: reply through the chat template; text: continue what is typed, for a model trained on plain text "
             "(default: the one the model was trained for, by its training record; chat without one)")
    add("--prompt", metavar="TEXT", help="print one reply to TEXT and exit (in text mode, TEXT and its continuation)")
    add("--web", action="store_true", help="chat in the browser instead (Gradio: pip install -e '.[web]')")
    add("--host", help=f"--web: the address to serve on (default: {WEB_HOST}, this machine only)")
    add("--port", type=int, help=f"--web: the port to serve on (default: {WEB_PORT})")
    add("--share", action="store_true", help="--web: also open a public Gradio share link")
    return parser


def chat_main(argv: list[str] | None = None) -> int:
    parser = chat_parser()
    args = parser.parse_args(argv)
    named = list(dict.fromkeys(args.model_path + ([args.model] if args.model else [])))
    if len(named) > 1:
        parser.error(f"chat.py talks with one model, got {len(named)} ({', '.join(named)}): name one, or put them "
                     f"side by side with: python compare.py {' '.join(named)}")
    args.model = named[0] if named else None
    _quiet_libraries()

    def job():
        from .chat import ChatInterface, check_text
        from .loading import model_family, resolve_device
        from .run_folder import RunFolder, default_output_dir, trained_models

        check_seed(args.seed)
        for flag, text in (("--prompt", args.prompt), ("--system", args.system)):
            check_text(text or "", flag)  # before the model loads
        web_only = [flag for flag, given in (("--host", args.host is not None), ("--port", args.port is not None),
                                             ("--share", args.share)) if given]
        if web_only and not args.web:  # the terminal chat would ignore them
            raise UsageError(f"{web_only[0]} is for the browser chat: add --web, or drop {web_only[0]}.")
        args.host = WEB_HOST if args.host is None else args.host
        args.port = WEB_PORT if args.port is None else args.port
        if args.web:
            from .web import check_can_listen, require_gradio

            require_gradio()  # before minutes go into loading a model
            if args.prompt is not None:
                raise UsageError("contradictory options: --prompt prints one reply in the terminal, --web serves a page.")
            if not 0 < args.port < 65536:
                raise UsageError(f"--port must be between 1 and 65535, got {args.port}.")
            check_can_listen(args.host, args.port)
        if args.model_size != parser.get_default("model_size") and (args.model or args.model_type == "lstm"):
            # It picks the default Transformer folder, and would be ignored in silence.
            if not args.model:
                picked = "--model-type lstm"
            else:  # as it was given: bare, or with its option
                picked = args.model if args.model_path else f"--model {args.model}"
            raise _size_ignored(args.model_size, picked)
        if args.model is None:
            default = RunFolder(default_output_dir(args.model_type, args.model_size))
            if not default.config_file.exists():
                flags = "--model-type lstm" if args.model_type == "lstm" else f"--model-size {args.model_size}"
                # The default is the small Transformer's folder: after `train.py --model-type lstm` it is empty.
                trained = trained_models(default.path.parent)
                other = f"; {default.path.parent} holds {', '.join(p.name for p in trained)}: pass one, e.g. " \
                        f"--model {trained[0]}, or" if trained else ":"
                raise UsageError(f"no trained model in {default.path}{other} train one with: python train.py {flags}")
            args.model = str(default.path)
        family = model_family(args.model, exports=True, adapters=True)
        use_context = args.context if args.context is not None else family == "transformer"
        options = {name: getattr(args, name) for name in
                   ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens")
                   if getattr(args, name) is not None}
        if args.greedy:
            options["do_sample"] = False
        if args.seed is not None:
            import torch

            torch.manual_seed(args.seed)
        chat = ChatInterface(args.model, use_context=use_context, system=args.system,
                             device=resolve_device(args.device), dtype=args.dtype, runtime=args.runtime,
                             mode=args.mode, **options)
        if args.web:
            from .web import serve

            return serve(chat, args.host, args.port, args.share)
        if args.prompt is not None:
            # A text continued reads as one passage, as nanoGPT's sample.py prints its --start and what follows.
            print(args.prompt + chat.reply(args.prompt) if chat.mode == "text" else chat.reply(args.prompt))
            return 0
        from .terminal import TerminalChat

        return TerminalChat(chat).run()

    return _run(job)


# -------------------------------------------------------------------------------------------------- compare


def compare_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="compare.py",
                     description="Score models side by side on one number, bits per character on the same text, "
                                 "with their size, decoding speed and replies to the same prompts.")
    add = parser.add_argument
    add("models", nargs="*", metavar="MODEL",
        help="model folders or Hub repo ids, either family (default: every model trained into models/)")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--data", action="append", metavar="PATH",
                      help="score on this file or folder (default: the first model's validation documents); repeatable")
    text.add_argument("--dataset", metavar="NAME_OR_PATH", help="score on this datasets.load_dataset dataset")
    add("--dataset-config", metavar="NAME", help="the configuration of --dataset to read, where it has several")
    add("--text-column", metavar="NAME", help="the column of --data's records or --dataset's rows holding the text, "
                                              "where it is not 'text'")
    add("--prompts", metavar="FILE", help="prompts to reply to, one per line (default: three greetings)")
    add("--output", default="comparison.md", metavar="FILE.md", help="the markdown report (default: comparison.md)")
    add("--chart", metavar="FILE.png", help="the bar chart (default: the report's name with .png)")
    add("--seed", type=int, default=0, help="seed for the sampled replies")
    add("--max-new-tokens", type=int, default=60, help="longest reply, in tokens")
    add("--device", default="auto", choices=DEVICES)
    return parser


def compare_main(argv: list[str] | None = None) -> int:
    args = compare_parser().parse_args(argv)
    _quiet_libraries(datasets_too=True)

    def job():
        from .comparison import (check_replaceable, compare_models, comparison_text, draw_chart, footnotes, markdown,
                                 read_prompts, terminal_table)
        from .loading import resolve_device

        check_seed(args.seed)
        if args.max_new_tokens <= 0:
            raise UsageError(f"--max-new-tokens must be positive, got {args.max_new_tokens}.")
        if not args.models:  # what train.py and main.py --train left where they put runs by default
            from .run_folder import MODELS_DIR, trained_models

            args.models = [str(path) for path in trained_models()]
            if not args.models:
                raise UsageError(f"no trained model in {MODELS_DIR}/: name the models to compare (compare.py MODEL "
                                 "[MODEL ...]), or train one with: python train.py")
            print(f"comparing every model in {MODELS_DIR}/: {', '.join(args.models)}")
        named = {}
        for model in args.models:  # a folder named twice (as a/ and ./a, say) is one row twice, not a comparison
            key = str(Path(model).resolve()) if Path(model).exists() else model
            if key in named:
                raise UsageError(f"{model} is the same model as {named[key]}: name each model once.")
            named[key] = model
        output = Path(args.output)
        chart = Path(args.chart) if args.chart else output.with_suffix(".png")
        if chart.resolve() == output.resolve():
            fix = "give --chart a path of its own" if args.chart else "give --output a name ending in .md"
            raise UsageError(f"the report and the chart would both be {output}: {fix}.")
        for path in (output, chart):
            if path.is_dir() or not path.parent.is_dir():
                raise UsageError(f"cannot write {path}: its folder does not exist or it is a folder; pick another path.")
        check_replaceable(output, chart)
        for flag, value, needs in (("--dataset-config", args.dataset_config, args.dataset),
                                   ("--text-column", args.text_column, args.data or args.dataset)):
            if value is not None and not needs:  # it would be ignored in silence
                raise UsageError(f"{flag} reads {'--dataset' if flag == '--dataset-config' else '--data or --dataset'}"
                                 f": add it, or drop {flag}.")
        prompts = read_prompts(args.prompts)
        documents, text = comparison_text(args.models, args.data, args.dataset, args.text_column,
                                          args.dataset_config)
        reports = compare_models(args.models, documents, prompts, args.seed, args.max_new_tokens,
                                 resolve_device(args.device))
        print(f"\nbits per character on {text}:\n")
        print(terminal_table(reports))
        for line in footnotes(reports):
            print(line)
        for index, prompt in enumerate(prompts):
            print(f"\n> {prompt}")
            for report in reports:
                print(f"  {report.name}: {report.replies[index]}")
        try:
            draw_chart(reports, chart)
            chart_link = chart.name if chart.parent.resolve() == output.parent.resolve() else str(chart)
            output.write_text(markdown(reports, text, prompts, args.seed, chart_link), encoding="utf-8")
        except OSError as error:
            raise UsageError(f"cannot write {error.filename or output}: {error.strerror}; pick another --output.")
        print(f"\nwrote {output} and {chart}")
        return 0

    return _run(job)


# --------------------------------------------------------------------------------------------------- upload


LSTM_HAS_NO_GGUF = ("--gguf-precision sets the GGUF file's weights, and the LSTM has no GGUF file (llama.cpp runs no "
                    "LSTM): drop --gguf-precision.")
# export.py's and hub_upload.py's --gguf-precision, in llama.cpp's names.
GGUF_PRECISION_HELP = ("the GGUF file's weights: f32, f16 (half the bytes), or llama.cpp's q8_0, q5_0 or q4_0 (about "
                       "a quarter, a sixth, a seventh), or its k-quants q6_k, q5_k_m, q4_k_m or q3_k_m (made by "
                       "llama.cpp's quantizer: pip install llama-cpp-python); several joined by commas write a file "
                       f"each (default: {GGUF_PRECISIONS[0]})")


def upload_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hub_upload.py", may_be_empty=("token",),  # an unset "$HF_TOKEN": says no token
                     comma_lists={"--formats": [*EXPORT_FORMATS, "all"], "--gguf-precision": GGUF_PRECISIONS},
                     description="Publish a trained pocketlm model on the Hugging Face Hub.")
    add = parser.add_argument
    add("model_dir", help="the folder train.py wrote, e.g. models/transformer-small")
    add("--repo-id", required=True, metavar="OWNER/NAME", help="the Hub repository to create or update")
    add("--private", action="store_true", help="create the repository as private")
    add("--token", help="a Hub token (default: HF_TOKEN, then your saved `hf auth login`)")
    add("--commit-message", help="the upload's commit message")
    add("--revision", metavar="BRANCH", help="upload to this branch (created if needed)")
    add("--license", default="mit", metavar="ID",
        help="the card's license, one of the Hub's ids: huggingface.co/docs/hub/repositories-licenses (default: mit)")
    add("--data-name", metavar="NAME",
        help="what the model card calls the training data (default: its file and folder names, never a path)")
    add("--dry-run", action="store_true", help="build the folder that would be uploaded and stop (no network)")
    add("--output-dir", help="where --dry-run builds the folder (default: <model_dir>-hub beside the model)")
    add("--formats", default="", metavar="FORMATS",
        help="also carry the model's exports, joined by commas: transformers (a stock GPT-2 in gpt2/), onnx, "
             "gguf, or all (see export.py)")
    add("--space-id", metavar="OWNER/NAME", help="also publish a Gradio Space that chats with the model")
    add("--space-output-dir", help="where --dry-run builds the Space (default: <output-dir>-space)")
    add("--static-space", metavar="OWNER/NAME",
        help="also publish a static Space whose page runs the model in the visitor's browser (carries onnx)")
    add("--static-space-output-dir", help="where --dry-run builds the static Space (default: <output-dir>-static-space)")
    add("--web-precision", choices=WEB_PRECISIONS,
        help=f"the static Space's graph: int8 weights or float32 (default: {WEB_PRECISIONS[0]})")
    add("--gguf-precision", metavar="PRECISION", help=GGUF_PRECISION_HELP)
    return parser


def upload_main(argv: list[str] | None = None) -> int:
    args = upload_parser().parse_args(argv)
    _quiet_libraries()

    def job():
        import tempfile

        from .hub import (
            check_branch, check_data_name, check_license, check_repo_ids, prepare_folder, resolve_token, upload,
        )
        from .export import split_formats, split_gguf_precisions
        from .loading import beside, model_family, trained_mode
        from .spaces import prepare_space, prepare_static_space

        # Everything the upload can check without the network, a dry run checks too, with the same messages.
        check_repo_ids({"--repo-id": args.repo_id, "--space-id": args.space_id, "--static-space": args.static_space})
        check_branch(args.revision)
        for flag, value, needs, given in (  # each would be ignored in silence without the option it serves
                ("--output-dir", args.output_dir, "--dry-run", args.dry_run),
                ("--space-output-dir", args.space_output_dir, "--dry-run", args.dry_run),
                ("--space-output-dir", args.space_output_dir, "--space-id OWNER/NAME", args.space_id),
                ("--static-space-output-dir", args.static_space_output_dir, "--dry-run", args.dry_run),
                ("--static-space-output-dir", args.static_space_output_dir, "--static-space OWNER/NAME",
                 args.static_space),
                ("--web-precision", args.web_precision, "--static-space OWNER/NAME", args.static_space),
                ("--gguf-precision", args.gguf_precision, "--formats gguf", {"gguf", "all"} & set(
                    split_formats(args.formats)))):
            if value is not None and not given:
                raise UsageError(f"{flag} serves {needs.split()[0]}: add {needs}, or drop {flag}.")
        license_id = check_license(args.license)
        check_data_name(args.data_name)
        gguf_precisions = split_gguf_precisions(args.gguf_precision or GGUF_PRECISIONS[0])
        family = model_family(args.model_dir)
        if args.gguf_precision and family == "lstm":  # `--formats all` has no GGUF for it
            raise UsageError(LSTM_HAS_NO_GGUF)
        formats = _repository_formats(args, family)
        token = resolve_token(args.token)  # never printed; only whether one is there matters before the network
        output = args.output_dir or beside(args.model_dir, "hub")
        with tempfile.TemporaryDirectory() as scratch:
            where = {"model": output, "space": args.space_output_dir or output.rstrip("/") + "-space",
                     "static": args.static_space_output_dir or output.rstrip("/") + "-static-space"}
            if not args.dry_run:
                where = {name: str(Path(scratch) / name) for name in where}
            missing = _refuse_used_folders(where, args)
            folders = []
            try:
                folders.append((prepare_folder(args.model_dir, where["model"], args.repo_id, license_id,
                                               data_name=args.data_name, formats=formats,
                                               gguf_precisions=gguf_precisions), args.repo_id, None))
                if args.space_id:
                    folders.append((prepare_space(where["space"], args.repo_id, args.space_id, family, license_id,
                                                  trained_mode(args.model_dir)), args.space_id, "gradio"))
                if args.static_space:
                    folders.append((prepare_static_space(where["static"], args.repo_id, args.static_space,
                                                         args.model_dir, license_id,
                                                         args.web_precision or WEB_PRECISIONS[0]),
                                    args.static_space, "static"))
            except BaseException:
                _take_back([folder for folder, _, _ in folders], missing)
                raise
            for folder, repo_id, sdk in folders:
                if args.dry_run:
                    print(f"prepared {folder} for {repo_id}: " + ", ".join(sorted(p.name for p in folder.iterdir())))
                else:
                    revision = args.revision if sdk is None else None  # --revision is the model repository's branch
                    url = upload(folder, repo_id, token, args.private, args.commit_message, revision, space_sdk=sdk)
                    print(f"uploaded to {url}")
        return 0

    return _run(job)


def _repository_formats(args: argparse.Namespace, family: str) -> list[str]:
    """The formats the model repository carries beside the native model, as asked (`all` kept: the model's
    tokenizer decides whether it holds GGUF): --formats, and ONNX for a static page. Checked here, before anything
    is built."""
    from .export import formats_for, packages_for, require_packages, split_formats
    from .hub import REPOSITORY_FORMATS

    asked = split_formats(args.formats)
    if "web" in asked:  # the repository carries the model's files; its page is a Space of its own
        raise UsageError("the web page is not a file of the model repository but a Space of its own: pass "
                         "--static-space OWNER/NAME instead of --formats web.")
    if asked:
        require_packages(family, formats_for(family, asked, offered=REPOSITORY_FORMATS), "--formats")
    if args.static_space:
        require_extra("export", packages_for(family, ["web"]), "--static-space")
    if args.static_space and not {"onnx", "all"} & set(asked):
        asked.append("onnx")  # the static page loads the graph from the model repository
    return asked


def _refuse_used_folders(where: dict[str, str], args: argparse.Namespace) -> dict[Path, list[Path]]:
    """Every folder the upload would build, checked before any is built: nothing half-done. Returns, for each, the
    folders on its way that are missing (its own included), for `_take_back`."""
    from .whole_writes import check_new_folder

    missing = {}
    for name, flag, wanted in (("model", "--output-dir", True), ("space", "--space-output-dir", args.space_id),
                               ("static", "--static-space-output-dir", args.static_space)):
        if wanted:
            target = Path(where[name])
            check_new_folder(target, flag)
            whole = target.expanduser().resolve()
            missing[whole] = [path for path in (whole, *whole.parents) if not path.exists()]
    return missing


def _take_back(folders: list[Path], missing: dict[Path, list[Path]]) -> None:
    """A command stopped after building some of its folders (the Space's failed, or Ctrl-C) removes those too, so
    that the same command can run again: an empty folder the user named is left empty, and the folders made on the
    way go."""
    import shutil

    from .whole_writes import remove_empty

    for folder in folders:
        whole = folder.expanduser().resolve()
        shutil.rmtree(whole, ignore_errors=True)
        if whole not in missing[whole]:
            whole.mkdir()
        remove_empty(missing[whole])


# --------------------------------------------------------------------------------------------------- export


def export_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="export.py",
                     comma_lists={"--format": [*EXPORT_FORMATS, "all"], "--gguf-precision": GGUF_PRECISIONS},
                     description="Write a pocketlm model for other runtimes: a stock transformers GPT-2 (no remote "
                                 "code), ONNX (onnxruntime, transformers.js), GGUF (llama.cpp, ollama), or a web page "
                                 "that chats with it in the reader's browser.")
    add = parser.add_argument
    add("model", metavar="MODEL", help="a model folder or Hub repo id, either family")
    add("--format", default="all", metavar="FORMAT",
        help="transformers, onnx, gguf, web or all (every format the family has), or several joined by commas "
             "(default: all); the LSTM has onnx and web")
    add("--output-dir", help="where the export goes (default: <MODEL>-<format> beside the model; a Hub id's in "
                             "the current folder)")
    add("--web-precision", choices=WEB_PRECISIONS,
        help=f"the web page's graph: int8 weights, a quarter of the bytes, or float32 (default: {WEB_PRECISIONS[0]})")
    add("--gguf-precision", metavar="PRECISION", help=GGUF_PRECISION_HELP)
    add("--overwrite", action="store_true", help="replace the output folder if it exists")
    return parser


# The runtime each export format is for, where a chat template would change how it talks to the model (the web
# page reads the mode itself).
RUNTIME_OF = {"transformers": "transformers", "onnx": "onnxruntime", "gguf": "llama.cpp"}


def export_main(argv: list[str] | None = None) -> int:
    args = export_parser().parse_args(argv)
    _quiet_libraries()

    def job():
        from .export import export, split_formats, split_gguf_precisions
        from .loading import beside, export_record, model_family, trained_on_chat

        formats = split_formats(args.format)
        if args.web_precision and not {"web", "all"} & set(formats):  # it would be ignored in silence
            raise UsageError("--web-precision sets the web page's graph: add web to --format, or drop --web-precision.")
        if args.gguf_precision and not {"gguf", "all"} & set(formats):
            raise UsageError("--gguf-precision sets the GGUF file's weights: add gguf to --format, or drop "
                             "--gguf-precision.")
        if args.gguf_precision and model_family(args.model, adapters=True) == "lstm":  # `all` has no GGUF for it
            raise UsageError(LSTM_HAS_NO_GGUF)
        gguf_precisions = split_gguf_precisions(args.gguf_precision or GGUF_PRECISIONS[0])
        output = args.output_dir or beside(args.model, "-".join(formats))
        files = export(args.model, formats, output, overwrite=args.overwrite,
                       web_precision=args.web_precision or WEB_PRECISIONS[0], gguf_precisions=gguf_precisions)
        size = sum(path.stat().st_size for path in files)
        print(f"wrote {output} ({counted(len(files), 'file')}, {size / 1e6:,.1f} MB): "
              + ", ".join(str(path.relative_to(output)) for path in files))
        written = export_record(output)["formats"]
        runtimes = [RUNTIME_OF[name] for name in written if name in RUNTIME_OF]
        if runtimes and not trained_on_chat(args.model):  # why llama-cli, say, does not chat with it
            print(f"{args.model} was trained on plain text, so its exports carry no chat template: "
                  f"{listed(runtimes)} {'continue' if len(runtimes) > 1 else 'continues'} the text "
                  f"{'they are' if len(runtimes) > 1 else 'it is'} given (README: Run it anywhere).")
        return 0

    return _run(job)
