"""Sources and records: files read as raw columns, builtins, Hugging Face folders, errors that name the
file and line, column look-ups that name the recipe field, and the train/validation/test splits."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn import datasets as skdatasets

from bigmodel.data import ColumnRecords, Records, load_source, open_splits, records_from_rows
from bigmodel.errors import DataError
from bigmodel.recipe.schema import DataConfig

# A small generated table: three numeric features (odd values), a string label, a numeric id.
ROWS = [
    {"id": i, "x1": 0.5 * i - 1.25, "x2": float(i * i % 7), "x3": -3.0 + i / 8, "label": "abc"[i % 3]}
    for i in range(11)
]
COLUMNS = ["id", "x1", "x2", "x3", "label"]


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


def raw(scheme: str, rows=ROWS) -> list[dict]:
    """The rows as ``scheme`` reads them back: CSV gives the text, JSONL and parquet typed values."""
    return [{k: str(v) for k, v in r.items()} for r in rows] if scheme == "csv" else rows


def only(source: str) -> Records:
    parts = load_source(source)
    assert list(parts) == ["data"]
    return parts["data"]


# ----------------------------------------------------------------------------- reading files


@pytest.mark.parametrize("scheme", list(WRITERS))
def test_reads_generated_table_as_raw_columns(tmp_path, scheme):
    path = WRITERS[scheme](tmp_path / f"t.{scheme}")
    records = only(f"{scheme}:{path}")
    assert isinstance(records, Records)
    assert records.columns == COLUMNS and len(records) == len(ROWS)
    assert records.where == str(path)
    assert [records[i] for i in range(len(records))] == raw(scheme)
    assert list(records) == raw(scheme)
    assert records[np.int64(4)] == raw(scheme)[4]
    assert list(records.column("label")) == [r["label"] for r in ROWS]
    assert list(records.column("x1")) == [r["x1"] for r in raw(scheme)]
    assert len(records.fingerprint) == 64 and int(records.fingerprint, 16) >= 0


@pytest.mark.parametrize("scheme", list(WRITERS))
def test_a_file_without_a_label_column_reads(tmp_path, scheme):
    rows = [{k: v for k, v in r.items() if k != "label"} for r in ROWS]
    records = only(f"{scheme}:{WRITERS[scheme](tmp_path / f'u.{scheme}', rows)}")
    assert records.columns == ["id", "x1", "x2", "x3"]
    assert list(records) == raw(scheme, rows)


def test_values_are_not_judged_when_read(tmp_path):
    """Numbers, missing values and dirty values stay as read: the task's encoder judges them."""
    rows = [dict(r) for r in ROWS]
    rows[3]["x2"], rows[0]["x1"], rows[5]["label"] = "seven", "inf", ""
    records = only(f"csv:{write_csv(tmp_path / 't.csv', rows)}")
    assert records[3]["x2"] == "seven" and records[0]["x1"] == "inf" and records[5]["label"] == ""
    assert records[1]["id"] == "1"  # text, not a number


def test_fingerprint_follows_content(tmp_path):
    a = only(f"csv:{write_csv(tmp_path / 'a.csv')}").fingerprint
    b = only(f"csv:{write_csv(tmp_path / 'b.csv')}").fingerprint
    c = only(f"csv:{write_csv(tmp_path / 'c.csv', ROWS[:-1])}").fingerprint
    assert a == b != c


def test_csv_strips_whitespace_and_bom(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeff a , b ,y\n 1 , 2.5 ,u\n\n3,4,v\n", encoding="utf-8")
    records = only(f"csv:{path}")
    assert records.columns == ["a", "b", "y"]
    assert list(records) == [{"a": "1", "b": "2.5", "y": "u"}, {"a": "3", "b": "4", "y": "v"}]


def test_jsonl_values_keep_their_json_types_and_later_extra_keys_are_ignored(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"n": 1, "f": 2.5, "s": "x", "b": true, "z": null, "v": [1, 2]}\n'
        '{"n": 2, "f": 3.0, "s": "y", "b": false, "z": 4, "v": [3, 4], "extra": 1}\n'
    )
    records = only(f"jsonl:{path}")
    assert records.columns == ["n", "f", "s", "b", "z", "v"]
    assert records[0] == {"n": 1, "f": 2.5, "s": "x", "b": True, "z": None, "v": [1, 2]}
    assert records[1]["b"] is False and records[1]["v"] == [3, 4] and "extra" not in records[1]


