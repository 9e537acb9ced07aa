"""A pocketlm GPT as one GGUF file for llama.cpp (and what builds on it: ollama, LM Studio, llama-cpp-python).

The file is written with the `gguf` package, as architecture `gpt2`, its tensors under llama.cpp's names, its weight
matrices in float32, float16 or llama.cpp's 8-, 5- and 4-bit block formats (`write_gguf`'s `precision`), or in its
k-quants, which llama.cpp's own quantizer makes from the float32 file. llama.cpp's own converter cannot be used: it
recognises a BPE's pre-tokenizer by hashing the ids of test strings, and a newly trained one matches no hash it knows.
The file names the pre-tokenizer by what the tokenizer's own definition says (pocketlm's byte-level BPE splits text
with GPT-2's pattern; one given to `train.py --tokenizer` may split with Llama 3's, Qwen2's, ...), and carries the
vocabulary, the merges, the special tokens and, for a chat model, the chat template.
"""

import os
import sys
from pathlib import Path

import numpy as np

from tokenization import BYTE_LEVEL_BPE, CHARACTER_LEVEL, END_OF_TURN, PLAIN_CHAT_TEMPLATE, tokenizer_kind
from tokenization.kind import definition, steps

from ..choices import GGUF_BY_LLAMA_CPP

# The tensors each precision stores smaller: the weight matrices (embedding, attention and MLP projections, head).
# Norms and biases stay float32, as llama.cpp's own converter keeps them, and so does the position embedding.
MATRICES = ("token_embd.weight", "output.weight", "attn_qkv.weight", "attn_output.weight", "ffn_up.weight",
            "ffn_down.weight")
