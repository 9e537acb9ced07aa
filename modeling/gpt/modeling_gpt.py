"""pocketlm's GPT-style decoder-only Transformer, in nanoGPT's shape and transformers' contract.

Pre-norm blocks, causal self-attention through `scaled_dot_product_attention`, learned absolute positions,
and an output head tied to the token embedding. Every layer is called as a module, so whatever replaces or hooks
one (PEFT's LoRA layers, `torch.ao` quantization, forward hooks, pruning) takes effect. This file travels to the
Hub unchanged beside `configuration_gpt.py`, so it imports nothing from pocketlm.
"""

import functools
import inspect
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (BaseModelOutputWithPast, CausalLMOutputWithPast,
                                           SequenceClassifierOutputWithPast)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import is_torchdynamo_compiling

from .configuration_gpt import GPTConfig

# transformers 5.24 names the cache `cache` in model outputs and generate()'s arguments; earlier 5.x releases
# (5.17 among them) call it `past_key_values`. Forward takes either; outputs use the name the installed one reads.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


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


def output_flags(config, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
    """The three output switches of a forward: given ones win, the config's fill the rest, as in built-in models."""
    return (config.output_attentions if output_attentions is None else output_attentions,
            config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            getattr(config, "return_dict", True) if return_dict is None else return_dict)


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask comes from a uniform draw.

    F.dropout's Bernoulli sampling took about twice as long on CPUs (forward and backward of a 16 x 256 x 128
    activation: 6.3 ms against 3.7 ms), and the small preset drops 13 of them per step. On accelerators F.dropout's
    single fused kernel is the faster one. Zeroes each element with probability p, scales the rest by 1 / (1 - p).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))


def eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, in transformers' AttentionInterface form: the output (batch, queries, heads, head
    width) and the probabilities (batch, heads, queries, keys), what `attn_implementation="eager"` and
    `output_attentions=True` ask for. `attention_mask` is additive: 0 where a query may look."""
    scores = (query @ key.transpose(-2, -1)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores + attention_mask
    probabilities = F.dropout(scores.float().softmax(-1).to(query.dtype), dropout, training=module.training)
    return (probabilities @ value).transpose(1, 2), probabilities


def _attention_function(implementation: str):
    """The attention a model configured with `implementation` runs, other than sdpa's fused call: pocketlm's eager
    attention, or a function registered with transformers' AttentionInterface (which transformers 5.0 lacks)."""
    if implementation == "eager" or not hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
        return eager_attention
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention)


def _additive(mask: torch.Tensor | None, is_causal: bool, queries: int, keys: int, like: torch.Tensor
              ) -> torch.Tensor | None:
    """sdpa's (mask, is_causal) as the additive mask eager attention functions take: 0 where a query may look, the
    dtype's most negative number elsewhere."""
    if is_causal:  # top-left aligned, as sdpa's flag: a prompt into a static cache's empty slots sees its own
        mask = torch.ones(queries, keys, dtype=torch.bool, device=like.device).tril()
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(~mask, torch.finfo(like.dtype).min)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention that appends its keys and values to a transformers Cache.

    It runs through sdpa's fused kernels, unless `config._attn_implementation` names another attention (eager, or
    one registered with transformers' AttentionInterface) or the caller asks for the attention probabilities, which
    sdpa cannot return: then, as built-in models do, through `eager_attention`. The implementation is read at every
    call, so `model.set_attn_implementation(...)` switches it.
    """

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        # One matmul for queries, keys and values: fewer kernel launches than three.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: Cache | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, width = x.shape
        qkv = self.c_attn(x).view(batch, seq_len, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, seq, head_dim)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        # No dropout on the attention probabilities: it would cost a random number per query-key pair and
        # force sdpa off its fused kernels, for little regularisation beyond the residual dropout.
        implementation = "eager" if output_attentions else self.config._attn_implementation
        if implementation == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal).transpose(1, 2)
            probabilities = None
        else:
            mask = _additive(attn_mask, is_causal, seq_len, k.shape[-2], q)
            y, probabilities = _attention_function(implementation)(self, q, k, v, mask, scaling=self.head_dim ** -0.5)
        return self.resid_dropout(self.c_proj(y.reshape(batch, seq_len, width))), probabilities


class MLP(nn.Module):
    """The position-wise feed-forward layer: widen four times, GELU, project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # tanh-approximated GELU, as GPT-2 trained with; cheaper than the erf form on CPUs.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(GradientCheckpointingLayer):
    """A pre-norm Transformer block: normalise before each sub-layer, add its output to the residual stream.

    A GradientCheckpointingLayer: after `model.gradient_checkpointing_enable()` its activations are recomputed in
    backward instead of kept, so the residual stream (passed positionally) is all a block holds between passes.
    """

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, attn_mask=None, is_causal=True, output_attentions=False):
        attended, probabilities = self.attn(self.ln_1(x), cache, attn_mask, is_causal, output_attentions)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), probabilities


