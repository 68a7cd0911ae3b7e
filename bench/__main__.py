"""python -m bench [--full] [--sizes N ...] [--query-sizes N ...] [--only SECTION] [--duration S]
[--repeat N] [--parts PART ...]

Every measurement that loads a model or opens a store runs in its own process on a fresh store
under /tmp (the query stores are kept in bench/results/stores/ and reused). One JSON per run
goes to bench/results/.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench import checks, info, ingest, query, report
from bench.corpus import CORPUS_VERSION, KINDS, fingerprint
from bench.harness import NOTES, served_as

SECTIONS = ("ingest", "query", "startup")
FULL = 100_000


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="add the 100k-document cells")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1000, 10_000],
        help="ingest sizes (default 1000 10000)",
    )
    parser.add_argument(
        "--query-sizes",
        type=int,
        nargs="+",
        default=[10_000],
        help="query/start-up store sizes (default 10000)",
    )
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=ingest.PARTS,
        default=list(ingest.PARTS),
        help="ingest: the parts of each cell to run (default all; ratios and the CPU bound "
        "need the parts they compare)",
    )
    parser.add_argument("--only", action="append", choices=SECTIONS, help="repeatable")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per query cell")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--mode",
        choices=["dense", "keyword", "hybrid"],
        default=None,
        help="send this search mode (default: none sent, kb's KB_SEARCH_MODE)",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild the kept query stores (they are rebuilt anyway when bench.query."
        "STORE_FORMAT or the corpus changed; a store built by another commit is reused, with a "
        "warning)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="ingest: rounds of each cell's parts, in rotating order; medians are reported",
    )
    args = parser.parse_args(argv)
    if args.full:
        args.sizes = sorted({*args.sizes, FULL})
        args.query_sizes = sorted({*args.query_sizes, FULL})
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    sections = set(args.only or SECTIONS)
    command = shlex.join([sys.executable, "-m", "bench", *argv])
    settings, machine = info.kb_settings(), info.machine()
    print(f"$ {command}\n{info.header(settings, machine)}", flush=True)
    result: dict[str, Any] = {
        "command": command,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "arguments": vars(args),
        "corpus_version": CORPUS_VERSION,
        "corpus_sha256": fingerprint(),
        "settings": settings,  # every setting of kb.config.Settings, secrets left out
        "environment": info.environment(),  # KB_*, OMP_*, MKL_*, OPENBLAS_*
        "served": served_as(),  # the same, as the kb processes the cells time read them
        "machine": machine,
    }
    started = time.perf_counter()
    try:
        if "ingest" in sections:
            result["ingest"] = ingest.run(args.kinds, args.sizes, args.repeat, args.parts)
        if sections & {"query", "startup"}:
            result["query"] = query.run(
                args.query_sizes, args.clients, args.duration, args.mode, sections, args.rebuild
            )
    finally:
        result["seconds"] = time.perf_counter() - started
        result["notes"] = NOTES
        path = info.write(result)
    if result.get("ingest"):
        report.ingest(result["ingest"])
    if result.get("query"):
        report.query(result["query"])
        for built in (r["build"] for r in result["query"]):
            if "warning" in built:
                print(f"\n  ! {built['warning']}")
    result["checks"] = checks.evaluate(result.get("ingest", []), result.get("query", []))
    checks.show(result["checks"])
    info.write(result, path)
    for source, lines in NOTES.items():
        print(f"\nwarnings/errors printed by {source} (times seen):")
        print("\n".join(f"  {count:>5}  {line}" for line, count in list(lines.items())[:10]))
    print(f"\n{result['seconds']:.0f} s; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
