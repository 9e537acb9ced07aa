from .configuration_lstm import LSTMConfig
from .modeling_lstm import LSTMForCausalLM, LSTMModel

__all__ = ["LSTMConfig", "LSTMModel", "LSTMForCausalLM"]
