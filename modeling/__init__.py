"""pocketlm's two model families, registered with transformers' Auto classes on import.

Importing this package lets `AutoConfig`, `AutoModel`, `AutoModelForCausalLM` and
`AutoModelForSequenceClassification` resolve pocketlm folders without `trust_remote_code`; `register_for_auto_class`
makes `save_pretrained` write `auto_map` and copy the family's two source files, so a saved folder also loads where
pocketlm is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .gpt import PRESETS, GPTConfig, GPTForCausalLM, GPTForSequenceClassification, GPTModel
from .gpt.configuration_gpt import MIN_TRANSFORMERS as _GPT_MIN_TRANSFORMERS
from .lstm import LSTMConfig, LSTMForCausalLM, LSTMForSequenceClassification, LSTMModel
from .lstm.configuration_lstm import MIN_TRANSFORMERS as _LSTM_MIN_TRANSFORMERS

# Each family by the name pocketlm's options use: its model type in config.json, and the oldest transformers its
# saved code runs on (the model card and a Space's requirements state it).
MODEL_TYPES = {"transformer": GPTConfig.model_type, "lstm": LSTMConfig.model_type}
MIN_TRANSFORMERS = {"transformer": _GPT_MIN_TRANSFORMERS, "lstm": _LSTM_MIN_TRANSFORMERS}

# Each family's classes, by the Auto class that builds them.
FAMILY_CLASSES = (
    (GPTConfig, {AutoModel: GPTModel, AutoModelForCausalLM: GPTForCausalLM,
                 AutoModelForSequenceClassification: GPTForSequenceClassification}),
    (LSTMConfig, {AutoModel: LSTMModel, AutoModelForCausalLM: LSTMForCausalLM,
                  AutoModelForSequenceClassification: LSTMForSequenceClassification}),
)
for _config, _classes in FAMILY_CLASSES:
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    _config.register_for_auto_class()
    for _auto, _model in _classes.items():
        _auto.register(_config, _model, exist_ok=True)
        _model.register_for_auto_class(_auto.__name__)

__all__ = [
    "PRESETS",
    "MODEL_TYPES",
    "MIN_TRANSFORMERS",
    "GPTConfig",
    "GPTModel",
    "GPTForCausalLM",
    "GPTForSequenceClassification",
    "LSTMConfig",
    "LSTMModel",
    "LSTMForCausalLM",
    "LSTMForSequenceClassification",
]
