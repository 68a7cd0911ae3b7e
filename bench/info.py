"""What a result depends on: KB_BACKEND, kb's settings, the machine and library versions."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench import RESULTS, ROOT
from bench.harness import utc_stamp

SETTINGS = (
    "backend", "model", "device", "encoder_threads", "encoder_lanes", "encoder_spin_session",
    "embed_batch_size", "embed_batch_tokens", "chunking",
    "chunk_tokens", "chunk_overlap", "search_mode", "fusion", "hybrid_depth", "hnsw_ef_search",
    "min_score", "top_k", "duplicate_score", "threads", "log_level",
)  # fmt: skip  # the ones the header prints; the results hold every setting
PACKAGES = (
    "kb", "chromadb", "onnxruntime", "openvino", "torch", "sentence-transformers",
    "transformers", "numpy", "waitress", "flask",
)  # fmt: skip
# the environment variables a result depends on: kb's settings and the thread pools' own
VARIABLES = ("KB_", "OMP_", "MKL_", "OPENBLAS_")
SECRET = re.compile(r"(KEYS?|SECRETS?|PASSWORDS?|CREDENTIALS?|_TOKEN)$", re.IGNORECASE)
SET = "<set>"  # a secret's value, which the results never hold


def kb_settings() -> dict[str, Any]:
    """KB_BACKEND as inherited and every field of kb.config.Settings() (model_dump), a
    secret's value replaced by SET (None when unset)."""
    info: dict[str, Any] = {"KB_BACKEND": os.environ.get("KB_BACKEND")}
    try:
        from kb.config import Settings

        settings = Settings()
        secret = {
            name
            for name, field in type(settings).model_fields.items()
            if "SecretStr" in str(field.annotation) or SECRET.search(name)
        }
        dumped = settings.model_dump(mode="json", exclude=secret)
        info.update(dumped)
        info.update({name: SET if getattr(settings, name) else None for name in secret})
    except Exception as exc:  # a half-edited config must not hide the figures
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def served(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings and variables (as `kb_settings` and `environment` give them) of a kb
    started with `environ`: the servers and commands the cells time run with
    `harness.kb_env`'s, which the bench's own process has not (the results said
    query_cache 1024 of servers that ran with 0; review helper 74)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        return {"settings": kb_settings(), "environment": environment()}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every KB_*, OMP_*, MKL_* and OPENBLAS_* variable (any case, as kb reads its own), a
    secret's (KB_API_KEYS, KB_API_KEY) value replaced by SET."""
    environ = os.environ if environ is None else environ
    return {
        name: SET if SECRET.search(name) else value
        for name, value in sorted(environ.items())
        if name.upper().startswith(VARIABLES)
    }


def git(root: Path = ROOT) -> dict[str, Any]:
    """HEAD's commit and whether the tree has uncommitted changes; if it has, what they are
    (`status`: git's short status lines, untracked files included; `diff`: the tracked
    files' changes against HEAD, at most DIFF_CHARS), so figures measured on a dirty tree
    can be traced to the code that gave them."""

    def run(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.rstrip("\n")  # not strip(): a status line opens with a space

    status = run("status", "--porcelain")
    found: dict[str, Any] = {"commit": run("rev-parse", "HEAD"), "dirty": bool(status)}
    if status:
        diff = run("diff", "HEAD")
        found["status"] = status.splitlines()
        found["diff"] = diff[:DIFF_CHARS]
        if len(diff) > DIFF_CHARS:
            found["diff_cut_at"] = DIFF_CHARS  # of len(diff) characters
            found["diff_chars"] = len(diff)
    return found


DIFF_CHARS = 1_000_000


def machine() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git": git(),
    }


def header(settings: dict[str, Any], box: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in box["versions"].items() if v)
    shown = ", ".join(f"{k}={settings[k]}" for k in SETTINGS if k in settings)
    return (
        f"KB_BACKEND={settings.get('KB_BACKEND') or '(unset)'}; settings: {shown}\n"
        f"machine: {box['nproc']} cores ({box['cpu']}), {box['memory_gib']} GiB, "
        f"load {box['loadavg_at_start']}, python {box['python']}\n"
        f"versions: {versions}; git {box['git']['commit'][:10]}"
        f"{' (dirty)' if box['git']['dirty'] else ''}"
    )


def write(result: dict[str, Any], path: Path | None = None) -> Path:
    """bench/results/bench-<UTC time>.json, or `path` again."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = path or RESULTS / f"bench-{utc_stamp()}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path
