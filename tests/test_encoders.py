"""The ONNX backend against the torch reference, and the export cache behind it."""

from __future__ import annotations

import fcntl
import filecmp
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from kb.config import Settings, cpu_count
from kb.embeddings import Embedder, load_embedder, resolve_model_path
from kb.encoders import onnx_export
from kb.encoders.onnx_backend import SPIN_US, OnnxEmbedder, token_batches
from kb.errors import ConfigError
from kb.fingerprint import model_fingerprint

TEXTS = [
    "hi",
    "",
    "The cat sat on the mat.",
    "Café naïve façade — déjà vu, 東京 and emoji 🙂 are tokenized too.",
    "Indexes speed up reads and slow down writes. " * 5,
    "A document far longer than the model's window gets truncated by both backends. " * 60,
    *[f"short note number {i} about vector search" for i in range(70)],  # crosses a batch
]


@pytest.fixture(scope="module")
def torch_embedder() -> Embedder:
    return load_embedder(Settings(backend="torch"))


def test_onnx_vectors_match_torch(embedder: Embedder, torch_embedder: Embedder) -> None:
    assert embedder.backend == "onnx"
    assert torch_embedder.backend == "torch"
    got, want = embedder.embed_documents(TEXTS), torch_embedder.embed_documents(TEXTS)
    assert got.shape == want.shape == (len(TEXTS), 384)
    assert float(np.abs(got - want).max()) < 1e-4
    queries = ["how do I speed up reads", "q"]
    diff = embedder.embed_queries(queries) - torch_embedder.embed_queries(queries)
    assert float(np.abs(diff).max()) < 1e-4


def test_both_backends_share_the_vector_space_identity(
    embedder: Embedder, torch_embedder: Embedder
) -> None:
    assert embedder.fingerprint == torch_embedder.fingerprint
    assert (embedder.name, embedder.dim, embedder.max_tokens) == (
        torch_embedder.name,
        torch_embedder.dim,
        torch_embedder.max_tokens,
    )


def test_tokens_match_torch(embedder: Embedder, torch_embedder: Embedder) -> None:
    for text in TEXTS[:6]:
        assert embedder.tokens(text) == torch_embedder.tokens(text)


def test_batching_by_length_keeps_the_input_order(embedder: Embedder) -> None:
    texts = ["a much longer sentence about databases and their indexes", "cats", "dogs bark"]
    together = embedder.embed_documents(texts)
    alone = np.vstack([embedder.embed_documents([text]) for text in texts])
    assert float(np.abs(together - alone).max()) < 1e-5


