"""The issue's targets, checked against one run's figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.report import table

FULL_SIZE = 100_000
RSS_LIMIT_MIB = 1.5e9 / 2**20  # the 1.5 GB


def evaluate(ingest: list[dict[str, Any]], query: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def check(
        name: str,
        value: float | None,
        target: str,
        ok: Callable[[float], bool],
        applies: bool = True,
        bound: float | None = None,
    ) -> None:
        passed = None if value is None else ok(value)
        found.append(
            {"check": name, "value": value, "target": target, "ok": passed, "binding": applies}
            | ({"bound": bound} if bound is not None else {})
        )

    for c in ingest:
        for way, label in (("kb_load", "kb load"), ("post_add", "POST /add")):
            if way not in c:  # not run (python -m bench --parts)
                continue
            where = f"{label} {c['kind']} {c['docs']}"
            # the most this run allowed (bench.ingest._bound), when the parts it needs ran
            bound = c["bound"]["vs_baseline"] if "bound" in c else None
            check(
                f"{where} vs baseline",
                c[way].get("vs_baseline"),
                ">= 2x",
                lambda v: v >= 2,
                bound=bound,
            )
            if "wall_vs_baseline" in c[way]:  # the whole command, set-up in both
                check(
                    f"{where} whole process vs baseline's",
                    c[way]["wall_vs_baseline"],
                    ">= 2x",
                    lambda v: v >= 2,
                )
            # in percent, so 74.8 is not shown as a missed 0.75
            share = c[way].get("vs_encoder")
            check(
                f"{where} vs encoder, %",
                None if share is None else 100 * share,
                ">= 75",
                lambda v: v >= 75,
            )
    for r in query:
        binding = r["docs"] >= FULL_SIZE
        if "memory_after_load" in r:
            check(
                f"{r['docs']} docs: kb serve peak RSS MiB after the query load",
                r["memory_after_load"]["peak_rss_mib"],
                f"<= {RSS_LIMIT_MIB:,.0f}",
                lambda v: v <= RSS_LIMIT_MIB,
                binding,
            )
        if "cold_start" in r:
            check(
                f"{r['docs']} docs: cold start s",
                r["cold_start"]["median_s"],
                "<= 5",
                lambda v: v <= 5,
                binding,
            )
        for cell in r.get("cells", []):
            where = f"{r['docs']} docs, filter {cell['filter']}, {cell['clients']} clients"
            if cell["clients"] == 1:
                limit = 10.0 if cell["filter"] == "none" else 25.0
                check(
                    f"{where}: p50 ms",
                    cell["p50_ms"],
                    f"<= {limit:g}",
                    lambda v, limit=limit: v <= limit,
                    binding,
                )
            if cell["clients"] == 16:
                check(f"{where}: q/s", cell["qps"], ">= 150", lambda v: v >= 150)
                check(f"{where}: errors", cell["errors"], "= 0", lambda v: v == 0)
    return found


def show(found: list[dict[str, Any]]) -> None:
    def verdict(c: dict[str, Any]) -> str:
        if c["ok"] is None:
            return "n/a"
        text = "ok" if c["ok"] else "MISSED"
        if "bound" in c:
            text += f" (at most {c['bound']:.2f}x here)"
        return text if c["binding"] else f"{text} (target is for 100k)"

    rows = [[c["check"], c["value"], c["target"], verdict(c)] for c in found]
    table("Targets", ["check", "measured", "target", "verdict"], rows)
