"""The model's fingerprint: the identity of its vector space, recorded in every store.

It hashes every file that decides the vectors (about 90 MB of weights for the packaged model,
and once more for the fingerprints earlier kb versions recorded): about 130 ms a process
start here. `model_identity` keeps the result in the ONNX cache beside each file's stat, as
git's index does, and hashes again only when a file's size, times, inode or device changed,
or one was added or removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

# What a sentence-transformers folder (the model's and each module's) holds that decides its
# vectors: configs (max_seq_length, pooling, prompts), tokenizer files, weights (sharded too).
MODEL_FILES = ("*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model*.bin")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the former fingerprints'
MEMO_FILE = "fingerprints.json"
MEMO_ENTRIES = 16  # model folders remembered; the oldest is dropped past this


def model_identity(path: Path, memo: Path | None = None) -> tuple[str, tuple[str, ...]]:
    """(fingerprint, former fingerprints) of the model at `path`; with `memo` (a folder,
    the ONNX cache), read from and recorded in its MEMO_FILE. A memo that cannot be read or
    written is passed over: the files are hashed, as without one."""
    root = path.resolve()
    if memo is None:
        return model_fingerprint(root), former_fingerprints(root)
    stamp = [[name, *_stat(file)] for name, file in _model_files(root)]
    entries = _read_memo(memo / MEMO_FILE)
    known = entries.get(str(root))
    if isinstance(known, dict) and known.get("stamp") == stamp:
        fingerprint, former = known.get("fingerprint"), known.get("former")
        if isinstance(fingerprint, str) and isinstance(former, list):
            return fingerprint, tuple(str(value) for value in former)
    fingerprint, former = model_fingerprint(root), former_fingerprints(root)
    entries.pop(str(root), None)
    entries[str(root)] = {"stamp": stamp, "fingerprint": fingerprint, "former": list(former)}
    _write_memo(memo / MEMO_FILE, dict(list(entries.items())[-MEMO_ENTRIES:]))
    return fingerprint, former


def model_fingerprint(path: Path) -> str:
    """A short hash of every file that decides the model's vectors: the identity of its
    vector space. Read from the model folder and the folder of each module in modules.json
    (the older layout keeps its weights in `0_Transformer/`); other folders (an `onnx/`
    export, say) and documentation are not part of it."""
    digest = hashlib.sha256()
    for name, file in _model_files(path.resolve()):
        digest.update(f"{name}\0{file.stat().st_size}\0".encode())
        _hash_file(digest, file)
    return digest.hexdigest()[:16]


def former_fingerprints(path: Path) -> tuple[str, ...]:
    """The fingerprints earlier versions of kb recorded for this model. Until 2026-12 the
    fingerprint hashed config.json, modules.json and the top folder's weights only, so two
    models that differed in pooling, sequence length, tokenizer or a module's weights had
    the same one; a store recorded with it is taken as this model's and re-recorded."""
    digest = hashlib.sha256()
    for name in ("config.json", "modules.json", *WEIGHT_FILES):
        file = path / name
        if file.is_file():
            digest.update(name.encode())
            _hash_file(digest, file)
    return (digest.hexdigest()[:16],)


def _model_files(root: Path) -> list[tuple[str, Path]]:
    """(name relative to root, file) for each file MODEL_FILES matches in root and in the
    modules' folders, sorted by name."""
    try:
        modules = json.loads((root / "modules.json").read_text())
    except (OSError, ValueError):
        modules = []
    prefixes = {""}
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and module.get("path"):
            prefixes.add(f"{module['path']}".strip("/") + "/")
    files = {
        prefix + file.name: file
        for prefix in prefixes
        for pattern in MODEL_FILES
        for file in (root / prefix).glob(pattern)
        if file.is_file()
    }
    return sorted(files.items())


def _hash_file(digest: Any, file: Path) -> None:
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def _stat(file: Path) -> list[int]:
    info = file.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


def _read_memo(file: Path) -> dict[str, Any]:
    try:
        entries = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_memo(file: Path, entries: dict[str, Any]) -> None:
    temporary = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(entries))
        os.replace(temporary, file)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
