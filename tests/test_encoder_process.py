"""The encoder process bulk loads use: the same vectors and token spans as the encoder here,
batches answered in order, and failures that reach the caller."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

from kb.config import Settings
from kb.embeddings import Embedder
from kb.encoders.process import EncoderProcess
from kb.errors import ConfigError

TEXTS = [
    "Knead the dough for ten minutes, then let it rise.",
    "A B-tree keeps keys sorted so range scans stay cheap.",
    "Naïve café — unicode survives the trip to the child process.",
]


@pytest.fixture(scope="module")
def remote() -> Iterator[EncoderProcess]:
    encoder = EncoderProcess(Settings(backend="onnx"))
    yield encoder
    encoder.close()


def test_it_is_the_same_encoder(remote: EncoderProcess, embedder: Embedder) -> None:
    assert (remote.name, remote.dim, remote.fingerprint, remote.max_tokens) == (
        embedder.name, embedder.dim, embedder.fingerprint, embedder.max_tokens,
    )  # fmt: skip
    assert np.array_equal(remote.embed_documents(TEXTS), embedder.embed_documents(TEXTS))
    for text in TEXTS:
        assert remote.tokens(text) == embedder.tokens(text)


def test_queued_batches_come_back_in_order(remote: EncoderProcess, embedder: Embedder) -> None:
    futures = [remote.submit([text]) for text in TEXTS * 3]
    got = np.vstack([future.result(timeout=60) for future in futures])
    # one text a batch on both sides: a batch's padding moves the last float bits
    assert np.array_equal(got, np.vstack([embedder.embed_documents([t]) for t in TEXTS * 3]))
    assert remote.submit([]).result(timeout=60).shape == (0, remote.dim)


def test_a_failed_batch_fails_its_caller_and_the_next_one_is_answered(
    remote: EncoderProcess, embedder: Embedder
) -> None:
    broken = remote.submit([None])  # type: ignore[list-item]  # the child cannot tokenize it
    after = remote.submit(TEXTS)
    with pytest.raises(ConfigError, match="encoder process failed"):
        broken.result(timeout=60)
    assert float(np.abs(after.result(timeout=60) - embedder.embed_documents(TEXTS)).max()) < 1e-5


def test_a_stopped_process_fails_its_callers() -> None:
    encoder = EncoderProcess(Settings(backend="onnx"))
    encoder._process.kill()
    encoder._process.join()
    with pytest.raises(ConfigError, match="stopped"):
        encoder.submit(TEXTS).result(timeout=60)
    encoder.close()


def test_a_process_that_died_a_moment_ago_fails_its_caller_as_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its pipe closes about 1 ms before is_alive() turns false: a submit in that window
    raised BrokenPipeError, which the callers' fallback (for ConfigError) let through
    (review helper 72)."""
    encoder = EncoderProcess(Settings(backend="onnx"))
    encoder._process.kill()
    encoder._process.join()
    monkeypatch.setattr(encoder._process, "is_alive", lambda: True)  # the window
    with pytest.raises(ConfigError, match="stopped"):
        encoder.submit(TEXTS)
    monkeypatch.undo()
    encoder.close()


def test_a_process_that_dies_while_loading_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child killed before it was ready (kill -9, out of memory) was an EOFError, which
    kb load showed as 'Aborted!' alone."""
    from multiprocessing.context import SpawnProcess

    start = SpawnProcess.start

    def start_then_die(process: SpawnProcess) -> None:
        start(process)
        process.kill()
        process.join()

    monkeypatch.setattr(SpawnProcess, "start", start_then_die)
    with pytest.raises(ConfigError, match=r"stopped before it was ready \(exit code -9\)"):
        EncoderProcess(Settings(backend="onnx"))


def test_torch_stays_in_process() -> None:
    with pytest.raises(ConfigError, match="ONNX"):
        EncoderProcess(Settings(backend="torch"))


def test_a_ctrl_c_to_the_process_group_leaves_the_child_to_its_parent(
    remote: EncoderProcess, embedder: Embedder
) -> None:
    """A terminal's Ctrl-C reaches the child too: it printed a traceback and hung on in its
    sender thread, so close() waited 10 s before killing it. The parent decides when it
    stops; the child goes on answering."""
    pid = remote._process.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    assert remote._process.is_alive()
    assert np.array_equal(remote.embed_documents(TEXTS), embedder.embed_documents(TEXTS))


def test_the_child_starts_with_sigint_blocked_and_the_parent_keeps_its_mask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C (to the whole process group) in the second the child's interpreter starts
    printed a KeyboardInterrupt traceback from the middle of its imports: it is started with
    SIGINT blocked (as forked, the parent thread's mask), and ignores it from `_serve` on.
    Starting multiprocessing's resource tracker unblocked SIGINT, undoing a block made
    before it."""
    from multiprocessing import util

    real = util.spawnv_passfds
    masks: list[set[int]] = []

    def spawn(*args: object) -> int:
        masks.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, set())))
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(util, "spawnv_passfds", spawn)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    process = EncoderProcess(Settings())
    try:
        assert masks  # the last is the encoder's own spawn (the first may be the tracker's)
        assert signal.SIGINT in masks[-1]
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
    finally:
        process.close()
