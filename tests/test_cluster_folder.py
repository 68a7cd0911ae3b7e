"""The folder of `kb cluster`'s Chroma server (kb.cluster_folder): held while the cluster
runs, never an embedded store's folder, and refused as one afterwards (review helper 91)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb.cluster_folder import GENERATION_KEY, claim, unclaim
from kb.config import Settings
from kb.embeddings import Embedder
from kb.errors import ConfigError
from kb.lock import CLUSTER_MARK, ClusterFolder, StoreLock
from kb.replica import GENERATION_KEY as REPLICAS_KEY
from kb.schemas import DocumentIn
from kb.store import KnowledgeStore

PORT = 8001


def embedded_store(folder: Path, embedder: Embedder) -> None:
    """An embedded store holding one document, closed."""
    store = KnowledgeStore.open(Settings(chroma_path=folder), embedder)
    store.add([DocumentIn(id="moraine", text="Moraines mark where a glacier stopped.")])
    store.close()


def test_an_embedded_store_is_refused_and_left_as_it_was(tmp_path: Path, embedder) -> None:
    """kb cluster ran a Chroma server on it: what it wrote never reached the store's keyword
    index, whose searches then missed it when the store was opened embedded again."""
    folder = tmp_path / "db"
    embedded_store(folder, embedder)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ConfigError) as refused:
        claim(folder, PORT)
    said = refused.value.message
    assert said.startswith(
        f"{folder} (--path) holds kb's embedded store (knowledge_base.keyword.sqlite3)"
    )
    assert f"KB_CHROMA_PATH={folder} kb backup kb.jsonl.gz" in said
    assert f"KB_CHROMA_URL=http://127.0.0.1:{PORT} kb restore kb.jsonl.gz" in said
    # without its keyword index, by the write generation its collection carries
    (folder / "knowledge_base.keyword.sqlite3").unlink()
    with pytest.raises(ConfigError, match=r"its collection 'knowledge_base' in chroma\.sqlite3"):
        claim(folder, PORT)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        set(before) - {"knowledge_base.keyword.sqlite3"}
    )
    StoreLock(folder).release()  # not left held
    assert GENERATION_KEY == REPLICAS_KEY


def test_a_folder_kb_holds_is_refused(tmp_path: Path) -> None:
    """As kb serve holds an embedded store; kb cluster ran a second Chroma on its database."""
    held = StoreLock(tmp_path / "db")
    try:
        with pytest.raises(ConfigError, match=r"\(--path\) is open in pid \d+ \(kb serve"):
            claim(tmp_path / "db", PORT)
    finally:
        held.release()
    assert not (tmp_path / "db" / CLUSTER_MARK).exists()


def test_a_cluster_folder_is_held_and_then_refused_as_an_embedded_store(
    tmp_path: Path, embedder
) -> None:
    folder = tmp_path / "chroma"
    held = claim(folder, PORT)
    try:
        with pytest.raises(ConfigError, match="is open in pid"):
            claim(folder, PORT)  # another kb cluster
    finally:
        held.release()
    claim(folder, PORT).release()  # its own folder again, once free
    with pytest.raises(ClusterFolder) as refused:
        KnowledgeStore.open(Settings(chroma_path=folder), embedder)
    assert refused.value.message.startswith(
        f"{folder} (KB_CHROMA_PATH) holds the data of kb cluster's Chroma server (it has "
        f"{CLUSTER_MARK}), not an embedded store: run `kb cluster --path {folder}`"
    )
    assert sorted(p.name for p in folder.iterdir()) == [CLUSTER_MARK, ".kb.lock"]


def test_an_older_clusters_folder_and_other_chroma_data_are_taken(tmp_path: Path) -> None:
    """A folder kb cluster used before it marked its folders holds no kb_generation."""
    folder = tmp_path / "chroma"
    folder.mkdir()
    (folder / "chroma.sqlite3").write_bytes(b"not a database")
    (folder / "chroma.log").write_text("")
    claim(folder, PORT).release()
    assert (folder / CLUSTER_MARK).exists()


def test_a_folder_whose_chroma_never_started_is_not_left_marked(tmp_path: Path) -> None:
    """The mark was left when the server failed to start (its port taken): the folder, which
    never held Chroma's data, was then refused as an embedded store (review helper 98)."""
    empty, used = tmp_path / "empty", tmp_path / "used"
    unclaim(empty, claim(empty, PORT))
    assert not (empty / CLUSTER_MARK).exists()
    StoreLock(empty).release()  # an embedded store may use it
    used.mkdir()
    (used / "chroma.sqlite3").write_bytes(b"")  # the server's data, from an earlier run
    unclaim(used, claim(used, PORT))
    assert (used / CLUSTER_MARK).exists()
    with pytest.raises(ClusterFolder):
        StoreLock(used)
