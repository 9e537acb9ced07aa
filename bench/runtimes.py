"""Decoding speed of one model in every runtime pocketlm exports to, interleaved in one run.

Each model (the small and medium presets, the LSTM) is exported once with pocketlm's exporter, then decodes the same
16-token prompt greedily for 128 new tokens in turn, round after round:

- PyTorch: the model's own `generate()`;
- onnxruntime float32 and int8 behind `generate()` (`OnnxCausalLM`, what `chat.py --runtime onnx` runs);
- onnxruntime float32, a bare loop feeding the graph its cache (the runtime alone, no generate());
- llama.cpp through llama-cpp-python on the GGUF files (float32, Q8_0 and the Q4_K_M llama.cpp's quantizer makes), a
  bare loop of `eval` and argmax (the GPT only).

Each model is trained for a few steps on the benchmark corpus first (speed does not depend on it, but whether two
runtimes pick the same greedy tokens is only telling on logits that are not flat), with a byte-level BPE trained on
the same text for the GPT, so that llama.cpp reads a real vocabulary. Every side runs on the same number of threads.

    python bench/runtimes.py                       # small, medium, lstm; 3 rounds
    python bench/runtimes.py --models small --rounds 5 --threads 2
"""

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from modeling import GPTConfig, GPTForCausalLM, LSTMConfig, LSTMForCausalLM  # noqa: E402
from pocketlm.export import export, gguf_name  # noqa: E402
from pocketlm.export.onnx import FLOAT32_FILE, ONNX_DIR  # noqa: E402
from pocketlm.generation import default_generation_config  # noqa: E402
from pocketlm.onnx_runtime import OnnxCausalLM  # noqa: E402
from pocketlm.run_folder import RunFolder  # noqa: E402
from tokenization import train_bpe_tokenizer, train_char_tokenizer  # noqa: E402

TEXT = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
TRAINING_STEPS = 100  # batches of 8 x 128 tokens: enough for peaked logits
GGUF_PRECISIONS = ["f32", "q8_0", "q4_k_m"]  # the last is made by llama.cpp's quantizer, with llama-cpp-python


