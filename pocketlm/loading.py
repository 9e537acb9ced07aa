"""Load a trained pocketlm model and its tokenizer from a folder or a Hub repository, with errors a user can act on."""

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import modeling  # noqa: F401  (registers pocketlm's model types with the Auto classes)
from modeling import MODEL_TYPES
from tokenization import ROLE_TOKENS

from .adapters import ADAPTER_CONFIG_FILE, adapter_base, adapter_of, adapter_tokenizer, merge_adapter
from .errors import WEB_ADDRESS, UsageError, web_address_said
from .home import HOME
from .run_folder import (CARD_FILE, CHAT_TEMPLATE_FILE, CHECKPOINTS_DIR, CONFIG_FILE, EXPORT_RECORD,
                         GENERATION_CONFIG_FILE, MODEL_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, WEB_PAGE_FILE,
                         WEIGHTS_INDEX_FILE, RunFolder)
from .signing import MANIFEST_FILE
from .whole_writes import write_folder_whole


# Precisions a model can be loaded in for chat and generation. Checkpoints are float32; a narrower type halves the
# weights each token streams through memory (bench/decode_anatomy.py prints the products' times in each). "int8"
# loads in float32, then swaps every nn.Linear for torch.ao's dynamic int8 one (int8 weights, activations quantized
# on the fly): on this project's 2-core CPU it decoded the medium and large presets 1.22x and 1.26x as fast, the
# small one and the LSTM slower (bench/quantized_decoding.py, BENCHMARKS.md). Its kernels exist on the CPU only.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.float32}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks the GPU when there is one; asking for `cuda` without one is a usage error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible; use --device cpu or auto.")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown --device {device!r}: choose auto, cpu or cuda.")
    return torch.device(device)


# What a pocketlm model folder must hold for chat, comparison and upload, and why each matters.
REQUIRED_FILES = {
    CONFIG_FILE: "the model's shape",
    MODEL_FILE: "the weights",
    TOKENIZER_FILE: "the tokenizer",
    TOKENIZER_CONFIG_FILE: "the tokenizer's special tokens",
    CHAT_TEMPLATE_FILE: "the chat template",
}
JSON_FILES = (CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, GENERATION_CONFIG_FILE)
DAMAGED_FIX = "train it again, or copy the folder again from where it came"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        where = f" (line {error.lineno})" if isinstance(error, json.JSONDecodeError) else ""
        raise UsageError(f"{path} is not valid JSON{where}: the model folder is damaged; {DAMAGED_FIX}.")
    if not isinstance(value, dict):
        raise UsageError(f"{path} holds no JSON object: the model folder is damaged; {DAMAGED_FIX}.")
    return value


