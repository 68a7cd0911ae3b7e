"""kb.memory: the malloc arena limit kb serve sets, and returning freed memory."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from kb import memory
from kb.cli import main

pytestmark = pytest.mark.skipif(memory._glibc() is None, reason="glibc's malloc only")

# Eight threads allocate at once, then glibc's malloc_stats lists its arenas (on stderr).
THREADS = textwrap.dedent(
    """
    import ctypes, sys, threading
    from kb.memory import limit_malloc_arenas
    if sys.argv[1] != "default":
        assert limit_malloc_arenas(int(sys.argv[1]))
    start, held = threading.Barrier(8), []
    def work():
        start.wait()
        held.append([bytes(4096) for _ in range(200)])
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    ctypes.CDLL("libc.so.6").malloc_stats()
    """
)


def arenas(limit: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", THREADS, limit], capture_output=True, text=True, check=True
    )
    return len(re.findall(r"^Arena \d+:", run.stderr, re.MULTILINE))


def test_threads_share_the_arenas_the_limit_allows() -> None:
    assert arenas("default") > 2  # without it, threads get arenas of their own
    assert arenas("2") <= 2
    assert arenas("1") == 1


def test_zero_leaves_the_default() -> None:
    assert memory.limit_malloc_arenas(0) is False


# 200 MB of 4 kB blocks, every 50th kept: free pages between kept ones stay resident until
# malloc_trim gives them back. Prints the RSS in MiB before and after.
TRIM = textwrap.dedent(
    """
    from kb.memory import release_freed_memory
    def rss():
        line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS"))
        return int(line.split()[1]) / 1024
    blocks = [bytes(4096) for _ in range(50_000)]
    kept = blocks[::50]
    del blocks
    before = rss()
    release_freed_memory()
    print(before, rss())
    """
)


def test_release_freed_memory_gives_free_pages_back() -> None:
    run = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True, check=True)
    before, after = map(float, run.stdout.split())
    assert before - after > 100  # MiB


@pytest.mark.parametrize(("env", "expected"), [({}, 2), ({"KB_MALLOC_ARENAS": "0"}, 0)])
def test_kb_serve_limits_arenas_before_serving(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: int
) -> None:
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr("kb.cli.serve.limit_malloc_arenas", lambda n: calls.append(("limit", n)))
    monkeypatch.setattr("kb.cli.serve._waitress", lambda s: calls.append(("serve", None)))
    result = CliRunner().invoke(main, ["serve", "--port", "1"], env=env)
    assert result.exit_code == 0, result.output
    assert calls == [("limit", expected), ("serve", None)]
