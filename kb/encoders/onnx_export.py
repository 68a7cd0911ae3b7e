"""Export a sentence-transformers model to ONNX once, into a cache keyed by its fingerprint.

The whole model (transformer, pooling, normalization) is traced with torch's exporter, so
the graph returns the sentence embedding itself. An export is checked against torch on
probe texts before it is kept; a changed model has a new fingerprint and so a new export.
Files are written under a temporary name, synced and renamed, and a file lock keeps two
processes from exporting the same model at once. meta.json, written last, records each
file's size and CRC-32: an entry that is incomplete or was damaged (an empty meta.json, a
truncated model, a model written over with its size kept) is exported again, and exports of
the same model in an obsolete format or under its former fingerprints are removed once the
new one is made.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kb.errors import ConfigError

log = logging.getLogger(__name__)

# Bump when the exported graph or the files beside it change: old exports are then ignored.
EXPORT_VERSION = 4  # 3: meta.json records the files' sizes; 4: and their CRC-32s
OPSET = 17
MODEL_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
META_KEYS = ("dim", "max_tokens", "pad_id", "files", "crc32")
MAX_ABS_DIFF = 1e-4
PROBES = (
    "hi",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Vector databases index embeddings for approximate nearest neighbour search. " * 40,
)


@dataclass(frozen=True)
class Export:
    """An exported model on disk: the graph, its tokenizer and what the runtime needs."""

    directory: Path
    meta: dict[str, Any]

    def model_file(self, quantized: bool) -> Path:
        return self.directory / (INT8_FILE if quantized else MODEL_FILE)

    @property
    def tokenizer_file(self) -> Path:
        return self.directory / TOKENIZER_FILE


def ensure_export(
    model_path: Path,
    fingerprint: str,
    cache: Path,
    *,
    quantized: bool,
    former: tuple[str, ...] = (),
) -> Export:
    """The cached export of the model at `model_path`, made first if missing or damaged.
    `former`: fingerprints the model had before, whose exports are obsolete."""
    directory = cache / f"{fingerprint}-v{EXPORT_VERSION}"
    wanted = INT8_FILE if quantized else MODEL_FILE
    if (export := _intact(directory, wanted)) is not None:
        return export
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = (directory / ".lock").open("w")
    except OSError as exc:
        message = f"cannot write the ONNX cache at {directory} (KB_ONNX_CACHE): {exc}"
        raise ConfigError(message) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be exporting: wait for it
        _remove_temporaries(directory)
        if _intact(directory, MODEL_FILE) is None:
            if (directory / META_FILE).exists():
                log.warning("the ONNX export in %s is damaged; exporting it again", directory)
            else:
                log.info("exporting %s to ONNX in %s (once per model)", model_path, directory)
            (directory / META_FILE).unlink(missing_ok=True)
            _export(model_path, directory)
            _remove_obsolete(cache, fingerprint, former)
        if quantized and _intact(directory, INT8_FILE) is None:
            log.info("quantizing the ONNX export to int8")
            _quantize(directory / MODEL_FILE, directory / INT8_FILE)
    export = _intact(directory, wanted)
    if export is None:
        raise ConfigError(f"the ONNX export in {directory} (KB_ONNX_CACHE) was not completed")
    return export


def _intact(directory: Path, wanted: str) -> Export | None:
    """The export in directory if its meta.json reads and `wanted` and the tokenizer have
    the sizes and CRC-32s it records; else None (absent, incomplete, or damaged since: a
    model written over in place, or read back as zeros after a power loss, kept its size and
    gave vectors 0.1 off with nothing said, or an ONNX Runtime traceback at every start).
    The check reads the files, about 60 ms for the 90 MB model, which ONNX Runtime then reads
    from the page cache."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
        intact = all(key in meta for key in META_KEYS) and all(
            (directory / name).stat().st_size == meta["files"][name]
            and _crc32(directory / name) == meta["crc32"][name]
            for name in (wanted, TOKENIZER_FILE)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Export(directory, meta) if intact else None


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as file:
        while block := file.read(CRC_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


CRC_BLOCK = 4 * 1024 * 1024


def _remove_temporaries(directory: Path) -> None:
    """The files an export or quantization killed part-way left (up to 90 MB each, named by
    their process: a Ctrl-C in a first `kb load` stopped the encoder process mid-export, and
    each one stayed for good). Called under the lock: no other writer is at work."""
    for leftover in directory.glob("*.tmp"):
        leftover.unlink(missing_ok=True)


def _remove_obsolete(cache: Path, fingerprint: str, former: tuple[str, ...]) -> None:
    """Exports of this model in an older format version, or under a fingerprint it had
    before: no kb from this version on reads them. A newer version's export is left (a
    checkout of another branch would make it again), as is one another process is making
    (its lock is held); a process that loaded one already keeps what it loaded."""
    for folder in cache.iterdir():
        name, _, version = folder.name.rpartition("-v")
        older = name == fingerprint and version.isdigit() and int(version) < EXPORT_VERSION
        if not older and not (name in former and version.isdigit()):
            continue
        try:
            with (folder / ".lock").open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder)
            log.info("removed the obsolete ONNX export %s", folder)
        except OSError:
            continue


def _export(model_path: Path, directory: Path) -> None:
    try:
        import sentence_transformers  # noqa: F401  # load_model needs it: checked here, said once
        import torch
    except ImportError as exc:
        raise ConfigError(
            "exporting the model to ONNX needs torch and sentence-transformers (make install), "
            "or use KB_BACKEND=torch"
        ) from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Eager attention traces to plain MatMul/Softmax, which ONNX Runtime runs ~15% faster on
    # long inputs than the traced scaled_dot_product_attention.
    from kb.encoders.torch_backend import load_model

    model = load_model(model_path, "cpu", model_kwargs={"attn_implementation": "eager"}).eval()
    tokenizer = model.tokenizer
    sample = tokenizer(list(PROBES[:2]), padding=True, return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
    wrapper = _wrap(model, names)
    axes = {name: {0: "batch", 1: "tokens"} for name in names} | {"embedding": {0: "batch"}}
    temporary = directory / f"{MODEL_FILE}.{os.getpid()}.tmp"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks it folds away
            torch.onnx.export(
                wrapper,
                tuple(sample[name] for name in names),
                str(temporary),
                input_names=names,
                output_names=["embedding"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        _verify(model, temporary)
        _synced(temporary)
        os.replace(temporary, directory / MODEL_FILE)
    except OSError as exc:
        message = f"cannot write the ONNX export in {directory} (KB_ONNX_CACHE): {exc}"
        raise ConfigError(message) from exc
    finally:  # no 90 MB half-export left behind (a full disk, a Ctrl-C); gone once replaced
        temporary.unlink(missing_ok=True)
    tokenizer.backend_tokenizer.save(str(directory / TOKENIZER_FILE))
    meta = {
        "model": str(model_path),
        "dim": int(model.get_embedding_dimension()),
        "max_tokens": int(model.max_seq_length),
        "pad_id": int(tokenizer.pad_token_id or 0),
        "inputs": names,
        "torch": torch.__version__,
        "opset": OPSET,
        "files": {name: (directory / name).stat().st_size for name in (MODEL_FILE, TOKENIZER_FILE)},
        "crc32": {name: _crc32(directory / name) for name in (MODEL_FILE, TOKENIZER_FILE)},
    }
    _synced(directory / TOKENIZER_FILE)
    _write_atomic(directory / META_FILE, json.dumps(meta, indent=2))


def _verify(model: Any, onnx_file: Path) -> None:
    """Refuse an export whose vectors differ from torch's on the probe texts."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = {node.name for node in session.get_inputs()}
    for batch in (list(PROBES), [PROBES[1]]):
        inputs = model.tokenizer(
            batch,
            padding=True,
            truncation=True,
            max_length=model.max_seq_length,
            return_tensors="np",
        )
        got = session.run(None, {k: v.astype(np.int64) for k, v in inputs.items() if k in names})[0]
        want = model.encode(batch, normalize_embeddings=True, convert_to_numpy=True)
        diff = float(np.abs(got - want).max())
        if diff > MAX_ABS_DIFF:
            onnx_file.unlink(missing_ok=True)
            raise ConfigError(f"the ONNX export differs from torch by {diff:.2e}; not kept")


def _quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with _quantizer_quiet():
            quantize_dynamic(
                str(source), str(temporary), weight_type=QuantType.QInt8, per_channel=True
            )
        _synced(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    meta_file = source.parent / META_FILE
    meta = json.loads(meta_file.read_text())
    meta["files"][target.name] = target.stat().st_size
    meta["crc32"][target.name] = _crc32(target)
    _write_atomic(meta_file, json.dumps(meta, indent=2))


@contextmanager
def _quantizer_quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs on the root logger: a bare "WARNING:root:" line on
    stderr (logging's last resort) and hundreds of INFO lines where the root logs INFO.
    Its records are dropped; the NullHandler keeps `logging.warning` from configuring the
    root logger for good."""
    root, quiet = logging.getLogger(), logging.NullHandler()

    def not_the_quantizer(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in Path(record.pathname).parts

    root.addFilter(not_the_quantizer)
    root.addHandler(quiet)
    try:
        yield
    finally:
        root.removeHandler(quiet)
        root.removeFilter(not_the_quantizer)


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    _synced(temporary)
    os.replace(temporary, path)


def _synced(path: Path) -> None:
    """On disk before what follows (a rename, meta.json naming its size and CRC)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _wrap(model: Any, names: list[str]) -> Any:
    """A module taking positional tensors and returning the normalized sentence embedding."""
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            features = dict(zip(names, tensors, strict=True))
            embedding = self.model(features)["sentence_embedding"]
            return torch.nn.functional.normalize(embedding, p=2.0, dim=-1)

    return SentenceEmbedding().eval()