def test_the_onnx_backend_runs_without_torch(embedder: Embedder) -> None:
    """Cold start: with the export cached, serving never imports torch."""
    code = (
        "import sys; from kb.config import Settings; from kb.embeddings import load_embedder; "
        "load_embedder(Settings()).embed_queries(['x']); "
        "print(sorted({'torch', 'sentence_transformers', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ the export cache


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export into an empty cache, made once for this module."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    _, path = resolve_model_path(Settings().model)
    onnx_export.ensure_export(path, model_fingerprint(path), cache, quantized=False)
    return cache


def test_an_export_is_keyed_by_fingerprint_and_complete(exported: Path) -> None:
    _, path = resolve_model_path(Settings().model)
    (directory,) = exported.iterdir()
    assert directory.name == f"{model_fingerprint(path)}-v{onnx_export.EXPORT_VERSION}"
    meta = json.loads((directory / onnx_export.META_FILE).read_text())
    assert meta["dim"] == 384
    assert meta["max_tokens"] == 256
    assert (directory / onnx_export.MODEL_FILE).stat().st_size > 10_000_000
    assert (directory / onnx_export.TOKENIZER_FILE).is_file()
    assert not list(directory.glob("*.tmp"))


def test_a_cached_export_is_reused(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "_export", no_export)
    embedder = OnnxEmbedder(Settings().model, cache=exported)
    assert embedder.embed_queries(["still works"]).shape == (1, 384)


def test_a_changed_model_is_exported_again(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(onnx_export, "_export", lambda path, directory: calls.append(directory))
    _, path = resolve_model_path(Settings().model)
    with pytest.raises(ConfigError, match="not completed"):  # the stand-in wrote nothing
        onnx_export.ensure_export(path, "0123456789abcdef", exported, quantized=False)
    assert calls == [exported / f"0123456789abcdef-v{onnx_export.EXPORT_VERSION}"]


def the_export(cache: Path) -> Path:
    _, path = resolve_model_path(Settings().model)
    return cache / f"{model_fingerprint(path)}-v{onnx_export.EXPORT_VERSION}"


def copying_export(source: Path, calls: list[Path]) -> Callable[[Path, Path], None]:
    """A stand-in for _export that copies the export in `source` (a real one)."""

    def export(model: Path, directory: Path) -> None:
        calls.append(directory)
        for name in (onnx_export.MODEL_FILE, onnx_export.TOKENIZER_FILE, onnx_export.META_FILE):
            shutil.copyfile(source / name, directory / name)

    return export


@pytest.mark.parametrize(
    "damage",
    [
        {onnx_export.META_FILE: b""},
        {onnx_export.META_FILE: b'{"dim": 384}'},
        {onnx_export.MODEL_FILE: b"\x08\x07"},  # a truncated copy
        {onnx_export.TOKENIZER_FILE: None},
    ],
    ids=["empty-meta", "old-meta", "truncated-model", "no-tokenizer"],
)
def test_a_damaged_export_is_made_again(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: dict
) -> None:
    """An empty meta.json or a truncated model.onnx was a long traceback at every start."""
    good = the_export(exported)
    cache = tmp_path / "cache"
    shutil.copytree(good, cache / good.name)
    for name, content in damage.items():
        if content is None:
            (cache / good.name / name).unlink()
        else:
            (cache / good.name / name).write_bytes(content)
    # what an export killed part-way leaves (a finally never runs on a signal's death)
    (cache / good.name / f"{onnx_export.MODEL_FILE}.424242.tmp").write_bytes(b"\0" * 1000)
    calls: list[Path] = []
    monkeypatch.setattr(onnx_export, "_export", copying_export(good, calls))
    _, path = resolve_model_path(Settings().model)
    export = onnx_export.ensure_export(path, model_fingerprint(path), cache, quantized=False)
    assert calls == [cache / good.name]
    assert not list((cache / good.name).glob("*.tmp"))
    assert export.meta["dim"] == 384
    assert filecmp.cmp(export.model_file(False), good / onnx_export.MODEL_FILE, shallow=False)
    onnx_export.ensure_export(path, model_fingerprint(path), cache, quantized=False)
    assert len(calls) == 1  # intact now: not made a third time


@pytest.mark.parametrize("damage", ["overwritten", "zeroed"])
def test_an_export_damaged_with_its_size_kept_is_made_again(
    exported: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    """Only the sizes were checked: 4 KiB written over inside model.onnx gave vectors 0.12
    off, with nothing said; a model read back as zeros (a power loss before the disk had
    it) was ONNX Runtime's InvalidProtobuf traceback at every start (review helper 72)."""
    good = the_export(exported)
    cache = tmp_path / "cache"
    shutil.copytree(good, cache / good.name)
    model = cache / good.name / onnx_export.MODEL_FILE
    size = model.stat().st_size
    with model.open("r+b") as file:
        if damage == "zeroed":
            file.write(b"\0" * size)
        else:
            file.seek(size * 3 // 4)
            file.write(np.random.default_rng(3).bytes(4096))
    assert model.stat().st_size == size
    calls: list[Path] = []
    monkeypatch.setattr(onnx_export, "_export", copying_export(good, calls))
    with caplog.at_level(logging.WARNING, logger="kb.encoders.onnx_export"):
        embedder = OnnxEmbedder(Settings().model, cache=cache)
    assert calls == [cache / good.name]
    assert "is damaged" in caplog.text
    assert filecmp.cmp(model, good / onnx_export.MODEL_FILE, shallow=False)
    reference = OnnxEmbedder(Settings().model, cache=exported)
    texts = ["a damaged export", "vectors as torch's"]
    assert np.abs(embedder.embed_queries(texts) - reference.embed_queries(texts)).max() < 1e-6
    OnnxEmbedder(Settings().model, cache=cache)
    assert len(calls) == 1  # mended: not made a third time


def test_obsolete_exports_of_the_model_go_once_the_new_one_is_made(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older format versions and former fingerprints of this model; not a newer version's
    (another branch's kb), not other models', and not one whose lock another process holds
    (it is exporting there)."""
    good = the_export(exported)
    cache = tmp_path / "cache"
    version = onnx_export.EXPORT_VERSION
    folders = ["aaaa-v1", f"aaaa-v{version - 1}", f"aaaa-v{version + 1}", "aaaa-vx"]
    folders += ["former-v2", "other-v2", "busy-v2"]
    for name in folders:
        (cache / name).mkdir(parents=True)
        (cache / name / onnx_export.MODEL_FILE).write_bytes(b"old")
    monkeypatch.setattr(onnx_export, "_export", copying_export(good, []))
    with (cache / "busy-v2" / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        former = ("former", "busy")
        onnx_export.ensure_export(good, "aaaa", cache, quantized=False, former=former)
    kept = sorted(folder.name for folder in cache.iterdir())
    assert kept == sorted(
        [f"aaaa-v{version}", f"aaaa-v{version + 1}", "aaaa-vx", "other-v2", "busy-v2"]
    )


def test_an_export_that_differs_from_torch_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "MAX_ABS_DIFF", -1.0)
    _, path = resolve_model_path(Settings().model)
    with pytest.raises(ConfigError, match="differs from torch"):
        onnx_export.ensure_export(path, model_fingerprint(path), tmp_path, quantized=False)
    (directory,) = tmp_path.iterdir()
    assert not list(directory.glob("*.onnx*"))
    assert not (directory / "meta.json").exists()


def test_a_window_wider_than_the_models_positions_is_refused(tmp_path: Path) -> None:
    """max_seq_length 1024 on a model of 512 positions was taken: the export's probe failed
    with an ONNX Runtime traceback, torch's first long text with its own (review helper 72)."""
    _, packaged = resolve_model_path(Settings().model)
    model = tmp_path / "wide"
    shutil.copytree(packaged, model, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    (model / "sentence_bert_config.json").write_text('{"max_seq_length": 1024}')
    with pytest.raises(ConfigError) as refused:
        load_embedder(Settings(model=str(model)))
    assert refused.value.message == (
        f"KB_MODEL={str(model)!r}: max_seq_length 1024 (sentence_bert_config.json) is more "
        "than the model's 512 positions (config.json max_position_embeddings)"
    )
    (model / "sentence_bert_config.json").write_text('{"max_seq_length": 512}')
    assert resolve_model_path(str(model))[1] == model.resolve()  # at the limit: taken


def test_an_unloadable_model_is_a_config_error_as_with_torch(tmp_path: Path) -> None:
    """A config.json of {} was a 71-line 'Unrecognized model' traceback from the export."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="could not load the model"):
        onnx_export.ensure_export(model, "0123456789abcdef", tmp_path / "cache", quantized=False)


def test_a_failed_export_write_is_a_config_error_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk was a 53-line traceback and left a 40 MB model.onnx.<pid>.tmp."""
    import errno

    import torch

    def half_export(model: object, args: object, f: str, **kwargs: object) -> None:
        Path(f).write_bytes(b"\0" * 1000)
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(torch.onnx, "export", half_export)
    _, path = resolve_model_path(Settings().model)
    with pytest.raises(ConfigError, match=r"KB_ONNX_CACHE.*File too large"):
        onnx_export.ensure_export(path, model_fingerprint(path), tmp_path, quantized=False)
    (directory,) = tmp_path.iterdir()
    assert not list(directory.glob("*.tmp"))
    assert not (directory / onnx_export.META_FILE).exists()


@pytest.mark.parametrize("device", ["gpu", "cuda"])
def test_a_device_torch_has_not_got_is_a_config_error(device: str) -> None:
    """KB_DEVICE=gpu was torch's RuntimeError, and cuda on a CPU-only torch an AssertionError."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    with pytest.raises(ConfigError, match=f"KB_DEVICE='{device}'"):
        load_embedder(Settings(backend="torch", device=device))


def test_int8_stays_close_to_fp32(exported: Path, embedder: Embedder) -> None:
    int8 = OnnxEmbedder(Settings().model, cache=exported, backend="onnx-int8")
    assert int8.backend == "onnx-int8"
    assert int8.fingerprint == embedder.fingerprint
    texts = TEXTS[2:8]
    cosine = np.sum(int8.embed_documents(texts) * embedder.embed_documents(texts), axis=1)
    assert float(cosine.min()) > 0.95
    q = int8.embed_queries(["A feline rested on the rug"])[0]
    cat, stocks = int8.embed_documents(["The cat sat on the mat", "stock market crash"])
    assert float(q @ cat) > 0.5 > float(q @ stocks)


def test_quantizing_logs_nothing_of_onnx_runtimes(
    exported: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its quantizer logs on the root logger: a bare "WARNING:root:" line on the first
    int8 start, and hundreds of INFO lines in a process whose root logs INFO."""
    work = tmp_path / "export"
    shutil.copytree(the_export(exported), work)
    handlers = list(logging.getLogger().handlers)
    with caplog.at_level(logging.INFO):
        onnx_export._quantize(work / onnx_export.MODEL_FILE, work / onnx_export.INT8_FILE)
    assert [r.getMessage() for r in caplog.records if "onnxruntime" in r.pathname] == []
    assert logging.getLogger().handlers == handlers
    assert (
        json.loads((work / onnx_export.META_FILE).read_text())["files"][onnx_export.INT8_FILE]
        == (work / onnx_export.INT8_FILE).stat().st_size
    )


def test_an_unknown_backend_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="backend"):
        Settings(backend="tensorflow")


def test_concurrent_queries_share_runs_and_get_their_own_rows(embedder: Embedder) -> None:
    texts = [f"question number {i} about databases" for i in range(24)]
    alone = embedder.embed_queries(texts)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda i: embedder.embed_queries([texts[i]])[0], range(24)))
    assert float(np.abs(np.vstack(together) - alone).max()) < 1e-5


def test_a_failed_shared_run_fails_every_caller() -> None:
    from kb.batcher import Batcher

    def broken(texts: object) -> np.ndarray:
        raise RuntimeError("encoder down")

    batcher = Batcher(broken)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher, ["q"]) for _ in range(8)]
    for future in futures:
        with pytest.raises(RuntimeError, match="encoder down"):
            future.result()


@pytest.mark.parametrize("isolate", [True, False])
def test_one_callers_bad_item_fails_only_that_caller_of_a_shared_run(isolate: bool) -> None:
    """A query the tokenizer refused failed every query sharing its run (110 of 145
    concurrent good queries answered 500): with `isolate` (the encoder's) the run is retried
    caller by caller. Without it (Chroma's queries: a failure is everyone's, and each retry
    would wait out its own timeout) every caller of the run gets its error, in one run."""
    from kb.batcher import Batcher

    runs: list[list[str]] = []
    release = threading.Event()

    def encode(texts: list[str]) -> list[str]:
        runs.append(list(texts))
        if len(runs) == 1:
            release.wait(30)  # hold the first run: the others queue for one shared run
        if "bad" in texts:
            raise ValueError("cannot encode 'bad'")
        return [text.upper() for text in texts]

    batcher = Batcher(encode, isolate=isolate)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher, ["first"])
        while not runs:
            time.sleep(0.001)
        others = {text: pool.submit(batcher, [text]) for text in ["a", "bad", "b", "c"]}
        while len(batcher._waiting) < len(others):
            time.sleep(0.001)
        release.set()
        assert first.result() == ["FIRST"]
        with pytest.raises(ValueError, match="'bad'"):
            others.pop("bad").result()
        if isolate:
            assert {text: future.result() for text, future in others.items()} == {
                text: [text.upper()] for text in others
            }
        else:
            for future in others.values():
                with pytest.raises(ValueError, match="'bad'"):
                    future.result()
    assert sorted(runs[1]) == ["a", "b", "bad", "c"]  # they did share a run
    assert len(runs) == (6 if isolate else 2)  # then each of the four alone, or not


def test_batches_hold_at_most_so_many_texts_and_padded_tokens() -> None:
    lengths = [3, 250, 40, 12, 12, 300, 7, 200, 64, 5] * 9
    order = np.argsort(lengths, kind="stable")
    batches = list(token_batches(order, lengths, max_texts=8, max_tokens=512))
    assert np.array_equal(np.concatenate(batches), order)  # every text once, in order
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) <= 8
        assert len(batch) == 1 or len(batch) * width <= 512
    assert [len(b) for b in batches if max(lengths[i] for i in b) == 300] == [1] * 9
    assert max(len(b) for b in batches) == 8  # short texts still fill a batch


