"""Tabular and builtin sources: reading, column selection, and errors that name file, row and column."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bigmodel.data import load_source
from bigmodel.errors import DataError

# A small generated table: three numeric features (odd values), a string label, a numeric id.
ROWS = [
    {"id": i, "x1": 0.5 * i - 1.25, "x2": float(i * i % 7), "x3": -3.0 + i / 8, "label": "abc"[i % 3]}
    for i in range(11)
]
FEATURES = ["x1", "x2", "x3"]


def expected(columns=FEATURES) -> np.ndarray:
    return np.array([[row[c] for c in columns] for row in ROWS], dtype=np.float32)


def write_csv(path, rows=ROWS):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path, rows=ROWS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path, rows=ROWS):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


WRITERS = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}


@pytest.mark.parametrize("scheme", list(WRITERS))
def test_reads_generated_table(tmp_path, scheme):
    path = WRITERS[scheme](tmp_path / f"t.{scheme}")
    table = load_source(f"{scheme}:{path}", FEATURES, "label")
    assert table.features.dtype == np.float32
    assert table.feature_names == FEATURES and table.feature_shape == (3,)
    np.testing.assert_array_equal(table.features, expected())
    assert [str(t) for t in table.targets] == [r["label"] for r in ROWS]
    assert len(table.fingerprint) == 64


@pytest.mark.parametrize("scheme", list(WRITERS))
def test_default_features_are_all_but_label(tmp_path, scheme):
    rows = [{k: v for k, v in r.items() if k != "id"} for r in ROWS]
    path = WRITERS[scheme](tmp_path / f"u.{scheme}", rows)
    table = load_source(f"{scheme}:{path}", None, "label")
    assert table.feature_names == FEATURES
    np.testing.assert_array_equal(table.features, expected())


def test_feature_selection_keeps_declared_order(tmp_path):
    path = write_csv(tmp_path / "t.csv")
    table = load_source(f"csv:{path}", ["x3", "id"], "x1")
    assert table.feature_names == ["x3", "id"]
    np.testing.assert_array_equal(table.features, expected(["x3", "id"]))
    np.testing.assert_allclose([float(t) for t in table.targets], [r["x1"] for r in ROWS])


def test_features_only_without_label(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl")
    table = load_source(f"jsonl:{path}", FEATURES, None)
    assert table.targets is None
    np.testing.assert_array_equal(table.features, expected())


def test_fingerprint_follows_content(tmp_path):
    a = load_source(f"csv:{write_csv(tmp_path / 'a.csv')}", FEATURES, "label").fingerprint
    b = load_source(f"csv:{write_csv(tmp_path / 'b.csv')}", FEATURES, "label").fingerprint
    c = load_source(f"csv:{write_csv(tmp_path / 'c.csv', ROWS[:-1])}", FEATURES, "label").fingerprint
    assert a == b != c


def test_csv_strips_whitespace_and_bom(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeff a , b ,y\n 1 , 2.5 ,u\n\n3,4,v\n", encoding="utf-8")
    table = load_source(f"csv:{path}", None, "y")
    assert table.feature_names == ["a", "b"]
    np.testing.assert_array_equal(table.features, [[1, 2.5], [3, 4]])
    assert list(table.targets) == ["u", "v"]


# ----------------------------------------------------------------------------- errors


def data_error(source, features=FEATURES, label="label") -> str:
    with pytest.raises(DataError) as info:
        load_source(source, features, label)
    return str(info.value)


def test_missing_file(tmp_path):
    msg = data_error(f"csv:{tmp_path / 'absent.csv'}")
    assert "absent.csv" in msg and "not found" in msg


@pytest.mark.parametrize("scheme", list(WRITERS))
def test_absent_label_column_did_you_mean(tmp_path, scheme):
    path = WRITERS[scheme](tmp_path / f"t.{scheme}")
    msg = data_error(f"{scheme}:{path}", label="lable")
    assert "data.label" in msg and "'lable'" in msg and "x1" in msg
    assert "Did you mean 'label'?" in msg


def test_absent_feature_column(tmp_path):
    path = write_csv(tmp_path / "t.csv")
    msg = data_error(f"csv:{path}", features=["x1", "x_3"])
    assert "data.features" in msg and "'x_3'" in msg and "Did you mean 'x3'?" in msg


def test_non_numeric_feature_names_row_and_column(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[3]["x2"] = "seven"
    path = write_csv(tmp_path / "t.csv", rows)
    msg = data_error(f"csv:{path}")
    assert "row 4" in msg and "'x2'" in msg and "'seven'" in msg and "t.csv" in msg


def test_non_finite_feature(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[0]["x1"] = "inf"
    msg = data_error(f"csv:{write_csv(tmp_path / 't.csv', rows)}")
    assert "row 1" in msg and "'x1'" in msg and "finite" in msg


def test_empty_label(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[5]["label"] = ""
    msg = data_error(f"csv:{write_csv(tmp_path / 't.csv', rows)}")
    assert "row 6" in msg and "'label'" in msg and "empty" in msg


def test_ragged_csv_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x1,x2,x3,label\n1,2,3,a\n4,5,b\n")
    msg = data_error(f"csv:{path}")
    assert "line 3" in msg and "3 fields" in msg and "4" in msg


def test_duplicate_csv_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x1,x1,label\n1,2,a\n")
    assert "duplicate" in data_error(f"csv:{path}", features=None)


def test_invalid_json_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"x1": 1, "x2": 2, "x3": 3, "label": "a"}\n\n{"x1": 2, "x2": \n')
    msg = data_error(f"jsonl:{path}")
    assert "line 3" in msg and "not valid JSON" in msg


def test_json_line_not_an_object(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"x1": 1, "x2": 2, "x3": 3, "label": "a"}\n[1, 2]\n')
    msg = data_error(f"jsonl:{path}")
    assert "line 2" in msg and "list" in msg


def test_jsonl_record_missing_key(tmp_path):
    rows = [dict(r) for r in ROWS]
    del rows[2]["x3"]
    msg = data_error(f"jsonl:{write_jsonl(tmp_path / 't.jsonl', rows)}")
    assert "record 3" in msg and "'x3'" in msg


@pytest.mark.parametrize(("scheme", "text"), [("csv", ""), ("csv", "x1,x2,x3,label\n"), ("jsonl", "\n")])
def test_empty_file(tmp_path, scheme, text):
    path = tmp_path / f"t.{scheme}"
    path.write_text(text)
    msg = data_error(f"{scheme}:{path}")
    assert "t." + scheme in msg and ("empty" in msg or "no records" in msg)


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_text("x1,label\n1,a\n")
    assert "parquet" in data_error(f"parquet:{path}")


def test_not_utf8_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"x1,label\n1,\xff\xfe\n")
    assert "UTF-8" in data_error(f"csv:{path}", features=None)


# ----------------------------------------------------------------------------- builtin


def test_builtin_digits():
    table = load_source("builtin:digits")
    assert table.features.shape == (1797, 1, 8, 8) and table.feature_shape == (1, 8, 8)
    assert table.features.dtype == np.float32
    assert table.features.min() == 0 and table.features.max() == 16
    assert len(table.targets) == 1797
    assert sorted({int(t) for t in table.targets}) == list(range(10))
    assert load_source("builtin:digits").fingerprint == table.fingerprint


def test_builtin_iris_uses_class_names():
    table = load_source("builtin:iris")
    assert table.features.shape == (150, 4)
    assert sorted(set(table.targets)) == ["setosa", "versicolor", "virginica"]
