"""Tiny models and tokenizers shared by the tests, so the whole suite runs in minutes on two CPU cores."""

import contextlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# hub_upload.py --dry-run checks that a token is there, as the upload would (never its value); no test uploads.
os.environ.setdefault("HF_TOKEN", "hf_pocketlm_tests_never_sent")

from transformers.cache_utils import LinearAttentionLayer  # noqa: E402

from modeling import GPTConfig, GPTForCausalLM, LSTMConfig, LSTMForCausalLM  # noqa: E402
from tokenization import train_bpe_tokenizer, train_char_tokenizer  # noqa: E402

SAMPLE_TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles.\n"
) * 20

FAMILIES = ["transformer", "lstm"]

# transformers 5.25 keeps a count of the tokens a recurrent-state cache layer has read, which the LSTM advances; 5.24
# keeps none, and its get_seq_length() refuses a cache of recurrent states alone with an error of its own, so what
# reads the count (generate() continued from a cache, prefill in chunks, PEFT's prompt tuning) cannot work there.
COUNTS_RECURRENT_TOKENS = hasattr(LinearAttentionLayer(), "cumulative_length_linear")


def tiny_config(family: str, vocab_size: int = 64):
    """The smallest configs that still exercise every code path (two layers, two heads)."""
    if family == "transformer":
        return GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    return LSTMConfig(vocab_size=vocab_size, embedding_dim=16, hidden_size=32, num_layers=2, dropout=0.0)


def tiny_model(family: str, vocab_size: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    model_class = GPTForCausalLM if family == "transformer" else LSTMForCausalLM
    return model_class(tiny_config(family, vocab_size)).eval()


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def char_tokenizer():
    return train_char_tokenizer([SAMPLE_TEXT])


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return train_bpe_tokenizer([SAMPLE_TEXT], vocab_size=300)


@pytest.fixture
def tokenizer_for(char_tokenizer, bpe_tokenizer):
    """The tokenizer each family is trained with: characters for the LSTM, byte-level BPE for the Transformer."""
    return lambda family: bpe_tokenizer if family == "transformer" else char_tokenizer


def run_entry(main, *args: str) -> subprocess.CompletedProcess:
    """A command's entry point (train_main, chat_main, ...) in this process: the same code path as the script,
    without paying the import time again."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse exits on its own
            code = exit_.code
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def run_at_once(*commands: list[str], timeout: int = 300, **popen) -> list[subprocess.CompletedProcess]:
    """Independent commands started together and each waited for: a script spends its first seconds importing
    torch and transformers on one core, so on two cores two start-ups overlap instead of queueing."""
    popen = {"stdin": subprocess.DEVNULL, "cwd": REPO_ROOT, **popen}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
                 for command in commands]
    try:
        outputs = [process.communicate(timeout=timeout) for process in processes]
        return [subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
                for command, process, (stdout, stderr) in zip(commands, processes, outputs)]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def free_port() -> int:
    """A port no one listens on now, for a server or a launcher's rendezvous that tests start side by side."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str, status: int = 2) -> None:
    """Exit status 2 (or `status`), no traceback, and exactly one `error:` line holding every needle."""
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --------------------------------------------------------------------------------------- trained tiny models

REPO_ROOT = Path(__file__).resolve().parents[1]
# Model shapes for tiny training runs of each family (train.py's --model-config).
TINY_SHAPES = {
    "transformer": {"n_layer": 2, "n_head": 2, "n_embd": 32},
    "lstm": {"embedding_dim": 16, "hidden_size": 32},
}
WORDS = "the a king queen speaks softly loudly to of my lord lady sword crown night day fair foul".split()


def cache_as_hub_repo(folder: Path, cache: Path, repo_id: str) -> None:
    """Lay `folder` out as huggingface_hub's cache holds a downloaded repository."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def save_stock_gpt2(folder: Path, text: str, **settings) -> Path:
    """A stock transformers GPT-2 saved as the Hub's `gpt2` is (GPT2LMHeadModel, a byte-level BPE whose one special
    token is <|endoftext|>), made with tokenizers and transformers alone, random weights of a tiny shape."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.train_from_iterator([text], trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = GPT2TokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    torch.manual_seed(0)
    shape = {"n_positions": 48, "n_embd": 32, "n_layer": 2, "n_head": 4, **settings}
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=0, **shape)).save_pretrained(
        folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_text(seed: int, paragraphs: int = 60) -> str:
    """Deterministic pseudo-prose: paragraphs of random words, separated by blank lines (about 14 KB for 60)."""
    rng = random.Random(seed)
    return "\n".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randrange(20, 60))).capitalize() + ".\n"
        for _ in range(paragraphs)
    )


