"""Both families as ONNX graphs, for onnxruntime (Python, the browser's onnxruntime-web) and transformers.js.

The GPT takes GPT-2's ONNX interface, the one transformers.js and optimum use, so they run it as a `gpt2` model
with its key/value cache: `input_ids`, `attention_mask` (over past and new tokens), `position_ids` and
`past_key_values.{i}.key|value` (batch, heads, past tokens, head width) in; `logits` and `present.{i}.key|value`
(the cache grown by the new tokens) out. The LSTM takes `input_ids` and its state `h`, `c` (layers, batch,
hidden) and returns `logits`, `h_out`, `c_out`. Each graph comes in float32 (`onnx/model.onnx`) and with its
weights in int8 (`onnx/model_quantized.onnx`, onnxruntime's dynamic quantization), under the names transformers.js
looks for.

The graphs are written with `torch.onnx` (optimum's exporter pins an older transformers). Each step below calls the
model's own layers as modules; only the cache's plumbing is spelled out, because the model's forward takes a
transformers Cache object and chooses fast paths by looking at the data, which a graph cannot. Every graph is checked
to have kept its batch, sequence and cache lengths free before it is written.
"""

import contextlib
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ONNX_DIR = "onnx"
FLOAT32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
OPSET = 18  # what onnxruntime-web in the browser and onnxruntime 1.20+ both run


