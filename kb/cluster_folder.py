"""The folder of kb cluster's Chroma server (kb cluster --path): held while the cluster runs
(the embedded store's lock), marked as the server's (CLUSTER_MARK, which an embedded store
then refuses), and never an embedded store's folder (review helper 91)."""

from __future__ import annotations

from pathlib import Path

from kb import chroma_file
from kb.chroma_file import CHROMA_FILE
from kb.errors import ConfigError
from kb.lock import CLUSTER_MARK, StoreLock, StoreLocked


def claim(data: Path, port: int) -> StoreLock:
    """`data` held for kb cluster's Chroma server (release the lock when it stops), and
    marked as its folder (CLUSTER_MARK), which an embedded store then refuses. A folder kb
    holds (kb serve, kb load, another kb cluster) or that holds kb's embedded store is
    refused: kb cluster took no lock, ran a second Chroma on the chroma.sqlite3 kb serve had
    open, and wrote past an embedded store's copies, whose searches then missed what it had
    written (review helper 91)."""
    try:
        lock = StoreLock(data, cluster=True)
    except StoreLocked as exc:
        raise ConfigError(
            f"{data} (--path) is open in {exc.holder} (kb serve, kb load or another kb "
            "cluster): stop that process first"
        ) from None
    try:
        if not (data / CLUSTER_MARK).exists() and (sign := _embedded_store(data)):
            raise ConfigError(
                f"{data} (--path) holds kb's embedded store ({sign}), which a Chroma server "
                "would write past its keyword index: to serve its data with kb cluster, run "
                f"`KB_CHROMA_PATH={data} kb backup kb.jsonl.gz`, start kb cluster on another "
                f"--path, then `KB_CHROMA_URL=http://127.0.0.1:{port} kb restore kb.jsonl.gz`"
            )
        (data / CLUSTER_MARK).write_text(MARK_TEXT, encoding="utf-8")
    except BaseException:
        lock.release()
        raise
    return lock


def unclaim(data: Path, lock: StoreLock) -> None:
    """kb cluster stops without its Chroma server having started: `data` is let go, and not
    left marked as the server's folder unless it holds the server's data (the mark was
    left, and the folder, which never held Chroma's data, was refused as an embedded store
    and by make reset-db until it was removed by hand: review helper 98)."""
    if not (data / CHROMA_FILE).exists():
        (data / CLUSTER_MARK).unlink(missing_ok=True)
    lock.release()


MARK_TEXT = (
    "This folder holds the data of kb cluster's Chroma server (kb cluster --path). kb refuses\n"
    "to open it as an embedded store (KB_CHROMA_PATH): go through kb cluster instead.\n"
)


def _embedded_store(data: Path) -> str | None:
    """What shows kb's embedded store in `data` (None: nothing): the keyword index it keeps
    beside Chroma's data, or a collection carrying its write generation (kb.replica), which
    only an embedded store's writes set."""
    for index in sorted(data.glob("*.keyword.sqlite3")):
        return index.name
    found = chroma_file.query(data, GENERATION_QUERY, (GENERATION_KEY,))
    return f"its collection '{found[0][0]}' in {CHROMA_FILE}" if found else None


GENERATION_KEY = "kb_generation"  # kb.replica's, not imported: it loads numpy's threads
GENERATION_QUERY = (
    "SELECT c.name FROM collections c JOIN collection_metadata m ON m.collection_id = c.id "
    "WHERE m.key = ? LIMIT 1"
)