def _is_hooked(module: nn.Module) -> bool:
    """True when a hook runs around `module`'s call: one of its own, or a global one (pruning registers hooks too)."""
    hooks = torch.nn.modules.module
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or hooks._global_forward_hooks or hooks._global_forward_pre_hooks
                or hooks._global_backward_hooks or hooks._global_backward_pre_hooks)


def _runs_as_plain_linear(layer: nn.Module) -> bool:
    """True when calling `layer` is exactly `x @ layer.weight.T`: an unhooked, unreplaced, bias-free nn.Linear.

    PEFT, quantization and parametrizations replace the layer with another type; hooks and pruning register on it.
    Any of those, and the fused head below steps aside for a plain module call.
    """
    return type(layer) is nn.Linear and layer.bias is None and not _is_hooked(layer)


HEAD_CHUNK_ELEMENTS = 2**22  # logits per chunk of LinearCrossEntropy: 16 MB in float32


class LinearCrossEntropy(torch.autograd.Function):
    """The output head and the mean cross-entropy in one pass over chunks of rows, gradients included.

    A training step never holds the full (tokens x vocabulary) logits, nor the zero-filled gradient buffer and
    separate log-softmax backward that `F.cross_entropy` would add: on CPUs the head's loss was a fifth of a
    small model's step. The gradients are computed in forward, so backward only scales them. The loss is the sum
    over kept targets divided by their count, or by `num_items` when the caller counts them across micro-batches.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, num_items=None) -> torch.Tensor:
        kept = targets != -100
        count = kept.sum().clamp(min=1) if num_items is None else torch.as_tensor(num_items, device=hidden.device)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        rows = max(1, HEAD_CHUNK_ELEMENTS // weight.shape[0])
        for start in range(0, hidden.shape[0], rows):
            h, t, keep = hidden[start : start + rows], targets[start : start + rows], kept[start : start + rows]
            logits = (h @ weight.t()).float()
            target = t.clamp(min=0)[:, None]
            target_logit = logits.gather(1, target).squeeze(1)
            # Softmax in place, one exponential per logit and no temporaries (logsumexp followed by a second
            # exp took about twice as long on CPUs); log_norm is the logsumexp it implies.
            row_max = logits.amax(dim=-1, keepdim=True)
            grad = logits.sub_(row_max).exp_()
            row_sum = grad.sum(dim=-1, keepdim=True)
            grad.div_(row_sum)
            log_norm = (row_sum.log_() + row_max).squeeze(1)
            loss += ((log_norm - target_logit) * keep).sum()
            # d(mean loss)/d(logits) = (softmax - one_hot(target)) / count, zero for ignored rows.
            grad.scatter_add_(1, target, -keep[:, None].to(grad.dtype))
            grad.mul_(keep[:, None] / count)
            grad = grad.to(h.dtype)
            grad_hidden[start : start + rows] = grad @ weight.to(h.dtype)
            grad_weight += (grad.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None


class GPTPreTrainedModel(PreTrainedModel):
    config_class = GPTConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True  # each Block is a GradientCheckpointingLayer
    _no_split_modules = ["Block"]
    _input_embed_layer = "wte"  # where transformers' get/set_input_embeddings look
    _supports_sdpa = True
    _can_compile_fullgraph = True

    def _init_weights(self, module):
        super()._init_weights(module)
        # GPT-2's scheme: shrink the layers that write into the residual stream by 1/sqrt(2 * layers),
        # so the stream's variance does not grow with depth.
        if isinstance(module, (CausalSelfAttention, MLP)):
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.c_proj.weight, mean=0.0, std=std)


def _custom_4d_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A caller's own [batch, 1, queries, keys] mask (packed sequences, shared prefixes), boolean (True where a query
    may look) or additive float (0 there, a large negative elsewhere), as sdpa takes it. A query that may look
    nowhere (a padding row) is let see its own key, so softmax stays finite; its output is never read."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    queries, keys = mask.shape[-2:]
    blind = ~mask.any(-1, keepdim=True)
    own = torch.eye(queries, keys, dtype=torch.bool, device=mask.device).roll(keys - queries, dims=1)
    return mask | (blind & own)


def _attention_mask_for_sdpa(
    attention_mask: torch.Tensor | None, past_len: int, seq_len: int
) -> tuple[torch.Tensor | None, bool]:
    """The (mask, is_causal) pair for sdpa, building a mask only when the fast paths do not apply.

    `attention_mask` is transformers' 2-D padding mask over past and new tokens (1 = real token),
    or None when no token is padding.
    """
    padded = attention_mask is not None
    if not padded:
        if seq_len == 1:
            return None, False  # one new token may see every cached one
        if past_len == 0:
            return None, True  # plain causal attention: sdpa's fastest path
    device = attention_mask.device if attention_mask is not None else None
    causal = torch.ones(seq_len, past_len + seq_len, dtype=torch.bool, device=device).tril(diagonal=past_len)
    if not padded:
        return causal, False
    keys = attention_mask[:, -(past_len + seq_len) :].bool()[:, None, None, :]
    mask = causal[None, None] & keys
    # A left-padding query sees no real key; let it see itself so softmax stays finite (its output is ignored).
    mask |= torch.eye(seq_len, past_len + seq_len, dtype=torch.bool, device=device).roll(past_len, dims=1)
    return mask, False


class GPTModel(GPTPreTrainedModel):
    """The Transformer trunk: token and position embeddings, the blocks, a final layer norm."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.gradient_checkpointing = False  # set by transformers' gradient_checkpointing_enable()
        self.post_init()

    @accepts_old_cache_names("past_key_values")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """The final layer norm's output at every position. `attention_mask` is a 2-D padding mask (1 = a real
        token) over past and new tokens, or a 4-D [batch, 1, queries, keys] mask of the caller's own. With
        `output_hidden_states`, the stream entering each block and the final output (n_layer + 1 of them, as GPT-2
        gives); with `output_attentions`, each block's attention probabilities."""
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds.")
        cache = cache if cache is not None else past_key_values
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Recomputing a block in backward would append its keys and values to a cache a second time.
            cache, use_cache = None, False
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        if cache is not None and cache.is_compileable:
            position_ids, attn_mask, is_causal = self._static_cache_inputs(x, attention_mask, position_ids, cache)
        else:
            position_ids, attn_mask, is_causal = self._dynamic_cache_inputs(x, attention_mask, position_ids, cache)

        x = self.drop(x + self.wpe(position_ids))
        hidden_states, attentions = [], []
        for block in self.h:
            if output_hidden_states:
                hidden_states.append(x)
            x, probabilities = block(x, cache=cache, attn_mask=attn_mask, is_causal=is_causal,
                                     output_attentions=output_attentions)
            if output_attentions:
                attentions.append(probabilities)
        x = self.ln_f(x)
        if output_hidden_states:
            hidden_states.append(x)
        output = BaseModelOutputWithPast(
            last_hidden_state=x, hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None, **{CACHE_FIELD: cache if use_cache else None})
        return output if return_dict else output.to_tuple()

    def _dynamic_cache_inputs(self, x, attention_mask, position_ids, cache):
        """Positions and the sdpa (mask, is_causal) pair when the cache, if any, grows with the text."""
        seq_len = x.shape[1]
        past_len = cache.get_seq_length() if cache is not None else 0
        self._check_window(past_len + seq_len, "tokens")
        if attention_mask is not None and attention_mask.dim() == 4:
            if position_ids is None:  # a 4-D mask may pack several sequences: only the caller knows their positions
                position_ids = torch.arange(past_len, past_len + seq_len, device=x.device)[None]
            return position_ids, _custom_4d_mask(attention_mask, x.dtype), False
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: take sdpa's mask-free paths
        if position_ids is None:
            if attention_mask is not None:
                # Padding: count positions from each row's first real token.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]
            else:
                position_ids = torch.arange(past_len, past_len + seq_len, device=x.device)[None]
        return (position_ids, *_attention_mask_for_sdpa(attention_mask, past_len, seq_len))

    def _static_cache_inputs(self, x, attention_mask, position_ids, cache):
        """The same for a preallocated cache (generate(cache_implementation="static")), the one torch.compile can
        capture whole: its length is a tensor, so nothing here waits for the device, and attention always spans
        the full buffer under a mask that hides the slots not yet written.
        """
        self._check_window(cache.get_max_length(), "cache slots")
        if position_ids is None:
            position_ids = (torch.arange(x.shape[1], device=x.device) + cache.get_seq_length())[None]
        if attention_mask is None or attention_mask.dim() == 2:  # generate() passes the 4-D mask ready-made
            attention_mask = create_causal_mask(self.config, x, attention_mask, cache, position_ids)
        # No mask is transformers' word for "sdpa's own causal flag does the same", as its sdpa attention reads it:
        # one query sees every written slot, and several (a prompt without padding into the empty cache) see the
        # slots up to their own, top-left aligned. Read as no mask at all, a prompt attended to its later tokens
        # and to the empty slots.
        return position_ids, attention_mask, attention_mask is None and x.shape[1] > 1

    def _check_window(self, length: int, unit: str) -> None:
        if length > self.config.block_size:
            raise ValueError(
                f"{length} {unit} exceed this model's context window of {self.config.block_size}; "
                "keep the most recent tokens (pocketlm's chat and generation helpers do this for you)."
            )


