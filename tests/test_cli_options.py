"""The kb command line's option values and destinations: what is refused before any work."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kb.cli import main
from kb.config import Settings
from kb.schemas import DocumentIn
from kb.store import KnowledgeStore


@pytest.fixture
def env(tmp_path: Path, embedder) -> dict[str, str]:
    """A store of its own holding two documents."""
    env = {"KB_CHROMA_PATH": str(tmp_path / "db"), "KB_COLLECTION": "cli_options"}
    settings = Settings(chroma_path=tmp_path / "db", collection="cli_options")
    store = KnowledgeStore.open(settings, embedder, searching=False)
    store.add([DocumentIn(id="a", text="Alpha document"), DocumentIn(id="b", text="Beta")])
    store.close()
    return env


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".kb.lock"
    }


def test_a_destination_inside_the_store_is_refused_and_the_store_kept(
    env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "db"
    before = digest(db)
    (tmp_path / "link").symlink_to(db)
    (tmp_path / "evalset").mkdir()
    for args in (
        ["backup", str(db / "chroma.sqlite3")],  # renamed over the store's own file, exit 0
        ["export", "-o", str(db / "chroma.sqlite3")],
        ["export", "-o", str(tmp_path / "link" / "new.jsonl")],  # through a link
        # a path under /proc (or /dev: a store on /dev/shm) was taken for a device and
        # written into in place (review helper 98)
        ["backup", f"/proc/self/root{db}/chroma.sqlite3"],
        ["eval", str(tmp_path / "evalset"), "--json", str(db / "figures.json")],
    ):
        result = run(env, *args)
        assert result.exit_code == 2, (args, result.output)
        assert f"is inside the store's folder {db} (KB_CHROMA_PATH)" in result.output
    assert digest(db) == before
    assert not (db / "new.jsonl").exists()
    # beside the store, not in it: written
    assert run(env, "backup", str(tmp_path / "kb.gz")).exit_code == 0
    assert run(env, "export", "-o", str(tmp_path / "dbx.jsonl")).exit_code == 0
    assert len((tmp_path / "dbx.jsonl").read_text().splitlines()) == 2


def test_a_damaged_chroma_file_is_one_line_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    (db / "chroma.sqlite3").write_bytes(b"garbage\n")
    result = run({"KB_CHROMA_PATH": str(db)}, "export")
    assert result.exit_code == 1
    assert result.output.splitlines() == [  # a traceback of 59 lines
        f"Error: cannot open the store's {db / 'chroma.sqlite3'}: error returned from "
        "database: (code: 26) file is not a database"
    ]
    assert (db / "chroma.sqlite3").read_bytes() == b"garbage\n"


def test_an_empty_where_or_json_is_a_usage_error(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "subset.jsonl"
    for value in ("", "  "):  # `--where "$FILTER"` with FILTER unset exported everything
        result = run(env, "export", "--where", value, "-o", str(out))
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--where': must not be empty" in result.output
    assert not out.exists()
    (tmp_path / "evalset").mkdir()
    result = run(env, "eval", str(tmp_path / "evalset"), "--json", "")  # wrote no file, exit 0
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--json': an empty path names no file" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--where", "{bad"], "'--where': not valid JSON: Expecting property name"),
        (["export", "--where", "[]"], "'--where': must be a JSON object (got an array)"),
        (["export", "--where", '{"n": {"$oops": 1}}'], "'--where': where.n.$oops"),
        (["load", "-", "--url", "ftp://127.0.0.1:1"], "'--url': 'ftp://127.0.0.1:1' is not a"),
        (["backup", "-", "--url", "http://127.0.0.1:99999"], "'--url': 'http://127.0.0.1:99999'"),
    ],
)
def test_a_bad_where_or_url_is_a_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    """README: a bad option value is a usage error, exit 2; these exited 1, as a failure."""
    result = run({"KB_CHROMA_PATH": str(tmp_path / "db")}, *args)
    assert result.exit_code == 2, result.output
    assert f"Error: Invalid value for {message}" in result.output
    assert not (tmp_path / "db").exists()  # refused before the store is opened


def kb_process(env: dict[str, str], *args: str, **popen: Any) -> subprocess.Popen[str]:
    """`kb ARGS` in a process of its own (real standard streams)."""
    return subprocess.Popen(
        [sys.executable, "-m", "kb", *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        text=True,
        **popen,
    )


def test_calibrate_and_eval_with_a_stdout_that_cannot_be_written_say_one_line(
    tmp_path: Path,
) -> None:
    """`kb calibrate > /dev/full` and `kb eval > /dev/full` ended in an OSError traceback."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"a": "A cat sat on the mat.", "b": "A cat was on the mat.", "label": 1})
        + "\n"
        + json.dumps({"a": "A cat sat on the mat.", "b": "Taxes are due in April.", "label": 0})
        + "\n"
    )
    (tmp_path / "eval").mkdir()
    query = {"id": "q1", "query": "cat", "relevant": ["c"]}
    (tmp_path / "eval" / "queries.jsonl").write_text(json.dumps(query) + "\n")
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "docs.jsonl").write_text('{"id": "c", "text": "A cat on a mat."}\n')
    env = {"KB_CHROMA_PATH": str(tmp_path / "db")}
    for args in (["calibrate", "--pairs", str(pairs)], ["eval", str(tmp_path / "eval")]):
        with open("/dev/full", "w") as full:
            done = kb_process(env, *args, stdout=full, stderr=subprocess.PIPE)
            _, err = done.communicate(timeout=300)
        assert done.returncode == 1, err
        assert err.strip().splitlines() == [
            "Error: cannot write standard output: No space left on device"
        ]


@pytest.mark.parametrize("value", ["nan", "-NaN", "inf"])
def test_a_score_or_precision_that_is_not_a_number_in_range_is_refused(
    tmp_path: Path, value: str
) -> None:
    """NaN passed click.FloatRange (every comparison with it is false): `kb duplicates
    --min-score nan` found no group, exit 0, and `kb calibrate --precision nan` recommended."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("")
    env = {"KB_CHROMA_PATH": str(tmp_path / "db")}
    for args in (
        ["duplicates", "--min-score", value],
        ["calibrate", "--pairs", str(pairs), "--precision", value],
    ):
        result = run(env, *args)
        assert result.exit_code == 2, result.output
        assert f"Invalid value for '{args[-2]}': " in result.output
        assert "is not a number" in result.output or "is not in the range" in result.output


@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_chroma_url_is_one_line_and_touches_no_store(tmp_path: Path, empty: str) -> None:
    """`KB_CHROMA_URL=$URL` with URL unset was taken as unset: kb load wrote to the embedded
    store (KB_CHROMA_PATH) without a word, where an empty KB_CHROMA_PATH is refused (review
    helper 91)."""
    source = tmp_path / "docs.jsonl"
    source.write_text('{"text": "a note"}\n')
    env = {"KB_CHROMA_URL": empty, "KB_CHROMA_PATH": str(tmp_path / "db")}
    for args in (["load", str(source)], ["export"]):
        result = run(env, *args)
        assert result.exit_code == 1, result.output
        assert result.output.splitlines() == [
            "Error: KB_CHROMA_URL: must not be empty (unset it for the embedded store, "
            "KB_CHROMA_PATH)"
        ]
    assert not (tmp_path / "db").exists()
