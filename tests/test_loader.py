"""The loader's formats: JSONL, JSON, CSV, Markdown/text folders; problems with line numbers."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kb import front_matter
from kb.config import Settings
from kb.filters import date_twins
from kb.loader import (
    FRONT_MATTER_CHARS,
    Item,
    Options,
    Problem,
    Source,
    estimate,
    once,
    read,
    sources,
)
from kb.schemas import DocumentIn

OPTIONS = Options(Settings())


def read_all(path: Path, fmt: str | None = None, **options: str) -> list[Item | Problem]:
    opts = Options(Settings(), **options) if options else OPTIONS
    return [entry for source in sources([str(path)], fmt) for entry in read(source, opts)]


def test_csv_text_column_and_typed_metadata(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text(
        "id,body,stars,ratio,author,empty\n"
        'n1,"First note, with a comma",4,0.5,Ada,\n'
        'n2,"A note\nover two lines",5,1e-3,Ben,\n'
        ",Third note,x,2,Chen,\n"
    )
    entries = read_all(path, text_column="body")
    assert all(isinstance(e, Item) for e in entries)
    docs = [e.doc for e in entries]  # type: ignore[union-attr]
    assert docs[0].id == "n1"
    assert docs[0].text == "First note, with a comma"
    assert docs[0].metadata == {"stars": 4, "ratio": 0.5, "author": "Ada"}
    assert docs[1].text == "A note\nover two lines"
    assert docs[2].id is None
    assert docs[2].metadata == {"stars": "x", "ratio": 2, "author": "Chen"}
    assert [e.line for e in entries] == [2, 3, 5]


def csv_metadata(tmp_path: Path, content: str) -> list[Any]:
    """Each row's metadata, of a CSV file holding `content`."""
    path = tmp_path / "rows.csv"
    path.write_text(content)
    return [entry.doc.metadata for entry in read_all(path)]  # type: ignore[union-attr]


def test_csv_cells_become_numbers_only_when_spelt_as_json_numbers(tmp_path: Path) -> None:
    first, second = csv_metadata(
        tmp_path,
        "text,author,zip,count,big,score,tiny,huge,spaced,plus\n"
        "A note,Nan,02134,1_000,12345678901234567890,-2.5e3,-0,1e999, 7,+5\n"
        "Another,Inf,0,-12,9223372036854775807,0.25,1E-2,Infinity,7 ,5\n",
    )
    assert first == {
        "author": "Nan",
        "zip": "02134",
        "count": "1_000",
        "big": "12345678901234567890",
        "score": -2500.0,
        "tiny": 0,
        "huge": "1e999",
        "spaced": " 7",
        "plus": "+5",
    }
    assert second == {
        "author": "Inf",
        "zip": 0,
        "count": -12,
        "big": 2**63 - 1,
        "score": 0.25,
        "tiny": 0.01,
        "huge": "Infinity",
        "spaced": "7 ",
        "plus": 5,
    }


def test_a_quoted_csv_cell_stays_text_and_true_false_are_booleans(tmp_path: Path) -> None:
    """csv.reader does not say which cells were quoted: "1.10" was stored as 1.1 and "12345"
    as a number; and true stayed text, where JSON and front matter give a boolean."""
    first, second = csv_metadata(
        tmp_path,
        "text,version,zip,flag,quoted_flag,note\n"
        'A,"1.10","12345",true,"true","say ""hi"", twice"\n'
        '"B, quoted text",1.10,12345,false,"a\nb",3\n',
    )
    assert first == {
        "version": "1.10",
        "zip": "12345",
        "flag": True,
        "quoted_flag": "true",
        "note": 'say "hi", twice',
    }
    assert second == {"version": 1.1, "zip": 12345, "flag": False, "quoted_flag": "a\nb", "note": 3}


def test_a_csv_cell_of_thousands_of_digits_stays_text(tmp_path: Path) -> None:
    """int() refuses more than 4,300 digits: such a cell stopped the whole load with a
    traceback (review helper 26). Beyond 64 bits it is text, as a 20-digit one was."""
    digits = "7" * 5000
    content = f"text,n,low\nA note,{digits},-{2**63}\nAnother,-{digits},1\n"
    first, second = csv_metadata(tmp_path, content)
    assert first == {"n": digits, "low": -(2**63)}
    assert second == {"n": f"-{digits}", "low": 1}


def test_csv_without_the_text_column_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n")
    (problem,) = read_all(path)
    assert isinstance(problem, Problem)
    assert "no 'text' column" in str(problem)


def test_an_id_column_named_must_be_in_the_header(tmp_path: Path) -> None:
    """`--id-column docid` for a doc_id column loaded every row under an id derived from its
    text, silently, and a corrected load then stored each row again (review helper 81). The
    id column not named, "id", is used only if the header has it."""
    path = tmp_path / "papers.csv"
    path.write_text("doc_id,text,lang\nA-1,first abstract,en\nA-2,second abstract,fr\n")
    (problem,) = read_all(path, id_column="docid")
    assert str(problem) == f"{path}:1: no 'docid' column (columns: doc_id, text, lang)"
    (problem,) = read_all(path, id_column="id")  # named, even as the default's name
    assert str(problem) == f"{path}:1: no 'id' column (columns: doc_id, text, lang)"
    named = [e.doc for e in read_all(path, id_column="doc_id")]  # type: ignore[union-attr]
    assert [(d.id, d.metadata) for d in named] == [("A-1", {"lang": "en"}), ("A-2", {"lang": "fr"})]
    derived = [e.doc for e in read_all(path)]  # type: ignore[union-attr]
    assert [(d.id, d.metadata) for d in derived] == [
        (None, {"doc_id": "A-1", "lang": "en"}),
        (None, {"doc_id": "A-2", "lang": "fr"}),
    ]