def test_a_small_token_budget_changes_no_vector(embedder: Embedder) -> None:
    assert isinstance(embedder, OnnxEmbedder)
    small = OnnxEmbedder(
        "all-MiniLM-L6-v2", cache=Settings().onnx_cache, batch_size=64, batch_tokens=300
    )
    got = small.embed_documents(TEXTS)
    assert float(np.abs(got - embedder.embed_documents(TEXTS)).max()) < 1e-5


def test_one_text_alone_runs_on_the_spinning_session(embedder: Embedder) -> None:
    """A lone query's run has threads spinning between its operators (not woken at each);
    batches run on the session whose idle threads sleep. Neither spins after a run; both
    give the same vectors."""
    two = OnnxEmbedder("all-MiniLM-L6-v2", cache=Settings().onnx_cache, threads=2)
    assert two._single is not None

    def config(session: object, key: str) -> str:
        return session.get_session_options().get_session_config_entry(key)  # type: ignore[attr-defined]

    assert config(two._single, "session.intra_op.allow_spinning") == "1"
    assert config(two._session, "session.intra_op.allow_spinning") == "0"
    assert config(two._single, "session.intra_op.spin_duration_us") == str(SPIN_US)
    for session in (two._single, two._session):
        assert config(session, "session.force_spinning_stop") == "1"
    runs: list[str] = []
    for name in ("_single", "_session"):
        session = getattr(two, name)
        run = session.run
        session.run = lambda *args, _name=name, _run=run: runs.append(_name) or _run(*args)
    texts = ["which index makes reads fast?", "slow writes"]
    alone = two.embed_queries(texts[:1])
    assert runs == ["_single"]
    together = two.embed_queries(texts)
    assert runs == ["_single", "_session"]
    assert float(np.abs(alone[0] - together[0]).max()) < 1e-5
    assert float(np.abs(together - embedder.embed_queries(texts)).max()) < 1e-5


