"""pocketlm's character-level LSTM language model in transformers' contract.

During generate() the LSTM's (h, c) state lives in transformers' Cache as a recurrent state, so each new token
costs one LSTM step and beam search reorders it like any other cache. The embedding, the LSTM and the head are
called as modules, so whatever replaces or hooks one (PEFT's LoRA layers on the embedding or the head, `torch.ao`
quantization, forward hooks) takes effect. This file travels to the Hub unchanged beside `configuration_lstm.py`,
so it imports nothing from pocketlm.
"""

import functools
import inspect
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMode
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (BaseModelOutputWithPast, CausalLMOutputWithPast,
                                           SequenceClassifierOutputWithPast)
from transformers.utils import is_torchdynamo_compiling

from .configuration_lstm import LSTMConfig

# Copied from modeling.gpt.modeling_gpt.CACHE_FIELD
# transformers 5.24 names the cache `cache` in model outputs and generate()'s arguments; earlier 5.x releases
# (5.17 among them) call it `past_key_values`. Forward takes either; outputs use the name the installed one reads.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


# Copied from modeling.gpt.modeling_gpt.accepts_old_cache_names
def accepts_old_cache_names(*old_names: str):
    """Where the installed transformers names the cache `cache`, the old names still work until 5.40 but warn, with
    transformers' deprecate_kwarg message, as built-in models do; where an old name is still the current one
    (5.17), it passes through quietly. One wrapper for all the names: torch.compile traces a forward through its
    wrappers, and one deprecate_kwarg per name (the LSTM has two) ran the LSTM past dynamo's recompile limit."""
    if CACHE_FIELD != "cache":
        return lambda forward: forward

    def wrap(forward):
        @functools.wraps(forward)
        def renamed(self, *args, **kwargs):
            for old_name in old_names:
                if old_name not in kwargs:
                    continue
                if _old_name_holds_the_cache_meant(kwargs[old_name], kwargs):
                    kwargs["cache"] = kwargs.pop(old_name)
                    continue
                where = f"{type(self).__name__}.{forward.__name__}"
                if "cache" in kwargs:
                    message = (f"Both `{old_name}` and `cache` are set for `{where}`. Using `cache` and ignoring "
                               f"deprecated `{old_name}`.")
                    kwargs.pop(old_name)
                else:
                    message = (f"`{old_name}` is deprecated and will be removed in version 5.40.0 for `{where}`. "
                               "Use `cache` instead.")
                    kwargs["cache"] = kwargs.pop(old_name)
                if not is_torchdynamo_compiling():  # a warning would break the compiled graph
                    warnings.warn(message, FutureWarning, stacklevel=2)
            return forward(self, *args, **kwargs)

        return renamed

    return wrap


# Copied from modeling.gpt.modeling_gpt._old_name_holds_the_cache_meant
def _old_name_holds_the_cache_meant(old: object, kwargs: dict) -> bool:
    """Whether a cache passed under an old name beside `cache` is the one meant, with nothing to warn about: the
    same cache under both names (as GPTForCausalLM.prepare_inputs_for_generation passes it, for PEFT), or one that
    holds tokens beside an empty `cache` (PEFT's prefix tuning puts its filled prefix beside the cache generate()
    made)."""
    if "cache" not in kwargs:
        return False
    cache = kwargs["cache"]
    return old is cache or (isinstance(old, Cache) and isinstance(cache, Cache) and old.is_initialized
                            and not cache.is_initialized)