def test_csv_row_problems_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("text,n\nfine,1\n,2\nok,3,extra\n")
    entries = read_all(path)
    assert isinstance(entries[0], Item)
    assert str(entries[1]).startswith(f"{path}:3: text:")
    assert str(entries[2]) == f"{path}:4: more fields than the header has columns"


def test_markdown_folder_front_matter_and_relative_ids(tmp_path: Path) -> None:
    root = tmp_path / "notes"
    (root / "ml").mkdir(parents=True)
    (root / "ml" / "intro.md").write_text(
        "---\ntitle: Intro\ndate: 2024-03-01\ntags: [ml, basics]\n---\n\n# Intro\nBody text.\n"
    )
    (root / "plain.txt").write_text("Just text.\n")
    (root / "custom.md").write_text("---\nid: my-id\n---\nCustom id.\n")
    (root / "broken.md").write_text("---\ntitle: [unclosed\n---\nText\n")
    entries = {e.source.split("notes/")[-1]: e for e in read_all(root)}
    intro = entries["ml/intro.md"]
    assert isinstance(intro, Item)
    assert intro.doc.id == "ml/intro.md"
    assert intro.doc.text == "# Intro\nBody text.\n"
    assert intro.doc.metadata == {"title": "Intro", "date": "2024-03-01", "tags": ["ml", "basics"]}
    assert entries["plain.txt"].doc.id == "plain.txt"  # type: ignore[union-attr]
    assert entries["custom.md"].doc.id == "my-id"  # type: ignore[union-attr]
    assert str(entries["broken.md"]).endswith(
        "broken.md:3: front matter: invalid YAML: expected ',' or ']', but got '<stream end>'"
    )


def test_json_array_and_documents_object(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('[{"text": "one"}, {"text": ""}]')
    (tmp_path / "b.json").write_text('{"documents": [{"text": "two"}]}')
    entries = read_all(tmp_path / "a.json") + read_all(tmp_path / "b.json")
    assert [isinstance(e, Item) for e in entries] == [True, False, True]
    # the item's place in the array: citing it as a line pointed at the wrong line
    assert "a.json item 2: text: text must not be empty" in str(entries[1])


def test_unreadable_and_non_utf8_files_are_problems(tmp_path: Path) -> None:
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    (latin,) = read_all(tmp_path / "latin1.jsonl")
    assert "not UTF-8" in str(latin)
    (missing,) = read_all(tmp_path / "missing.jsonl")
    assert "cannot read" in str(missing)


def test_estimate_counts_records_when_cheap(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "1"}\n\n{"text": "2"}\n')
    (tmp_path / "b.csv").write_text("text\nx\ny\n")
    (tmp_path / "c.md").write_text("doc")
    assert estimate(sources([str(tmp_path)])) == 5
    assert estimate([Source("-", "jsonl")]) is None


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "md"])
def test_format_flag_overrides_the_suffix(tmp_path: Path, fmt: str) -> None:
    content = {
        "jsonl": '{"text": "x"}\n',
        "json": '[{"text": "x"}]',
        "csv": "text\nx\n",
        "md": "x",
    }[fmt]
    path = tmp_path / "data.dat"
    path.write_text(content)
    (item,) = read_all(path, fmt)
    assert isinstance(item, Item)
    assert item.doc.text.strip() == "x"


def test_a_key_given_twice_is_a_problem_of_its_record(tmp_path: Path) -> None:
    """json.loads keeps the last value: the first text was dropped, silently."""
    lines = ['{"id": "one", "text": "first", "text": "second"}', '{"id": "two", "text": "ok"}']
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    twice, two = read_all(tmp_path / "docs.jsonl")
    assert str(twice) == (
        f"{tmp_path / 'docs.jsonl'}:1: not valid JSON: key 'text' is given twice in one object"
    )
    assert two.doc.id == "two"  # type: ignore[union-attr]
    (tmp_path / "docs.json").write_text('{"documents": [{"text": "a"}], "documents": []}')
    (whole,) = read_all(tmp_path / "docs.json")
    assert str(whole) == (
        f"{tmp_path / 'docs.json'}:1: invalid JSON: key 'documents' is given twice in one object"
    )