def _check_safetensors(path: Path) -> None:
    """A complete safetensors file: an 8-byte header length, a JSON header, then exactly the bytes it lists."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_length > size - 8:
                raise ValueError("shorter than its header says")
            header = json.loads(handle.read(header_length))
        end = max((t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"), default=0)
        if 8 + header_length + end != size:
            raise ValueError(f"{size:,} bytes where its header lists {8 + header_length + end:,}")
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise UsageError(f"{path} is truncated or damaged ({error}): {DAMAGED_FIX}.")


def _no_model(folder: Path, given: str | None = None) -> UsageError:
    """What a folder without a config.json is, and what to pass instead: a part of something pocketlm wrote (a
    run's checkpoints/, an export's onnx/ or web page) was told to "point at a folder train.py wrote"."""
    shown = Path(given or folder)
    if (folder / MANIFEST_FILE).is_file():  # a checkpoint moved out of <run>/checkpoints/, where its config is
        return UsageError(f"{shown} is a training checkpoint away from its run, whose config and tokenizer "
                          f"it loads with: use it where train.py wrote it, <run>/{CHECKPOINTS_DIR}/step-N.")
    if (folder / WEB_PAGE_FILE).is_file():
        return _web_page_refusal(shown, folder)
    from .checkpoints import checkpoint_folders  # here, on a refusal: it imports accelerate

    steps = checkpoint_folders(folder)
    if steps and (folder.parent / CONFIG_FILE).is_file():
        return UsageError(f"{shown} holds a run's checkpoints: pass the run, {shown.parent}, or one checkpoint, "
                          f"{shown / steps[-1].name} (the newest).")
    outer = _holding_folder(shown)
    if outer is not None:
        return UsageError(f"{shown} is a folder inside {outer}, which holds the model: pass {outer}.")
    return UsageError(f"{shown} holds no model (no {CONFIG_FILE}): point at a folder train.py wrote.")


def _holding_folder(path: Path) -> Path | None:
    """The nearest folder above `path` (three at most) that the tools take, as `path` spells it: a model, an export
    or a checkpoint."""
    return next((parent for parent in list(path.expanduser().parents)[:3]
                 if (parent / CONFIG_FILE).is_file() or (parent / MANIFEST_FILE).is_file()), None)


def _refuse_a_web_page_model(folder: Path) -> None:
    """The model folder inside export.py's web page has a config and no weights for torch: named as the page's,
    where it was taken for an incomplete model (train it again) or a downloaded stock GPT-2 (chat runs it)."""
    if (folder.parent / WEB_PAGE_FILE).is_file() and (folder / CONFIG_FILE).is_file():
        raise _web_page_refusal(folder, folder.parent)


def _web_page_refusal(shown: Path, page: Path) -> UsageError:
    """export.py's web page (`page`), or the model folder inside it: ONNX graphs for the browser, no weights for
    torch."""
    record = export_record(str(page)) or export_record(str(page.parent))
    origin = record["model"] if record else "the model it was exported from"
    what = "export.py's web page" if shown == page else f"the model of export.py's web page in {page}"
    return UsageError(f"{shown} is {what}, which runs the model in a browser (python -m http.server -d {page}): "
                      f"the tools here take {origin}.")


def check_model_folder(folder: Path) -> None:
    """Refuse, with one line naming the file and the fix, a model folder that is incomplete or damaged."""
    folder = Path(as_model(str(folder)))
    _refuse_a_web_page_model(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if MODEL_FILE in missing and has_weights(folder):  # in shards, as transformers reads them
        missing.remove(MODEL_FILE)
    if CONFIG_FILE in missing:
        raise _no_model(folder)
    if missing == [CHAT_TEMPLATE_FILE] and (_has_chat_template(folder) or _is_stock(folder)):
        # An older layout, the template inside tokenizer_config.json; or a stock GPT-2 export of a model trained on
        # plain text, which carries none (export.write_formats).
        missing = []
    if missing:
        what = ", ".join(f"{name} ({REQUIRED_FILES[name]})" for name in missing)
        raise UsageError(f"{folder} is an incomplete model folder, missing {what}: {DAMAGED_FIX}.")
    for name in JSON_FILES:
        if (folder / name).is_file():
            _read_json(folder / name)
    for weights in _weight_files(folder):
        _check_safetensors(weights)


def has_weights(folder: Path) -> bool:
    """Whether `folder` holds weights for torch: one safetensors file, or shards and their index."""
    return (folder / MODEL_FILE).is_file() or (folder / WEIGHTS_INDEX_FILE).is_file()


def _weight_files(folder: Path) -> list[Path]:
    """The files holding the weights of the model folder `folder`: model.safetensors, or the shards its index lists
    (save_pretrained with a max_shard_size, a Hub repository's download), each there or named as missing."""
    if (folder / MODEL_FILE).is_file():
        return [folder / MODEL_FILE]
    index = _read_json(folder / WEIGHTS_INDEX_FILE).get("weight_map")
    if not isinstance(index, dict) or not index:
        raise UsageError(f"{folder / WEIGHTS_INDEX_FILE} lists no weights: the model folder is damaged; "
                         f"{DAMAGED_FIX}.")
    shards = [folder / name for name in sorted(set(index.values()))]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise UsageError(f"{folder} is an incomplete model folder, missing {', '.join(missing)} (part of the weights "
                         f"{WEIGHTS_INDEX_FILE} lists): {DAMAGED_FIX}.")
    return shards


CHECKPOINT_MODELS = HOME / "checkpoint-models"  # checkpoints seen as model folders (links, no copies)


def as_model(path_or_repo: str) -> str:
    """`path_or_repo`, or for a training checkpoint (`<run>/checkpoints/step-N`, which holds weights but no config
    or tokenizer) a model folder of links to the run's config, code and tokenizer and the checkpoint's weights: so
    that chat, compare and export take a checkpoint as nanoGPT's sample.py takes its ckpt.pt."""
    folder = Path(path_or_repo).expanduser()
    run = RunFolder.holding_checkpoint(folder) if folder.is_dir() else None
    if run is None:
        return path_or_repo
    files = run.model_files_beside(folder.resolve() / MODEL_FILE)
    if not files:
        raise UsageError(f"{path_or_repo} is a checkpoint of a run that has saved no model yet ({run.path} has no "
                         f"{CONFIG_FILE}): use a later checkpoint, or resume the run.")
    links = {name: target.resolve() for name, target in files.items()}
    view = CHECKPOINT_MODELS / hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:20]
    # Rebuilt only when the run's files changed since an earlier look: another process may be loading from it.
    if view.is_dir() and {p.name: p.readlink() for p in view.iterdir() if p.is_symlink()} == links:
        return str(view)

    def link(building: Path) -> None:
        building.mkdir(parents=True)
        for name, target in links.items():
            (building / name).symlink_to(target)

    shutil.rmtree(view, ignore_errors=True)  # links to the files of an earlier look at the run
    try:
        write_folder_whole(view, link)
    except OSError as error:
        raise UsageError(f"cannot link the checkpoint {path_or_repo} into {CHECKPOINT_MODELS} ({error.strerror}): "
                         "make that folder writable, or chat with the run's model.") from None
    return str(view)