# ----------------------------------------------------------------------------- records


def test_select_is_a_view_that_keeps_source_row_numbers(tmp_path):
    records = only(f"jsonl:{write_jsonl(tmp_path / 't.jsonl')}")
    view = records.select([9, 2, 5, 7])
    assert len(view) == 4 and view.columns == records.columns and view.where == records.where
    assert view.fingerprint == records.fingerprint
    assert [r["id"] for r in view] == [9, 2, 5, 7]
    assert view.column("id") == [9, 2, 5, 7]
    assert [view.row_number(i) for i in range(4)] == [10, 3, 6, 8]
    inner = view.select(np.array([3, 1]))  # positions in the view, not in the file
    assert [r["id"] for r in inner] == [7, 2] and [inner.row_number(i) for i in range(2)] == [8, 3]
    assert len(records) == len(ROWS) and records.row_number(4) == 5  # the original is untouched
    assert len(records.select([])) == 0


@pytest.mark.parametrize("scheme", list(WRITERS))
def test_require_names_field_columns_and_did_you_mean(tmp_path, scheme):
    path = WRITERS[scheme](tmp_path / f"t.{scheme}")
    records = only(f"{scheme}:{path}")
    records.require("label", "data.label")  # present: no error
    with pytest.raises(DataError) as info:
        records.require("lable", "data.label")
    msg = str(info.value)
    assert msg.startswith("data.label: column 'lable' is not in")
    assert str(path) in msg and "x1" in msg and "Did you mean 'label'?" in msg
    with pytest.raises(DataError, match=r"data\.features: column 'x_3'.*Did you mean 'x3'\?"):
        records.select([0, 1]).require("x_3", "data.features")
    with pytest.raises(DataError, match="'nope'"):
        records.column("nope")


def test_column_records_and_records_from_rows():
    records = ColumnRecords({"a": [1, 2, 3], "img": np.zeros((3, 2, 2))}, "arrays", "fp")
    assert len(records) == 3 and records.columns == ["a", "img"] and records.where == "arrays"
    assert records[1]["a"] == 2 and records[1]["img"].shape == (2, 2)
    with pytest.raises(DataError, match="different lengths"):
        ColumnRecords({"a": [1, 2], "b": [1]}, "arrays")
    rows = records_from_rows([{"a": 1, "b": "x"}, {"b": "y", "a": 2}], "inputs")
    assert rows.columns == ["a", "b"] and list(rows) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    with pytest.raises(DataError, match=r"inputs: record 2 lacks 'b'"):
        records_from_rows([{"a": 1, "b": 2}, {"a": 3}], "inputs")
    with pytest.raises(DataError, match="record 2 is a list"):
        records_from_rows([{"a": 1}, [1]], "inputs")
    with pytest.raises(DataError, match="no records"):
        records_from_rows([], "inputs")


# ----------------------------------------------------------------------------- file errors


def data_error(source) -> str:
    with pytest.raises(DataError) as info:
        load_source(source)
    return str(info.value)


def test_missing_file(tmp_path):
    msg = data_error(f"csv:{tmp_path / 'absent.csv'}")
    assert "absent.csv" in msg and "not found" in msg
    (tmp_path / "folder.csv").mkdir()
    assert "not found" in data_error(f"csv:{tmp_path / 'folder.csv'}")


def test_ragged_csv_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x1,x2,x3,label\n1,2,3,a\n4,5,b\n")
    msg = data_error(f"csv:{path}")
    assert "t.csv" in msg and "line 3" in msg and "3 fields" in msg and "4" in msg


def test_duplicate_csv_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x1,x1,label\n1,2,a\n")
    msg = data_error(f"csv:{path}")
    assert "duplicate" in msg and "t.csv" in msg