def test_a_key_given_twice_in_a_json_array_is_a_problem_of_its_item(tmp_path: Path) -> None:
    """It refused the whole file at file:1, its good items unread (JSON lines said the line
    and loaded the rest; review helper 81)."""
    path = tmp_path / "docs.json"
    path.write_text(
        '[\n{"id": "a1", "text": "first"},\n{"id": "a2", "text": "second", "text": "edited"},'
        '\n{"id": "a3", "text": "third", "metadata": {"k": 1, "k": 2}},\n{"id": "a4", "text": '
        '"fourth"}\n]\n'
    )
    first, second, third, fourth = read_all(path)
    assert str(second) == f"{path} item 2: record: key 'text' is given twice in one object"
    assert str(third) == f"{path} item 3: metadata: key 'k' is given twice in one object"
    assert [first.doc.id, fourth.doc.id] == ["a1", "a4"]  # type: ignore[union-attr]
    (tmp_path / "wrapped.json").write_text('{"documents": [{"text": "a", "id": "x", "id": "y"}]}')
    (item,) = read_all(tmp_path / "wrapped.json")
    assert str(item).endswith("wrapped.json item 1: record: key 'id' is given twice in one object")


def test_lone_surrogates_and_deep_nesting_are_problems_of_their_record(tmp_path: Path) -> None:
    """json.loads takes "\\ud800" (the tokenizer then failed the whole load) and recurses once
    per level (thousands of brackets were a RecursionError)."""
    lines = [
        '{"id": "one", "text": "fine"}',
        '{"id": "two", "text": "x \\ud800"}',
        '{"id": "three", "text": "ok", "metadata": {"k": ["v", "\\udc00"]}}',
        "[" * 5000 + "]" * 5000,
        '{"id": "four", "text": "ok \\ud83d\\ude00"}',  # a pair is one character: fine
    ]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    one, two, three, deep, four = read_all(tmp_path / "docs.jsonl")
    assert [one.doc.id, four.doc.text] == ["one", "ok \U0001f600"]  # type: ignore[union-attr]
    assert str(two) == (
        f"{tmp_path / 'docs.jsonl'}:2: text: holds a lone UTF-16 surrogate (\\ud800), "
        "which is not a character"
    )
    assert "docs.jsonl:3: metadata.k.1: holds a lone UTF-16 surrogate" in str(three)
    assert "docs.jsonl:4: not valid JSON: nests arrays and objects deeper than" in str(deep)
    (tmp_path / "note.md").write_text('---\ntitle: "x\\ud800"\n---\nBody\n')
    (front,) = read_all(tmp_path / "note.md")
    assert "note.md:1: metadata.title: holds a lone UTF-16 surrogate" in str(front)


def test_csv_unclosed_quote_is_a_problem_at_the_row_it_opens_in(tmp_path: Path) -> None:
    """The quote swallowed every later row into one record, and the load said nothing."""
    path = tmp_path / "q.csv"
    path.write_text(
        'id,text,cat\nr0,fine,a\nr1,"He said ""hi"" then,a\nr2,second row text,b\nr3,third,c\n'
    )
    good, problem = read_all(path)
    assert isinstance(good, Item)
    assert good.doc.id == "r0"
    assert str(problem) == (
        f"{path}:3: a quoted field opened in this row is never closed; the rest of the file "
        "is not read"
    )


def test_csv_cell_longer_than_csvs_own_limit_loads(tmp_path: Path) -> None:
    """A 140k-character text (under KB_MAX_TEXT_CHARS) raised _csv.Error: nothing loaded."""
    path = tmp_path / "long.csv"
    path.write_text(f"id,text\nlong,{'x' * 140_000}\nshort,ok\n")
    long, short = read_all(path)
    assert isinstance(long, Item)
    assert len(long.doc.text) == 140_000
    assert isinstance(short, Item)
    path.write_text(f"id,text\nfine,ok\nhuge,{'x' * (csv.field_size_limit() + 1)}\nlater,ok\n")
    fine, huge = read_all(path)
    assert isinstance(fine, Item)
    assert str(huge).startswith(f"{path}:3: a cell is longer than ")


def test_csv_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text("id,text\nq1,ok one\n\nq2,\n")
    _, problem = read_all(path)
    assert str(problem).startswith(f"{path}:4: text:")  # it said 3


def test_a_byte_that_is_not_utf8_fails_its_line_only(tmp_path: Path) -> None:
    """The whole file was dropped, reported as line 0."""
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"text": "one"}\n{"text": "caf\xe9"}\n{"text": "three"}\n')
    one, bad, three = read_all(path)
    assert str(bad) == f"{path}:2: not UTF-8 text: byte 0xe9"
    assert isinstance(one, Item)
    assert isinstance(three, Item)
    csv_path = tmp_path / "u.csv"
    csv_path.write_bytes(b"id,text\na,caf\xe9\nb,fine\n")
    bad, fine = read_all(csv_path)
    assert str(bad) == f"{csv_path}:2: not UTF-8 text: byte 0xe9"
    assert isinstance(fine, Item)
    md = tmp_path / "u.md"
    md.write_bytes(b"---\ntitle: x\n---\nline\nbad \xff\n")
    (problem,) = read_all(md)
    assert str(problem) == f"{md}:5: not UTF-8 text: byte 0xff"