def build(name: str, folder: Path, vocab_size: int):
    """A model of `name`, trained for a few steps, saved as a pocketlm folder; its prompt and tokenizer."""
    text = TEXT.read_text()[:300_000] if TEXT.exists() else "To be, or not to be, that is the question. " * 2000
    torch.manual_seed(0)
    if name == "lstm":
        tokenizer = train_char_tokenizer([text])
        model = LSTMForCausalLM(LSTMConfig(vocab_size=len(tokenizer), dropout=0.0))
    else:
        tokenizer = train_bpe_tokenizer([text], vocab_size=vocab_size)
        model = GPTForCausalLM(GPTConfig.from_preset(name, vocab_size=len(tokenizer), dropout=0.0))
    ids = torch.tensor(tokenizer(text, verbose=False)["input_ids"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(TRAINING_STEPS):
        starts = torch.randint(0, len(ids) - 129, (8,))
        batch = torch.stack([ids[start:start + 128] for start in starts])
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.generation_config = default_generation_config(tokenizer)
    RunFolder(folder).write_model(model.eval(), tokenizer)
    prompt = torch.tensor([tokenizer(text[:400])["input_ids"][:16]])
    return model.eval(), prompt, tokenizer


def heldout_ids(model, tokenizer) -> list[int]:
    """A stretch of the corpus's last tenth (never trained on here), as long as the model's window allows."""
    text = TEXT.read_text()[-20_000:] if TEXT.exists() else "Whether 'tis nobler in the mind to suffer. " * 100
    window = getattr(model.config, "max_position_embeddings", None) or 512
    return tokenizer(text, verbose=False)["input_ids"][: min(window, 512)]


def torch_side(model, prompt, new_tokens: int):
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
               "repetition_penalty": 1.0, "attention_mask": torch.ones_like(prompt)}

    @torch.no_grad()
    def run():
        return model.generate(prompt, **options)[0, prompt.shape[1]:].tolist()
    return run


def bare_onnx_side(folder: Path, prompt, new_tokens: int, threads: int, lstm: bool):
    """onnxruntime alone: the graph fed its own cache (or state) in a plain loop, greedy."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(folder / ONNX_DIR / FLOAT32_FILE), options)
    config = OnnxCausalLM.from_export(folder).config

    def run_gpt():
        heads, width = config.n_head, config.n_embd // config.n_head
        ids, total = prompt.numpy(), prompt.shape[1]
        feed = {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64), "position_ids": np.arange(total)[None],
                **{f"past_key_values.{i}.{kind}": np.zeros((1, heads, 0, width), np.float32)
                   for i in range(config.n_layer) for kind in ("key", "value")}}
        out = []
        for _ in range(new_tokens):
            results = session.run(None, feed)
            token = int(results[0][0, -1].argmax())
            out.append(token)
            total += 1
            feed = {"input_ids": np.array([[token]]), "attention_mask": np.ones((1, total), np.int64),
                    "position_ids": np.array([[total - 1]]),
                    **{f"past_key_values.{i}.{kind}": results[1 + 2 * i + j]
                       for i in range(config.n_layer) for j, kind in enumerate(("key", "value"))}}
        return out

    def run_lstm():
        state = np.zeros((config.num_layers, 1, config.hidden_size), np.float32)
        feed, out = {"input_ids": prompt.numpy(), "h": state, "c": state}, []
        for _ in range(new_tokens):
            logits, h, c = session.run(None, feed)
            token = int(logits[0, -1].argmax())
            out.append(token)
            feed = {"input_ids": np.array([[token]]), "h": h, "c": c}
        return out

    return run_lstm if lstm else run_gpt


def llama_cpp_side(gguf: Path, prompt, new_tokens: int, threads: int):
    import llama_cpp

    # logits_all: llama-cpp-python keeps `scores` row by row only so (otherwise the last row is not where it reads).
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=prompt.shape[1] + new_tokens + 8, n_threads=threads,
                          n_threads_batch=threads, logits_all=True, verbose=False)

    def run():
        llm.reset()
        llm.eval(prompt[0].tolist())
        out = []
        for _ in range(new_tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(token)
            llm.eval([token])
        return out
    return run


def fidelity(model, exported: Path, text_ids: list[int], int8: bool) -> tuple[float, float]:
    """The largest logit difference from PyTorch over a held-out sequence, and the share of positions whose top
    token agrees, for the float32 or int8 graph (teacher-forced: every position sees the same text)."""
    onnx_model = OnnxCausalLM.from_export(exported, int8=int8)
    ids = torch.tensor([text_ids])
    with torch.no_grad():
        ours, theirs = model(ids).logits[0], onnx_model(ids).logits[0]
    return float((ours - theirs).abs().max()), float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["small", "medium", "lstm"])
    parser.add_argument("--vocab-size", type=int, default=5000)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"greedy decoding, 16-token prompt, {args.new_tokens} new tokens, CPU, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'model':<8}{'runtime':<34}{'tokens/s':>10}{'vs PyTorch':>12}{'same tokens':>13}")
    for name in args.models:
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            model, prompt, tokenizer = build(name, scratch / "model", args.vocab_size)
            formats = ["onnx"] if name == "lstm" else ["onnx", "gguf"]
            exported = scratch / "export"
            precisions = GGUF_PRECISIONS if importlib.util.find_spec("llama_cpp") else GGUF_PRECISIONS[:1]
            export(str(scratch / "model"), formats, exported, gguf_precisions=precisions)
            sides = {"PyTorch generate()": torch_side(model, prompt, args.new_tokens)}
            for int8 in (False, True):
                onnx_model = OnnxCausalLM.from_export(exported, int8=int8, threads=args.threads)
                sides[f"onnxruntime {'int8' if int8 else 'float32'} generate()"] = torch_side(
                    onnx_model, prompt, args.new_tokens)
            sides["onnxruntime float32, bare loop"] = bare_onnx_side(exported, prompt, args.new_tokens, args.threads,
                                                                     name == "lstm")
            if name != "lstm":
                try:
                    for precision in precisions:
                        sides[f"llama.cpp {precision}, bare loop"] = llama_cpp_side(
                            exported / gguf_name("model", precision), prompt, args.new_tokens, args.threads)
                except ImportError:
                    print("llama-cpp-python is not installed: pip install ../shared/wheels/llama_cpp_python-*.whl")
            reference = sides["PyTorch generate()"]()  # also the warm-up
            tokens = {label: run() for label, run in sides.items()}  # warm-up, and the tokens each decodes
            times = {label: [] for label in sides}
            for _ in range(args.rounds):
                for label, run in sides.items():
                    started = time.perf_counter()
                    run()
                    times[label].append(time.perf_counter() - started)
            base = args.new_tokens / statistics.median(times["PyTorch generate()"])
            for label, spent in times.items():
                speed = args.new_tokens / statistics.median(spent)
                same = sum(a == b for a, b in zip(tokens[label], reference))
                print(f"{name:<8}{label:<34}{speed:>10,.0f}{speed / base:>11.2f}x{same:>9}/{len(reference)}")
            held_out = heldout_ids(model, tokenizer)
            for int8 in (False, True):
                largest, agree = fidelity(model, exported, held_out, int8)
                print(f"{name:<8}{'onnxruntime ' + ('int8' if int8 else 'float32'):<34}logits within {largest:.2e} of "
                      f"PyTorch's, top token the same at {agree:.1%} of {len(held_out)} held-out positions")


if __name__ == "__main__":
    main()
