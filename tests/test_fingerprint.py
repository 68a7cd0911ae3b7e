"""The model fingerprint: every file that decides the vectors is part of it, nothing else is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kb import fingerprint
from kb.embeddings import resolve_model_path
from kb.fingerprint import former_fingerprints, model_fingerprint, model_identity

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {
        "idx": 2,
        "name": "2",
        "path": "2_Normalize",
        "type": "sentence_transformers.models.Normalize",
    },
]
FILES = {
    "modules.json": json.dumps(MODULES),
    "config.json": '{"hidden_size": 384}',
    "sentence_bert_config.json": '{"max_seq_length": 256}',
    "config_sentence_transformers.json": '{"prompts": {}}',
    "1_Pooling/config.json": '{"pooling_mode_mean_tokens": true}',
    "tokenizer.json": '{"model": {"vocab": {"a": 0}}}',
    "vocab.txt": "[PAD]\na\n",
    "model.safetensors": "weights",
}


def model_folder(root: Path, **changes: str | None) -> Path:
    """A sentence-transformers folder (fake contents: the fingerprint reads, never loads),
    with `changes` (a name's "/" written "__") written over FILES, or removed when None."""
    files = FILES | {name.replace("__", "/"): text for name, text in changes.items()}
    for name, text in files.items():
        if text is not None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    "changes",
    [
        {"sentence_bert_config.json": '{"max_seq_length": 128}'},
        {"1_Pooling__config.json": '{"pooling_mode_cls_token": true}'},
        {"config_sentence_transformers.json": '{"prompts": {"query": "query: "}}'},
        {"tokenizer.json": '{"model": {"vocab": {"b": 0}}}'},
        {"vocab.txt": "[PAD]\nb\n"},
        {"tokenizer_config.json": '{"do_lower_case": false}'},
    ],
    ids=["max_seq_length", "pooling", "prompts", "tokenizer", "vocab", "tokenizer_config"],
)
def test_what_changes_the_vectors_changes_the_fingerprint(tmp_path: Path, changes) -> None:
    base = model_folder(tmp_path / "base")
    changed = model_folder(tmp_path / "changed", **changes)
    assert model_fingerprint(changed) != model_fingerprint(base)
    # What earlier versions of kb recorded could not tell these models apart.
    assert former_fingerprints(changed) == former_fingerprints(base)


def test_weights_count_in_every_module_folder_and_in_every_shard(tmp_path: Path) -> None:
    """The older layout keeps the transformer in 0_Transformer/, a Dense module has weights
    of its own, and a large model splits its weights into shards."""
    older = [{**MODULES[0], "path": "0_Transformer"}, *MODULES[1:]]
    layout = {"modules.json": json.dumps(older), "model.safetensors": None}
    one = model_folder(tmp_path / "one", **layout, **{"0_Transformer__model.safetensors": "w1"})
    two = model_folder(tmp_path / "two", **layout, **{"0_Transformer__model.safetensors": "w2"})
    assert model_fingerprint(one) != model_fingerprint(two)
    assert former_fingerprints(one) == former_fingerprints(two)

    dense = json.dumps([*MODULES, {"idx": 3, "name": "3", "path": "3_Dense"}])
    one = model_folder(
        tmp_path / "d1", **{"modules.json": dense, "3_Dense__pytorch_model.bin": "a"}
    )
    two = model_folder(
        tmp_path / "d2", **{"modules.json": dense, "3_Dense__pytorch_model.bin": "b"}
    )
    assert model_fingerprint(one) != model_fingerprint(two)

    shards = {"model.safetensors": None, "model.safetensors.index.json": "{}"}
    one = model_folder(tmp_path / "s1", **shards, **{"model-00002-of-00002.safetensors": "x"})
    two = model_folder(tmp_path / "s2", **shards, **{"model-00002-of-00002.safetensors": "y"})
    assert model_fingerprint(one) != model_fingerprint(two)


def test_documentation_and_other_formats_do_not_count(tmp_path: Path) -> None:
    base = model_folder(tmp_path / "base")
    extra = {"README.md": "# a model", "onnx__model.onnx": "graph", "openvino__config.json": "{}"}
    assert model_fingerprint(model_folder(tmp_path / "extra", **extra)) == model_fingerprint(base)
    # a module folder that modules.json does not list is not read either
    assert model_fingerprint(model_folder(tmp_path / "x", **{"9_Unused__config.json": "{}"})) == (
        model_fingerprint(base)
    )