def test_a_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    """The CSV's id column became the metadata key "\\ufeffid"; front matter was text."""
    bom = "\ufeff"
    (tmp_path / "b.csv").write_text(f"{bom}id,text,cat\nr1,hello,a\n")
    (tmp_path / "b.md").write_text(f"{bom}---\ntitle: T\n---\nBody\n")
    (tmp_path / "b.jsonl").write_text(f'{bom}{{"id": "j", "text": "x"}}\n')
    row, record, note = (e.doc for e in read_all(tmp_path))  # type: ignore[union-attr]
    assert (row.id, row.metadata) == ("r1", {"cat": "a"})
    assert (note.text, note.metadata) == ("Body\n", {"title": "T"})
    assert record.id == "j"


@pytest.mark.parametrize("header", ["id,text,tag,tag", "id,text,,"])
def test_csv_columns_that_would_lose_cells_are_reported(tmp_path: Path, header: str) -> None:
    """Only the last of two 'tag' columns was kept; a cell under no name was dropped."""
    path = tmp_path / "d.csv"
    path.write_text(f"{header}\nr1,hello,one,two\n")
    (problem,) = read_all(path)
    expected = (
        f"{path}:1: column names repeated in the header: tag"
        if "tag" in header
        else f"{path}:2: a value in column 3, which the header leaves unnamed"
    )
    assert str(problem) == expected


def test_csv_unnamed_empty_columns_are_harmless(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,text,\nr1,hello,\n")
    (item,) = read_all(path)
    assert isinstance(item, Item)
    assert item.doc.metadata is None


@pytest.mark.parametrize(
    "content",
    [
        "---\r\ntitle: T\r\n---\r\nBody\r\n",
        "---  \ntitle: T\n---\t\nBody\r\n",
        "---\rtitle: T\r---\rBody\r\n",  # an old Mac's lone CR: the front matter was text
    ],
)
def test_front_matter_delimiters_are_whole_lines_lf_crlf_or_cr(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "n.md"
    path.write_bytes(content.encode())
    (item,) = read_all(path)
    assert (item.doc.metadata, item.doc.text) == ({"title": "T"}, "Body\r\n")  # type: ignore[union-attr]


def test_empty_front_matter_and_a_longer_dash_line(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_text("---\n---\nBody\n")
    (tmp_path / "dash.md").write_text("---\ntitle: T\nnote: |\n  ----\n  x\n---\nBody\n")
    dash, empty = (e.doc for e in read_all(tmp_path))  # type: ignore[union-attr]
    assert (empty.text, empty.metadata) == ("Body\n", None)
    assert (dash.text, dash.metadata) == ("Body\n", {"title": "T", "note": "----\nx\n"})


def test_front_matter_values_stay_as_written_unless_plainly_typed(tmp_path: Path) -> None:
    """YAML 1.1 made 02134 octal 1116, 12:30 the number 750, NO false, null: None; numbers
    follow JSON's spelling as in CSV cells (a number metadata cannot hold stays text: the
    whole document was refused), and a quoted one stays text."""
    (tmp_path / "y.md").write_text(
        "---\nzip: 02134\ntime: 12:30\ncountry: NO\nversion: '1.10'\nnull: x\nyes: on\n"
        "draft: false\ncount: 12\nratio: 0.25\nbig: 1e3\nwhen: 2024-03-01\n"
        "tags: [a, 07, b]\nprice: 2.50\nisbn: 97803064061570000000\nhuge: 1e999\n---\nBody\n"
    )
    (item,) = read_all(tmp_path / "y.md")
    assert item.doc.metadata == {  # type: ignore[union-attr]
        "zip": "02134",
        "time": "12:30",
        "country": "NO",
        "version": "1.10",
        "null": "x",
        "yes": "on",
        "draft": False,
        "count": 12,
        "ratio": 0.25,
        "big": 1000.0,
        "when": "2024-03-01",
        "tags": ["a", "07", "b"],
        "price": 2.5,
        "isbn": "97803064061570000000",
        "huge": "1e999",
    }


def test_root_gives_a_file_named_alone_the_id_its_folders_load_gives(tmp_path: Path) -> None:
    """notes/sub/s.md was "sub/s.md" loaded with its folder but "s.md" named alone: the same
    file stored twice. --root names the folder ids are relative to."""
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "s.md").write_text("Body\n")
    (tmp_path / "elsewhere.md").write_text("Other\n")
    opts = Options(Settings())

    def ids(paths: list[str], root_dir: Path | None) -> list[str]:
        found = sources(paths, None, root_dir)
        return [str(e.doc.id if isinstance(e, Item) else e) for s in found for e in read(s, opts)]

    assert ids([str(root)], None) == ["sub/s.md"]
    assert ids([str(root / "sub" / "s.md")], None) == ["s.md"]
    assert ids([str(root / "sub" / "s.md")], root) == ["sub/s.md"]
    assert ids([str(root / "sub")], root) == ["sub/s.md"]
    (outside,) = ids([str(tmp_path / "elsewhere.md")], root)
    assert outside.endswith(f"elsewhere.md:1: not inside the --root folder {root}: no id for it")


def test_front_matter_yaml_cannot_build_is_one_problem_and_the_folder_loads(
    tmp_path: Path,
) -> None:
    """A ValueError (PyYAML's 2024-02-30, `!!int x`) or a RecursionError (an alias inside the
    list it names, brackets thousands deep) stopped the whole folder's load: a traceback."""
    (tmp_path / "a.md").write_text("---\ntitle: A\nn: !!int abc\n---\nA\n")
    (tmp_path / "b.md").write_text("---\na: &a [*a]\n---\nB\n")
    (tmp_path / "c.md").write_text("---\nd: 2024-02-30\n---\nC\n")
    (tmp_path / "d.md").write_text(f"---\nx: {'[' * 5000}{']' * 5000}\n---\nD\n")
    a, b, c, d = read_all(tmp_path)
    assert str(a) == (
        f"{tmp_path / 'a.md'}:3: front matter: 'abc' cannot be read as !!int "
        "(invalid literal for int() with base 10: 'abc')"
    )
    assert str(b).startswith(f"{tmp_path / 'b.md'}:2: front matter: more than 8,192 values by 'a'")
    assert c.doc.metadata == {"d": "2024-02-30"}  # type: ignore[union-attr]  # as from JSON
    assert str(d).startswith(f"{tmp_path / 'd.md'}:1: front matter: lists or mappings nested")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("!!bool maybe", "'maybe' cannot be read as !!bool"),
        ("!!int", "'' cannot be read as !!int"),
        ("!!float", "'' cannot be read as !!float"),
        ("!!bool", "'' cannot be read as !!bool"),
        ("!!map x", "invalid YAML: expected a mapping node, but found scalar"),
    ],
)
def test_a_tag_yaml_cannot_build_is_the_problem_of_its_file(
    tmp_path: Path, value: str, problem: str
) -> None:
    """A KeyError (`!!bool maybe`), an IndexError (an empty `!!int`) or a ValueError (`!!map
    x`) escaped the front matter's reading: `kb load` ended in a traceback, nothing written
    (review helper 81)."""
    (tmp_path / "a.md").write_text("---\ntitle: A\n---\nA\n")
    (tmp_path / "b.md").write_text(f"---\ntitle: B\ndraft: {value}\n---\nB\n")
    (tmp_path / "c.md").write_text("C\n")
    a, b, c = read_all(tmp_path)
    assert str(b) == f"{tmp_path / 'b.md'}:3: front matter: {problem}"
    assert [a.doc.id, c.doc.id] == ["a.md", "c.md"]  # type: ignore[union-attr]


