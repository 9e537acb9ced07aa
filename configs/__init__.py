"""Training recipes: the default hyper-parameters of each model family, kept as plain JSON data."""

import json
from importlib import resources


def load_recipe(model_type: str) -> dict:
    """The default training options for `model_type` (`transformer` or `lstm`)."""
    return json.loads(resources.files(__name__).joinpath(f"{model_type}.json").read_text())
