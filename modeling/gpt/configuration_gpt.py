"""Configuration of pocketlm's GPT-style decoder-only Transformer.

This file travels to the Hub unchanged beside `modeling_gpt.py`, so it imports nothing from pocketlm.
"""

import transformers
from packaging.version import Version


def require_transformers(minimum: str, model: str) -> None:
    """Stop with one error naming the release to install when transformers is older than `minimum`, instead of a
    failure deep inside transformers or different tokens."""
    if Version(transformers.__version__) < Version(minimum):
        raise ImportError(
            f"this pocketlm {model} model needs transformers>={minimum}, but {transformers.__version__} is "
            f"installed: pip install -U 'transformers>={minimum}'"
        )


# The oldest transformers this model runs on: greedy decoding gave the same tokens on 5.0.0, 5.10.4, 5.14.1, 5.17.0
# and 5.24.0 (bench/transformers_versions.py). 4.x lacks the 5.x classes it builds on.
MIN_TRANSFORMERS = "5.0.0"
require_transformers(MIN_TRANSFORMERS, "GPT")

from transformers import PreTrainedConfig  # noqa: E402  (after the check: 4.x has no such class)

# The one place the preset shapes live. Parameter counts at a 5,000-token vocabulary
# (embeddings tied to the output head): small ~1.9M, medium ~7.7M, large ~28M.
PRESETS: dict[str, dict[str, int]] = {
    "small": {"n_layer": 6, "n_head": 4, "n_embd": 128, "block_size": 256},
    "medium": {"n_layer": 8, "n_head": 8, "n_embd": 256, "block_size": 512},
    "large": {"n_layer": 8, "n_head": 8, "n_embd": 512, "block_size": 1024},
}

# save_pretrained records only the saving class in auto_map; list every class, so AutoModel and
# AutoModelForSequenceClassification (not only the saving AutoModelForCausalLM) resolve a saved folder where pocketlm
# is not installed.
AUTO_MAP = {
    "AutoConfig": "configuration_gpt.GPTConfig",
    "AutoModel": "modeling_gpt.GPTModel",
    "AutoModelForCausalLM": "modeling_gpt.GPTForCausalLM",
    "AutoModelForSequenceClassification": "modeling_gpt.GPTForSequenceClassification",
}


# What each kind of config field takes, in the words an error gives.
WANTED = {
    "count": "a whole number of at least 1",
    "token": "a token id (a whole number of 0 or more) or null",
    "tokens": "a token id, a list of them, or null",
    "fraction": "a number of at least 0 and below 1",
    "positive": "a number above 0",
    "not negative": "a number of 0 or more",
    "flag": "true or false",
}


def check_field(name: str, value, kind: str) -> None:
    """Refuse a field of the wrong type or range, naming it and what it takes (a kind of WANTED).

    transformers' own configs check their fields' types when built; without this, `n_embd="abc"` from a command
    line failed inside the model as a string-formatting error and `n_layer=0` trained a model with no blocks."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
    token = value is None or (whole and value >= 0)
    fits = {
        "count": whole and value >= 1,
        "token": token,
        "tokens": token or (isinstance(value, list) and bool(value) and all(
            isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value)),
        "fraction": number and 0 <= value < 1,
        "positive": number and 0 < value < float("inf"),
        "not negative": number and 0 <= value < float("inf"),
        "flag": isinstance(value, bool),
    }[kind]
    if not fits:
        raise ValueError(f"{name} must be {WANTED[kind]}, got {value!r}.")


class GPTConfig(PreTrainedConfig):
    """Shape and regularisation of a pocketlm GPT.

    Args:
        vocab_size: number of tokens the model reads and predicts.
        block_size: context window, in tokens; the most positions the model can attend over.
        n_layer: number of Transformer blocks.
        n_head: attention heads per block; must divide `n_embd`.
        n_embd: width of the residual stream.
        dropout: dropout on the embeddings and on each attention and MLP output during training.
        bias: whether linear layers and layer norms carry a bias.
        layer_norm_epsilon: epsilon of the layer norms.
        initializer_range: standard deviation of the normal weight initialisation.
        tie_word_embeddings: share the input embedding with the output head.
    """

    model_type = "pocketlm_gpt"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the cache's name in 5.24 and in earlier 5.x
    # generate() and other transformers helpers read these standard names.
    attribute_map = {
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "hidden_size": "n_embd",
        "max_position_embeddings": "block_size",
    }

    def __init__(
        self,
        vocab_size: int = 5000,
        block_size: int = 256,
        n_layer: int = 6,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.1,
        bias: bool = True,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        for name, kind in (("vocab_size", "count"), ("block_size", "count"), ("n_layer", "count"),
                           ("n_head", "count"), ("n_embd", "count"), ("dropout", "fraction"), ("bias", "flag"),
                           ("layer_norm_epsilon", "positive"), ("initializer_range", "not negative"),
                           ("tie_word_embeddings", "flag"), ("use_cache", "flag"), ("bos_token_id", "token"),
                           ("eos_token_id", "tokens"), ("pad_token_id", "token")):
            check_field(name, locals()[name], kind)
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head}).")
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd
        self.dropout = dropout
        self.bias = bias
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        kwargs["auto_map"] = {**AUTO_MAP, **(kwargs.get("auto_map") or {})}  # a loaded config keeps its file's
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """A config for the preset `name` (`small`, `medium`, `large`); keyword arguments override its fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown model size {name!r}: choose one of {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def small(cls, **overrides) -> "GPTConfig":
        """About 2M parameters at a 5,000-token vocabulary, 256-token context."""
        return cls.from_preset("small", **overrides)

    @classmethod
    def medium(cls, **overrides) -> "GPTConfig":
        """About 8M parameters at a 5,000-token vocabulary, 512-token context."""
        return cls.from_preset("medium", **overrides)

    @classmethod
    def large(cls, **overrides) -> "GPTConfig":
        """About 30M parameters at a 5,000-token vocabulary, 1,024-token context."""
        return cls.from_preset("large", **overrides)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "GPTConfig":
        # transformers only warns when a folder holds another model type and then builds a wrong model;
        # a pocketlm user mixing up an LSTM and a GPT folder deserves a plain refusal instead.
        config_dict, _ = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        found = config_dict.get("model_type")
        if found != cls.model_type:
            raise ValueError(
                f"cannot load a {found or 'non-pocketlm'} checkpoint into a GPT ({cls.model_type}) model: "
                f"{pretrained_model_name_or_path} holds model_type {found!r}; "
                "load it with AutoModelForCausalLM.from_pretrained, which picks the right class."
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