def test_an_error_no_reader_expects_is_the_problem_of_its_file_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever building the front matter raises is the file's problem; and an error of kb's
    own while reading a file fails that file, its traceback logged, and the others load."""

    def broken(loader: Any, node: Any) -> Any:
        raise RuntimeError("a constructor's fault")

    constructors = front_matter._yaml_loader().yaml_constructors
    monkeypatch.setitem(constructors, "tag:yaml.org,2002:str", broken)
    (tmp_path / "a.md").write_text("---\ntitle: A\n---\nA\n")
    (tmp_path / "b.md").write_text("B\n")
    a, b = read_all(tmp_path)
    assert str(a) == (
        f"{tmp_path / 'a.md'}:1: front matter: cannot be read (RuntimeError: a constructor's fault)"
    )
    assert b.doc.id == "b.md"  # type: ignore[union-attr]
    monkeypatch.undo()

    split = front_matter.split

    def failing(content: str) -> Any:
        if content.startswith("---"):
            raise AttributeError("a bug")
        return split(content)

    monkeypatch.setattr(front_matter, "split", failing)
    with caplog.at_level(logging.ERROR, logger="kb.loader"):
        a, b = read_all(tmp_path)
    assert str(a) == (
        f"{tmp_path / 'a.md'}: cannot read (AttributeError: a bug); the rest of the file is "
        "not read"
    )
    assert b.doc.id == "b.md"  # type: ignore[union-attr]
    (record,) = caplog.records
    assert record.getMessage().startswith(f"unexpected error reading {tmp_path / 'a.md'}")
    assert record.exc_info is not None
    assert record.exc_info[0] is AttributeError


def test_an_alias_bomb_in_front_matter_is_refused_without_expanding_it(tmp_path: Path) -> None:
    """9 levels of 9 aliases in 1 KB reached 1.6 GB (every aliased list copied); at 6 levels
    the load copied half a million items before refusing the nested lists."""
    levels = "abcdef"
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [
        f"{new}: &{new} [{','.join([f'*{old}'] * 9)}]" for old, new in itertools.pairwise(levels)
    ]
    (tmp_path / "bomb.md").write_text("---\n" + "\n".join(lines) + "\n---\nBody\n")
    started = time.perf_counter()
    (bomb,) = read_all(tmp_path / "bomb.md")
    assert time.perf_counter() - started < 1
    assert str(bomb) == (
        f"{tmp_path / 'bomb.md'}:5: front matter: more than 8,192 values by 'd', aliases "
        "(*name) expanded (a document holds at most 2,048)"
    )
    (tmp_path / "anchors.md").write_text(
        "---\nbase: &b hello\ncopy: *b\nlst: &l [x, y]\nlst2: *l\n<<: {m: 1, base: z}\n---\nB\n"
    )
    (anchors,) = read_all(tmp_path / "anchors.md")
    assert anchors.doc.metadata == {  # type: ignore[union-attr]
        "m": 1,
        "base": "hello",
        "copy": "hello",
        "lst": ["x", "y"],
        "lst2": ["x", "y"],
    }


def test_front_matter_dates_keep_their_spelling_and_filter_as_from_json(tmp_path: Path) -> None:
    """2024-03-02T10:00:00Z was stored as 2024-03-02T10:00:00+00:00, 2024-03-02 10:00:00 as
    2024-03-02T10:00:00; from JSON both kept their spelling."""
    written = {
        "d": "2024-03-02",
        "dt": "2024-03-02T10:00:00Z",
        "dtz": "2024-03-02T10:00:00+02:00",
        "dsp": "2024-03-02 10:00:00",
        "frac": "2001-12-14t21:59:43.10-05:00",
    }
    yaml = "".join(f"{key}: {value}\n" for key, value in written.items())
    (tmp_path / "dates.md").write_text(f"---\n{yaml}listd: [2024-01-01, 2024-02-01]\n---\nB\n")
    record = {"id": "dates.md", "text": "B\n", "metadata": written}
    (tmp_path / "dates.jsonl").write_text(json.dumps(record) + "\n")
    from_json, from_md = (e.doc.metadata for e in read_all(tmp_path))  # type: ignore[union-attr]
    assert from_md == {**written, "listd": ["2024-01-01", "2024-02-01"]}
    assert date_twins(from_md) == date_twins(from_json)
    assert len(date_twins(from_md)) == 4  # each ISO one is range-filterable, as from JSON


def test_a_front_matter_key_given_twice_is_a_problem(tmp_path: Path) -> None:
    """YAML kept the last value, silently (JSON input refuses a key given twice)."""
    (tmp_path / "dup.md").write_text("---\ntitle: a\nn: 1\ntitle: b\n---\nBody\n")
    (tmp_path / "num.md").write_text("---\n1: a\n'1': b\n---\nBody\n")
    dup, num = read_all(tmp_path)
    assert str(dup) == f"{tmp_path / 'dup.md'}:4: front matter: key 'title' is given twice"
    assert str(num) == f"{tmp_path / 'num.md'}:3: front matter: key '1' is given twice"


def test_an_empty_front_matter_value_says_null_is_no_value(tmp_path: Path) -> None:
    """It said "got null; nested objects are not supported, flatten them into keys"."""
    (tmp_path / "n.md").write_text("---\nauthor: Ada\ntitle:\n---\nBody\n")
    (problem,) = read_all(tmp_path / "n.md")
    assert str(problem) == (
        f"{tmp_path / 'n.md'}:3: front matter: 'title' has no value: null is not a metadata "
        "value (values must be a string, number, boolean or a list of them); leave the key "
        "out or write ''"
    )


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_files_with_a_utf16_or_utf32_mark_are_decoded(tmp_path: Path, encoding: str) -> None:
    """Every line failed ("failed 4" for 3 records), the front matter was text."""
    bom = "\ufeff" if encoding.endswith("-be") else ""  # the plain codecs write their own
    files = {
        "a.jsonl": '{"id": "j1", "text": "caf\u00e9"}\n{"id": "j2", "text": "two"}\n',
        "b.csv": "id,text,tag\nc1,row,x\n",
        "c.md": "---\ntitle: T\n---\nBody\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes((bom + content).encode(encoding))
    j1, j2, row, note = (e.doc for e in read_all(tmp_path))  # type: ignore[union-attr]
    assert (j1.id, j1.text, j2.id) == ("j1", "caf\u00e9", "j2")
    assert (row.id, row.text, row.metadata) == ("c1", "row", {"tag": "x"})
    assert (note.text, note.metadata) == ("Body\n", {"title": "T"})


def test_a_nul_byte_is_one_problem_of_its_file(tmp_path: Path) -> None:
    """UTF-16 without a mark was stored as NUL-laced text (.md, .csv) or failed on every line
    (.jsonl); a NUL escaped in JSON is a character the API takes, and still loads."""
    for name, content in {
        "a.md": "Notes\nabout x.\n",
        "b.csv": "id,text\nr1,one\nr2,two\n",
        "c.jsonl": '{"text": "one"}\n{"text": "two"}\n',
        "d.json": '[{"text": "one"}]',
    }.items():
        (tmp_path / name).write_bytes(content.encode("utf-16-le"))
    (tmp_path / "e.csv").write_bytes(b"id,text\nr1,fine\nr2,a\x00b\nr3,later\n")
    (tmp_path / "f.jsonl").write_text('{"id": "nul", "text": "before\\u0000after"}\n')
    entries = [str(e) if isinstance(e, Problem) else e.doc for e in read_all(tmp_path)]
    nul = "a NUL byte: a binary or UTF-16 file? save it as UTF-8"
    fine = entries.pop(4)
    assert entries == [
        f"{tmp_path / 'a.md'}:1: {nul}; the file is not read",
        f"{tmp_path / 'b.csv'}:1: {nul}; the rest of the file is not read",
        f"{tmp_path / 'c.jsonl'}:1: {nul}; the rest of the file is not read",
        f"{tmp_path / 'd.json'}:1: {nul}; the file is not read",
        f"{tmp_path / 'e.csv'}:3: {nul}; the rest of the file is not read",
        DocumentIn(id="nul", text="before\x00after"),
    ]
    assert fine.id == "r1"  # type: ignore[union-attr]


def test_a_file_with_a_utf16_mark_that_is_not_utf16_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "odd.jsonl").write_bytes(b"\xff\xfe" + '{"text": "x"}\n'.encode("utf-16-le") + b"!")
    entries = read_all(tmp_path / "odd.jsonl")
    assert (
        str(entries[-1])
        == f"{tmp_path / 'odd.jsonl'}: not the UTF-16 text its byte-order mark says (truncated "
        "data); the rest of the file is not read"
    )


def test_an_unreadable_folder_is_a_problem_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Path.rglob skipped it silently (exit 0); a file that cannot be read was "file:0:"."""
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "x.md").write_text("Inside\n")
    (tmp_path / "ok.md").write_text("Fine\n")
    locked = str(tmp_path / "locked")
    scandir = os.scandir

    def refusing(path: str = ".") -> object:  # as root, chmod 000 refuses nothing
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    problem, ok = read_all(tmp_path)
    assert str(problem) == f"{locked}: cannot read this folder: Permission denied"
    assert ok.doc.id == "ok.md"  # type: ignore[union-attr]
    assert estimate(sources([str(tmp_path)])) == 1
    (missing,) = read_all(tmp_path / "missing.jsonl")
    assert str(missing) == f"{tmp_path / 'missing.jsonl'}: cannot read: No such file or directory"


