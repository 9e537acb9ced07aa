"""Publish a trained model to the Hugging Face Hub: build the repository folder (model card included), then upload it.

The folder holds only what a Hub model repository needs, and loads anywhere with
`AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)`: the family's source files travel with it.
"""

import difflib
import os
import re
import shutil
from pathlib import Path

from tokenization import save_tokenizer

from .card import model_card
from .errors import HubError, UsageError
from .export import formats_for, formats_the_tokenizer_takes, save_export_tokenizer, write_formats
from .export.onnx import write_onnx
from .generation import sample_outputs
from .loading import check_model_folder, is_repo_id, load_pretrained, model_family, trained_on_chat
from .run_folder import CARD_FILE, LOSS_CURVE_FILE, RunFolder
from .whole_writes import build_folder, check_new_folder


# ------------------------------------------------------------------------------------------------ the folder


def _require_model_folder(model_dir: Path) -> str:
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir} is not a folder: pass the folder train.py wrote, e.g. models/transformer-small.")
    run = RunFolder.holding_checkpoint(model_dir)
    if run:  # its card would describe the run's model, not this checkpoint's
        raise UsageError(f"{model_dir} is a training checkpoint, not a finished model with its card: publish the run, "
                         f"{run.path}, or chat with, compare or export the checkpoint.")
    family = model_family(str(model_dir))
    check_model_folder(model_dir)
    return family


# Where the exports sit in a model repository. The native model stays at the top (AutoModelForCausalLM with
# trust_remote_code). The GPT's stock GPT-2 goes to a subfolder rather than a second repository: one repository keeps
# one card and versions every format of one training run together, and transformers loads a subfolder
# (`subfolder="gpt2"`); its ONNX graphs sit beside it in gpt2/onnx/, next to the gpt2 config.json transformers.js
# reads. The LSTM's graphs go to onnx/ at the top, beside its own config. A .gguf file goes to the top, where
# llama.cpp's and ollama's `-hf` / `hf.co/` find it.
STOCK_SUBFOLDER = "gpt2"
# What a model repository carries beside the native model; the web page is a Space of its own (spaces.py).
REPOSITORY_FORMATS = ("transformers", "onnx", "gguf")


def prepare_folder(model_dir: str, output_dir: str, repo_id: str, license_id: str = "mit", seed: int = 0,
                   data_name: str | None = None, formats: list[str] = (), gguf_precisions: tuple[str, ...] = ("f32",)
                   ) -> Path:
    """Build, in `output_dir` (new or empty), exactly the folder that would be uploaded to `repo_id`, with the
    model's exports in `formats` (transformers, onnx, gguf, all) beside the native model, a GGUF file for each of
    `gguf_precisions`.

    `data_name` is what the card calls the training data (default: the file and folder names the run recorded).
    """
    source, target = Path(model_dir), Path(output_dir)
    family = _require_model_folder(source)
    asked = list(formats)  # `all` stays itself until the tokenizer is read: it decides whether GGUF is among them
    formats = formats_for(family, asked, offered=REPOSITORY_FORMATS) if asked else []
    check_new_folder(target)  # by default beside the model: a shared, read-only folder is named, not "no space"
    model, tokenizer = load_pretrained(str(source))
    formats = formats_the_tokenizer_takes(formats, asked, tokenizer)
    summary = RunFolder(source).read_summary()  # a damaged record is refused here: the card is made of it
    is_chat = trained_on_chat(str(source))
    samples = sample_outputs(model, tokenizer, is_chat, count=3, seed=seed)
    has_curve = RunFolder(source).loss_curve.exists()

    def write(folder: Path) -> None:
        # save_pretrained (not a copy) writes auto_map and the family's source files from the installed code.
        model.save_pretrained(folder)
        save_tokenizer(tokenizer, folder)
        if has_curve:
            shutil.copy2(RunFolder(source).loss_curve, folder / LOSS_CURVE_FILE)
        _write_exports(model, tokenizer, family, formats, folder, repo_id.split("/")[-1], gguf_precisions, is_chat)
        card = model_card(model, tokenizer, family, summary, samples, repo_id, license_id, has_curve, data_name,
                          formats, gguf_precisions, is_chat)
        (folder / CARD_FILE).write_text(card, encoding="utf-8")

    build_folder(target, write, what="Hub folder")  # none half-built to upload by mistake; an empty one stays empty
    return target