@pytest.mark.skipif(cpu_count() < 2, reason="one lane per core")
def test_with_lanes_one_text_spins_and_a_few_texts_share_the_lanes(embedder: Embedder) -> None:
    """On lanes, a lone query still runs on the spinning session of every core's threads,
    and a call of two texts runs one on each lane at once (both runs must be inside `_run`
    to pass the barrier), not both in one batch on one lane."""
    lanes = OnnxEmbedder("all-MiniLM-L6-v2", cache=Settings().onnx_cache, lanes=2, threads=2)
    assert lanes._single is not None
    runs: list[str] = []
    single_run = lanes._single.run
    lanes._single.run = lambda *args: runs.append("_single") or single_run(*args)  # type: ignore[method-assign]
    both = threading.Barrier(2, timeout=30)
    run = lanes._run

    def meeting(ids: list[list[int]], session: object = None) -> np.ndarray:
        if session is None:
            both.wait()
            runs.append(f"lane of {len(ids)}")
        return run(ids, session)  # type: ignore[arg-type]

    lanes._run = meeting  # type: ignore[method-assign]
    texts = ["which index makes reads fast?", "slow writes"]
    alone = lanes.embed_queries(texts[:1])
    assert runs == ["_single"]
    together = lanes.embed_queries(texts)
    assert runs == ["_single", "lane of 1", "lane of 1"]
    assert float(np.abs(alone[0] - together[0]).max()) < 1e-5
    assert float(np.abs(together - embedder.embed_queries(texts)).max()) < 1e-5