def test_a_link_beside_its_file_in_a_folder_never_takes_the_files_id(tmp_path: Path) -> None:
    """`ln -s guide.md notes/a-shortcut.md`: the link, sorted first, was the mention kept, so
    the file's document was stored again as "a-shortcut.md" (and `--upsert` then left
    "guide.md" stale); a link deeper in the folder won as the outermost mention (review
    helper 81)."""
    notes = tmp_path / "notes"
    (notes / "z" / "deep").mkdir(parents=True)
    (notes / "guide.md").write_text("How to install the widget\n")
    (notes / "a-shortcut.md").symlink_to("guide.md")
    (notes / "z" / "deep" / "link.md").symlink_to("../../guide.md")
    (tmp_path / "outside.md").write_text("Kept through its link\n")
    (notes / "out.md").symlink_to(tmp_path / "outside.md")
    for named in ([str(notes)], [str(notes / "guide.md"), str(notes)]):
        kept, repeated, linked = once(sources(named))
        ids = [e.doc.id for s in kept for e in read(s, OPTIONS)]  # type: ignore[union-attr]
        assert ids == ["guide.md", "out.md"]
        assert linked == [str(notes / "a-shortcut.md"), str(notes / "z" / "deep" / "link.md")]
        assert repeated == named[:-1]


