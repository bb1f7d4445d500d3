"""serving.contract: the label rule's two modes, columnar rows, durable writes, calling a signature."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving import contract

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_missing_or_blank_label_is_unlabelled_when_lenient_and_missing_when_strict(value):
    assert contract.check_label(value, lenient=True) is None
    with pytest.raises(contract.InvalidRecord) as caught:
        contract.check_label(value, lenient=False)
    assert caught.value.reason == contract.MISSING_LABEL


@pytest.mark.parametrize("value", [3, ["a"], "tab\there", "two\nlines", "para\u2029graph", "lone \ud800"])
def test_both_modes_refuse_what_cannot_be_a_line_of_labels_txt(value):
    for lenient in (True, False):
        with pytest.raises(contract.InvalidRecord) as caught:
            contract.check_label(value, lenient=lenient)
        assert caught.value.reason == contract.INVALID_LABEL


def test_both_modes_refuse_the_open_sets_answer_as_a_label():
    for lenient in (True, False):
        with pytest.raises(contract.InvalidRecord) as caught:
            contract.check_label(contract.UNKNOWN_LABEL, lenient=lenient)
        assert caught.value.reason == contract.INVALID_LABEL
        assert "name the signer" in caught.value.message
    assert contract.check_label("Unknown", lenient=False) == "Unknown"  # only the exact answer is reserved


@pytest.mark.parametrize("value", ["signer_03 ", " signer_03", "x" * (contract.MAX_LABEL_CHARS + 1)])
def test_only_the_strict_mode_refuses_padding_and_length(value):
    assert contract.check_label(value, lenient=True) == value
    with pytest.raises(contract.InvalidRecord) as caught:
        contract.check_label(value, lenient=False)
    assert caught.value.reason == contract.INVALID_LABEL


def test_columns_become_rows_in_order():
    rows = contract.columns_to_rows({"image_bytes": [1, 2, 3], "label": ["a", "b", "c"]})
    assert rows == [{"image_bytes": 1, "label": "a"}, {"image_bytes": 2, "label": "b"},
                    {"image_bytes": 3, "label": "c"}]


@pytest.mark.parametrize("inputs", [[1, 2], {}, {"a": [1], "b": [1, 2]}, {"a": 1}])
def test_columns_that_are_not_an_object_of_equal_lists_are_refused(inputs):
    with pytest.raises(contract.InvalidRecord) as caught:
        contract.columns_to_rows(inputs)
    assert caught.value.reason == contract.INVALID_COLUMNS


def test_write_atomic_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "status.json"
    contract.write_atomic(target, "old")
    contract.write_atomic(target, b"new \xe2\x9c\x93")
    assert target.read_bytes() == b"new \xe2\x9c\x93"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_write_atomic_into_a_missing_folder_fails_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        contract.write_atomic(tmp_path / "gone" / "file.jsonl", "x")
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_removes_its_temporary_file_when_the_rename_fails(tmp_path):
    target = tmp_path / "a_folder"
    target.mkdir()
    (target / "inside").write_text("keeps the folder non-empty")
    with pytest.raises(OSError):
        contract.write_atomic(target, "a file cannot replace a non-empty folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder"]


def test_write_synced_exclusive_reserves_the_name(tmp_path):
    target = tmp_path / "7.json"
    contract.write_synced(target, "first", exclusive=True)
    with pytest.raises(FileExistsError):
        contract.write_synced(target, "second", exclusive=True)
    assert target.read_text() == "first"


def test_call_signature_converts_inputs_to_the_declared_dtypes():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.string)])
    def signature(x, name):
        return {"y": x * 2, "upper": tf.strings.upper(name)}

    outputs = contract.call_signature(
        signature, {"x": [1, 2], "name": np.array([b"a", b"b"], dtype=object)},
        {"x": tf.float32.as_datatype_enum, "name": tf.string.as_datatype_enum})
    assert outputs["y"].dtype == np.float32 and outputs["y"].tolist() == [2.0, 4.0]
    assert outputs["upper"].tolist() == [b"A", b"B"]


def test_the_contract_and_the_registry_import_without_tensorflow():
    code = ("import sys, serving.contract, serving.registry, serving.settings; "
            "print(sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