@pytest.mark.skipif(cpu_count() < 2, reason="one thread per session: no second session")
def test_the_spinning_session_is_a_setting(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KB_ENCODER_SPIN_SESSION=false keeps one session (its memory saved); the encoder
    process's embedder, which embeds batches, never opens one, even as one session."""
    assert isinstance(embedder, OnnxEmbedder)  # the session's: backend=onnx
    assert embedder._single is not None
    monkeypatch.setenv("KB_ENCODER_SPIN_SESSION", "false")
    off = load_embedder(Settings(backend="onnx"))
    assert isinstance(off, OnnxEmbedder)
    assert off._single is None
    bulk = load_embedder(
        Settings(backend="onnx", encoder_lanes=1, encoder_spin_session=True), bulk=True
    )
    assert isinstance(bulk, OnnxEmbedder)
    assert bulk.lanes == 1
    assert bulk._single is None
    texts = ["which index makes reads fast?"]
    assert float(np.abs(off.embed_queries(texts) - embedder.embed_queries(texts)).max()) < 1e-5
    off.hold_query_session(True)  # not configured: nothing to open
    assert not off.has_query_session


@pytest.mark.skipif(cpu_count() < 2, reason="one thread per session: no second session")
def test_the_spinning_session_can_be_released_and_opened_again(embedder: Embedder) -> None:
    """Released (while kb serve's encoder process runs), a lone text runs on a lane, with
    the same vector; opened again, on the spinning session."""
    encoder = OnnxEmbedder("all-MiniLM-L6-v2", cache=Settings().onnx_cache, lanes=2, threads=2)
    texts = ["which index makes reads fast?"]
    want = embedder.embed_queries(texts)
    encoder.hold_query_session(False)
    assert not encoder.has_query_session
    runs: list[object] = []
    run = encoder._run
    encoder._run = lambda ids, session=None: runs.append(session) or run(ids, session)  # type: ignore[method-assign]
    assert float(np.abs(encoder.embed_queries(texts) - want).max()) < 1e-5
    assert runs == [None]  # a lane's run on the batch session
    encoder.hold_query_session(True)
    assert encoder.has_query_session
    assert float(np.abs(encoder.embed_queries(texts) - want).max()) < 1e-5
    assert runs[1] is encoder._single


@pytest.mark.skipif(cpu_count() < 2, reason="one thread per session: no second session")
def test_a_lazy_encoder_opens_its_sessions_once_at_the_first_text(embedder: Embedder) -> None:
    """`lazy` (a store that may never embed): no session until a text comes; texts from
    several threads at once then open one batch session and one for lone texts, not one
    each, and their vectors are an eager encoder's. A lone-text session released before
    the first text stays closed."""
    opened: list[bool] = []
    cache = Settings().onnx_cache
    lazy = OnnxEmbedder("all-MiniLM-L6-v2", cache=cache, lanes=2, threads=2, lazy=True)
    open_one = lazy._open
    lazy._open = lambda *a, **k: opened.append(k["spin"]) or open_one(*a, **k)  # type: ignore[method-assign]
    assert lazy._session is None
    assert not lazy.has_query_session
    assert opened == []
    assert lazy.dim == embedder.dim
    assert lazy.tokens("tokens need no session") == embedder.tokens("tokens need no session")
    texts = [f"text {i} about rivers" for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda text: lazy.embed_documents([text]), texts))
    assert sorted(opened) == [False, True]
    assert float(np.abs(np.vstack(got) - embedder.embed_documents(texts)).max()) < 1e-5
    released = OnnxEmbedder("all-MiniLM-L6-v2", cache=cache, lanes=2, threads=2, lazy=True)
    released.hold_query_session(False)
    assert float(np.abs(released.embed_queries(texts[:1]) - got[0]).max()) < 1e-5
    assert released._session is not None
    assert not released.has_query_session