def train_tiny_models(tmp_path_factory, name: str, shapes: dict | None = None, **options) -> dict[str, Path]:
    """A tiny model of each family, trained for a few steps on the built-in dialogs; `options` override."""
    from pocketlm.training import TrainingOptions, train

    folders = {}
    for family, shape in (shapes or TINY_SHAPES).items():
        out = tmp_path_factory.mktemp(f"{name}-{family}")
        settings = {"block_size": 32, "batch_size": 4, "max_steps": 6, "vocab_size": 400, "samples": 0, **options}
        if family == "lstm":  # it reads characters: a BPE size is refused
            settings.pop("vocab_size")
        train(TrainingOptions(model_type=family, output_dir=str(out), model_config=shape, **settings))
        folders[family] = out
    return folders


def sharpened(model):
    """`model` with its weights scaled by 4, in place: at its initial scale a tiny model repeats one token whatever it
    reads (24 greedy tokens, one distinct, both families), so a test comparing two ways of decoding it could not
    fail; this one's greedy tokens change from step to step."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4)
    return model


def writing_only(model: Path, folder: Path, token: str, max_new_tokens: int = 6) -> Path:
    """A copy of `model` at `folder` whose generation config has it write `token` alone: transformers'
    `sequence_bias` (its `bad_words_ids` spares the stop tokens) and transformers.js's `bad_words_ids` (which has
    no `sequence_bias`) for every other id."""
    from transformers import AutoTokenizer

    shutil.copytree(model, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chosen = tokenizer.convert_tokens_to_ids(token)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(sequence_bias=[[[chosen], 100.0]], max_new_tokens=max_new_tokens,
                  bad_words_ids=[[other] for other in range(len(tokenizer)) if other != chosen])
    config.pop("min_new_tokens", None)  # it would forbid the one token left where that is a stop
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


def with_decisive_weights(folder: Path, copy: Path) -> Path:
    """A copy of the model folder `folder` with its weights drawn afresh and scaled by 4, its tokenizer and settings
    as they were. A tiny model trained for seconds repeats one or two tokens whatever it reads (measured: one or two
    distinct in 24 greedy tokens), so "the same greedy tokens" in another runtime could not fail; this one's tokens
    change from step to step."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("checkpoints"))
    trained = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(0)
    fresh = sharpened(type(trained)(trained.config).eval())
    fresh.generation_config = trained.generation_config
    fresh.save_pretrained(copy)
    return copy


# A prelude for scripts that must run where pocketlm cannot be imported: it drops every path into the project and
# setuptools' editable-install finder, so only what a saved folder carries remains. Format with root=REPO_ROOT.
PROJECT_FREE_PRELUDE = """
import sys
sys.path = [p for p in sys.path if p not in ("", ".", {root!r})]
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
for name in ("pocketlm", "modeling"):
    try:
        __import__(name)
        raise SystemExit(name + " is still importable")
    except ImportError:
        pass
"""


@pytest.fixture(scope="session")
def accented_model(tmp_path_factory) -> Path:
    """A tiny GPT whose every byte is its own token (the smallest byte-level BPE), trained on accented and CJK
    text: its replies split multi-byte characters across tokens, so a stream that shows what one token decodes to
    would show half a character as U+FFFD."""
    from pocketlm.options import TrainingOptions
    from pocketlm.training import train
    from tokenization import MIN_VOCAB_SIZE

    words = "café crème brûlée thé à la française 日本語 テキスト です ça va très bien élève où garçon".split()
    rng = random.Random(0)
    data = tmp_path_factory.mktemp("accents") / "text.txt"
    data.write_text("".join(" ".join(rng.choice(words) for _ in range(30)) + ".\n\n" for _ in range(80)))
    model = tmp_path_factory.mktemp("accents-model")
    train(TrainingOptions(data=[str(data)], output_dir=str(model), model_config=TINY_SHAPES["transformer"],
                          block_size=64, batch_size=8, max_steps=150, vocab_size=MIN_VOCAB_SIZE, samples=0,
                          eval_every=150, lr=1e-2))
    return model


def broken_characters(shown: list[str], final: str) -> list[str]:
    """The texts of a stream that showed a broken character (U+FFFD) where the finished reply has a whole one (a reply
    cut at its length limit may end in a genuinely broken one, which the stream may show too)."""
    finished = final + " " * max(map(len, shown), default=0)
    return [text for text in shown if any(c == "\ufffd" != finished[i] for i, c in enumerate(text))]



# ------------------------------------------------------------------------------------------------- Chromium

CHROMIUM = "/usr/bin/chromium"  # Debian's: Playwright's own browser download cannot be reached
# The probe's flags: without the background-networking ones Chromium keeps trying hosts this machine cannot reach.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Chromium driven by Playwright, for one test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
