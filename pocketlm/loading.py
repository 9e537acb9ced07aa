"""Load a trained pocketlm model and its tokenizer from a folder or a Hub repository, with errors a user can act on."""

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import modeling  # noqa: F401  (registers pocketlm's model types with the Auto classes)
from modeling import MODEL_TYPES

from .errors import UsageError


# Precisions a model can be loaded in for chat and generation. Checkpoints are float32; a narrower type halves the
# weights each token streams through memory (bench/decode_anatomy.py prints the products' times in each).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks the GPU when there is one; asking for `cuda` without one is a usage error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible; use --device cpu or auto.")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown --device {device!r}: choose auto, cpu or cuda.")
    return torch.device(device)


def _config_of(path_or_repo: str) -> dict:
    local = Path(path_or_repo).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise UsageError(f"{path_or_repo} holds no model (no config.json): point at a folder train.py wrote.")
        return json.loads((local / "config.json").read_text())
    if local.exists() or path_or_repo.count("/") != 1 or path_or_repo.startswith((".", "/", "~")):
        raise UsageError(f"no model folder at {path_or_repo}: check the path, or train one with: python train.py")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(path_or_repo, "config.json")).read_text())
    except LocalEntryNotFoundError:
        raise UsageError(
            f"{path_or_repo} is not in the local Hub cache and the Hub cannot be reached: download it while online."
        )
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise UsageError(f"could not fetch {path_or_repo} from the Hub ({type(error).__name__}); check the repo id.")


def model_family(path_or_repo: str) -> str:
    """`transformer` or `lstm` for a pocketlm model folder or repo; a usage error for anything else."""
    model_type = _config_of(path_or_repo).get("model_type")
    for family, name in MODEL_TYPES.items():
        if name == model_type:
            return family
    raise UsageError(f"{path_or_repo} holds a {model_type!r} model, not a pocketlm transformer or lstm.")


def load_pretrained(path_or_repo: str, device: str | torch.device = "cpu", dtype: str = "float32"):
    """The model (in eval mode, on `device`, its weights in `dtype`) and tokenizer saved at `path_or_repo`."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}: choose {', '.join(DTYPES)}.")
    model_family(path_or_repo)
    model = AutoModelForCausalLM.from_pretrained(path_or_repo, dtype=DTYPES[dtype])
    tokenizer = AutoTokenizer.from_pretrained(path_or_repo)
    device = resolve_device(device) if isinstance(device, str) else device
    return model.to(device).eval(), tokenizer
