"""Training recipes: each model family's default hyper-parameters, kept as plain JSON data.

A key is either the name of a `TrainingOptions` field it gives the default of (lr, batch_size, epochs, ...), or
one of `dropout` (a new model's dropout), `eval_every_at_most` and `save_every_at_most` (the longest gap between
evaluations and checkpoints when --eval-every and --save-every are not given). A test keeps it so.
"""

import json
from importlib import resources

RECIPE_ONLY_KEYS = ("dropout", "eval_every_at_most", "save_every_at_most")


def load_recipe(model_type: str) -> dict:
    """The default training options for `model_type` (`transformer` or `lstm`)."""
    return json.loads(resources.files(__name__).joinpath(f"{model_type}.json").read_text())
