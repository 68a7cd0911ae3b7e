"""Approximate nearest neighbours over the mirror's rows: an inverted-file index (FAISS IVF).

The stored vectors are normalized, so an inner product is the cosine score. k-means splits the
rows into `nlist` lists (about 4 sqrt(n)); a search scores the centroids, then every vector of
the `nprobe` nearest lists, with the GIL released. The lists hold the vectors as 8-bit codes
(a quarter of float32's memory and bandwidth), so the index only nominates candidates, a few
times more than asked for, and the mirror ranks them by their exact cosine scores.

A metadata filter is a bitmap of the rows it allows: the probed lists are scanned for those
rows only, and the fewer rows a filter allows, the more lists are probed (`probes`), so a
filtered search finds about as many true neighbours as an unfiltered one.
`python -m bench.recall` measures recall against exact search.

Searches run concurrently; adding and removing rows waits for them and holds new ones off.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kb.cpu import Cpu, cpu_info
from kb.rwlock import ReadWriteLock

if TYPE_CHECKING:
    from kb.config import Settings

TRAIN_POINTS_PER_LIST = 40  # k-means runs on a sample of this many rows a list (FAISS asks 39)
OVERSAMPLE = 2  # candidates per wanted row, re-ranked exactly (8-bit codes misorder near ties)
MIN_EXTRA = 16
KMEANS_ITERATIONS = 10
CODE_TRAIN_ROWS = 16_384  # about this many rows' residuals set the 8-bit codes' ranges
ADD_BLOCK = 16_384  # rows copied and added at a time
SEED = 1234  # the same rows give the same lists: searches are reproducible
CORETYPE = "OPENBLAS_CORETYPE"
# SkylakeX's kernels need these (AVX-512 foundation, conflict detection, byte/word,
# doubleword/quadword and vector-length extensions)
SKYLAKEX_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


@dataclass(frozen=True)
class AnnConfig:
    """From how many rows the index is used, and how many lists a search probes."""

    min_rows: int = 20_000
    nprobe: int = 128

    @classmethod
    def of(cls, settings: Settings) -> AnnConfig:
        return cls(min_rows=settings.ann_min_rows, nprobe=settings.ann_nprobe)


def list_count(rows: int) -> int:
    """Lists for an index over this many rows: FAISS's rule of thumb, 4 sqrt(n), but never
    fewer than the 39 rows per list k-means wants to train on."""
    return max(1, min(65_536, round(4 * math.sqrt(rows)), rows // 39))


def training_sample(rows: int) -> np.ndarray:
    """Which of `rows` rows (by position, ascending) the lists of an index over them are
    trained on: TRAIN_POINTS_PER_LIST a list, picked with a fixed seed, or every row."""
    wanted = TRAIN_POINTS_PER_LIST * list_count(rows)
    if rows <= wanted:
        return np.arange(rows)
    return np.sort(np.random.default_rng(SEED).choice(rows, wanted, replace=False))


@dataclass(frozen=True)
class Lists:
    """An empty IVF index, trained (its lists and its 8-bit codes' ranges) for `rows` rows."""

    index: Any
    rows: int

    def suits(self, rows: int) -> bool:
        """Whether these lists are sized for an index over this many rows (a build trains
        anew past twice the rows, so these would be replaced at once)."""
        return self.rows / 2 < rows < 2 * self.rows


def train(sample: np.ndarray, rows: int) -> Lists:
    """Lists for an index over `rows` rows, trained on `sample`, their vectors at
    `training_sample(rows)` (on the calling thread, with the GIL released)."""
    faiss = _one_thread()
    dim, nlist = sample.shape[1], list_count(rows)
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
    )  # fmt: skip
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = SEED
    # The lists (k-means on the sample, into the quantizer), then the 8-bit codes' ranges
    # from the residuals of part of the sample (FAISS's train skips a trained quantizer): its
    # train alone would hold the whole sample's residuals beside the sample, 74 MiB more at
    # 100k rows, during kb serve's start-up, where its memory peaks.
    clustering = faiss.Clustering(dim, nlist, index.cp)
    clustering.train(np.ascontiguousarray(sample, dtype=np.float32), index.quantizer)
    codes = sample[:: max(1, len(sample) // CODE_TRAIN_ROWS)]
    index.train(np.ascontiguousarray(codes, dtype=np.float32))
    return Lists(index, rows)


def _one_thread() -> Any:
    """FAISS, set to one OpenMP thread for the calling thread's calls (the setting is per
    thread): a build shares the 2 cores with requests, or with the mirror's load at
    start-up. Searches run one query each, which FAISS does not split across threads."""
    faiss = _faiss()
    faiss.omp_set_num_threads(1)
    return faiss


def openblas_core(cpu: Cpu) -> str | None:
    """The OpenBLAS kernels to name (OPENBLAS_CORETYPE) for this CPU: SkylakeX's on an Intel
    CPU with AVX-512, else None (OpenBLAS's own detection). FAISS's wheel bundles OpenBLAS
    0.3.15, which takes Intel models newer than it for a Prescott and runs SSE3 kernels: on
    an Emerald Rapids guest (family 6, model 207) its k-means for the IVF lists ran at 23
    GFLOPS, at 108 with SkylakeX's (2026-12-07, `faiss.knn` of 20,000 rows against 1,265).
    AMD CPUs are left to it (on the AMD machines of 2026-12 `ready` at 100k, which waits
    for the index, took 11 s, against 32-37 s on two Intel guests)."""
    if cpu.vendor == "GenuineIntel" and cpu.flags >= SKYLAKEX_FLAGS:
        return "SKYLAKEX"
    return None


def _faiss() -> Any:
    """FAISS, its bundled OpenBLAS told its kernels where its own detection picks slow ones
    (`openblas_core`; k-means and adds run on BLAS). OPENBLAS_CORETYPE, read as the library
    loads, is in the environment for the import alone: numpy's OpenBLAS, loaded already,
    never sees it, and a child process only if another thread starts one in those
    milliseconds (it then runs kernels this CPU has). One the caller set is left as it is."""
    loaded = sys.modules.get("faiss")
    if loaded is not None:
        return loaded
    core = None if CORETYPE in os.environ else openblas_core(cpu_info())
    if core is not None:
        os.environ[CORETYPE] = core
    try:
        import faiss
    finally:
        if core is not None:
            os.environ.pop(CORETYPE, None)
    return faiss


class AnnIndex:
    """An IVF index of 8-bit codes whose ids are the mirror's row numbers."""

    def __init__(self, index: Any, nprobe: int, trained_rows: int) -> None:
        self._index = index
        self.nlist = int(index.nlist)
        self.nprobe = min(nprobe, self.nlist)
        self.trained_rows = trained_rows  # rows the lists were trained on
        self._lock = ReadWriteLock()

    @classmethod
    def build(
        cls, vectors: np.ndarray, rows: np.ndarray, nprobe: int, lists: Lists | None = None
    ) -> AnnIndex:
        """Add these rows of `vectors` to `lists` (trained here, on a sample of the rows, when
        not given), a block at a time: the whole matrix is never copied."""
        if lists is None:
            lists = train(vectors[rows[training_sample(len(rows))]], len(rows))
        _one_thread()
        index = lists.index
        for start in range(0, len(rows), ADD_BLOCK):
            part = rows[start : start + ADD_BLOCK]
            index.add_with_ids(np.ascontiguousarray(vectors[part], dtype=np.float32), part)
        return cls(index, nprobe, lists.rows)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if len(rows):
            data = np.ascontiguousarray(vectors, dtype=np.float32)
            with self._lock.writing():
                self._index.add_with_ids(data, np.asarray(rows, dtype=np.int64))

    def remove(self, rows: np.ndarray) -> None:
        if len(rows):
            with self._lock.writing():
                self._index.remove_ids(np.asarray(rows, dtype=np.int64))

    def probes(self, share: float) -> int:
        """Lists to probe for a filter allowing this share of the rows: as many allowed rows
        as an unfiltered search scans."""
        if share <= 0:
            return self.nlist
        return min(self.nlist, math.ceil(self.nprobe / min(share, 1.0)))

    def scanned(self, share: float) -> int:
        """About how many vectors a search scores (centroids included)."""
        return self.nlist + math.ceil(len(self) * self.probes(share) / self.nlist)

    def candidates(
        self, vector: np.ndarray, n: int, allowed: np.ndarray | None = None, available: int = -1
    ) -> np.ndarray:
        """Rows likely to be among the n nearest, about best first: a few times n of them, or
        every row there is. `allowed` is a bitmap (np.packbits, little bit order) of the rows a
        filter lets through, `available` how many it allows; probed lists holding too few of
        them are followed by more lists, up to all of them."""
        faiss = _faiss()
        total = len(self) if available < 0 else available
        asked = n * OVERSAMPLE + MIN_EXTRA
        want = min(n, total)
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        selector = None
        if allowed is not None:
            # n is the bitmap's size in bytes: FAISS selects an id iff id // 8 < n and its bit
            # is set, so rows past the bitmap (added since the filter's mask) are left out
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(allowed))
        nprobe = self.probes(total / max(len(self), 1))
        while True:
            params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)  # type: ignore[call-arg]  # SWIG
            with self._lock.reading():
                _, rows = self._index.search(query, asked, params=params)
            found = rows[0][rows[0] >= 0]
            if len(found) >= want or nprobe >= self.nlist:
                return found
            nprobe = min(self.nlist, nprobe * 4)
