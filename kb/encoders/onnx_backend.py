"""The ONNX Runtime backend: the exported model, the Rust tokenizer, no torch at run time."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kb.batcher import Batcher
from kb.chunking import Tokens
from kb.config import cpu_count
from kb.embeddings import resolve_model_path
from kb.encoders.onnx_export import ensure_export
from kb.fingerprint import model_identity
from kb.memory import release_freed_memory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from onnxruntime import InferenceSession
    from tokenizers import Tokenizer

BACKENDS = ("onnx", "onnx-int8", "openvino-bf16")  # the backends this class runs


class Session(Protocol):
    """What the embedder needs of a session: ONNX Runtime's `InferenceSession`, or
    kb.encoders.openvino_session's look-alike."""

    def get_inputs(self) -> Sequence[Any]: ...

    def run(self, output_names: Any, input_feed: dict[str, np.ndarray]) -> Sequence[Any]: ...


class OnnxEmbedder:
    """Same vectors as the torch backend (within 1e-4), about twice as fast on a CPU; the
    `onnx-int8` (int8 weights) and `openvino-bf16` (OpenVINO's bfloat16 runs) backends are
    faster and approximate.

    Texts are tokenized in one call, sorted by length and batched, so a batch pads only to
    its own longest text; a batch holds at most `batch_size` texts and `batch_tokens` padded
    tokens, so long texts go in smaller batches (whose attention scores stay in the caches).
    Session runs and the tokenizers are safe to share between threads.

    With `lanes` > 1 (the default: one per core) the session runs one thread per call and the
    batches of a call go side by side, one per lane: no lane waits for another at each
    operator, so when other work takes a core (the store's writes) the lanes lose only that
    core's share, where one session of two threads stalls at every operator whose second
    thread is descheduled. A call of a few texts is split so that every lane gets some.
    Each lane's batches hold its share of `batch_tokens` (divided by `lanes`), as each thread
    of a session on every core works on its share of a batch: a one-thread run on a batch of
    the whole cap keeps less of its work in the core's caches, and takes more memory
    (bench/HISTORY.md, Batching: the alternating runs that measured both).
    """

    def __init__(
        self,
        model: str,
        *,
        cache: Path,
        backend: str = "onnx",
        batch_size: int = 64,
        batch_tokens: int = 1024,
        threads: int = 0,
        lanes: int = 1,
        spin_session: bool = True,
        lazy: bool = False,
    ) -> None:
        """`lazy`: the sessions open at the first text, not here (a command that may never
        embed, such as kb export, backup or duplicates, saves about 0.1-0.25 s and the
        sessions' memory)."""
        from tokenizers import Tokenizer

        self.name, self.path = resolve_model_path(model)
        self.fingerprint, self.former_fingerprints = model_identity(self.path, cache)
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is none of {', '.join(BACKENDS)}")
        self.backend = backend
        quantized = backend == "onnx-int8"
        self.batch_size = batch_size
        self.lanes = max(1, lanes)
        self.batch_tokens = max(64, batch_tokens // self.lanes)
        export = ensure_export(
            self.path, self.fingerprint, cache, quantized=quantized, former=self.former_fingerprints
        )
        self.tokenizer_file = export.tokenizer_file
        self.dim = int(export.meta["dim"])
        self.max_tokens = int(export.meta["max_tokens"])
        self._pad_id = int(export.meta["pad_id"])

        threads = threads or cpu_count()
        self._model_file, self._threads = export.model_file(quantized), threads
        # One text alone (a query while no other waits) runs on a second session, on every
        # core, whose threads spin briefly between the run's operators instead of sleeping
        # and being woken at each one (about 1 ms less of a 4-5 ms query run here, for 96
        # MiB). Under load, queries share runs and take the first session (its lanes, or its
        # threads, which sleep when idle and leave the cores to the server's).
        # `spin_session=False` (KB_ENCODER_SPIN_SESSION) saves the memory; then one text runs
        # on one lane.
        self._spin = spin_session and threads > 1
        self._single_wanted = self._spin  # and not released (hold_query_session)
        self._session: Session | None = None
        self._single: Session | None = None
        self._sessions_lock = threading.Lock()
        self._inputs: list[str] = []
        if not lazy:
            self._sessions()

        self._tokenizer = Tokenizer.from_file(str(export.tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        self._pieces = span_tokenizer(export.tokenizer_file)
        self._queries = Batcher(self._encode, max_items=4 * batch_size, isolate=True)
        self._lane_pool = (
            ThreadPoolExecutor(self.lanes, thread_name_prefix="kb-encoder-lane")
            if self.lanes > 1
            else None
        )

    def _sessions(self) -> Session:
        """The batch session, opened (with the one-text session, if configured) by the
        first call; later calls return it at once."""
        session = self._session
        if session is not None:
            return session
        with self._sessions_lock:
            if self._session is not None:  # opened by another thread meanwhile
                return self._session
            one_run = 1 if self.lanes > 1 else self._threads
            opened = self._open(self._model_file, one_run, spin=False, runs=self.lanes)
            self._inputs = [node.name for node in opened.get_inputs()]
            if self._single_wanted:
                self._single = self._open(self._model_file, self._threads, spin=True)
            self._session = opened
            return opened

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)

    @property
    def has_query_session(self) -> bool:
        """Whether lone texts run on the spinning session now."""
        return self._single is not None

    def hold_query_session(self, held: bool) -> None:
        """Release the spinning session (`held` false: about 110 MiB back; a lone text then
        runs as batches do), or open it again if it is configured. kb serve releases it
        while its encoder process runs (kb.encoders.bulk)."""
        with self._sessions_lock:
            self._single_wanted = held and self._spin
            if not held:
                self._single = None  # a run on it keeps it until that run ends
                release_freed_memory()
            elif self._spin and self._single is None and self._session is not None:
                self._single = self._open(self._model_file, self._threads, spin=True)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Concurrent queries share encoder runs (see Batcher)."""
        return self._queries(texts) if texts else self._encode(texts)

    def tokens(self, text: str) -> Tokens:
        return spans(self._pieces, text)

    def submit_documents(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Embed texts on the lanes behind the batches already queued there, and return at
        once. An encoder process submits each batch a load sends as it arrives, so the lanes
        go from one batch to the next without waiting at the end of each for the slowest
        lane, or for the next batch's tokenizing (done here, while the lanes run)."""
        if self._lane_pool is None:
            return _settled(self._encode, texts)
        self._sessions()
        out, ids, batches = self._plan(texts)
        future: Future[np.ndarray] = Future()
        if not batches:
            future.set_result(out)
            return future
        left = len(batches)
        lock = threading.Lock()

        def encode(rows: np.ndarray) -> None:
            nonlocal left
            if future.done():  # an earlier batch of this call failed
                return
            try:
                out[rows] = self._run([ids[row] for row in rows])
            except BaseException as exc:
                with lock:
                    if not future.done():
                        future.set_exception(exc)
                return
            with lock:
                left -= 1
                if left == 0 and not future.done():
                    future.set_result(out)

        for rows in batches:
            self._lane_pool.submit(encode, rows)
        return future

    def _open(self, model_file: Path, threads: int, *, spin: bool, runs: int = 1) -> Session:
        """A session of `threads` threads a run that takes `runs` runs at once (the lanes').
        ONNX Runtime's takes any number of runs at once; OpenVINO's gets a stream for each."""
        if self.backend == "openvino-bf16":
            from kb.encoders.openvino_session import OpenVinoSession

            return OpenVinoSession(model_file, threads=threads, streams=runs)
        return _open_session(model_file, threads, spin=spin)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        """A call of one text runs on the spinning session, if there is one; any other on
        the lanes, or on the one session's threads."""
        self._sessions()
        single = self._single
        if len(texts) == 1 and single is not None:
            return self._run(self._ids(texts), single)
        if self._lane_pool is not None:
            return self.submit_documents(texts).result()
        out, ids, batches = self._plan(texts)
        for rows in batches:
            out[rows] = self._run([ids[row] for row in rows])
        return out

    def _plan(self, texts: Sequence[str]) -> tuple[np.ndarray, list[list[int]], list[np.ndarray]]:
        """The output array, each text's token ids, and the batches of rows (by length)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out, [], []
        ids = self._ids(texts)
        lengths = [len(row) for row in ids]
        order = np.argsort(lengths, kind="stable")
        most = min(self.batch_size, -(-len(texts) // self.lanes))  # a few texts: some a lane
        return out, ids, list(token_batches(order, lengths, most, self.batch_tokens))

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]

    def _run(self, ids: list[list[int]], session: Session | None = None) -> np.ndarray:
        width = max(len(row) for row in ids)
        input_ids = np.full((len(ids), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        types = np.zeros_like(mask)
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}
        session = session or self._sessions()
        return session.run(None, {name: feeds[name] for name in self._inputs})[0]


# How long a thread of the one-text session spins for the run's next operator before it
# sleeps. At 100k documents over HTTP, in alternating runs: 1-client p50 9.5 -> 7.6 ms, p95
# 11.7 -> 10.7 ms, CPU a query unchanged; ONNX Runtime's default spin gave the same p50 but a
# p95 2-3 ms higher (a spinning thread holds a core that a woken thread then has to take
# from the run's other thread).
SPIN_US = 50


def _open_session(model_file: Path, threads: int, *, spin: bool) -> InferenceSession:
    """An ONNX Runtime session on `threads` threads. Without `spin`, a thread waiting for the
    next operator sleeps (idle threads would take the cores the server's threads need); with
    it, the threads spin up to SPIN_US between a run's operators, and not after a run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No memory pattern: ONNX Runtime would keep an allocation plan for each input shape it
    # sees (texts of every length and batch size, here), growing with the shapes seen.
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_US))
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


def _settled(
    work: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str]
) -> Future[np.ndarray]:
    """The future of work done now."""
    future: Future[np.ndarray] = Future()
    try:
        future.set_result(work(texts))
    except Exception as exc:
        future.set_exception(exc)
    return future


def span_tokenizer(path: str | Path) -> Tokenizer:
    """The model's tokenizer for character spans (`spans`): no padding, no truncation, so a
    long text's every word piece is seen (chunking needs them all)."""
    from tokenizers import Tokenizer

    pieces = Tokenizer.from_file(str(path))
    pieces.no_padding()
    pieces.no_truncation()
    return pieces


def spans(pieces: Tokenizer, text: str) -> Tokens:
    """The word pieces the model reads in `text` (no special tokens): spans and word starts."""
    encoding = pieces.encode(text, add_special_tokens=False)
    return Tokens.of(encoding.offsets, encoding.word_ids)


def token_batches(
    order: np.ndarray, lengths: Sequence[int], max_texts: int, max_tokens: int
) -> Iterator[np.ndarray]:
    """Consecutive runs of `order` (indices sorted by ascending length): each holds at most
    `max_texts` texts and, padded to its longest, at most `max_tokens` tokens (at least one
    text, however long)."""
    start = 0
    while start < len(order):
        end = start + 1
        while (
            end < len(order)
            and end - start < max_texts
            and (end - start + 1) * lengths[order[end]] <= max_tokens
        ):
            end += 1
        yield order[start:end]
        start = end