def _write_exports(model, tokenizer, family: str, formats: list[str], target: Path, name: str,
                   gguf_precisions: tuple[str, ...], is_chat: bool) -> None:
    """The exports beside the native model, where the Hub and each runtime look for them (see STOCK_SUBFOLDER);
    a chat template in those of a chat model only (export.write_formats)."""
    if family == "lstm":
        if formats:
            write_onnx(model, family, target)  # beside the config and tokenizer already at the top
            if is_chat:  # transformers.js (a static Space's page) reads a template only from tokenizer_config.json
                save_export_tokenizer(tokenizer, target, is_chat)
        return
    stock = [name for name in formats if name in ("transformers", "onnx")]
    if stock:
        write_formats(model, tokenizer, family, stock, target / STOCK_SUBFOLDER, name, is_chat=is_chat)
    if "gguf" in formats:
        write_formats(model, tokenizer, family, ["gguf"], target, name, gguf_precisions=gguf_precisions,
                      is_chat=is_chat)


# ---------------------------------------------------------------------------------------------------- upload


def check_repo_ids(ids: dict[str, str | None]) -> None:
    """Refuse, before any work, a repository or Space id (by its flag) the Hub would refuse: OWNER/NAME, with
    letters, digits, '-', '_' and '.' only (`is_repo_id`, the Hub's rule)."""
    for flag, value in ids.items():
        if value is not None and not is_repo_id(value):
            raise UsageError(f"{flag} {value!r} must look like OWNER/NAME (letters, digits, '-', '_' and '.'); "
                             "pick a valid id.")


# The license ids a model card's `license:` may hold; the Hub refuses a commit whose card names another
# ("Invalid metadata in README.md"). The list of https://huggingface.co/docs/hub/repositories-licenses (2026).
HUB_LICENSES = (
    "apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m "
    "afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 "
    "cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 "
    "cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 "
    "cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl "
    "gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr "
    "mpl-2.0 odc-by odbl openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr "
    "deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 "
    "grok2-community gemma unknown other"
).split()


def check_license(license_id: str) -> str:
    """The Hub's id for --license (any case: SPDX writes `MIT`, `Apache-2.0`); one it does not know is refused
    here, as the Hub would refuse the card, so that a dry run finds it too."""
    if license_id.lower() in HUB_LICENSES:
        return license_id.lower()
    close = difflib.get_close_matches(license_id.lower().removesuffix("-only").removesuffix("-or-later"),
                                      HUB_LICENSES, n=1, cutoff=0.75)
    meant = f"did you mean {close[0]}? " if close else ""
    raise UsageError(f"--license {license_id!r} is not a license id the Hub accepts: {meant}the ids are listed at "
                     "https://huggingface.co/docs/hub/repositories-licenses ('other' for a license not there).")


def check_data_name(name: str | None) -> None:
    """--data-name goes into the card's prose and its results table: one line of text."""
    if name is not None and (not name.strip() or any(not character.isprintable() for character in name)):
        raise UsageError(f"--data-name {name!r} must be one line of printable text: name the data in a few words.")


# What git refuses in a branch name (`git check-ref-format --branch`), which the Hub's branches are: a dry run
# finds it here instead of the upload at the network.
BAD_BRANCH = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^[-/.]|/\.|[/.]$|\.lock(/|$)")


def check_branch(branch: str | None) -> None:
    """Refuse a --revision git would not take as a branch name."""
    if branch is not None and (not branch or BAD_BRANCH.search(branch)):
        raise UsageError(f"--revision {branch!r} is not a branch name git accepts (no spaces, '..', '~', '^', ':', "
                         "'?', '*', '[', '\\', no leading '-' or '.', no trailing '/', '.' or '.lock'): choose another.")


def resolve_token(token: str | None) -> str:
    """--token, else HF_TOKEN, else a saved `hf auth login`; never printed or written by pocketlm."""
    from huggingface_hub import get_token

    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise UsageError("no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token.")
    return token


def upload(folder: Path, repo_id: str, token: str, private: bool = False, commit_message: str | None = None,
           revision: str | None = None, space_sdk: str | None = None) -> str:
    """Create `repo_id` (a model repository, or a Space of `space_sdk`) if needed and upload `folder`; returns its
    URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)
    repo_type = "space" if space_sdk else "model"
    try:
        space = {"space_sdk": space_sdk} if space_sdk else {}
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, **space)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision, repo_type=repo_type,
                          commit_message=commit_message or f"Upload pocketlm {repo_type}")
    except OfflineModeIsEnabled:
        raise HubError("the Hub is switched off here (HF_HUB_OFFLINE=1): unset it and connect to upload.")
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401,):
            raise HubError("the Hub rejected the token: log in again with `hf auth login` or pass a valid --token.")
        if status in (403, 404):
            raise HubError(f"no permission to write to {repo_id}: use a repo id under your own name or organisation.")
        raise HubError(f"the Hub answered {status}: {_without(token, str(error).splitlines()[0])}")
    except Exception as error:  # connection refused, DNS failure, timeouts: the HTTP client's own types
        raise HubError(f"could not reach the Hub ({_without(token, type(error).__name__)}): check the connection.")
    return str(url).rstrip("/")


def _without(token: str, text: str) -> str:
    return text.replace(token, "***") if token else text
