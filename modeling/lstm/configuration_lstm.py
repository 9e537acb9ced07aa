"""Configuration of pocketlm's character-level LSTM language model.

This file travels to the Hub unchanged beside `modeling_lstm.py`, so it imports nothing from pocketlm.
"""

from transformers import PreTrainedConfig


class LSTMConfig(PreTrainedConfig):
    """Shape and regularisation of a pocketlm LSTM (char-rnn style: 2 layers of 256 units by default).

    Args:
        vocab_size: number of tokens (characters plus special tokens) the model reads and predicts.
        embedding_dim: width of the token embedding fed to the first LSTM layer.
        hidden_size: units per LSTM layer.
        num_layers: stacked LSTM layers.
        dropout: dropout on the embedding, between LSTM layers and before the output head, during training.
        initializer_range: standard deviation of the normal initialisation of embedding and head.
    """

    model_type = "pocketlm_lstm"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {"num_hidden_layers": "num_layers"}

    def __init__(
        self,
        vocab_size: int = 256,
        embedding_dim: int = 128,
        hidden_size: int = 256,
        num_layers: int = 2,
        dropout: float = 0.2,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        # generate() builds a cache layer per entry; "linear_attention" layers hold a recurrent state instead of
        # growing keys and values, which is exactly an LSTM's (h, c). Derived, so never read back from a file.
        kwargs.pop("layer_types", None)
        self.layer_types = ["linear_attention"] * num_layers
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

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
