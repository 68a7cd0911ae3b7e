"""Where a query's time goes: `kb serve` under py-spy while clients send queries.

python -m bench.profile [--docs 100000] [--filter none|selective|broad] [--clients 4]
                        [--seconds 20] [--mode hybrid]

Uses the query benchmark's cached store (built with kb load if missing), samples the server
with py-spy (`pip install py-spy`), and prints the share of samples by frame: kb's own
functions (inclusive) and the leaves where the CPU was (self).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import RESULTS
from bench.corpus import FILTERS
from bench.harness import Server, scratch
from bench.query import bodies, load, store_for

PY_SPY = Path(sys.executable).with_name("py-spy")
IDLE = (
    "wait (threading.py", "select (", "accept (", "_worker (", "handler_thread (",
    "dequeue (logging",  # the log writer waiting for lines
)  # fmt: skip


def summarize(raw: Path, top: int = 25) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or any(idle in stack.rsplit(";", 1)[-1] for idle in IDLE):
            continue  # threads waiting for work, a lock or a socket
        frames = stack.split(";")
        total += int(count)
        leaves[frames[-1]] += int(count)
        for frame in dict.fromkeys(f for f in frames if "/kb/" in f or "(kb/" in f):
            inclusive[frame] += int(count)
    print(f"\n{total} busy samples")
    for title, counter in (("kb functions (inclusive)", inclusive), ("leaves (self)", leaves)):
        print(f"\n{title}")
        for frame, count in counter.most_common(top):
            print(f"  {count / total:6.1%}  {frame[:150]}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--filter", choices=list(FILTERS), default="none")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mode", default=None)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds before sampling")
    args = parser.parse_args(argv)
    py_spy = str(PY_SPY) if PY_SPY.exists() else shutil.which("py-spy")
    if py_spy is None:
        print("needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    store, _ = store_for(args.docs)
    out = RESULTS / f"profile-{args.docs}-{args.filter}-{args.mode or 'default'}.txt"
    with scratch() as work, Server(store, work / "serve.log") as server:
        server.wait("POST", "/query", bodies(args.filter, args.mode)[0])
        time.sleep(args.settle)  # the mirror loads in the background after start
        spy = [py_spy, "record", "--format", "raw", "--rate", str(args.rate)]
        spy += ["--duration", str(int(args.seconds)), "-o", str(out), "--pid"]
        sampler = subprocess.Popen([*spy, str(server.proc.pid)], stdout=subprocess.DEVNULL)
        result = load(server, bodies(args.filter, args.mode), args.clients, args.seconds)
        print(f"{args.clients} clients: p50 {result['p50_ms']} ms, {result['qps']:.0f} q/s")
        sampler.wait(timeout=120)
    summarize(out)
    print(f"\nstacks in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