def test_invalid_json_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"x1": 1, "x2": 2, "x3": 3, "label": "a"}\n\n{"x1": 2, "x2": \n')
    msg = data_error(f"jsonl:{path}")
    assert "t.jsonl" in msg and "line 3" in msg and "not valid JSON" in msg


@pytest.mark.parametrize(("line", "kind"), [("[1, 2]", "list"), ('"text"', "str"), ("7", "int")])
def test_json_line_not_an_object(tmp_path, line, kind):
    path = tmp_path / "t.jsonl"
    path.write_text(f'{{"x1": 1, "x2": 2, "x3": 3, "label": "a"}}\n{line}\n')
    msg = data_error(f"jsonl:{path}")
    assert "line 2" in msg and kind in msg and "JSON object" in msg


def test_jsonl_record_missing_key(tmp_path):
    rows = [dict(r) for r in ROWS]
    del rows[2]["x3"]
    msg = data_error(f"jsonl:{write_jsonl(tmp_path / 't.jsonl', rows)}")
    assert "t.jsonl" in msg and "record 3" in msg and "'x3'" in msg


@pytest.mark.parametrize(
    ("scheme", "text"), [("csv", ""), ("csv", "x1,x2,x3,label\n"), ("jsonl", "\n"), ("jsonl", "")]
)
def test_empty_file(tmp_path, scheme, text):
    path = tmp_path / f"t.{scheme}"
    path.write_text(text)
    msg = data_error(f"{scheme}:{path}")
    assert "t." + scheme in msg and ("empty" in msg or "no records" in msg)


def test_empty_parquet_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x1": pa.array([], pa.float64())}), tmp_path / "t.parquet")
    assert "no records" in data_error(f"parquet:{tmp_path / 't.parquet'}")


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_text("x1,label\n1,a\n")
    msg = data_error(f"parquet:{path}")
    assert "parquet" in msg and "t.parquet" in msg


def test_not_utf8_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"x1,label\n1,\xff\xfe\n")
    msg = data_error(f"csv:{path}")
    assert "UTF-8" in msg and "t.csv" in msg


def test_memory_source_is_refused_outside_python():
    assert "in-memory" in data_error("memory:arrays")


# ----------------------------------------------------------------------------- builtin


def test_builtin_digits():
    records = only("builtin:digits")
    assert records.columns == ["image", "label"] and len(records) == 1797
    first = records[0]
    assert first["image"].shape == (1, 8, 8) and first["image"].dtype == np.float32
    images = np.stack(records.column("image"))
    assert images.shape == (1797, 1, 8, 8) and images.min() == 0 and images.max() == 16
    labels = records.column("label")
    assert len(labels) == 1797 and sorted(set(labels)) == list(range(10))
    np.testing.assert_array_equal(images.reshape(1797, 64), skdatasets.load_digits().data)
    assert only("builtin:digits").fingerprint == records.fingerprint


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("iris", ["setosa", "versicolor", "virginica"]),
        ("wine", ["class_0", "class_1", "class_2"]),
        ("breast_cancer", ["benign", "malignant"]),
    ],
)
def test_builtin_tables_use_feature_and_class_names(name, classes):
    bunch = getattr(skdatasets, f"load_{name}")()
    records = only(f"builtin:{name}")
    assert records.columns == [*bunch.feature_names, "label"] and len(records) == len(bunch.target)
    assert sorted(set(records.column("label"))) == classes
    assert records.column("label") == [str(bunch.target_names[t]) for t in bunch.target]
    first = bunch.feature_names[0]
    np.testing.assert_allclose(records.column(first), bunch.data[:, 0], rtol=1e-6)
    assert records.where == f"builtin:{name}" and len(records.fingerprint) == 64


def test_builtin_diabetes_has_numeric_labels():
    bunch = skdatasets.load_diabetes()
    records = only("builtin:diabetes")
    assert records.columns == [*bunch.feature_names, "label"] and len(records) == 442
    assert all(isinstance(v, float) for v in records.column("label"))
    np.testing.assert_array_equal(records.column("label"), bunch.target)
    assert only("builtin:iris").fingerprint != records.fingerprint


# ----------------------------------------------------------------------------- Hugging Face folders


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    table = {"x": [float(i) for i in range(20)], "label": ["ab"[i % 2] for i in range(20)]}
    datasets.Dataset.from_dict(table).save_to_disk(str(root / "one"))
    changed = {"x": [*table["x"][:-1], 99.0], "label": table["label"]}
    datasets.Dataset.from_dict(changed).save_to_disk(str(root / "changed"))
    test = datasets.Dataset.from_dict({"x": [100.0, 101.0], "label": ["a", "b"]})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table), "test": test}).save_to_disk(
        str(root / "train_test")
    )
    dev = datasets.Dataset.from_dict({"x": [200.0], "label": ["b"]})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table), "dev": dev}).save_to_disk(
        str(root / "train_dev")
    )
    datasets.DatasetDict({"other": test}).save_to_disk(str(root / "no_train"))
    return root


