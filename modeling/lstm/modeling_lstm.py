"""pocketlm's character-level LSTM language model in transformers' contract.

During generate() the LSTM's (h, c) state lives in transformers' Cache as a recurrent state, so each new token
costs one LSTM step and beam search reorders it like any other cache. The embedding, the LSTM and the head are
called as modules, so whatever replaces or hooks one (PEFT's LoRA layers on the embedding or the head, `torch.ao`
quantization, forward hooks) takes effect. This file travels to the Hub unchanged beside `configuration_lstm.py`,
so it imports nothing from pocketlm.
"""

import inspect
import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_lstm import LSTMConfig

# Copied from modeling.gpt.modeling_gpt.CACHE_FIELD
# transformers 5.24 names the cache `cache` in model outputs and generate()'s arguments; earlier 5.x releases
# (5.17 among them) call it `past_key_values`. Forward takes either; outputs use the name the installed one reads.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class LSTMPreTrainedModel(PreTrainedModel):
    config_class = LSTMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True  # the recurrence runs through a GradientCheckpointingLayer

    def _init_weights(self, module):
        # PyTorch's own defaults, not transformers' GPT conventions (normal std 0.02 everywhere): with an embedding
        # at std 0.02 the LSTM's inputs start nearly constant, and on tinyshakespeare it reached 2.71 nats/char after
        # 100 steps where a plain nn.Embedding + nn.LSTM + nn.Linear model reached 2.03 (bench/lstm_vs_torch.py).
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, nn.Linear):
            bound = 1 / math.sqrt(module.in_features)
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LSTM):
            bound = 1 / math.sqrt(module.hidden_size)
            for param in module.parameters():
                init.uniform_(param, -bound, bound)


def _has_state(cache: Cache | None) -> bool:
    return cache is not None and bool(cache.layers) and cache.layers[0].is_recurrent_states_initialized[0]


def read_state(cache: Cache | None, num_layers: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (h, c) pair, each (layers, batch, hidden), that the cache holds; None before the first step."""
    if not _has_state(cache):
        return None
    # Each layer's state is stored batch-first, (batch, 2, hidden), so beam search can reorder it on dim 0.
    state = torch.stack([cache.layers[i].recurrent_states[0] for i in range(num_layers)])
    return state[:, :, 0].contiguous(), state[:, :, 1].contiguous()


def write_state(cache: Cache, h: torch.Tensor, c: torch.Tensor) -> None:
    for i in range(h.shape[0]):
        cache.update_recurrent_state(torch.stack([h[i], c[i]], dim=1), layer_idx=i)


# Copied from modeling.gpt.modeling_gpt._is_hooked
def _is_hooked(module: nn.Module) -> bool:
    """True when a hook runs around `module`'s call: one of its own, or a global one (pruning registers hooks too)."""
    hooks = torch.nn.modules.module
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or hooks._global_forward_hooks or hooks._global_forward_pre_hooks
                or hooks._global_backward_hooks or hooks._global_backward_pre_hooks)


def _runs_as_plain_lstm(lstm: nn.Module) -> bool:
    """True when calling `lstm` is exactly nn.LSTM's computation: not replaced (quantized, subclassed), not hooked."""
    return type(lstm) is nn.LSTM and not _is_hooked(lstm)


class Recurrence(GradientCheckpointingLayer):
    """Runs the stacked LSTM over whole sequences, as a layer transformers' gradient checkpointing can recompute in
    backward instead of keeping every step's gates.

    It holds no parameters: the LSTM is passed in, so it stays `model.lstm` (its weights keep their names, and
    `torch.ao` quantization, which swaps `nn.LSTM` by its exact type, still finds it).
    """

    def forward(self, x: torch.Tensor, lstm: nn.Module, state=None):
        out, (h, c) = lstm(x, state)
        return out, h, c