# Each precision's type for the matrices, by its name in the gguf package (F16, Q8_0, ...), and the file type the
# header names. The block formats store a row in blocks of 32 numbers and a scale: a row of another length stays
# float16, as llama.cpp's converter falls back.
STORED = {"f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
          "q4_0": ("Q4_0", "MOSTLY_Q4_0")}


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """The GPT's weights under llama.cpp's gpt2 tensor names, as float32 arrays; a model trained without biases gets
    zero ones, which llama.cpp's gpt2 graph adds."""
    config, state = model.config, {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    width = config.n_embd

    def bias(name: str, size: int) -> np.ndarray:
        return state.get(name, np.zeros(size, dtype=np.float32))

    tensors = {
        "token_embd.weight": state["model.wte.weight"],
        "position_embd.weight": state["model.wpe.weight"],
        "output_norm.weight": state["model.ln_f.weight"],
        "output_norm.bias": bias("model.ln_f.bias", width),
        "output.weight": state["lm_head.weight"],  # token_embd's values when tied; its own when not
    }
    for i in range(config.n_layer):
        block = f"model.h.{i}."
        for ours, theirs, size in (("ln_1", "attn_norm", width), ("attn.c_attn", "attn_qkv", 3 * width),
                                   ("attn.c_proj", "attn_output", width), ("ln_2", "ffn_norm", width),
                                   ("mlp.c_fc", "ffn_up", 4 * width), ("mlp.c_proj", "ffn_down", width)):
            tensors[f"blk.{i}.{theirs}.weight"] = state[block + ours + ".weight"]
            tensors[f"blk.{i}.{theirs}.bias"] = bias(block + ours + ".bias", size)
    return {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in tensors.items()}


# How a byte-level BPE's tokenizer.json splits text before merging, under the name llama.cpp gives that way
# (`tokenizer.ggml.pre`), with whether a word the vocabulary holds is then taken whole (`ignore_merges`, which
# llama.cpp does under Llama 3's name alone): GPT-2's pattern (pocketlm's BPE, GPT-2's), it after single digits
# (SmolLM's), or the pattern of a Split before a ByteLevel that splits no further (Llama 3's, Qwen2's, GPT-4o's).
# Each is checked against llama.cpp's ids in tests/test_export.py. The file used to name GPT-2's in every case, and
# llama.cpp read prompts for a tokenizer that splits otherwise as other tokens, in silence.
GPT2_PATTERN = "GPT-2's pattern"
DIGITS_THEN_GPT2 = "single digits, then GPT-2's pattern"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {(GPT2_PATTERN, False): "gpt-2", (DIGITS_THEN_GPT2, False): "smollm",
                  (LLAMA3_PATTERN, True): "llama-bpe", (LLAMA3_PATTERN, False): "smaug-bpe",
                  (QWEN2_PATTERN, False): "qwen2", (GPT4O_PATTERN, False): "gpt-4o"}


def vocabulary_problem(tokenizer) -> str | None:
    """Why llama.cpp's gpt2 vocabulary cannot hold `tokenizer` as it is, or None.

    A Transformer trained with a character tokenizer (`--tokenizer` of an LSTM's folder) was written into a GGUF
    file that llama.cpp refused to load ("Failed to load model"); one with a byte-level BPE that splits text in a
    way llama.cpp has no name for would load and read prompts as other tokens."""
    kind = tokenizer_kind(tokenizer)
    if kind != BYTE_LEVEL_BPE:
        kind = "a character-level one" if kind == CHARACTER_LEVEL else \
            f"a {kind} one without byte-level pre-tokenization"
        return "a GGUF file carries a byte-level BPE (llama.cpp's gpt2 vocabulary), and this model's tokenizer is " \
            + kind
    name, differs = _pre_tokenizer(tokenizer)
    if name is None:
        return ("llama.cpp splits a prompt before its BPE only in the ways it has names for, and this model's "
                f"byte-level BPE {differs}: llama.cpp would read prompts as other tokens")
    return None


def _pre_tokenizer(tokenizer) -> tuple[str | None, str]:
    """llama.cpp's name for how `tokenizer` splits text before merging, or None and what it does otherwise."""
    spec = definition(tokenizer)
    normalizer = (spec.get("normalizer") or {}).get("type")
    # NFC is taken, as llama.cpp's own converter takes Qwen2's: text typed or pasted is NFC almost always.
    if normalizer not in (None, "NFC"):
        return None, f"normalizes text first ({normalizer})"
    pre = steps(spec.get("pre_tokenizer"))
    splitting, ignore_merges = _splitting(pre), bool(spec["model"].get("ignore_merges"))
    name = PRE_TOKENIZERS.get((splitting, ignore_merges))
    if name is not None:
        return name, ""
    if pre and pre[-1].get("add_prefix_space"):
        return None, "adds a space before the text (add_prefix_space)"
    if splitting is None:
        return None, f"splits it with {' then '.join(str(step.get('type')) for step in pre)}"
    if (splitting, False) in PRE_TOKENIZERS:  # ignore_merges, with a splitting other than Llama 3's
        return None, "takes a word its vocabulary holds whole before merging (ignore_merges), which llama.cpp " \
                     "does with Llama 3's pattern only"
    return None, f"splits it by the pattern {splitting!r}"


def _splitting(pre_steps: list[dict]) -> str | None:
    """How pre-tokenizer `pre_steps` that end in a ByteLevel split text: as PRE_TOKENIZERS names GPT-2's ways, or the
    pattern of the one Split before a ByteLevel that splits no further; None for anything else."""
    if not pre_steps or pre_steps[-1].get("type") != "ByteLevel" or pre_steps[-1].get("add_prefix_space"):
        return None
    *before, byte_level = pre_steps
    if byte_level.get("use_regex", True):  # the ByteLevel splits with GPT-2's pattern itself
        return GPT2_PATTERN if not before else \
            DIGITS_THEN_GPT2 if before == [{"type": "Digits", "individual_digits": True}] else None
    if len(before) == 1 and before[0].get("type") == "Split" and before[0].get("behavior") == "Isolated" \
            and not before[0].get("invert"):
        return before[0].get("pattern", {}).get("Regex")
    return None


def _vocabulary(tokenizer) -> tuple[list[str], list[str]]:
    """The tokens in id order (in the byte-level alphabet llama.cpp's gpt2 vocabulary uses) and the merges."""
    bpe = definition(tokenizer)["model"]
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    tokens = [by_id[index] for index in range(len(by_id))]
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in bpe["merges"]]
    return tokens, merges


def _token_types(tokenizer, tokens: list[str]) -> list:
    """llama.cpp's type of each token, as its own converter gives them: a token added to the tokenizer is a control
    token where it is special (pocketlm's role tokens, a `<|tool|>` added by `add_special_tokens`) and a
    user-defined one where not (`add_tokens`); llama.cpp matches both whole in a prompt, as the tokenizer does, and
    writes their text as it stands rather than through the byte alphabet. Typing only pocketlm's own role tokens
    cut a fine-tuning's added tokens into BPE pieces: other ids than the model was trained on."""
    import gguf

    added = tokenizer.added_tokens_decoder
    return [gguf.TokenType.NORMAL if index not in added else
            gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED
            for index in range(len(tokens))]


