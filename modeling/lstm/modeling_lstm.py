"""pocketlm's character-level LSTM language model in transformers' contract.

During generate() the LSTM's (h, c) state lives in transformers' Cache as a recurrent state, so each new token
costs one LSTM step and beam search reorders it like any other cache. This file travels to the Hub unchanged
beside `configuration_lstm.py`, so it imports nothing from pocketlm.
"""

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_lstm import LSTMConfig


class LSTMPreTrainedModel(PreTrainedModel):
    config_class = LSTMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, nn.LSTM):
            # A forget-gate bias of 1 lets gradients flow through time from the start (Jozefowicz et al., 2015).
            hidden = self.config.hidden_size
            for name, param in module.named_parameters():
                if name.startswith("bias_ih"):
                    init.constant_(param, 0.0)
                    with torch.no_grad():
                        param[hidden : 2 * hidden].fill_(1.0)


def _has_state(cache: Cache | None) -> bool:
    return cache is not None and bool(cache.layers) and cache.layers[0].is_recurrent_states_initialized[0]


def _read_state(cache: Cache | None, num_layers: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (h, c) pair, each (layers, batch, hidden), that the cache holds; None before the first step."""
    if not _has_state(cache):
        return None
    # Each layer's state is stored batch-first, (batch, 2, hidden), so beam search can reorder it on dim 0.
    state = torch.stack([cache.layers[i].recurrent_states[0] for i in range(num_layers)])
    return state[:, :, 0].contiguous(), state[:, :, 1].contiguous()


def _write_state(cache: Cache, h: torch.Tensor, c: torch.Tensor) -> None:
    for i in range(h.shape[0]):
        cache.update_recurrent_state(torch.stack([h[i], c[i]], dim=1), layer_idx=i)


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
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds.")
        x = F.embedding(input_ids, self.embed_tokens.weight) if inputs_embeds is None else inputs_embeds
        if self.training:  # module calls cost as much as small layers when generating one token at a time
            x = self.drop(x)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN has no reduced-precision LSTM kernel: run the recurrence in float32 under CPU autocast.
            with torch.autocast("cpu", enabled=False):
                out = self._recur(x.float(), attention_mask, cache)
        else:
            out = self._recur(x, attention_mask, cache)
        return BaseModelOutputWithPast(last_hidden_state=out, cache=cache if use_cache else None)

    def _recur(self, x, attention_mask, cache) -> torch.Tensor:
        """The top layer's output at every position, the cache's state advanced past them."""
        new_mask = attention_mask[:, -x.shape[1] :] if attention_mask is not None else None
        padded = new_mask is not None and not bool(new_mask.all())
        if not padded and x.shape[1] == 1 and x.device.type == "cpu" and not self.training and _has_state(cache):
            return self._step_in_cache(x, cache)
        state = _read_state(cache, self.config.num_layers)
        if padded:
            out, (h, c) = self._run_left_padded(x, new_mask, state)
        else:
            out, (h, c) = self.lstm(x, state)
        if cache is not None:
            _write_state(cache, h, c)
        return out

    def _step_in_cache(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        """One new position, as generate() asks for every token, one `torch.lstm_cell` call per layer.

        nn.LSTM's CPU kernel prepares every call as it would a whole sequence: generate() took 1.03 ms per greedy
        token through it against 0.68 ms through lstm_cell (0.71 ms with the cell's arithmetic written out in
        Python), the same tokens. Training and prompts still go through nn.LSTM.
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
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for the next token at each position; with `labels` (the input ids, shifted inside), the mean loss."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        if self.training:
            hidden = self.drop(hidden)
        logits = F.linear(hidden, self.lm_head.weight, self.lm_head.bias)
        loss = None
        if labels is not None:
            # Shift the labels, not the logits: slicing the logits would copy them, and their gradient, whole.
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)


# generate() inspects the forward's signature on every token of a class registered with the Auto classes (looking
# for the retired cache_position argument): about 30 us a token, 8 us with the signature computed once, here.
LSTMForCausalLM.forward.__signature__ = inspect.signature(LSTMForCausalLM.forward)

__all__ = ["LSTMModel", "LSTMForCausalLM", "LSTMPreTrainedModel"]
