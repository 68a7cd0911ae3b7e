"""Two kb serve configurations side by side, in alternating query cells:

    python -m bench.ab --a KB_X=1 --b KB_X=0 [--docs 100000] [--rounds 4] [--seconds 6]
        [--cell none:1 --cell broad:1 --cell none:16]

Each side is a `kb serve` on its own copy of the query benchmark's cached store of `--docs`
short documents, started with its KB_* variables (none: the defaults); both run at once and
wait for `ready`. A round runs every cell (`filter:clients`, filters as in the query
benchmark) on both sides back to back, the side going first alternating between rounds, so
the machine's drifts (other tenants, the caches) fall on both alike: compare within a pair,
not across runs. Prints each cell and the medians per side; writes bench/results/ab-<utc>.json.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from bench import info
from bench.corpus import CORPUS_VERSION, FILTERS, documents, fingerprint
from bench.harness import Server, save_results, scratch, served_as, utc_stamp
from bench.query import bodies, check_answers, fewest, load, searched, store_for
from kb.config import ENV_PREFIX, unknown_variables

FIGURES = ("p50_ms", "p95_ms", "qps", "server_cpu_ms_per_query", "errors")


def variables(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE arguments as an environment; keys must be kb's settings."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith(ENV_PREFIX):
            raise SystemExit(f"expected KB_NAME=VALUE, got {pair!r}")
        env[key] = value
    if unknown := unknown_variables(env):  # a misspelt side would measure the defaults
        raise SystemExit("; ".join(unknown))
    return env


def cell(text: str) -> tuple[str, int]:
    name, _, clients = text.partition(":")
    if name not in FILTERS or not clients.isdigit() or int(clients) < 1:
        raise argparse.ArgumentTypeError(f"expected FILTER:CLIENTS, FILTER one of {list(FILTERS)}")
    return name, int(clients)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--a", nargs="*", default=[], metavar="KB_NAME=VALUE")
    parser.add_argument("--b", nargs="*", default=[], metavar="KB_NAME=VALUE")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--cell", type=cell, action="append", dest="cells")
    args = parser.parse_args(argv)
    sides = {"a": variables(args.a), "b": variables(args.b)}
    settings, machine = info.kb_settings(), info.machine()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    print(info.header(settings, machine), flush=True)
    cells = args.cells or [("none", 1), ("broad", 1), ("none", 16)]
    source, built = store_for(args.docs)
    docs = documents("short", args.docs)
    runs: list[dict[str, Any]] = []
    with scratch("kb-bench-ab-") as work, ExitStack() as stack:
        servers = {}
        for side, env in sides.items():
            shutil.copytree(source, work / side)
            servers[side] = stack.enter_context(Server(work / side, work / f"{side}.log", env=env))
        least = {side: fewest(searched(None, env)) for side, env in sides.items()}
        for side, server in servers.items():
            server.wait_ready()
            # warms up; a side whose answers break a filter, or are short, stops here
            check_answers(server, None, docs, least[side])
        del docs
        for round_ in range(args.rounds):
            order = ["a", "b"] if round_ % 2 == 0 else ["b", "a"]
            for filter_name, clients in cells:
                payloads = bodies(filter_name, None)
                for side in order:
                    out = load(servers[side], payloads, clients, args.seconds, least=least[side])
                    runs.append(
                        {
                            "round": round_,
                            "side": side,
                            "filter": filter_name,
                            "clients": clients,
                            **{k: out[k] for k in FIGURES},
                            "error_kinds": out["error_kinds"],
                            "other_cpu": out["other_cpu"],
                        }
                    )
                    print(
                        f"round {round_} {side}  {filter_name:>9} x{clients:<2} "
                        f"p50 {out['p50_ms']} ms  p95 {out['p95_ms']} ms  "
                        f"{out['qps']:.1f} q/s  {out['server_cpu_ms_per_query']:.2f} "
                        f"CPU-ms/q  errors {out['errors']}",
                        flush=True,
                    )
    print(
        f"\nmedians of {args.rounds} rounds; a = {sides['a'] or 'defaults'}, "
        f"b = {sides['b'] or 'defaults'}"
    )
    for filter_name, clients in cells:
        for side in sides:
            mine = [
                r
                for r in runs
                if (r["side"], r["filter"], r["clients"]) == (side, filter_name, clients)
            ]
            p50, p95, qps, cpu = (statistics.median(r[k] for r in mine) for k in FIGURES[:4])
            print(
                f"{side}  {filter_name:>9} x{clients:<2} p50 {p50:.2f} ms  p95 {p95:.2f} ms  "
                f"{qps:.1f} q/s  {cpu:.2f} CPU-ms/q  errors {sum(r['errors'] for r in mine)}"
            )
    save_results(
        f"ab-{utc_stamp()}",
        {
            "command": shlex.join([sys.executable, "-m", "bench.ab", *argv]),
            "sides": sides,
            "docs": args.docs,
            "started": started,
            # what both sides share; each side's KB_* above go on top of it
            "settings": settings,
            "environment": info.environment(),
            "served": served_as(),  # as the servers read them, before each side's KB_*
            "machine": machine,  # its git: commit and dirty flag
            "corpus_version": CORPUS_VERSION,
            "corpus_sha256": fingerprint(),
            "store": built,
            "runs": runs,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