class LSTMModel(LSTMPreTrainedModel):
    """Token embedding and the stacked LSTM; returns the top layer's hidden state at every position."""

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.embedding_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.recurrence = Recurrence()
        self.gradient_checkpointing = False  # set by transformers' gradient_checkpointing_enable()
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds.")
        cache = cache if cache is not None else past_key_values
        x = self.drop(self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Recomputing the recurrence in backward would advance a cache's state a second time.
            cache, use_cache = None, False
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN has no reduced-precision LSTM kernel: run the recurrence in float32 under CPU autocast.
            with torch.autocast("cpu", enabled=False):
                out = self._recur(x.float(), attention_mask, cache)
        else:
            out = self._recur(x, attention_mask, cache)
        return BaseModelOutputWithPast(last_hidden_state=out, **{CACHE_FIELD: cache if use_cache else None})

    def _recur(self, x, attention_mask, cache) -> torch.Tensor:
        """The top layer's output at every position, the cache's state advanced past them."""
        new_mask = attention_mask[:, -x.shape[1] :] if attention_mask is not None else None
        padded = new_mask is not None and not bool(new_mask.all())
        one_cached_step = not padded and x.shape[1] == 1 and not self.training and _has_state(cache)
        if one_cached_step and x.device.type == "cpu" and _runs_as_plain_lstm(self.lstm):
            return self._step_in_cache(x, cache)
        state = read_state(cache, self.config.num_layers)
        if padded:
            out, (h, c) = self._run_left_padded(x, new_mask, state)
        else:
            out, h, c = self.recurrence(x, self.lstm, state)
        if cache is not None:
            write_state(cache, h, c)
        return out

    def _step_in_cache(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        """One new position, as generate() asks for every token, one `torch.lstm_cell` call per layer.

        nn.LSTM's CPU kernel prepares every call as it would a whole sequence: generate() took 1.03 ms per greedy
        token through it against 0.68 ms through lstm_cell (0.71 ms with the cell's arithmetic written out in
        Python), the same tokens. Training and prompts still go through nn.LSTM, and so does every step when the
        LSTM is replaced or hooked (`_runs_as_plain_lstm`).
        """
        lstm, layer_input = self.lstm, x[:, 0]
        # nn.LSTM's own list of its parameters, (w_ih, w_hh, b_ih, b_hh) per layer: cheaper per token than looking
        # each one up by name (about 20 us of a 0.36 ms step, measured).
        weights = lstm._flat_weights
        for layer in range(lstm.num_layers):
            state = cache.layers[layer].recurrent_states[0]  # (batch, 2, hidden): h and c
            h, c = torch.lstm_cell(layer_input, state.unbind(1), *weights[4 * layer : 4 * layer + 4])
            # Written into the cache's own tensor, as update_recurrent_state would after a stack, without either.
            state[:, 0].copy_(h)
            state[:, 1].copy_(c)
            layer_input = h  # no dropout between layers: this path is for inference only
        return layer_input[:, None]

    def _run_left_padded(self, x, mask, state):
        """Run a left-padded batch so that padding never enters a row's state.

        Each row is shifted so its real tokens come first, run packed, and shifted back; outputs at padding
        positions are meaningless and masked out downstream.
        """
        seq_len = x.shape[1]
        lengths = mask.long().sum(-1).clamp(min=1)
        positions = torch.arange(seq_len, device=x.device)[None]
        pad = (seq_len - lengths)[:, None]
        to_front = (positions + pad).clamp(max=seq_len - 1)[..., None].expand_as(x)
        packed = pack_padded_sequence(x.gather(1, to_front), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, c) = self.lstm(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=seq_len)
        to_back = (positions - pad).clamp(min=0)[..., None].expand(-1, -1, out.shape[-1])
        return out.gather(1, to_back), (h, c)


class LSTMForCausalLM(LSTMPreTrainedModel, GenerationMixin):
    """The LSTM with a linear head predicting the next character."""

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.model = LSTMModel(config)
        self.drop = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: Cache | None = None,
        shift_labels: torch.LongTensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for the next token at each position; with `labels` (the input ids, shifted inside) or `shift_labels`
        (already shifted), the loss: the mean over targets that are not -100, or their sum over `num_items_in_batch`
        (transformers' Trainer counts the targets of every micro-batch of a gradient-accumulation step).
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(self.drop(hidden))
        loss = None
        if labels is not None or shift_labels is not None:
            # transformers' causal-LM loss: shifts the labels (not the logits, which it would copy whole).
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                                      num_items_in_batch=num_items_in_batch, shift_labels=shift_labels)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})


# Copied from modeling.gpt.modeling_gpt.GPTForCausalLM.forward.__signature__ with GPT->LSTM
# generate() inspects the forward's signature on every token of a class registered with the Auto classes (looking
# for the retired cache_position argument): about 30 us a token, 8 us with the signature computed once, here.
LSTMForCausalLM.forward.__signature__ = inspect.signature(LSTMForCausalLM.forward)

__all__ = ["LSTMModel", "LSTMForCausalLM", "LSTMPreTrainedModel"]