class GPTForCausalLM(GPTPreTrainedModel, GenerationMixin):
    """The GPT trunk with a language-modelling head tied to the token embedding.

    Tying saves vocab_size x n_embd parameters (half of the small preset) and trains better on small data.
    """

    _tied_weights_keys = {"lm_head.weight": "model.wte.weight"}

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.model = GPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs) -> dict:
        """generate()'s inputs for the next forward, the cache also under its old name `past_key_values`.

        PEFT's prompt tuning and prefix tuning (0.21) read the cache by that name to tell the first forward, which
        takes their virtual tokens, from the later ones, which must not: under a transformers that names it `cache`
        they saw none, added the virtual tokens again at every step and decoded other tokens than the model
        predicts (stock GPT-2 does so too). Forward takes the same cache under both names without a warning.
        `inputs_embeds` is named in the signature, where generate() looks before it takes a prompt as embeddings.
        """
        inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        if CACHE_FIELD == "cache" and inputs.get("cache") is not None:
            inputs["past_key_values"] = inputs["cache"]
        return inputs

    @accepts_old_cache_names("past_key_values")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
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
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden, cache = outputs.last_hidden_state, getattr(outputs, CACHE_FIELD)
        extras = {CACHE_FIELD: cache, "hidden_states": outputs.hidden_states, "attentions": outputs.attentions}
        targets = None
        if shift_labels is not None:
            targets = shift_labels.flatten()
        elif labels is not None:
            # Shift the labels, not the logits: slicing the logits would copy them, and their gradient, whole.
            targets = F.pad(labels[:, 1:], (0, 1), value=-100).flatten()
        if targets is not None and self.training and torch.is_grad_enabled() and _runs_as_plain_linear(self.lm_head):
            # Training needs the loss alone: skip materialising the logits (returned as None).
            loss = LinearCrossEntropy.apply(hidden.flatten(0, 1), self.lm_head.weight, targets, num_items_in_batch)
            output = CausalLMOutputWithPast(loss=loss, logits=None, **extras)
            return output if return_dict else output.to_tuple()
        # generate() asks for the last position only: the vocabulary projection is the costliest matmul.
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if targets is not None:
            total = F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=-100, reduction="sum")
            count = (targets != -100).sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
            loss = total / count
        output = CausalLMOutputWithPast(loss=loss, logits=logits, **extras)
        return output if return_dict else output.to_tuple()


# generate() inspects the forward's signature on every token of a class registered with the Auto classes (looking
# for the retired cache_position argument): about 30 us a token, 8 us with the signature computed once, here.
GPTForCausalLM.forward.__signature__ = inspect.signature(GPTForCausalLM.forward)



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


class GPTForSequenceClassification(GPTPreTrainedModel):
    """The GPT trunk with a linear head scoring the whole text from its last real token, as GPT-2's classifier does.

    What transformers' Trainer fine-tunes with `num_labels` classes, TRL's RewardTrainer as a reward model
    (`num_labels=1`) and PEFT as a `SEQ_CLS` task; a trained language model's folder loads into it, the new head
    initialised.
    """

    # A language model's folder loads into it: the head it leaves behind is expected, not a mismatch.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = GPTModel(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    @accepts_old_cache_names("past_key_values")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
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
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.score(outputs.last_hidden_state)
        pooled, loss = score_last_tokens(self, logits, input_ids, attention_mask, labels)
        output = SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})
        return output if return_dict else output.to_tuple()


__all__ = ["GPTModel", "GPTForCausalLM", "GPTForSequenceClassification", "GPTPreTrainedModel"]