# Copied from modeling.gpt.modeling_gpt.output_flags
def output_flags(config, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
    """The three output switches of a forward: given ones win, the config's fill the rest, as in built-in models."""
    return (config.output_attentions if output_attentions is None else output_attentions,
            config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            getattr(config, "return_dict", True) if return_dict is None else return_dict)


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
    """The (h, c) pair, each (layers, batch, hidden), that the cache holds; None before the first step.

    Each layer keeps h in its recurrent-state slot 0 and c in slot 1, each (batch, hidden): batch first, so that
    beam search reorders them on dim 0 like any other cache.
    """
    if not _has_state(cache):
        return None
    return tuple(torch.stack([cache.layers[i].recurrent_states[slot] for i in range(num_layers)]) for slot in (0, 1))


def write_state(cache: Cache, h: torch.Tensor, c: torch.Tensor, positions: int) -> None:
    """Keep the state (h, c) reached after `positions` more tokens (padding included, as a key/value cache counts)."""
    for i in range(h.shape[0]):
        cache.update_recurrent_state(h[i], layer_idx=i, state_idx=0)
        cache.update_recurrent_state(c[i], layer_idx=i, state_idx=1)
        layer = cache.layers[i]
        count_positions(layer, positions)
        if layer.is_croppable:
            # transformers 5.25 takes a recurrent layer for croppable, expecting the model to record its past states
            # and conv states to roll back; the LSTM has neither (its steps write the state in place), so crop cannot
            # restore it, as 5.24 said of any layer holding a recurrent state. generate() asks before rolling a
            # returned cache back (its deferred stop check, on MPS) and falls back to a plain stop check.
            layer.is_croppable = False


def count_positions(layer, positions: int) -> None:
    """Add to the tokens a cache layer has read, which `cache.get_seq_length()` reports. transformers 5.25 counts
    them for linear attention only as it updates convolution states, which the LSTM has none of; without the count
    the state looked empty after every step, so generate() going on from a returned cache read the whole sequence
    again on top of it, and PEFT's prompt tuning added its virtual tokens again at every step. (5.24's layers keep
    no count: see LSTMForCausalLM.prepare_inputs_for_generation.)"""
    count = getattr(layer, "cumulative_length_linear", None)
    if count is not None:
        count.add_(positions)


def refuse_to_read_again(generate_kwargs: dict) -> None:
    """Under transformers 5.24, which keeps no count, generate() going on from a cache that holds a state would read
    the whole sequence again on top of it: refused, with the fix, instead of other tokens in silence."""
    cache = generate_kwargs.get("cache")
    if generate_kwargs.get("is_first_iteration") and _has_state(cache) and \
            not hasattr(cache.layers[0], "cumulative_length_linear"):
        raise ValueError("going on from a cache that already holds the LSTM's state needs transformers 5.25 or "
                         "later, which counts the tokens the state has read (5.24 would read them all again on top "
                         "of it): pip install 'transformers>=5.25', or generate from the whole sequence without "
                         "the cache.")


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
    backward instead of keeping every step's gates (padded batches included).

    It holds no parameters: the LSTM is passed in, so it stays `model.lstm` (its weights keep their names, and
    `torch.ao` quantization, which swaps `nn.LSTM` by its exact type, still finds it).
    """

    def forward(self, x: torch.Tensor, lstm: nn.Module, state=None, mask: torch.Tensor | None = None,
                every_layer: bool = False):
        """The top layer's output at every position, the final (h, c), and each layer's outputs when
        `every_layer`. With `mask` (1 = a real token), padding anywhere in a row, left, right or in the middle,
        never enters its state: the real tokens are run packed, as if the padding were not there."""
        if mask is None:
            out, h, c, layers = _run(lstm, x, state, every_layer)
            return out, h, c, layers
        length = x.shape[1]
        lengths = mask.long().sum(-1)
        # Each row's real tokens first, in order (a stable sort puts mask 1 before mask 0), and back afterwards.
        order = torch.argsort(1 - mask.long(), dim=1, stable=True)
        packed = pack_padded_sequence(x.gather(1, order[..., None].expand_as(x)), lengths.clamp(min=1).cpu(),
                                      batch_first=True, enforce_sorted=False)
        out, h, c, layers = _run(lstm, packed, state, every_layer)
        idle = lengths == 0  # rows of padding alone (a chunk of a left-padded prompt): run as one step, undone here
        if bool(idle.any()):
            before = state if state is not None else (torch.zeros_like(h), torch.zeros_like(c))
            h, c = (torch.where(idle[None, :, None], kept, new) for kept, new in zip(before, (h, c)))

        def restore(packed_out):
            padded, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=length)
            return torch.zeros_like(padded).scatter(1, order[..., None].expand_as(padded), padded)

        return restore(out), h, c, [restore(layer) for layer in layers] if layers else None


def _run(lstm: nn.Module, x, state, every_layer: bool):
    """The LSTM over `x` (a tensor or a PackedSequence) from `state`: through its module call, or, when every
    layer's output is asked for, one layer at a time with its own weights: the computation nn.LSTM runs, layer
    by layer, dropout between layers included."""
    if not every_layer:
        out, (h, c) = lstm(x, state)
        return out, h, c, None
    if not _runs_as_plain_lstm(lstm):
        raise ValueError("output_hidden_states runs the LSTM layer by layer with its own weights, but this model's "
                         f"LSTM was replaced or hooked ({type(lstm).__name__}): ask for the last hidden state only.")
    packed = isinstance(x, PackedSequence)
    data = x.data if packed else x
    batch = int(x.batch_sizes[0]) if packed else data.shape[0]
    if state is None:
        zeros = data.new_zeros(lstm.num_layers, batch, lstm.hidden_size)
        state = (zeros, zeros)
    weights, layers, hs, cs = lstm._flat_weights, [], [], []
    for layer in range(lstm.num_layers):
        params = weights[4 * layer : 4 * layer + 4]
        start = (state[0][layer : layer + 1], state[1][layer : layer + 1])
        if packed:
            data, h, c = torch.lstm(data, x.batch_sizes, start, params, True, 1, 0.0, lstm.training, False)
            layers.append(PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices))
        else:
            data, h, c = torch.lstm(data, start, params, True, 1, 0.0, lstm.training, False, True)
            layers.append(data)
        hs.append(h)
        cs.append(c)
        if layer < lstm.num_layers - 1 and lstm.dropout:
            data = F.dropout(data, lstm.dropout, lstm.training)
    return layers[-1], torch.cat(hs), torch.cat(cs), layers


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

    @accepts_old_cache_names("past_key_values", "cache_params")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """The top layer's output at every position. `attention_mask` (1 = a real token) may mark padding anywhere.
        With `output_hidden_states`, the embeddings (`embedding_dim` wide) and each layer's output, num_layers + 1
        of them, as Mamba gives; an LSTM has no attention, so `output_attentions` returns none."""
        _, output_hidden_states, return_dict = output_flags(self.config, output_attentions, output_hidden_states,
                                                            return_dict)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds.")
        cache = cache if cache is not None else past_key_values
        if cache is not None and cache.layers and not hasattr(cache.layers[0], "recurrent_states"):
            # It failed deep inside on a missing attribute.
            raise ValueError("this LSTM carries a recurrent state, not attention keys and values: a cache of keys and "
                             "values (as PEFT's prefix tuning passes) does not apply to it; use LoRA (on embed_tokens "
                             "and lm_head).")
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
                out, layers = self._recur(x.float(), attention_mask, cache, output_hidden_states)
        else:
            out, layers = self._recur(x, attention_mask, cache, output_hidden_states)
        output = BaseModelOutputWithPast(last_hidden_state=out,
                                         hidden_states=(x, *layers) if output_hidden_states else None,
                                         **{CACHE_FIELD: cache if use_cache else None})
        return output if return_dict else output.to_tuple()

    def _recur(self, x, attention_mask, cache, every_layer: bool) -> tuple[torch.Tensor, list | None]:
        """The top layer's output at every position (and each layer's, when asked), the cache's state advanced
        past the real tokens."""
        new_mask = attention_mask[:, -x.shape[1] :] if attention_mask is not None else None
        padded = new_mask is not None and not bool(new_mask.all())
        one_cached_step = not padded and x.shape[1] == 1 and not self.training and _has_state(cache)
        if one_cached_step and not every_layer and x.device.type == "cpu" and _runs_as_plain_lstm(self.lstm):
            return self._step_in_cache(x, cache), None
        state = read_state(cache, self.config.num_layers)
        out, h, c, layers = self.recurrence(x, self.lstm, state, new_mask if padded else None, every_layer)
        if cache is not None:
            write_state(cache, h, c, x.shape[1])
        return out, layers

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
            states = cache.layers[layer].recurrent_states  # h in slot 0, c in slot 1, each (batch, hidden)
            h, c = torch.lstm_cell(layer_input, (states[0], states[1]), *weights[4 * layer : 4 * layer + 4])
            # Written into the cache's own tensors, as update_recurrent_state would, without its checks.
            states[0].copy_(h)
            states[1].copy_(c)
            count_positions(cache.layers[layer], 1)
            layer_input = h  # no dropout between layers: this path is for inference only
        return layer_input[:, None]


class LSTMForCausalLM(LSTMPreTrainedModel, GenerationMixin):
    """The LSTM with a linear head predicting the next character."""

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.model = LSTMModel(config)
        self.drop = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def _validate_generation_mode(self, generation_mode, generation_config, generation_mode_kwargs):
        # Assisted decoding (a draft model, or prompt lookup) rolls the cache back past the draft tokens the model
        # rejects, and a recurrent state cannot be rolled back. transformers 5.24 refused stateful models itself;
        # 5.25 dropped that check and fails inside, cropping convolution states the LSTM does not have. So the
        # refusal is the model's own, the same under both.
        if generation_mode == GenerationMode.ASSISTED_GENERATION:
            raise ValueError(f"assisted generation is not supported with stateful models, such as "
                             f"{type(self).__name__}: its recurrent state cannot be rolled back past rejected draft "
                             f"tokens; generate without assistant_model or prompt_lookup_num_tokens.")
        super()._validate_generation_mode(generation_mode, generation_config, generation_mode_kwargs)

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs) -> dict:
        """generate()'s inputs for the next forward, the cache also under its old name `past_key_values`.

        PEFT's prompt tuning (0.21) reads the cache by that name, and asks how many tokens it has read, to give its
        virtual tokens to the first forward only; so does the GPT's. generate() asks the same count to go on from a
        cache it returned, reading only the tokens after it: transformers 5.24 keeps no count for a recurrent state
        and read the whole sequence again on top of it, other tokens in silence, so there going on from a cache is
        refused.
        `inputs_embeds` is named in the signature, where generate() looks before it takes a prompt as embeddings.
        """
        refuse_to_read_again(kwargs)
        inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        if CACHE_FIELD == "cache" and inputs.get("cache") is not None:
            inputs["past_key_values"] = inputs["cache"]
        return inputs

    @accepts_old_cache_names("past_key_values", "cache_params")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: Cache | None = None,
        shift_labels: torch.LongTensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits for the next token at each position; with `labels` (the input ids, shifted inside) or `shift_labels`
        (already shifted), the loss: the mean over targets that are not -100 (0 without any), or their sum over
        `num_items_in_batch` (transformers' Trainer counts the targets of every micro-batch of a gradient-accumulation
        step).
        """
        _, output_hidden_states, return_dict = output_flags(self.config, output_attentions, output_hidden_states,
                                                            return_dict)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(self.drop(hidden))
        loss = None
        if labels is not None or shift_labels is not None:
            if num_items_in_batch is None:
                # The mean over kept targets, as a sum over their count: a batch without any (a block holding
                # none of a reply under completion-only loss) then costs 0, as the Transformer's, not NaN.
                targets = shift_labels if shift_labels is not None else labels[..., 1:]
                num_items_in_batch = (targets != -100).sum().clamp(min=1)
            # transformers' causal-LM loss: shifts the labels (not the logits, which it would copy whole).
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                                      num_items_in_batch=num_items_in_batch, shift_labels=shift_labels)
        output = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})
        return output if return_dict else output.to_tuple()