def test_hf_disk_dataset_and_dataset_dict(hf_folders):
    one = load_source(f"hf-disk:{hf_folders / 'one'}")
    assert list(one) == ["data"]
    records = one["data"]
    assert records.columns == ["x", "label"] and len(records) == 20
    assert records[3] == {"x": 3.0, "label": "b"} and list(records.column("x"))[:3] == [0.0, 1.0, 2.0]
    assert records.select([5, 1]).column("label") == ["b", "b"]
    assert (
        records.fingerprint
        and records.fingerprint == load_source(f"hf-disk:{hf_folders / 'one'}")["data"].fingerprint
    )
    assert load_source(f"hf-disk:{hf_folders / 'changed'}")["data"].fingerprint != records.fingerprint

    parts = load_source(f"hf-disk:{hf_folders / 'train_test'}")
    assert list(parts) == ["train", "test"]
    assert len(parts["train"]) == 20 and list(parts["test"]) == [
        {"x": 100.0, "label": "a"},
        {"x": 101.0, "label": "b"},
    ]
    assert "[test]" in parts["test"].where


def test_hf_disk_missing_folder(tmp_path):
    msg = data_error(f"hf-disk:{tmp_path / 'nothing'}")
    assert "folder not found" in msg and "nothing" in msg


# ----------------------------------------------------------------------------- splits


def labelled_rows(n_per_class=(30, 20, 10)) -> list[dict]:
    rows = [
        {"id": 0, "x": 0.0, "label": c} for c, n in zip("abc", n_per_class, strict=True) for _ in range(n)
    ]
    order = np.random.default_rng(0).permutation(len(rows))
    return [{"id": i, "x": float(i) / 3, "label": rows[j]["label"]} for i, j in enumerate(order)]


def by_label(records: Records) -> list[str]:
    return records.column("label")


def ids(records: Records) -> list[int]:
    return [int(v) for v in records.column("id")]


def test_open_splits_carves_seeded_stratified_fractions(tmp_path):
    rows = labelled_rows()
    path = write_csv(tmp_path / "t.csv", rows)
    cfg = DataConfig(source=f"csv:{path}", split={"validation": 0.2, "test": 0.1})
    splits, fingerprint = open_splits(cfg, seed=0, strata=by_label)
    assert list(splits) == ["train", "validation", "test"]
    joined = sorted(sum((ids(s) for s in splits.values()), []))
    assert joined == list(range(len(rows))), "splits overlap or miss rows"
    labels = np.array([r["label"] for r in rows])
    for c, size in zip("abc", (30, 20, 10), strict=True):
        assert sum(labels[i] == c for i in ids(splits["validation"])) == round(size * 0.2)
        assert sum(labels[i] == c for i in ids(splits["test"])) == round(size * 0.1)
    for part in splits.values():  # a view names the file's own rows
        assert part.where == str(path)
        assert [part.row_number(i) for i in range(len(part))] == [i + 1 for i in ids(part)]
    again, same = open_splits(cfg, seed=0, strata=by_label)
    other, _ = open_splits(cfg, seed=1, strata=by_label)
    assert {k: ids(v) for k, v in again.items()} == {k: ids(v) for k, v in splits.items()}
    assert ids(other["test"]) != ids(splits["test"])
    assert same == fingerprint and len(fingerprint) == 64