def test_a_folder_listed_but_not_entered_fails_its_files_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subfolder of mode 0644 (read, no search) ended `kb load` of its folder, and of a file
    in it, with a PermissionError traceback from Path.is_file / is_dir (review helper 81)."""
    notes = tmp_path / "notes"
    (notes / "team").mkdir(parents=True)
    (notes / "a.md").write_text("A public note\n")
    (notes / "team" / "t.md").write_text("A team note\n")
    team = str(notes / "team")
    if os.geteuid() == 0:  # as root, chmod refuses nothing: refused as it would be
        stat, opened = os.stat, open

        def refusing_stat(path: Any, *args: Any, **kwargs: Any) -> Any:
            if os.fspath(path).startswith(team + os.sep):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return stat(path, *args, **kwargs)

        def refusing_open(path: Any, *args: Any, **kwargs: Any) -> Any:
            refusing_stat(path)
            return opened(path, *args, **kwargs)

        monkeypatch.setattr(os, "stat", refusing_stat)
        monkeypatch.setattr("kb.loader.open", refusing_open, raising=False)
    os.chmod(team, 0o644)
    try:
        a, t = read_all(notes)
        (named,) = read_all(notes / "team" / "t.md")
    finally:
        os.chmod(team, 0o755)
    assert a.doc.id == "a.md"  # type: ignore[union-attr]
    assert str(t) == f"{team}/t.md: cannot read: Permission denied"
    assert str(named) == f"{team}/t.md: cannot read: Permission denied"


def test_a_link_in_a_folder_whose_target_is_gone_or_loops_is_a_problem(tmp_path: Path) -> None:
    """They were left out without a word (a file named on the command line said why)."""
    (tmp_path / "a.md").write_text("Kept\n")
    (tmp_path / "b.md").symlink_to(tmp_path / "archive" / "b.md")
    (tmp_path / "c.md").symlink_to("c.md")
    (tmp_path / "notes.bin").symlink_to("gone.bin")  # of no format kb reads: left out
    a, b, c = read_all(tmp_path)
    assert a.doc.id == "a.md"  # type: ignore[union-attr]
    assert str(b) == f"{tmp_path / 'b.md'}: cannot read: No such file or directory"
    assert str(c) == f"{tmp_path / 'c.md'}: cannot read: Too many levels of symbolic links"


def test_files_in_hidden_folders_are_left_out_unless_named(tmp_path: Path) -> None:
    """tree/.obsidian/h.md was loaded while tree/.h.md was not: .git, .venv were read too."""
    for name in [".obsidian/h.md", ".git/x/y.md", "sub/.h.md", "sub/a.md", "b.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"{name}\n")
    assert [Path(s.path).relative_to(tmp_path).as_posix() for s in sources([str(tmp_path)])] == [
        "b.md",
        "sub/a.md",
    ]
    (named,) = sources([str(tmp_path / ".obsidian")])
    assert named.path == str(tmp_path / ".obsidian" / "h.md")
    assert [s.path for s in sources([str(tmp_path / "sub" / ".h.md")])] == [
        str(tmp_path / "sub" / ".h.md")
    ]


def test_a_csv_row_without_the_text_cell_and_a_beir_line_without_id_say_so(
    tmp_path: Path,
) -> None:
    """They said "text: text must be a string" and "not a BEIR corpus line: '_id'"."""
    (tmp_path / "r.csv").write_text("id,cat,text,level\nr1,a,short\nr2\nr3,b\n")
    short, one, two = read_all(tmp_path / "r.csv")
    assert isinstance(short, Item)
    assert (
        str(one)
        == f"{tmp_path / 'r.csv'}:3: no 'text' cell: the row has 1 cell, the header 4 columns"
    )
    assert str(two).endswith("r.csv:4: no 'text' cell: the row has 2 cells, the header 4 columns")
    (tmp_path / "corpus.jsonl").write_text('{"title": "T", "text": "x"}\n[1]\n')
    no_id, not_object = read_all(tmp_path / "corpus.jsonl", "beir")
    assert str(no_id) == f"{tmp_path / 'corpus.jsonl'}:1: not a BEIR corpus line: no '_id'"
    assert str(not_object).endswith("corpus.jsonl:2: not a BEIR corpus line: not a JSON object")


def test_a_file_name_that_is_not_utf8_says_so(tmp_path: Path) -> None:
    """Its id is its name: it said "id: holds a lone UTF-16 surrogate (\\udce9)"."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "caf\udce9.md").write_text("A note")  # a latin-1 name: byte 0xe9
    (folder / "named.md").write_text("---\nid: fine\n---\nAnother")
    entries = read_all(folder)
    problems = [str(e) for e in entries if isinstance(e, Problem)]
    assert len(problems) == 1
    assert problems[0].endswith(
        ":1: the file's name, its id, is not UTF-8 text: byte 0xe9: rename it or set an id"
    )
    assert [e.doc.id for e in entries if isinstance(e, Item)] == ["fine"]


