"""A real Chroma server (`chroma run`) on a free loopback port, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kb import chroma_process
from tests.live import free_port


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a Chroma server for this session; each test uses its own collection."""
    root = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    server = chroma_process.start(root / "data", port, root / "chroma.log")
    yield f"http://127.0.0.1:{port}"
    chroma_process.stop(server)