# Copied from modeling.gpt.modeling_gpt.GPTForCausalLM.forward.__signature__ with GPT->LSTM
# generate() inspects the forward's signature on every token of a class registered with the Auto classes (looking
# for the retired cache_position argument): about 30 us a token, 8 us with the signature computed once, here.
LSTMForCausalLM.forward.__signature__ = inspect.signature(LSTMForCausalLM.forward)



# Copied from modeling.gpt.modeling_gpt.score_last_tokens
def score_last_tokens(model, logits: torch.Tensor, input_ids: torch.Tensor | None,
                      attention_mask: torch.Tensor | None, labels: torch.Tensor | None):
    """Each row's scores at its last real token, the one position of a causal model that has read the whole text,
    and transformers' loss for them with `labels`. The padding mask finds that token when given (padding on either
    side), else the rightmost token that is not the pad token, as GPT-2's classifier finds it, else the last."""
    rows, device = logits.shape[0], logits.device
    pad_token_id = model.config.pad_token_id
    if attention_mask is not None and attention_mask.dim() == 2:
        real = attention_mask.to(device=device, dtype=torch.int32)
    elif input_ids is not None and pad_token_id is not None:
        real = (input_ids != pad_token_id).to(device=device, dtype=torch.int32)
    else:
        real = torch.ones(rows, logits.shape[1], dtype=torch.int32, device=device)
    last = (torch.arange(real.shape[-1], device=device, dtype=torch.int32) * real).argmax(-1)
    pooled = logits[torch.arange(rows, device=device), last]
    loss = None
    if labels is not None:
        loss = model.loss_function(logits=logits, labels=labels, pooled_logits=pooled, config=model.config)
    return pooled, loss