def test_the_estimate_leaves_pipes_and_fifos_unread(tmp_path: Path) -> None:
    """It read a FIFO or /dev/stdin through to count its lines, and the load then found it
    empty (or, for a FIFO with a writer gone, waited forever)."""
    fifo = tmp_path / "docs.jsonl"
    os.mkfifo(fifo)
    answer: list[int | None] = []
    counting = threading.Thread(target=lambda: answer.append(estimate(sources([str(fifo)]))))
    counting.daemon = True
    counting.start()
    counting.join(timeout=2)
    if counting.is_alive():  # blocked opening the FIFO: unblock it before failing
        with open(fifo, "w"):
            pass
        counting.join(timeout=2)
    assert answer == [None]


def test_stdin_closed_is_a_problem_of_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kb load - <&-`: sys.stdin is None, and the load ended in a TypeError traceback."""
    monkeypatch.setattr("sys.stdin", None)
    (problem,) = read(Source("-", "jsonl"), OPTIONS)
    assert str(problem) == "<stdin>: cannot read: standard input is closed"


def test_front_matter_id_is_not_kept_as_metadata(tmp_path: Path) -> None:
    (tmp_path / "c.md").write_text("---\nid: my-id\ntitle: T\n---\nBody\n")
    (item,) = read_all(tmp_path / "c.md")
    assert isinstance(item, Item)
    assert item.doc.id == "my-id"
    assert item.doc.metadata == {"title": "T"}


def test_beir_text_is_title_then_body(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "d1", "title": "Glaciers", "text": "Ice moves."}\n')
    (item,) = read_all(path, "beir")
    assert isinstance(item, Item)
    assert (item.doc.id, item.doc.text) == ("d1", "Glaciers Ice moves.")
    assert item.doc.metadata == {"title": "Glaciers"}


def test_a_text_file_longer_than_a_document_holds_is_refused_without_reading_it_whole(
    tmp_path: Path,
) -> None:
    """Read whole first, a 400 MB log among the notes took 894 MB before its text was refused
    as too long (review helper 81); a file is read up to what a document can hold."""
    settings = Settings(max_text_chars=100)
    most = 100 + FRONT_MATTER_CHARS
    big = tmp_path / "server.log.md"
    big.write_text("x" * (most + 10))
    fits = tmp_path / "note.md"
    fits.write_text("---\ntopic: logs\n---\n" + "y" * 100)
    (found,) = list(read(Source(str(big), "md"), Options(settings)))
    assert isinstance(found, Problem)
    assert f"more than {most:,} characters" in found.message
    assert "KB_MAX_TEXT_CHARS" in found.message
    (item,) = list(read(Source(str(fits), "md"), Options(settings)))
    assert isinstance(item, Item)
    assert item.doc.text == "y" * 100