def test_open_splits_without_strata_and_with_zero_fractions(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", labelled_rows())
    cfg = DataConfig(source=f"jsonl:{path}", split={"validation": 0.25, "test": 0.0})
    splits, _ = open_splits(cfg, seed=3)
    assert list(splits) == ["train", "validation"]  # an empty split is left out
    assert (len(splits["train"]), len(splits["validation"])) == (45, 15)
    whole, _ = open_splits(DataConfig(source=f"jsonl:{path}", split={"validation": 0, "test": 0}), seed=3)
    assert list(whole) == ["train"] and ids(whole["train"]) == list(range(60))


def test_open_splits_refuses_to_leave_no_training_records(tmp_path):
    path = write_csv(tmp_path / "t.csv", ROWS[:2])
    with pytest.raises(DataError, match="leaves none to train on") as info:
        open_splits(DataConfig(source=f"csv:{path}", split={"validation": 0.5, "test": 0.4}), seed=0)
    assert str(path) in str(info.value) and "data.split" in str(info.value)


def test_open_splits_uses_predefined_validation_and_test_sources(tmp_path):
    train = write_csv(tmp_path / "train.csv", labelled_rows())
    valid = write_csv(tmp_path / "valid.csv", ROWS[:4])
    test = write_jsonl(tmp_path / "test.jsonl", ROWS[4:])
    both = DataConfig(source=f"csv:{train}", validation=f"csv:{valid}", test=f"jsonl:{test}")
    splits, _ = open_splits(both, seed=0, strata=by_label)
    assert ids(splits["train"]) == list(range(60))  # nothing carved: both splits are given
    assert splits["validation"].where == str(valid) and ids(splits["validation"]) == [0, 1, 2, 3]
    assert splits["test"].where == str(test) and ids(splits["test"]) == list(range(4, 11))

    test_only = DataConfig(
        source=f"csv:{train}", test=f"jsonl:{test}", split={"validation": 0.2, "test": 0.5}
    )
    splits, _ = open_splits(test_only, seed=0, strata=by_label)
    assert len(splits["validation"]) == 12 and len(splits["train"]) == 48  # validation carved, test given
    assert splits["test"].where == str(test)
    with pytest.raises(DataError, match="absent.csv"):
        open_splits(DataConfig(source=f"csv:{train}", validation=f"csv:{tmp_path / 'absent.csv'}"), seed=0)


def test_fingerprint_changes_when_any_source_changes(tmp_path):
    train = write_csv(tmp_path / "train.csv", labelled_rows())
    valid = write_csv(tmp_path / "valid.csv", ROWS[:4])
    test = write_csv(tmp_path / "test.csv", ROWS[4:])
    cfg = DataConfig(source=f"csv:{train}", validation=f"csv:{valid}", test=f"csv:{test}")

    def fingerprint():
        return open_splits(cfg, seed=0)[1]

    seen = [fingerprint()]
    assert fingerprint() == seen[0]
    for path, rows in ((train, labelled_rows()[:-1]), (valid, ROWS[:3]), (test, ROWS[5:])):
        write_csv(path, rows)
        seen.append(fingerprint())
    assert len(set(seen)) == 4, seen
    alone = open_splits(DataConfig(source=f"csv:{train}"), seed=0)[1]
    assert alone not in seen  # the extra sources count


def test_open_splits_with_hugging_face_splits(hf_folders):
    cfg = DataConfig(source=f"hf-disk:{hf_folders / 'train_test'}", split={"validation": 0.2, "test": 0.3})
    splits, fingerprint = open_splits(cfg, seed=0, strata=by_label)
    assert list(splits) == ["train", "validation", "test"]
    assert splits["test"].column("x") == [100.0, 101.0]  # predefined: not carved from train
    assert (len(splits["train"]), len(splits["validation"])) == (16, 4)
    assert sorted(splits["validation"].column("label")) == ["a", "a", "b", "b"]
    assert len(fingerprint) == 64

    dev, _ = open_splits(DataConfig(source=f"hf-disk:{hf_folders / 'train_dev'}"), seed=0)
    assert dev["validation"].column("x") == [200.0]  # "dev" is the validation split
    assert len(dev["train"]) + len(dev["test"]) == 20

    single, _ = open_splits(
        DataConfig(source=f"hf-disk:{hf_folders / 'one'}", split={"validation": 0.5, "test": 0}), 0
    )
    assert (len(single["train"]), len(single["validation"])) == (10, 10)

    with pytest.raises(DataError, match="no train split.*other"):
        open_splits(DataConfig(source=f"hf-disk:{hf_folders / 'no_train'}"), seed=0)


def test_open_splits_reads_given_records_instead_of_the_source():
    records = ColumnRecords({"id": list(range(10)), "label": list("ab" * 5)}, "arrays", "fp")
    cfg = DataConfig(source="memory:arrays", split={"validation": 0.2, "test": 0.2})
    splits, fingerprint = open_splits(cfg, seed=0, strata=by_label, given={"data": records})
    assert sorted(sum((ids(s) for s in splits.values()), [])) == list(range(10))
    assert [len(s) for s in splits.values()] == [6, 2, 2]
    assert fingerprint == open_splits(cfg, seed=5, given={"data": records})[1]
