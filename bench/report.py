"""The printed tables: ingest, query, memory and start-up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

LATENCY = ("p50_ms", "p95_ms", "p99_ms", "qps")
BUSY = 0.10  # other processes' CPU share from which a figure is flagged as unreliable


def warn_busy(shares: Sequence[float]) -> None:
    busy = sum(share > BUSY for share in shares)
    if busy:
        print(f"  ! {busy} of {len(shares)} rows ran while other processes used more than "
              f"{BUSY:.0%} of the CPU: their figures (and ratios) are unreliable")  # fmt: skip


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{2 if abs(value) < 10 else 1}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[fmt(v) if not isinstance(v, str) else v for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def ingest(cells: Sequence[dict[str, Any]]) -> None:
    rows = []
    for c in cells:
        load, add = c.get("kb_load", {}), c.get("post_add", {})
        rows.append(
            [c["kind"], c["docs"], _rate(c, "baseline"), _rate(c, "encoder"),
             _rate(c, "kb_load"), _ratio(load, "vs_baseline", "x"),
             _ratio(load, "vs_encoder", "%"), load.get("wall_docs_per_s"),
             _ratio(load, "wall_vs_baseline", "x"),
             _rate(c, "post_add"), _ratio(add, "vs_baseline", "x"),
             _ratio(add, "vs_encoder", "%"), _serve_rss(add),
             c.get("baseline", {}).get("over_window"), f"{c['other_cpu']:.0%}"]
        )  # fmt: skip
    headers = ["kind", "docs", "baseline/s", "encoder/s", "kb load/s", "vs base", "vs enc",
               "load wall/s", "vs base", "POST /add/s", "vs base", "vs enc", "serve MiB", ">window",
               "other"]  # fmt: skip
    table("Ingest (docs/s; targets: >= 2x baseline, >= 75% of the encoder alone)", headers, rows)
    print(
        "  baseline = SentenceTransformer.encode(batch 64) + Chroma add; encoder = kb's "
        "embed_documents alone;\n  kb load/s from the time kb prints (model load and store "
        "open excluded), load wall/s = the whole process\n  (its vs base, informational, "
        "not the issue's target: against the baseline's whole process, interpreter start, "
        "imports, model load and store open in both);\n  >window = texts longer than the "
        "model window (kb chunks them, the others truncate);\n  serve MiB = kb serve's peak RSS "
        "after the POST /add run + its child processes' (the encoder process for large adds);"
        "\n  other = the share of the machine's CPU used by processes outside the benchmark "
        "during the cell (it skews every figure)"
    )
    rounds = max(c.get("rounds", 1) for c in cells)
    if rounds > 1:
        print(
            f"  {rounds} rounds of each cell's parts in rotating order: each rate is the "
            "part's median run, each ratio the median of the ratios within a round (with an "
            "even number of rounds the lower middle one: of two, the lower)"
        )
    _bounds(cells)
    warn_busy([c["other_cpu"] for c in cells])


def _bounds(cells: Sequence[dict[str, Any]]) -> None:
    cells = [c for c in cells if "bound" in c]  # the baseline and the encoder ran
    if not cells:
        return
    rows = [
        [c["kind"], c["docs"], c["bound"]["encoder_cpu_s"], c["bound"]["add_cpu_s"],
         c["bound"]["docs_per_s"], f"{c['bound']['vs_baseline']:.2f}x",
         _ratio(c.get("kb_load", {}), "vs_bound", "%"),
         _ratio(c.get("post_add", {}), "vs_bound", "%"), f"{c['other_cpu']:.0%}"]
        for c in cells
    ]  # fmt: skip
    headers = ["kind", "docs", "encoder CPU s", "Chroma add CPU s", "bound/s", "vs base",
               "kb load", "POST /add", "other"]  # fmt: skip
    backend = cells[0].get("encoder", {}).get("backend") or "kb's"
    table(
        f"CPU bound (docs/s no pipeline with kb's encoder, {backend}, and this store can pass "
        "here)",
        headers,
        rows,
    )
    print(
        f"  bound = docs x {cells[0]['bound']['cores']} cores / (the encoder alone's CPU + the "
        "baseline's Chroma add CPU): every core busy, nothing but kb's encoder (as measured "
        "here: one call, the corpus sorted by length) and the store;\n  another encoder or "
        "runtime has another bound; other = the CPU share other processes took in the cell;"
        "\n  vs base = the highest ratio to the baseline possible in this run; kb load and "
        "POST /add = their rates as a share of the bound (medians of the ratios within a round)"
    )


def _rate(cell: dict[str, Any], part: str) -> float | None:
    return cell[part]["docs_per_s"] if part in cell else None


def _ratio(way: dict[str, Any], key: str, unit: str) -> str:
    """A ratio as 1.23x or 45.6% (a tenth, so 74.8% is not shown as 75%); '-' when a part it
    compares was not run."""
    if key not in way:
        return "-"
    return f"{way[key]:.2f}x" if unit == "x" else f"{way[key]:.1%}"


def _serve_rss(add: dict[str, Any]) -> str:
    if "peak_rss_mib" not in add:
        return "-"
    return f"{add['peak_rss_mib']:,.0f} + {add.get('children_peak_rss_mib', 0):,.0f}"


def _stop(result: dict[str, Any]) -> str:
    start = result.get("cold_start", {})
    if "stop_s" not in start:
        return "-"
    return f"{start['stop_s']:.2f}" + (" (loading)" if start["stop_while_loading"] else " (ready)")


def query(results: Sequence[dict[str, Any]]) -> None:
    rows = []
    for r in (r for r in results if "cells" in r):
        for cell in r["cells"]:
            base = r["baseline"][cell["filter"]]
            single = cell["clients"] == 1
            both = single and cell["p50_ms"] and base.get("p50_ms")  # none if all failed
            ratio = f"{base['p50_ms'] / cell['p50_ms']:.2f}x" if both else "-" if single else ""
            head = [r["docs"], cell["filter"]]
            cpu = [f"{cell['server_cores']:.2f}", f"{cell['server_cpu_ms_per_query']:.1f}"]
            rows.append([*head, "kb", cell["clients"], *(cell[k] for k in LATENCY),
                         cell["errors"], ratio, *cpu, f"{cell['other_cpu']:.0%}"])  # fmt: skip
            if single:
                rows.append([*head, "baseline", 1, *(base[k] for k in LATENCY), 0, "", "", "",
                             f"{base['other_cpu']:.0%}"])  # fmt: skip
    if rows:
        headers = ["docs", "filter", "who", "clients", "p50 ms", "p95 ms", "p99 ms", "q/s",
                   "errors", "base p50/kb p50", "server cores", "cpu ms/q", "other"]  # fmt: skip
        mode = results[0]["mode"] or "KB_SEARCH_MODE's"
        table(f"Query over loopback HTTP (top_k 5, {mode} mode)", headers, rows)
        print(
            "  baseline = SentenceTransformer.encode + Chroma query(n_results=5) in one process, "
            "no HTTP;\n  filters: selective = one category (~1/8 of docs), broad = 2 of 3 "
            "difficulties (~2/3), varied = 12 of 50 authors, another set on every query (~1/4;\n"
            "  the others repeat one filter, whose mask kb keeps until the next write), text = "
            "$contains 'the' (~3/5);\n  server cores / cpu ms/q = "
            "CPU kb serve used during the cell (all threads), in cores and per answered query;"
            "\n  errors = failed requests and 200 answers of another shape or with fewer than "
            "5 matches though the threshold rejected none"
        )
        warn_busy([c["other_cpu"] for r in results for c in [*r["cells"], *r["baseline"].values()]
                   if isinstance(c, dict)])  # fmt: skip
    rows = [
        [r["docs"], r.get("cold_start", {}).get("median_s"),
         r.get("cold_start", {}).get("ready_median_s"),
         _serve_rss(r.get("memory_after_load", {})),
         r.get("cold_start", {}).get("peak_rss_mib_after_first_query"), _stop(r)]
        for r in results
    ]  # fmt: skip
    headers = ["docs", "cold start s (median of 3)", "ready s",
               "peak RSS MiB after query load (+ children)",
               "peak RSS MiB after 1st query", "SIGTERM to exit s"]  # fmt: skip
    table(
        "Memory and start-up (cold start: spawning kb serve to its first answer, the ONNX "
        "export cached and the store in the page cache; ready: to /health saying ready, the "
        "in-memory copies loaded; SIGTERM sent at the first answer)",
        headers,
        rows,
    )