def gpt_input_names(n_layer: int) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids",
            *[f"past_key_values.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]]


def gpt_output_names(n_layer: int) -> list[str]:
    return ["logits", *[f"present.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]]


LSTM_INPUT_NAMES = ["input_ids", "h", "c"]
LSTM_OUTPUT_NAMES = ["logits", "h_out", "c_out"]


class GPTStep(nn.Module):
    """A pocketlm GPT's forward over new tokens with its key/value cache as plain tensors: GPT-2's ONNX interface."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        trunk = self.model.model
        x = trunk.wte(input_ids) + trunk.wpe(position_ids)
        past_length, length = past[0].shape[2], input_ids.shape[1]
        keys = torch.arange(past_length + length, device=x.device)[None, :]
        queries = (torch.arange(length, device=x.device) + past_length)[:, None]
        # Causal and padding masks together; a padding query sees itself, so its softmax stays finite (its output is
        # never read), as in the model's own forward.
        visible = ((keys <= queries)[None, None] & attention_mask[:, None, None, :].bool()) | (keys == queries)
        presents = []
        for i, block in enumerate(trunk.h):
            attention, hidden = block.attn, block.ln_1(x)
            batch, _, width = hidden.shape
            qkv = attention.c_attn(hidden).view(batch, length, 3, attention.n_head, attention.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            k, v = torch.cat([past[2 * i], k], dim=2), torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
            x = x + attention.c_proj(y.transpose(1, 2).reshape(batch, length, width))
            x = x + block.mlp(block.ln_2(x))
        return (self.model.lm_head(trunk.ln_f(x)), *presents)


class LSTMStep(nn.Module):
    """A pocketlm LSTM's forward over new tokens from a given state, returning the state after them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, h, c):
        trunk = self.model.model
        out, (h, c) = trunk.lstm(trunk.embed_tokens(input_ids), (h, c))
        return self.model.lm_head(out), h, c


def export_gpt(model, path: Path) -> Path:
    """Write the GPT's decoding graph to `path` (float32)."""
    config = model.config
    batch, length, past_length = 2, 3, 4  # any sizes: each is a named dynamic dimension in the graph
    head_dim = config.n_embd // config.n_head
    example = (torch.zeros(batch, length, dtype=torch.long), torch.ones(batch, past_length + length, dtype=torch.long),
               torch.arange(past_length, past_length + length).expand(batch, length),
               *[torch.zeros(batch, config.n_head, past_length, head_dim) for _ in range(2 * config.n_layer)])
    dims = {name: torch.export.Dim(name) for name in ("batch_size", "sequence_length", "past_sequence_length")}
    tokens = {0: dims["batch_size"], 1: dims["sequence_length"]}
    shapes = (tokens, {0: dims["batch_size"], 1: torch.export.Dim.AUTO}, tokens,
              tuple({0: dims["batch_size"], 2: dims["past_sequence_length"]} for _ in range(2 * config.n_layer)))
    return _export(GPTStep(model), example, shapes, gpt_input_names(config.n_layer),
                   gpt_output_names(config.n_layer), path)


def export_lstm(model, path: Path) -> Path:
    """Write the LSTM's graph to `path` (float32).

    Through torch.onnx's TorchScript exporter: the newer one (torch.export) fixed nn.LSTM's sequence length at the
    example's size whenever it had to fall back to a non-strict trace, which it did on every export after a
    process's first; tracing keeps it free, and nn.LSTM becomes ONNX's own LSTM operator either way.
    """
    config = model.config
    batch, length = 2, 3
    example = (torch.zeros(batch, length, dtype=torch.long), torch.zeros(config.num_layers, batch, config.hidden_size),
               torch.zeros(config.num_layers, batch, config.hidden_size))
    free = {"input_ids": {0: "batch_size", 1: "sequence_length"}, "h": {1: "batch_size"}, "c": {1: "batch_size"},
            "logits": {0: "batch_size", 1: "sequence_length"}, "h_out": {1: "batch_size"}, "c_out": {1: "batch_size"}}
    with torch.no_grad(), _quiet_exporter():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(LSTMStep(model).eval().float(), example, str(path), input_names=LSTM_INPUT_NAMES,
                          output_names=LSTM_OUTPUT_NAMES, dynamic_axes=free, opset_version=OPSET, dynamo=False)
    return _check_free(path, [free[name] for name in LSTM_INPUT_NAMES])


def _export(step: nn.Module, example: tuple, shapes: tuple, inputs: list[str], outputs: list[str], path: Path
            ) -> Path:
    import onnx

    step = step.eval().float()
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(step, example, input_names=inputs, output_names=outputs,
                                    dynamic_shapes=shapes, opset_version=OPSET, dynamo=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    graph = onnx.load(str(path))
    _forget_example_shapes(graph)
    onnx.save(graph, str(path))
    return _check_free(path, [spec for entry in shapes for spec in (entry if isinstance(entry, tuple) else (entry,))])


def _check_free(path: Path, free: list[dict]) -> Path:
    """Refuse a graph whose inputs came out with a dimension fixed that must stay free (`free`, per input, the
    axes that must): it would decode nothing but the example's sizes."""
    import onnx

    graph = onnx.load(str(path))
    fixed = [value.name for value, axes in zip(graph.graph.input, free)
             if any(not value.type.tensor_type.shape.dim[axis].dim_param for axis in axes)]
    if fixed:
        path.unlink()
        raise RuntimeError(f"the ONNX export fixed dimensions that must stay free, in {', '.join(fixed)}")
    return path


def _forget_example_shapes(graph) -> None:
    """Drop the shapes the exporter kept from its example: the LSTM's logits came out as (batch, 3, vocabulary) for
    a 3-token example, which onnxruntime warns about on every other length. The logits are named after input_ids'
    dimensions; onnxruntime infers the intermediate shapes again when it loads the graph."""
    del graph.graph.value_info[:]
    tokens = graph.graph.input[0].type.tensor_type.shape.dim  # input_ids: batch_size, sequence_length
    logits = next(value for value in graph.graph.output if value.name == "logits").type.tensor_type.shape.dim
    for index in (0, 1):
        logits[index].dim_param = tokens[index].dim_param


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter reports every step it takes and every optional package it did not find: not the user's news."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def quantize(float32: Path, int8: Path) -> Path:
    """The graph with its matrices' weights in int8 and activations quantized on the fly (onnxruntime's dynamic
    quantization): about a quarter of the bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = int8.with_name(f".{int8.stem}-prepared.onnx")
    with _quiet_exporter():
        # Shapes inferred and the graph folded, as the quantizer asks (its symbolic inference cannot follow the cache).
        quant_pre_process(str(float32), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(int8), weight_type=QuantType.QInt8)
    prepared.unlink()
    return int8


def write_onnx(model, family: str, folder: Path) -> list[Path]:
    """`folder/onnx/model.onnx` and `model_quantized.onnx` for `model` of `family`."""
    target = folder / ONNX_DIR
    exported = (export_gpt if family == "transformer" else export_lstm)(model, target / FLOAT32_FILE)
    return [exported, quantize(exported, target / INT8_FILE)]