def test_lanes_give_every_text_its_own_vector(embedder: Embedder) -> None:
    """Bulk encoding on one-thread lanes: batches run side by side, rows land in input order,
    vectors as one session's (texts of many lengths, so there are many batches)."""
    assert isinstance(embedder, OnnxEmbedder)
    lanes = OnnxEmbedder("all-MiniLM-L6-v2", cache=Settings().onnx_cache, batch_size=4, lanes=2)
    assert lanes.lanes == 2
    texts = [f"note {i}: " + "about glaciers and fjords " * (i % 23) for i in range(97)]
    got = lanes.embed_documents(texts)
    assert float(np.abs(got - embedder.embed_documents(texts)).max()) < 1e-5
    assert np.allclose(got[41], embedder.embed_documents([texts[41]])[0], atol=1e-5)


def test_submitted_batches_share_the_lanes(embedder: Embedder) -> None:
    """Each call's batches queue behind the previous call's, so two one-batch calls run side
    by side (the encoder process submits each batch a load sends as it arrives): both runs
    must be inside `_run` at once to pass the barrier."""
    lanes = OnnxEmbedder("all-MiniLM-L6-v2", cache=Settings().onnx_cache, lanes=2)
    both = threading.Barrier(2, timeout=30)
    run = lanes._run

    def meeting(ids: list[list[int]]) -> np.ndarray:
        both.wait()
        return run(ids)

    lanes._run = meeting  # type: ignore[method-assign]
    first, second = lanes.submit_documents(["one call"]), lanes.submit_documents(["another"])
    got = np.vstack([first.result(timeout=60), second.result(timeout=60)])
    assert float(np.abs(got - embedder.embed_documents(["one call", "another"])).max()) < 1e-5


