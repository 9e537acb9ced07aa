"""PEFT adapters saved without their model (what PeftModel.save_pretrained and the Trainer's save_model write for a
LoRA run): found, checked, and merged into the model they were trained on, so chat, compare and export run one as
that model. Loading asks here; this module loads no model itself."""

import json
import warnings
from pathlib import Path

from .errors import UsageError
from .run_folder import CONFIG_FILE, TOKENIZER_FILE

# PEFT's file: a folder holding it and no config.json is an adapter.
ADAPTER_CONFIG_FILE = "adapter_config.json"


def adapter_of(path_or_repo: str) -> dict | None:
    """The PEFT adapter config of a local folder that holds an adapter and no model, else None."""
    path = Path(path_or_repo).expanduser() / ADAPTER_CONFIG_FILE
    if not path.is_file() or (path.parent / CONFIG_FILE).exists():
        return None
    try:
        adapter = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        adapter = None
    if not isinstance(adapter, dict):
        raise UsageError(f"{path} holds no JSON object: the adapter folder is damaged; save the adapter again.")
    return adapter


def adapter_base(path_or_repo: str, adapter: dict, runnable: bool) -> str:
    """The model a PEFT adapter was trained on (its base_model_name_or_path); a usage error for an adapter the
    caller cannot run (`runnable`: chat, compare, export and --init-from merge it; upload and a Space publish a
    model folder's files)."""
    task, base = adapter.get("task_type"), adapter.get("base_model_name_or_path")
    if task not in (None, "CAUSAL_LM"):
        raise UsageError(f"{path_or_repo} holds a PEFT adapter for a {task} model, not a language model: load it "
                         "with PeftModel onto AutoModelForSequenceClassification; pocketlm's tools take language "
                         "models.")
    if not runnable:
        raise UsageError(f"{path_or_repo} holds a PEFT adapter, not a model: merge it into its model first "
                         "(PeftModel.from_pretrained(model, adapter).merge_and_unload(), then save_pretrained(FOLDER) "
                         "of it and of the tokenizer) and use FOLDER here; chat, compare, export and train.py "
                         "--init-from take the adapter itself.")
    if not isinstance(base, str) or not base:
        raise UsageError(f"{path_or_repo} holds a PEFT adapter naming no model it was trained on: set "
                         f"base_model_name_or_path in its {ADAPTER_CONFIG_FILE} to that model's folder.")
    return base


def merge_adapter(model, tokenizer, folder: str, base: str):
    """The adapter in `folder` merged into `model` (loaded from `base`): a plain pocketlm model again, which
    generate(), every export and the int8 path take as they take any; and the tokenizer saved beside the adapter
    when there is one (the Trainer's save_model writes it), else `tokenizer`."""
    try:
        from peft import PeftModel
    except ImportError:
        raise UsageError(f"{folder} holds a PEFT adapter, which needs peft to load: pip install peft.")
    try:
        with warnings.catch_warnings():
            # PEFT asks transformers 5.24 for is_gradient_checkpointing by its old name, which warns on each load.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            # Unfrozen: PEFT left the model's own weights frozen, which a merged model, a plain one again, is not.
            model = PeftModel.from_pretrained(model, folder).merge_and_unload().requires_grad_(True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"could not put the PEFT adapter in {folder} onto {base} ({reason[:300].rstrip('.')}): "
                         "it was trained on another model, or the folder is damaged.")
    if adapter_tokenizer(folder, base) == folder:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def adapter_tokenizer(folder: str, base: str) -> str:
    """Where an adapter's tokenizer is read from: beside it when saved there (the Trainer's save_model writes it),
    else its model's."""
    return folder if (Path(folder).expanduser() / TOKENIZER_FILE).is_file() else base