def test_a_file_moved_to_another_folder_is_another_model(tmp_path: Path) -> None:
    moved = model_folder(
        tmp_path / "moved", **{"vocab.txt": None, "1_Pooling__vocab.txt": FILES["vocab.txt"]}
    )
    assert model_fingerprint(moved) != model_fingerprint(model_folder(tmp_path / "base"))


def test_the_packaged_models_fingerprints_are_stable() -> None:
    """Stores and backups record the fingerprint, and the ONNX export is cached under it:
    a change here refuses every existing store. afb6fdf311ee0f80 is what kb recorded before
    the fingerprint covered every file; such a store is taken and re-recorded."""
    path = resolve_model_path("all-MiniLM-L6-v2")[1]
    assert model_fingerprint(path) == "a0bcc0c748d5ff1c"
    assert former_fingerprints(path) == ("afb6fdf311ee0f80",)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files hashed, in order: what model_identity did not take from its memo."""
    names: list[str] = []
    real = fingerprint._hash_file

    def counted(digest, file: Path) -> None:
        names.append(file.name)
        real(digest, file)

    monkeypatch.setattr(fingerprint, "_hash_file", counted)
    return names


def test_the_memo_gives_the_same_identity_without_hashing(tmp_path: Path, hashed) -> None:
    model, memo = model_folder(tmp_path / "model"), tmp_path / "cache"
    identity = (model_fingerprint(model), former_fingerprints(model))
    hashed.clear()
    assert model_identity(model, memo) == identity
    assert "model.safetensors" in hashed
    hashed.clear()
    assert model_identity(model, memo) == identity
    assert hashed == []
    assert model_identity(model) == identity
    assert hashed


@pytest.mark.parametrize(
    "change",
    [
        lambda m: (m / "model.safetensors").write_text("weighs"),  # same size, new content
        lambda m: (m / "tokenizer_config.json").write_text('{"do_lower_case": false}'),  # added
        lambda m: (m / "vocab.txt").unlink(),
        lambda m: (m / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": 1}'),
    ],
    ids=["same-size-weights", "added", "removed", "module-config"],
)
def test_a_changed_file_is_hashed_again(tmp_path: Path, hashed, change) -> None:
    model, memo = model_folder(tmp_path / "model"), tmp_path / "cache"
    before = model_identity(model, memo)
    change(model)
    after = model_identity(model, memo)
    assert after == (model_fingerprint(model), former_fingerprints(model))
    assert after[0] != before[0]
    assert model_identity(model, memo) == after  # and remembered in turn


def test_a_damaged_or_unwritable_memo_is_passed_over(tmp_path: Path, hashed) -> None:
    model, memo = model_folder(tmp_path / "model"), tmp_path / "cache"
    identity = model_identity(model, memo)
    for damaged in ("", "[1, 2]", f'{{"{model.resolve()}": {{"stamp": "x"}}}}', "{"):
        (memo / fingerprint.MEMO_FILE).write_text(damaged)
        hashed.clear()
        assert model_identity(model, memo) == identity
        assert hashed  # read afresh, and the memo written again
        hashed.clear()
        assert model_identity(model, memo) == identity
        assert hashed == []
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    assert model_identity(model, not_a_folder) == identity


def test_the_memo_keeps_each_model_folder_apart_and_is_bounded(tmp_path: Path) -> None:
    memo = tmp_path / "cache"
    one = model_folder(tmp_path / "one")
    two = model_folder(tmp_path / "two", **{"vocab.txt": "[PAD]\nb\n"})
    assert model_identity(one, memo)[0] == model_fingerprint(one)
    assert model_identity(two, memo)[0] == model_fingerprint(two) != model_fingerprint(one)
    assert model_identity(one, memo)[0] == model_fingerprint(one)
    for n in range(fingerprint.MEMO_ENTRIES + 2):
        model_identity(model_folder(tmp_path / f"m{n}"), memo)
    entries = json.loads((memo / fingerprint.MEMO_FILE).read_text())
    assert len(entries) == fingerprint.MEMO_ENTRIES
    assert str(one.resolve()) not in entries  # the oldest went first
