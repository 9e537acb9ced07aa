from .configuration_lstm import LSTMConfig
from .modeling_lstm import LSTMForCausalLM, LSTMForSequenceClassification, LSTMModel

__all__ = ["LSTMConfig", "LSTMModel", "LSTMForCausalLM", "LSTMForSequenceClassification"]
