from .configuration_gpt import PRESETS, GPTConfig
from .modeling_gpt import GPTForCausalLM, GPTForSequenceClassification, GPTModel

__all__ = ["PRESETS", "GPTConfig", "GPTModel", "GPTForCausalLM", "GPTForSequenceClassification"]
