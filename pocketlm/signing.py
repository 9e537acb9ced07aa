"""Signed folders: pocketlm loads a checkpoint's pickles only when it wrote them itself.

accelerate saves the optimizer and RNG states with pickle, and unpickling runs code. So each checkpoint gets a
manifest of its files' SHA-256 digests, authenticated with a key kept in the user's home (HMAC), and `--resume`
loads only a checkpoint whose manifest and files check out.
"""

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from .home import HOME, unusable

MANIFEST_FILE = "pocketlm-manifest.json"
# The signing key: per user, created on first use, readable by its owner only.
KEY_FILE = HOME / "checkpoint-key"


def check_key() -> None:
    """Stop with one line, before a run trains anything, when the key its checkpoints need cannot be had: found
    only at the first checkpoint, that was a traceback after the training it could not save."""
    _key()


def _key() -> bytes:
    try:
        if not KEY_FILE.exists():
            KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
            temporary = KEY_FILE.with_name(f".{KEY_FILE.name}.{os.getpid()}")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_bytes(32))
            os.replace(temporary, KEY_FILE)  # two processes creating it at once: one key wins, both read it
        return KEY_FILE.read_bytes()
    except OSError as error:
        raise unusable(KEY_FILE, error, "the key that signs checkpoints") from None


def digest(path: Path) -> str:
    """The SHA-256 of a file, read a megabyte at a time."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _files_of(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): digest(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}


def sign(folder: Path) -> None:
    """Write the folder's manifest: every file's digest, authenticated with this user's key."""
    files = _files_of(folder)
    body = json.dumps(files, sort_keys=True).encode()
    mac = hmac.new(_key(), body, hashlib.sha256).hexdigest()
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files, "hmac": mac}, indent=1))


def verify(folder: Path) -> str | None:
    """None when `folder` holds exactly the files pocketlm signed there, unchanged; else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files, mac = manifest["files"], manifest["hmac"]
    except FileNotFoundError:
        return "it has no pocketlm manifest, so pocketlm did not write it"
    except (ValueError, KeyError, TypeError):
        return "its pocketlm manifest is damaged"
    body = json.dumps(files, sort_keys=True).encode()
    if not hmac.compare_digest(mac, hmac.new(_key(), body, hashlib.sha256).hexdigest()):
        if KEY_FILE.stat().st_mtime > (folder / MANIFEST_FILE).stat().st_mtime:
            # The likeliest story: a cleaned ~/.cache took the key, and the next run made another.
            return (f"its manifest was signed with another key than {KEY_FILE}, which is newer than the checkpoint: "
                    "the key it was signed with was removed, or POCKETLM_HOME points elsewhere now")
        return "its manifest was not signed by pocketlm for this user"
    found = _files_of(folder)
    changed = sorted(set(files) ^ set(found) | {name for name in files if found.get(name) not in (None, files[name])})
    if changed:
        return f"{changed[0]} is damaged, missing or was changed since it was saved"
    return None