def write_gguf(model, tokenizer, path: Path, name: str, precision: str = "f32", *, is_chat: bool) -> Path:
    """Write the GPT `model` and its byte-level BPE `tokenizer` to the GGUF file `path`, its weight matrices in
    `precision`: f32, f16 (half the bytes), q8_0, q5_0 or q4_0 (34, 22 and 18 bytes for 32 numbers), or a k-quant
    (GGUF_BY_LLAMA_CPP) that llama.cpp's quantizer makes from the float32 file; with the chat template when
    `is_chat` (without one, llama.cpp continues the text it is given rather than turning to chat)."""
    if precision not in GGUF_BY_LLAMA_CPP:
        return _write(model, tokenizer, path, name, precision, is_chat=is_chat)
    # Beside the file, in the export's folder as it is built: a killed export leaves it where the next one clears.
    source = path.with_name(f".{path.name}.f32")
    try:
        _write(model, tokenizer, source, name, "f32", is_chat=is_chat)
        _quantize_with_llama_cpp(source, path, precision)
    finally:
        source.unlink(missing_ok=True)
    _say_fallbacks(path)
    return path


def _quantize_with_llama_cpp(source: Path, path: Path, precision: str) -> None:
    """llama.cpp's own quantizer (llama-quantize's function, through llama-cpp-python) from the GGUF file `source`:
    its k-quants choose a format per tensor (Q4_K_M keeps the head, the attention's inputs and some of the MLP's
    outputs in Q6_K) and fall back to a 32-number block format for a row that is not a multiple of 256 numbers,
    rules pocketlm does not copy."""
    import ctypes
    import logging

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{precision.upper()}")
    # llama-cpp-python prints llama.cpp's log (a line per tensor) unless its logger's level is above the line's.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        status = llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(path), ctypes.byref(params))
    finally:
        log.setLevel(level)
    if status != 0:
        raise RuntimeError(f"llama.cpp's quantizer could not make {precision} from {source} (status {status})")


def _say_fallbacks(path: Path) -> None:
    """Say on standard error which weight matrices llama.cpp's quantizer stored in a fallback format rather than a
    k-quant, as its own log says: the small preset's rows are 128 numbers, and k-quants store rows in blocks of 256,
    so a q4_k_m file of it holds Q5_0 and Q8_0 for all but the MLP's outputs (rows of 512)."""
    import gguf

    from ..wording import listed

    matrices = [tensor for tensor in gguf.GGUFReader(path).tensors if tensor.name.endswith(MATRICES)]
    fallen = [tensor for tensor in matrices if not tensor.tensor_type.name.endswith("_K")]
    if fallen:
        kinds = listed(sorted({tensor.tensor_type.name for tensor in fallen}))
        rows = listed([str(length) for length in sorted({int(tensor.shape[0]) for tensor in fallen})])
        print(f"note: {path.name}: {len(fallen)} of {len(matrices)} weight matrices are in llama.cpp's fallback "
              f"{kinds}, not a k-quant: k-quants store rows in blocks of 256 numbers, and theirs are {rows}.",
              file=sys.stderr)


def _write(model, tokenizer, path: Path, name: str, precision: str, *, is_chat: bool) -> Path:
    import gguf

    config = model.config
    problem = vocabulary_problem(tokenizer)  # export() has refused such a tokenizer already; a direct call has not
    if problem is not None:
        raise ValueError(problem)
    pre_tokenizer, _ = _pre_tokenizer(tokenizer)
    tokens, merges = _vocabulary(tokenizer)
    # An embedding padded past the tokenizer (resize_token_embeddings(pad_to_multiple_of=64), as TRL and Unsloth
    # do) has rows no text reaches: named and marked unused, as llama.cpp's own converter does, where the export
    # used to stop with a traceback. (load_pretrained refuses a tokenizer larger than the model.)
    padding = [f"[PAD{index}]" for index in range(len(tokens), config.vocab_size)]
    ids = tokenizer.convert_tokens_to_ids
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_name(name)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    kind, file_type = STORED.get(precision, ("F32", "ALL_F32"))
    kind = gguf.GGMLQuantizationType[kind]
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens + padding)
    writer.add_token_types(_token_types(tokenizer, tokens) + [gguf.TokenType.UNUSED] * len(padding))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.eos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_eot_token_id(ids(END_OF_TURN))  # where a chat reply ends
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)  # pocketlm prompts start with their role token, not a document boundary
    if is_chat:
        writer.add_chat_template(PLAIN_CHAT_TEMPLATE)
    block = gguf.GGML_QUANT_SIZES[kind][0]
    for tensor_name, array in gguf_tensors(model).items():
        if kind == gguf.GGMLQuantizationType.F32 or not tensor_name.endswith(MATRICES):
            writer.add_tensor(tensor_name, array)
        elif kind != gguf.GGMLQuantizationType.F16 and array.shape[-1] % block == 0:
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(tensor_name, array.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
