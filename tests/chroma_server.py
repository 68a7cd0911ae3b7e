"""A real Chroma server (`chroma run`) on a free loopback port, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kb import chroma_process
from kb.errors import StoreUnavailable
from tests.live import PORT_TRIES, free_port


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a Chroma server for this session; each test uses its own collection."""
    root = tmp_path_factory.mktemp("chroma-server")
    log = root / "chroma.log"
    for tries_left in reversed(range(PORT_TRIES)):
        # free_port() lets its port go before Chroma binds it: another process may take it
        # meanwhile (Chroma then says so and exits); that is no fault of kb's, try another
        port, logged = free_port(), log.stat().st_size if log.exists() else 0
        try:
            server = chroma_process.start(root / "data", port, log)
            break
        except StoreUnavailable as exc:
            said = log.read_bytes()[logged:].decode(errors="replace") + exc.message
            taken = ("port is taken", f"127.0.0.1:{port} is not available")
            if tries_left and any(sign in said for sign in taken):
                continue
            raise
    yield f"http://127.0.0.1:{port}"
    chroma_process.stop(server)
