"""The ONNX encoder in a child process, for bulk loads.

Chroma's add, upsert and delete keep the GIL for the whole write (about a second per 1,024
short records here; `get` and `query` release it), so an encoder in the loading process
cannot start its next batch while the store writes. In a process of its own it keeps going:
the loader sends it each batch's texts as soon as the batch is planned and collects the
vectors when the batch is due to be written. Same model, same code, same vectors.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import threading
from collections import deque
from concurrent.futures import Future
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np

from kb.encoders.onnx_backend import BACKENDS as ONNX_BACKENDS
from kb.encoders.onnx_backend import span_tokenizer, spans
from kb.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kb.chunking import Tokens
    from kb.config import Settings

READY_SECONDS = 300.0  # the first start exports the model
BACKENDS = frozenset(ONNX_BACKENDS)  # the backends a child process runs: OnnxEmbedder's


def wanted(settings: Settings, backend: str) -> bool:
    """Whether large adds may embed in an encoder process: it runs `backend`, and
    KB_ENCODER_PROCESS_MIN_TEXTS is not 0 (which switches it off)."""
    return settings.encoder_process_min_texts > 0 and backend in BACKENDS


def _serve(options: dict[str, Any], conn: Connection) -> None:
    """The child: load the encoder, say what it is, then embed each batch sent. Batches are
    queued on the encoder's lanes as they arrive (`submit_documents`), so the lanes never wait
    between two batches; a thread sends the vectors back in the order the batches came."""
    from kb.config import Settings
    from kb.embeddings import identity, load_embedder

    # A Ctrl-C reaches the whole process group: the parent decides what stops (it finishes
    # the writes under way and says so), then closes this process. Interrupted here, the
    # child printed a traceback and its sender thread kept it alive until close() killed it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent
    try:
        encoder = load_embedder(Settings.model_validate(options), bulk=True)
        tokenizer = str(encoder.tokenizer_file)  # type: ignore[attr-defined]
        conn.send(("ready", identity(encoder), tokenizer))
    except BaseException as exc:  # the parent raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}", None))
        return
    answers: queue.SimpleQueue[Future[np.ndarray] | None] = queue.SimpleQueue()
    sender = threading.Thread(target=_answer, args=(answers, conn), name="kb-encoder-out")
    sender.start()
    while True:
        try:
            texts = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            texts = None
        if texts is None:  # done (or no one to answer): send what is queued, then go
            answers.put(None)
            sender.join()
            _exit_now()
        try:
            answer = encoder.submit_documents(texts)  # type: ignore[attr-defined]
        except Exception as exc:  # its tokenizing failed
            answer = Future()
            answer.set_exception(exc)
        answers.put(answer)


def _answer(answers: queue.SimpleQueue[Future[np.ndarray] | None], conn: Connection) -> None:
    """Send each batch's vectors, or its failure, in order; stop at None."""
    while (future := answers.get()) is not None:
        reply: tuple[str, np.ndarray | str, None]
        try:
            reply = ("ok", future.result(), None)
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}", None)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):  # the parent is gone
            return


def _exit_now() -> None:
    """Exit without the interpreter's teardown of ONNX Runtime (150 ms that a load waited
    for). multiprocessing's own finalizers still run: they release the semaphores libraries
    made here (tqdm's lock, when a first run exported the model in this process), which the
    resource tracker would otherwise report as leaked."""
    from multiprocessing import util

    util._run_finalizers()  # type: ignore[attr-defined]  # what a normal exit runs (no public name)
    os._exit(0)


class EncoderProcess:
    """An Embedder whose documents are embedded by a child process (`submit` queues a batch
    and returns at once); token offsets for chunking come from the same tokenizer, here."""

    def __init__(self, settings: Settings) -> None:
        if settings.backend not in BACKENDS:
            raise ConfigError("an encoder process runs the ONNX backends only")
        options = settings.model_dump(
            include={"model", "backend", "onnx_cache", "encoder_threads", "encoder_lanes"}
            | {"embed_batch_size", "embed_batch_tokens"},
            mode="json",
        )
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(options, child), name="kb-encoder", daemon=True
        )
        # started with SIGINT blocked, which the child inherits until `_serve` ignores it: a
        # Ctrl-C (the whole process group) in the second its interpreter starts printed a
        # KeyboardInterrupt traceback from the middle of its imports. Here it stays pending
        # and is handled as soon as the start returns. (multiprocessing's resource tracker
        # is started first: starting it unblocks SIGINT, which undid the block.)
        resource_tracker.ensure_running()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.close()
        if not self._conn.poll(READY_SECONDS):
            self.close()
            raise ConfigError("the encoder process did not start")
        try:
            status, fields, tokenizer = self._conn.recv()
        except (EOFError, OSError) as exc:  # it died (killed, out of memory) while loading
            self.close()
            message = (
                "the encoder process stopped before it was ready "
                f"(exit code {self._process.exitcode}); any messages it printed are above"
            )
            raise ConfigError(message) from exc
        if status != "ready":
            self.close()
            raise ConfigError(f"the encoder process failed to start: {fields}")
        self.name, self.backend, self.dim = fields["name"], fields["backend"], fields["dim"]
        self.fingerprint, self.max_tokens = fields["fingerprint"], fields["max_tokens"]
        self.former_fingerprints = fields["former_fingerprints"]
        self._pieces = span_tokenizer(tokenizer)
        self._waiting: deque[Future[np.ndarray]] = deque()  # answers come back in order
        self._sending = threading.Lock()
        self._receiver = threading.Thread(target=self._receive, name="kb-encoder-in", daemon=True)
        self._receiver.start()

    def submit(self, texts: Sequence[str]) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        with self._sending:
            if not self._process.is_alive():
                raise ConfigError("the encoder process has stopped")
            self._waiting.append(future)
            try:
                self._conn.send(list(texts))
            except OSError as exc:  # it died after is_alive: the pipe closes ~1 ms earlier
                # (a BrokenPipeError got past the callers' fallback, which takes ConfigError)
                raise ConfigError("the encoder process has stopped") from exc
        return future

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.submit(texts).result()

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_documents(texts)

    def tokens(self, text: str) -> Tokens:
        return spans(self._pieces, text)

    def _receive(self) -> None:
        while True:
            try:
                status, payload, _ = self._conn.recv()
            except (EOFError, OSError):  # the child is gone: fail whoever still waits
                while self._waiting:
                    self._waiting.popleft().set_exception(ConfigError("the encoder stopped"))
                return
            future = self._waiting.popleft()
            if status == "ok":
                future.set_result(payload)
            else:
                future.set_exception(ConfigError(f"the encoder process failed: {payload}"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=10)  # reaped: no zombie left behind
        self._conn.close()