class LSTMForSequenceClassification(LSTMPreTrainedModel):
    """The LSTM with a linear head scoring the whole text from the state after its last real character.

    What transformers' Trainer fine-tunes with `num_labels` classes, TRL's RewardTrainer as a reward model
    (`num_labels=1`) and PEFT as a `SEQ_CLS` task; a trained language model's folder loads into it, the new head
    initialised.
    """

    # A language model's folder loads into it: the head it leaves behind is expected, not a mismatch.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = LSTMModel(config)
        self.drop = nn.Dropout(config.dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @accepts_old_cache_names("past_key_values", "cache_params")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast | tuple:
        """One row of `num_labels` scores per text; with `labels`, transformers' loss for the config's problem type
        (cross-entropy over classes, mean squared error for one label, binary cross-entropy for several)."""
        _, output_hidden_states, return_dict = output_flags(self.config, output_attentions, output_hidden_states,
                                                            return_dict)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.score(self.drop(outputs.last_hidden_state))
        pooled, loss = score_last_tokens(self, logits, input_ids, attention_mask, labels)
        output = SequenceClassifierOutputWithPast(loss=loss, logits=pooled, hidden_states=outputs.hidden_states,
                                                  **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})
        return output if return_dict else output.to_tuple()


__all__ = ["LSTMModel", "LSTMForCausalLM", "LSTMForSequenceClassification", "LSTMPreTrainedModel"]
