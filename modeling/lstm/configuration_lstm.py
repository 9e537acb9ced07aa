"""Configuration of pocketlm's character-level LSTM language model.

This file travels to the Hub unchanged beside `modeling_lstm.py`, so it imports nothing from pocketlm.
"""

import transformers
from packaging.version import Version


# Copied from modeling.gpt.configuration_gpt.require_transformers
def require_transformers(minimum: str, model: str) -> None:
    """Stop with one error naming the release to install when transformers is older than `minimum`, instead of a
    failure deep inside transformers or different tokens."""
    if Version(transformers.__version__) < Version(minimum):
        raise ImportError(
            f"this pocketlm {model} model needs transformers>={minimum}, but {transformers.__version__} is "
            f"installed: pip install -U 'transformers>={minimum}'"
        )


# The oldest transformers this model runs on. Its (h, c) state lives in the cache as a recurrent state: 5.0 had no
# such state, and from 5.5 to 5.23 generate() asked a cache holding one for its length and failed;
# bench/transformers_versions.py tries them.
MIN_TRANSFORMERS = "5.24.0"
require_transformers(MIN_TRANSFORMERS, "LSTM")

from transformers import PreTrainedConfig  # noqa: E402  (after the check: 4.x has no such class)

# Copied from modeling.gpt.configuration_gpt.AUTO_MAP with gpt->lstm, GPT->LSTM
# save_pretrained records only the saving class in auto_map; list every class, so AutoModel and
# AutoModelForSequenceClassification (not only the saving AutoModelForCausalLM) resolve a saved folder where pocketlm
# is not installed.
AUTO_MAP = {
    "AutoConfig": "configuration_lstm.LSTMConfig",
    "AutoModel": "modeling_lstm.LSTMModel",
    "AutoModelForCausalLM": "modeling_lstm.LSTMForCausalLM",
    "AutoModelForSequenceClassification": "modeling_lstm.LSTMForSequenceClassification",
}


# Copied from modeling.gpt.configuration_gpt.WANTED
WANTED = {
    "count": "a whole number of at least 1",
    "token": "a token id (a whole number of 0 or more) or null",
    "tokens": "a token id, a list of them, or null",
    "fraction": "a number of at least 0 and below 1",
    "positive": "a number above 0",
    "not negative": "a number of 0 or more",
    "flag": "true or false",
}


# Copied from modeling.gpt.configuration_gpt.check_field
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


class LSTMConfig(PreTrainedConfig):
    """Shape and regularisation of a pocketlm LSTM (char-rnn style: 2 layers of 256 units by default).

    Args:
        vocab_size: number of tokens (characters plus special tokens) the model reads and predicts.
        embedding_dim: width of the token embedding fed to the first LSTM layer.
        hidden_size: units per LSTM layer.
        num_layers: stacked LSTM layers.
        dropout: dropout on the embedding, between LSTM layers and before the output head, during training.

    The weights start as PyTorch's own `nn.Embedding`, `nn.LSTM` and `nn.Linear` do (see `_init_weights`), so
    unlike the GPT this config has no `initializer_range`.
    """

    model_type = "pocketlm_lstm"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the cache's name in 5.24 and in earlier 5.x
    attribute_map = {"num_hidden_layers": "num_layers"}

    def __init__(
        self,
        vocab_size: int = 256,
        embedding_dim: int = 128,
        hidden_size: int = 256,
        num_layers: int = 2,
        dropout: float = 0.2,
        use_cache: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        for name, kind in (("vocab_size", "count"), ("embedding_dim", "count"), ("hidden_size", "count"),
                           ("num_layers", "count"), ("dropout", "fraction"), ("use_cache", "flag"),
                           ("bos_token_id", "token"), ("eos_token_id", "tokens"), ("pad_token_id", "token")):
            check_field(name, locals()[name], kind)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.use_cache = use_cache
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        kwargs["auto_map"] = {**AUTO_MAP, **(kwargs.get("auto_map") or {})}  # a loaded config keeps its file's
        # generate() builds a cache layer per entry; "linear_attention" layers hold recurrent states instead of
        # growing keys and values, which is exactly an LSTM's: two of them per layer (transformers reads the count
        # from `number_of_conv_states`), h in slot 0 and c in slot 1. Derived, so never read back from a file.
        kwargs.pop("layer_types", None)
        kwargs.pop("number_of_conv_states", None)
        self.layer_types = ["linear_attention"] * num_layers
        self.number_of_conv_states = 2
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    # Copied from modeling.gpt.configuration_gpt.GPTConfig.from_pretrained with GPTConfig->LSTMConfig, into a GPT->into an LSTM
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "LSTMConfig":
        # transformers only warns when a folder holds another model type and then builds a wrong model;
        # a pocketlm user mixing up an LSTM and a GPT folder deserves a plain refusal instead.
        config_dict, _ = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        found = config_dict.get("model_type")
        if found != cls.model_type:
            raise ValueError(
                f"cannot load a {found or 'non-pocketlm'} checkpoint into an LSTM ({cls.model_type}) model: "
                f"{pretrained_model_name_or_path} holds model_type {found!r}; "
                "load it with AutoModelForCausalLM.from_pretrained, which picks the right class."
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