def test_a_failed_batch_fails_its_own_call_only(embedder: Embedder) -> None:
    lanes = OnnxEmbedder("all-MiniLM-L6-v2", cache=Settings().onnx_cache, batch_size=2, lanes=2)
    run = lanes._run
    broken = lanes._tokenizer.encode("the broken one").ids

    def failing(ids: list[list[int]]) -> np.ndarray:
        if broken in ids:
            raise RuntimeError("this batch failed")
        return run(ids)

    lanes._run = failing  # type: ignore[method-assign]
    texts = [f"a good text, number {i}" for i in range(7)]
    bad = lanes.submit_documents([*texts[:3], "the broken one", *texts[3:]])
    good = lanes.submit_documents(texts)
    with pytest.raises(RuntimeError, match="this batch failed"):
        bad.result(timeout=60)
    assert float(np.abs(good.result(timeout=60) - embedder.embed_documents(texts)).max()) < 1e-5


def test_encoders_get_one_lane_per_core_unless_set() -> None:
    """The service's encoder and the encoder process's alike; KB_ENCODER_LANES=1 gives one
    session of every core's threads."""
    settings = Settings()
    for bulk in (False, True):
        encoder = load_embedder(settings, bulk=bulk)
        assert isinstance(encoder, OnnxEmbedder)
        assert encoder.lanes == cpu_count()
        one = load_embedder(settings.model_copy(update={"encoder_lanes": 1}), bulk=bulk)
        assert isinstance(one, OnnxEmbedder)
        assert one.lanes == 1
        assert one._lane_pool is None


def test_encoder_threads_alone_caps_the_lanes_too() -> None:
    """KB_ENCODER_THREADS=1 keeps the whole encoder on one core (one lane of one thread),
    and KB_ENCODER_LANES, when set, still wins."""
    capped = load_embedder(Settings(encoder_threads=1), bulk=True)
    assert isinstance(capped, OnnxEmbedder)
    assert capped.lanes == 1
    assert capped._lane_pool is None
    both = load_embedder(Settings(encoder_threads=1, encoder_lanes=3), bulk=True)
    assert isinstance(both, OnnxEmbedder)
    assert both.lanes == 3


def kb_load(folder: Path, texts: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """`kb load --quiet` of these texts in a process of its own, its store in `folder`;
    `env` adds variables (KB_ONNX_CACHE relative to `folder`)."""
    source = folder / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    env = {"KB_CHROMA_PATH": str(folder / "db"), **env}
    if "KB_ONNX_CACHE" in env:
        env["KB_ONNX_CACHE"] = str(folder / env["KB_ONNX_CACHE"])
    return subprocess.run(
        [sys.executable, "-m", "kb", "load", "--quiet", str(source)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_first_load_exports_in_its_encoder_process_and_exits_cleanly(tmp_path: Path) -> None:
    """With nothing cached, kb load's encoder process exports the model, then stops without
    the interpreter's teardown: what it made (tqdm's lock during the export) is released,
    so nothing is reported leaked, and the export is there for the next run."""
    done = kb_load(tmp_path, [f"note {i} on fjords" for i in range(5)], KB_ONNX_CACHE="cache")
    assert done.returncode == 0, done.stderr
    assert "added 5" in done.stderr
    assert "leaked" not in done.stderr, done.stderr
    assert "Loading weights" not in done.stderr  # no progress bars in kb's output
    assert list((tmp_path / "cache").glob("*/model.onnx"))


def test_the_torch_backend_prints_no_progress_bar(tmp_path: Path) -> None:
    """transformers drew a "Loading weights" bar on stderr at every torch start."""
    done = kb_load(tmp_path, ["a note on fjords"], KB_BACKEND="torch")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()  # a bar redraws itself after "\r"s
    assert [line.split(" in ")[0] for line in lines] == ["added 1, updated 0, skipped 0, failed 0"]