def is_repo_id(value: str) -> bool:
    """Whether `value` can name a Hub repository as OWNER/NAME: ASCII letters, digits, '-', '_' and '.', the Hub's
    rule. huggingface_hub's own check lets other letters through in its 1.x releases ('runs/modèle'), which the Hub
    then refuses, so a missing folder read as a Hub id and a dry run passed an id the upload cannot use."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return value.isascii() and value.count("/") == 1


def _config_of(path_or_repo: str) -> dict:
    path_or_repo = as_model(path_or_repo)
    local = Path(path_or_repo).expanduser()
    if local.is_dir():
        if not (local / CONFIG_FILE).exists():
            raise _no_model(local, path_or_repo)
        return _read_json(local / CONFIG_FILE)
    if local.is_file():  # a model's file given for its folder (model.safetensors, config.json, onnx/model.onnx)
        outer = _holding_folder(Path(path_or_repo))
        fix = f"pass its folder, {outer}" if outer is not None else "point at a folder train.py wrote"
        raise UsageError(f"{path_or_repo} is a file, not a model folder: {fix}.")
    if not local.exists() and WEB_ADDRESS.match(path_or_repo):
        raise UsageError(web_address_said(path_or_repo))
    if not is_hub_id(path_or_repo):
        raise UsageError(f"no model folder at {path_or_repo}: check the path, or train one with: python train.py")
    return json.loads(Path(hub_file(path_or_repo, CONFIG_FILE)).read_text())


def is_hub_id(path_or_repo: str) -> bool:
    """Whether `path_or_repo`, which is no path here, can name a Hub repository (`owner/name`, or the Hub's oldest
    models' bare `gpt2`); a path that cannot (`runs/my model`) is a folder that is not there, not a Hub error."""
    return (not Path(path_or_repo).expanduser().exists() and not path_or_repo.startswith((".", "/", "~"))
            and (is_repo_id(path_or_repo) or _is_repo_id_without_owner(path_or_repo)))


def hub_file(repo_id: str, filename: str) -> str:
    """The local path of `filename` in the Hub repository `repo_id`: from the cache, or downloaded where the Hub can
    be reached; where it cannot be had, one line says why."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return hf_hub_download(repo_id, filename)
    except LocalEntryNotFoundError:
        raise UsageError(
            f"no folder {repo_id} here, and the Hub model {repo_id} is not in the local cache (the Hub "
            "cannot be reached): check the path, or download the model while online."
        )
    except (HfHubHTTPError, OSError, ValueError) as error:
        if isinstance(error, OSError) and not isinstance(error, HfHubHTTPError):
            _check_hub_folders(error, repo_id)
        raise UsageError(f"could not fetch {repo_id} from the Hub ({type(error).__name__}); check the repo id.")


def _is_repo_id_without_owner(name: str) -> bool:
    """Whether `name` can be a Hub model's id without an owner (`gpt2`, `distilgpt2`: the Hub's oldest models, and
    transformers' examples download them so), by the Hub's rule (`is_repo_id`)."""
    return "/" not in name and is_repo_id(f"owner/{name}")


def _check_hub_folders(error: OSError, repo_id: str) -> None:
    """Say so when `error` is not the repository's fault: huggingface_hub's own folders (its token, the cache every
    download lands in) cannot be made or read where its variables put them."""
    from huggingface_hub import constants

    touched = Path(error.filename) if error.filename else None
    for variable, folder in (("HF_HUB_CACHE", constants.HF_HUB_CACHE), ("HF_HOME", constants.HF_HOME)):
        if touched is not None and Path(folder) in (touched, *touched.parents):
            raise UsageError(f"cannot use the Hub's folder {folder} ({error.strerror or error}) to fetch {repo_id}: "
                             f"set {variable} to a folder you can write.") from None


def local_folder(path_or_repo: str) -> Path:
    """The folder holding `path_or_repo`'s files: itself, or a Hub repository's snapshot (from the local cache when
    offline)."""
    local = Path(as_model(path_or_repo)).expanduser()
    if local.is_dir():
        return local
    _config_of(path_or_repo)  # a missing folder or an unreachable repository ends here, in one line
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path_or_repo))


def model_name(path_or_repo: str) -> str:
    """What pages and exports call a model: its folder's name (`run-step-N` for a training checkpoint, not
    `step-N`), or its Hub id, never a path of this machine."""
    local = Path(path_or_repo).expanduser()
    if not local.exists():
        return path_or_repo
    run = RunFolder.holding_checkpoint(local) if local.is_dir() else None
    return f"{run.path.name}-{local.resolve().name}" if run else local.resolve().name


def beside(path_or_repo: str, suffix: str) -> str:
    """The default folder for what a command makes of a model (an export, an upload's dry run): `<name>-<suffix>`
    beside the model's folder, a checkpoint's beside its run (never among the run's checkpoints), or in the current
    folder for a Hub id. An export of `/data/run` went into the folder the user happened to be in, and an upload's
    dry run of `.` into `.-hub`, a hidden folder inside the model."""
    local = Path(path_or_repo).expanduser()
    name = f"{Path(model_name(path_or_repo)).name}-{suffix}"
    if not local.is_dir():
        return name
    run = RunFolder.holding_checkpoint(local)
    target = (run.path if run else local).resolve().parent / name
    return str(target.relative_to(Path.cwd())) if target.is_relative_to(Path.cwd()) else str(target)


def export_record(path_or_repo: str) -> dict | None:
    """What export.py wrote into `path_or_repo` and from which model, when it is such a folder."""
    try:
        record = json.loads((Path(path_or_repo).expanduser() / EXPORT_RECORD).read_text())
        return record if isinstance(record.get("model"), str) and isinstance(record.get("formats"), list) else None
    except (OSError, ValueError, AttributeError):
        return None


def training_summary(path_or_repo: str) -> dict:
    """What the run that trained `path_or_repo` recorded (its data, options and results): a run folder's own, a
    checkpoint's run's, an export's model's; {} where there is none (a Hub model, a run still under way) or it
    cannot be read, which only costs the defaults the record would have set."""
    record = export_record(path_or_repo)
    try:
        return RunFolder(as_model(record["model"] if record else path_or_repo)).read_summary()
    except (OSError, UsageError):
        return {}


def trained_on_chat(path_or_repo: str) -> bool:
    """Whether the model learned conversations (it answers through its chat template) rather than plain text (it
    continues a text): by its run's record, else by the card hub_upload.py wrote from it (a Hub repository or its
    download carries no record), else taken for a chat model, as the built-in corpus trains one. A folder whose
    tokenizer carries no chat template cannot chat: an export of a plain-text model, such as the gpt2/ folder of
    its downloaded repository, which has no record or card of its own."""
    summary = training_summary(path_or_repo)
    if summary:
        return summary.get("data", {}).get("is_chat", True) is not False
    local = Path(as_model(path_or_repo)).expanduser()
    if (local / TOKENIZER_CONFIG_FILE).is_file() and not _has_chat_template(local):
        return False
    tags = _card_tags(path_or_repo)
    return "conversational" in tags if "pocketlm" in tags else True


def _card_tags(path_or_repo: str) -> list:
    """The tags of the model card in a folder or Hub repository (from the local cache when offline); none where
    there is no card, or it cannot be read."""
    import yaml
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.repocard import metadata_load

    local = Path(as_model(path_or_repo)).expanduser()
    try:
        card = local / CARD_FILE if local.is_dir() else Path(hf_hub_download(path_or_repo, CARD_FILE))
        metadata = metadata_load(card) or {}
    # No card, no such repository, an unreachable Hub (all OSError or ValueError), a card that is not YAML: the
    # default stands.
    except (OSError, ValueError, EntryNotFoundError, yaml.YAMLError):
        return []
    tags = metadata.get("tags") if isinstance(metadata, dict) else None
    return tags if isinstance(tags, list) else []


def trained_mode(model, tokenizer=None) -> str:
    """How to talk to `model` (a folder, Hub id or loaded model): "chat", through its chat template, or "text",
    continuing what is typed, for a model trained on plain text (chat.py's --mode, the web page's mode), or whose
    loaded `tokenizer` has no template to chat through (the Hub's gpt2, which has no record or card to say so)."""
    if tokenizer is not None and tokenizer.chat_template is None:
        return "text"
    name = str(model) if isinstance(model, (str, Path)) else getattr(model, "name_or_path", "")
    return "chat" if not name or trained_on_chat(name) else "text"


def holds_only_graphs(path_or_repo: str) -> bool:
    """Whether `path_or_repo` is an export of ONNX graphs without weights for torch (an ONNX export, the LSTM's
    `all`): it runs in onnxruntime only."""
    record = export_record(as_model(path_or_repo))
    return (record is not None and "onnx" in record["formats"]
            and not has_weights(Path(as_model(path_or_repo)).expanduser()))


def default_runtime(path_or_repo: str) -> str:
    """Where a model runs when no runtime is asked for: in onnxruntime for an export of ONNX graphs alone (chat and
    compare told the user to ask for it, or had no way to), else in torch."""
    return "onnx" if holds_only_graphs(path_or_repo) else "torch"


def _check_language_model(path_or_repo: str, config: dict) -> None:
    """Refuse a classifier or reward model: its folder loads as a language model with a head it never trained."""
    heads = [name for name in config.get("architectures") or [] if str(name).endswith("ForSequenceClassification")]
    if heads:
        raise UsageError(f"{path_or_repo} holds a {heads[0]} (a classifier or reward model), not a language model: "
                         "load it with AutoModelForSequenceClassification; pocketlm's tools take the language model "
                         "it was trained from.")


RUNNABLE_EXPORTS = {"transformers", "onnx"}  # the export formats chat and compare run: a stock GPT-2, ONNX graphs


def model_family(path_or_repo: str, exports: bool = False, adapters: bool = False, imports: bool = False) -> str:
    """`transformer` or `lstm` for a pocketlm model folder or repo; a usage error for anything else.

    With `exports`, a folder export.py wrote is its model's family too: chat and compare run its stock GPT-2 as
    transformers runs any GPT-2 (the Hub's `gpt2` included), and its ONNX graphs in onnxruntime (its tokenizer is
    the model's).
    Training, export and upload need the pocketlm folder an export came from, which the refusal names. With
    `adapters`, a PEFT adapter is its model's family: loading merges it into that model. With `imports`, any stock
    GPT-2 whose settings pocketlm's GPT computes is a Transformer: what `--init-from` fine-tunes (`is_gpt2`).
    """
    adapter = adapter_of(as_model(path_or_repo))
    if adapter is not None:
        base = adapter_base(path_or_repo, adapter, adapters)
        try:
            return model_family(base)
        except UsageError as error:
            raise UsageError(f"{path_or_repo} holds a PEFT adapter of {base} (its {ADAPTER_CONFIG_FILE}'s "
                             f"base_model_name_or_path), which cannot be read: {error}")
    _refuse_a_web_page_model(Path(as_model(path_or_repo)).expanduser())
    record = export_record(as_model(path_or_repo))
    refusal = UsageError(f"{path_or_repo} is export.py's {', '.join(map(str, record['formats']))} export of "
                         f"{record['model']}, for other runtimes: use {record['model']} itself here."
                         ) if record is not None else None
    # What the caller takes from an export: chat and compare run its GPT-2 or graphs, --init-from its GPT-2.
    takes = (RUNNABLE_EXPORTS if exports else set()) | ({"transformers"} if imports else set())
    if refusal and not takes & set(record["formats"]):  # a web page alone has no config
        raise refusal
    config = _config_of(path_or_repo)
    model_type = config.get("model_type")
    family = next((family for family, name in MODEL_TYPES.items() if name == model_type), None)
    gpt2 = _is_stock_gpt2(path_or_repo, config)
    if imports and gpt2:
        _check_importable(path_or_repo, config)
        return "transformer"
    if refusal:
        if family or model_type == "gpt2":
            return family or "transformer"
        raise refusal
    if gpt2 and exports:
        # Chat and compare run any GPT-2 as transformers does: the gpt2/ folder of a model repository hub_upload.py
        # published, or one pocketlm never saw (the Hub's `gpt2`, the base a fine-tune is compared with).
        return "transformer"
    if gpt2 and _stock_gpt2_of_pocketlm(path_or_repo):
        raise UsageError(f"{path_or_repo} is a stock GPT-2 (a model repository's gpt2/ folder, say): chat.py and "
                         "compare.py run it, train.py --init-from fine-tunes it, and export and upload need the "
                         "pocketlm model itself (the repository's top folder).")
    if family is None:
        imported = " (a GPT-2 as it is runs in chat.py and compare.py; train.py --init-from fine-tunes it into one)" \
            if gpt2 else ""
        raise UsageError(f"{path_or_repo} holds a {model_type!r} model, not a pocketlm transformer or lstm: point at "
                         f"a folder train.py wrote{imported}.")
    _check_language_model(path_or_repo, config)
    return family


def context_window(path_or_repo: str) -> int | None:
    """The tokens the model at `path_or_repo` reads at once, as its config says (a GPT's block_size, a stock GPT-2's
    n_positions, a PEFT adapter's base model's); None for the LSTM, which has no window."""
    adapter = adapter_of(as_model(path_or_repo))
    if adapter is not None:
        return context_window(adapter["base_model_name_or_path"])
    config = _config_of(path_or_repo)
    return config.get("block_size") or config.get("n_positions")


def is_gpt2(path_or_repo: str) -> bool:
    """Whether `path_or_repo` holds a stock transformers GPT-2 (the Hub's `gpt2`, a model repository's gpt2/
    folder, export.py's), which `--init-from` brings into a pocketlm GPT, tokenizer and all."""
    return adapter_of(as_model(path_or_repo)) is None and _is_stock_gpt2(path_or_repo, _config_of(path_or_repo))


def _is_stock_gpt2(path_or_repo: str, config: dict) -> bool:
    # A GPT-2's config.json beside pocketlm's model code is a pocketlm folder whose config was replaced: damaged.
    return config.get("model_type") == "gpt2" and not _has_model_code(path_or_repo)


def _check_importable(path_or_repo: str, config: dict) -> None:
    from .export.gpt2 import import_problem  # here: the export package reads this module as it loads

    problem = import_problem(config)
    if problem:
        raise UsageError(f"{path_or_repo} is a GPT-2 set up as pocketlm's GPT does not compute it ({problem} in its "
                         f"{CONFIG_FILE}): fine-tune it with transformers' own GPT-2, or start from a pocketlm model.")


def _stock_gpt2_of_pocketlm(path_or_repo: str) -> bool:
    """A folder of transformers' own GPT-2 with pocketlm's chat template or role tokens (an export of a model
    trained on plain text has no template): no model code of its own beside it (a pocketlm folder whose config.json
    was replaced by a GPT-2's has its modeling_gpt.py, and is named as damaged)."""
    local = Path(as_model(path_or_repo)).expanduser()
    if _has_model_code(path_or_repo) or not (local / TOKENIZER_CONFIG_FILE).is_file():
        return False
    special = _read_json(local / TOKENIZER_CONFIG_FILE).get("additional_special_tokens")
    return _has_chat_template(local) or (isinstance(special, list) and set(ROLE_TOKENS.values()) <= set(special))


def _has_model_code(path_or_repo: str) -> bool:
    """Whether a local model folder carries model code of its own (pocketlm's `modeling_gpt.py`), as no stock
    transformers model does."""
    return any(Path(as_model(path_or_repo)).expanduser().glob("modeling_*.py"))


def _has_chat_template(folder: Path) -> bool:
    """Whether the tokenizer in `folder` carries a chat template, in its own file or inside its settings."""
    settings = folder / TOKENIZER_CONFIG_FILE
    return (folder / CHAT_TEMPLATE_FILE).is_file() or (settings.is_file()
                                                       and bool(_read_json(settings).get("chat_template")))


def _is_stock(folder: Path) -> bool:
    """Whether `folder` holds a model of one of transformers' own types (a stock GPT-2 export), not pocketlm's."""
    return _read_json(folder / CONFIG_FILE).get("model_type") not in MODEL_TYPES.values()


def tokenizer_source(path_or_repo: str) -> str:
    """Where the tokenizer of a model folder, Hub repo, checkpoint or PEFT adapter is read from."""
    path_or_repo = as_model(path_or_repo)
    adapter = adapter_of(path_or_repo)
    return path_or_repo if adapter is None else adapter_tokenizer(path_or_repo, adapter["base_model_name_or_path"])


RUNTIMES = ("torch", "onnx")


def load_pretrained(path_or_repo: str, device: str | torch.device = "cpu", dtype: str = "float32",
                    runtime: str = "torch", config: dict | None = None):
    """The model (in eval mode, on `device`, its weights in `dtype`) and tokenizer saved at `path_or_repo`; with
    `runtime="onnx"`, the same model decoding in onnxruntime (float32 or int8, on the CPU). `config` sets fields of
    the model's config otherwise than saved (a fine-tuning run's dropout), as from_pretrained's keyword arguments do.

    A damaged or incomplete folder, or one transformers cannot read, ends in a UsageError naming the file. Loading
    leaves torch's random stream as it found it (PEFT draws an adapter's layers before reading them, the first
    ONNX export draws too): a seed set before loading gives the same samples and the same training run however
    the model came to be loaded.
    """
    with torch.random.fork_rng(devices=[]):
        return _load_pretrained(path_or_repo, device, dtype, runtime, config or {})


def _load_pretrained(path_or_repo: str, device: str | torch.device, dtype: str, runtime: str, config: dict):
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}: choose {', '.join(DTYPES)}.")
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown --runtime {runtime!r}: choose {', '.join(RUNTIMES)}.")
    device = resolve_device(device) if isinstance(device, str) else device
    if runtime == "onnx":
        if device.type != "cpu":
            raise UsageError("--runtime onnx runs on the CPU here: add --device cpu, or use --runtime torch.")
        from .onnx_runtime import load_onnx

        return load_onnx(path_or_repo, dtype)
    if dtype == "int8" and device.type != "cpu":
        raise UsageError("--dtype int8 runs on the CPU only (torch.ao's dynamic quantization): add --device cpu, "
                         "or use --dtype bfloat16 on the GPU.")
    given = os.fspath(path_or_repo)  # a Path from the Python API reads as the string the command line gives
    path_or_repo = as_model(given)
    family = model_family(path_or_repo, exports=True, adapters=True)
    adapter = adapter_of(path_or_repo)
    if adapter is not None:
        base = adapter["base_model_name_or_path"]  # checked by model_family above
        model, tokenizer = merge_adapter(*load_pretrained(base, config=config), path_or_repo, base)
        model = model.to(DTYPES[dtype])
    else:
        model, tokenizer = _load_folder(path_or_repo, family, dtype, config)
    _check_tokenizer(path_or_repo, model, tokenizer)
    model = model.to(device).eval()
    model.name_or_path = given  # a checkpoint's, not its linked view's: what the chat says it is chatting with
    return (quantize_int8(model) if dtype == "int8" else model), tokenizer


def load_gpt2(path_or_repo: str):
    """The stock GPT-2 at `path_or_repo` (float32, on the CPU) and its tokenizer, checked as a model folder is
    (`model_family(..., imports=True)` first): what `--init-from` brings into a pocketlm GPT."""
    with torch.random.fork_rng(devices=[]):
        return _load_folder(as_model(path_or_repo), "GPT-2", "float32", {})


def _load_folder(path_or_repo: str, family: str, dtype: str, config: dict):
    """The model (weights in `dtype`, on the CPU) and tokenizer of a model folder or Hub repository, checked."""
    local = Path(path_or_repo).expanduser()
    if holds_only_graphs(path_or_repo):
        source = export_record(path_or_repo)["model"]
        raise UsageError(f"{path_or_repo} holds export.py's ONNX graphs of {source}, no weights for torch: run "
                         f"them in onnxruntime (--runtime onnx, runtime='onnx' from Python), or use {source} itself.")
    if local.is_dir():
        check_model_folder(local)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path_or_repo, dtype=DTYPES[dtype], output_loading_info=True,
                                                           **config)
        tokenizer = AutoTokenizer.from_pretrained(path_or_repo)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as error:
        # What the checks above cannot foresee (a Hub repo's files, a weight of the wrong shape): one line.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "mismatched_sizes" in reason or "size mismatch" in reason:
            raise UsageError(f"the weights in {path_or_repo} do not fit its config.json (tensors of other shapes): "
                             f"{DAMAGED_FIX}.")
        raise UsageError(f"could not load the {family} model in {path_or_repo} ({reason[:300].rstrip('.')}): "
                         f"{DAMAGED_FIX}.")
    # transformers fills weights the file lacks with random values and only logs it: that would be a model that
    # talks nonsense without a word.
    missing = sorted(set(info.get("missing_keys", ())) | set(info.get("mismatched_keys", ())))
    if missing:
        raise UsageError(f"the weights in {path_or_repo} do not fit its config.json (missing or misshapen: "
                         f"{', '.join(map(str, missing[:3]))}{' ...' if len(missing) > 3 else ''}): {DAMAGED_FIX}.")
    return model, tokenizer


def _check_tokenizer(path_or_repo: str, model, tokenizer) -> None:
    """Refuse a tokenizer the model cannot run with: a pocketlm model's without its chat template (a stock GPT-2
    export of a model trained on plain text has none), or one with tokens past the model's rows."""
    if tokenizer.chat_template is None and model.config.model_type in MODEL_TYPES.values():
        raise UsageError(f"{path_or_repo} has no chat template ({CHAT_TEMPLATE_FILE}): {DAMAGED_FIX}.")
    if len(tokenizer) > model.config.vocab_size:  # its last tokens would index past the embedding, mid-reply
        raise UsageError(f"the tokenizer in {path_or_repo} has {len(tokenizer):,} tokens and the model rows for "
                         f"{model.config.vocab_size:,}: it is not the tokenizer the model was trained with; "
                         f"{DAMAGED_FIX}.")


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every nn.Linear swapped, in place, for torch.ao's dynamic int8 linear layer.

    Only nn.Linear: the LSTM's recurrence stays float32, as quantizing nn.LSTM bought nothing measurable. The layers
    are swapped as modules, so the models' own fast paths see them and fall back to calling them.
    """
    with warnings.catch_warnings():
        # torch.ao announces its move to torchao on every call; the API works on the torch this project pins.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
