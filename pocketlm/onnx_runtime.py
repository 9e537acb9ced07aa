"""A pocketlm model decoding in onnxruntime, behind transformers' own `generate()`.

On a 2-core CPU onnxruntime decoded the small preset about four times as fast as PyTorch (bench/runtimes.py), so
the chat can use it (`chat.py --runtime onnx`). `OnnxCausalLM` runs an ONNX export's graph (pocketlm/export/onnx.py)
in place of the model's forward and keeps its key/value cache, or the LSTM's state, in transformers' Cache, so
`generate()` does everything else as it does for the PyTorch model: sampling, streaming, stopping. Under the same
seed the replies are the same, since the logits agree to about 1e-6 and the sampler draws from them alike.
"""

import hashlib
import inspect
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from modeling.lstm.modeling_lstm import CACHE_FIELD, read_state, refuse_to_read_again, write_state

from .errors import UsageError, require_extra
from .export.onnx import FLOAT32_FILE, INT8_FILE, ONNX_DIR
from .home import HOME, unusable
from .signing import digest
from .sources import all_code
from .whole_writes import write_folder_whole

# ONNX exports made for the chat, one per model and pocketlm source (`load_onnx`), in pocketlm's home.
EXPORT_CACHE = HOME / "onnx"


class OnnxCausalLM(PreTrainedModel, GenerationMixin):
    """An ONNX export (its folder: config.json, generation_config.json, onnx/) as a causal LM for `generate()`."""

    main_input_name = "input_ids"
    _supports_cache_class = True

    def __init__(self, config, session, folder: Path):
        super().__init__(config)
        self.session = session
        self.folder = folder
        self.is_lstm = "h" in {value.name for value in session.get_inputs()}
        self.output_names = [value.name for value in session.get_outputs()]

    @classmethod
    def from_export(cls, folder: str | Path, int8: bool = False, threads: int | None = None) -> "OnnxCausalLM":
        """Load `folder`'s float32 graph, or its int8 one."""
        import onnxruntime

        folder = Path(folder)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        graph = folder / ONNX_DIR / (INT8_FILE if int8 else FLOAT32_FILE)
        session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        config = AutoConfig.from_pretrained(folder)
        model = cls(config, session, folder)
        model.graph_file = graph
        model.name_or_path = str(folder)
        model.generation_config = GenerationConfig.from_pretrained(folder)
        return model.eval()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # onnxruntime's tensors come back to the CPU

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def get_input_embeddings(self):
        return None  # the embedding lives inside the graph

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The exported model's parameters, which its graph holds and this wrapper does not: counted on a copy of
        the model built on the meta device, which allocates nothing."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(self.config)
        return model.num_parameters(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)

    def prepare_inputs_for_generation(self, *args, **kwargs) -> dict:
        if self.is_lstm:  # as the PyTorch LSTM's
            refuse_to_read_again(kwargs)
        return super().prepare_inputs_for_generation(*args, **kwargs)

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                past_key_values: Cache | None = None, use_cache: bool | None = None, logits_to_keep: int = 0,
                **kwargs) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        if cache is None and use_cache is not False:
            cache = DynamicCache(config=self.config)
        if self.is_lstm:
            logits = self._lstm_step(input_ids, attention_mask, cache)
        else:
            logits = self._gpt_step(input_ids, attention_mask, position_ids, cache)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=logits, **{CACHE_FIELD: cache})

    def _gpt_step(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        config, (batch, length) = self.config, input_ids.shape
        past_length = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_length + length, dtype=torch.long)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.long().numpy(),
                "position_ids": position_ids.long().numpy()}
        empty = np.zeros((batch, config.n_head, 0, config.n_embd // config.n_head), dtype=np.float32)
        for i in range(config.n_layer):
            layer = cache.layers[i] if past_length else None
            feed[f"past_key_values.{i}.key"] = layer.keys.numpy() if layer is not None else empty
            feed[f"past_key_values.{i}.value"] = layer.values.numpy() if layer is not None else empty
        outputs = self.session.run(None, feed)
        if cache is not None:
            for i in range(config.n_layer):  # the cache grows by the new tokens' keys and values
                cache.update(torch.from_numpy(outputs[1 + 2 * i][:, :, -length:]),
                             torch.from_numpy(outputs[2 + 2 * i][:, :, -length:]), i)
        return torch.from_numpy(outputs[0])

    def _lstm_step(self, input_ids, attention_mask, cache) -> torch.Tensor:
        config, (batch, length) = self.config, input_ids.shape
        state = read_state(cache, config.num_layers)
        if state is None:
            state = (torch.zeros(config.num_layers, batch, config.hidden_size),) * 2
        h, c = state[0].numpy(), state[1].numpy()
        real = None if attention_mask is None else attention_mask[:, -length:].bool().numpy()
        if real is None or real.all():
            logits, h, c = self.session.run(None, {"input_ids": input_ids.numpy(), "h": h, "c": c})
        else:
            # A padded batch (left-padded prompts): the graph reads one position at a time, and a row's state goes
            # through its padding unchanged, as the PyTorch LSTM's does, so each row reads only its own tokens.
            steps = []
            for t in range(length):
                step, step_h, step_c = self.session.run(None, {"input_ids": input_ids[:, t:t + 1].numpy(), "h": h,
                                                               "c": c})
                h, c = np.where(real[None, :, t, None], step_h, h), np.where(real[None, :, t, None], step_c, c)
                steps.append(step)
            logits = np.concatenate(steps, axis=1)
        if cache is not None:
            write_state(cache, torch.from_numpy(h), torch.from_numpy(c), length)
        return torch.from_numpy(logits)


# generate() inspects the forward's signature on every token: computed once here, as the models' own files do.
OnnxCausalLM.forward.__signature__ = inspect.signature(OnnxCausalLM.forward)


def load_onnx(path_or_repo: str, dtype: str = "float32"):
    """The pocketlm model at `path_or_repo` (a folder or Hub id) running in onnxruntime, float32 or int8, and its
    tokenizer. The model is exported once, into pocketlm's cache, keyed by its files' digests and pocketlm's source
    (`sources.all_code`); a folder export.py wrote ONNX into runs its own graphs."""
    from transformers import AutoTokenizer

    from .export import export, packages_for
    from .adapters import adapter_of
    from .loading import check_model_folder, export_record, is_gpt2, local_folder, model_family, tokenizer_source

    if dtype not in ("float32", "int8"):
        raise UsageError(f"--runtime onnx runs float32 or int8 graphs, not {dtype}: pass --dtype float32 or int8.")
    folder = local_folder(path_or_repo)
    record = export_record(str(folder))
    # Graphs beside the model run as they are: export.py's, or a model repository's that hub_upload.py published
    # (its gpt2/onnx/, the LSTM's onnx/), downloaded. What was exported is what runs.
    if (record is not None and "onnx" in record["formats"]) or (folder / ONNX_DIR / FLOAT32_FILE).is_file():
        require_extra("export", ("onnxruntime",), "--runtime onnx")
        graph = folder / ONNX_DIR / (INT8_FILE if dtype == "int8" else FLOAT32_FILE)
        if not graph.is_file():
            origin = record["model"] if record else "its model"
            raise UsageError(f"{graph} is missing from the export: export {origin} again.")
        cached = folder
    else:
        sources = [folder]
        adapter = adapter_of(str(folder))
        if adapter is None:
            check_model_folder(folder)
        if is_gpt2(str(folder)):  # the exporter writes pocketlm's models
            raise UsageError(f"{path_or_repo} is a stock GPT-2 with no ONNX graphs beside it: run it in torch (drop "
                             "--runtime onnx), or fine-tune it into a pocketlm model (train.py --init-from), whose "
                             "graphs --runtime onnx exports.")
        family = model_family(str(folder), adapters=True)
        if adapter is not None:  # a PEFT adapter: its graphs are its merged model's, so its model's files are keys
            sources.append(local_folder(adapter["base_model_name_or_path"]))
        require_extra("export", packages_for(family, ["onnx"]), "--runtime onnx")
        # The model's files, and the code that exports and runs its graphs: an upgraded or edited pocketlm exports
        # again instead of running the graphs an older one traced.
        key = hashlib.sha256("".join([all_code(), *(digest(path) for source in sources for path in sorted(
            source.iterdir()) if path.suffix in (".safetensors", ".json"))]).encode()).hexdigest()[:20]
        cached = EXPORT_CACHE / key
        if not (cached / ONNX_DIR / INT8_FILE).is_file():
            try:
                EXPORT_CACHE.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise unusable(EXPORT_CACHE, error, "the ONNX export that --runtime onnx runs") from None
            print(f"exporting {path_or_repo} to ONNX for onnxruntime (once; kept in {cached}) ...", file=sys.stderr)
            shutil.rmtree(cached, ignore_errors=True)  # an entry missing a graph (removed by hand): made again
            # Placed whole: a chat started beside this one (another terminal, a server's worker) may place the same
            # export first and be reading it.
            write_folder_whole(cached, lambda scratch: export(str(folder), ["onnx"], scratch))
    model = OnnxCausalLM.from_export(cached, int8=dtype == "int8")
    model.name_or_path = str(path_or_repo)
    # The model's own tokenizer, not the cached export's: an export of a model trained on plain text carries no
    # chat template, and `--mode chat` asks the model itself for one.
    return model, AutoTokenizer.from_pretrained(cached if cached == folder else tokenizer_source(str(folder)))
