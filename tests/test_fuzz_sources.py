"""Fuzzing data files: random CSV / JSONL / parquet tables, encodings, delimiters, quoting and damage.

Every generated file either reads or raises a :class:`DataError` that names the file; a file written
cleanly (an accepted encoding, a header of unique names, no damage) reads back exactly as written,
whatever its delimiter, quoting and line endings; random splits partition the records; and a full
tiny training run on a messy file either works with finite metrics or ends in a ``UserError``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import bigmodel
from bigmodel.data import load_source, open_splits
from bigmodel.errors import DataError, UserError
from bigmodel.recipe.schema import DataConfig

EXAMPLES = int(os.environ.get("BIGMODEL_FUZZ_EXAMPLES", "60"))  # bounded for CI; raise it for a hunt
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ACCEPTED = ("utf-8", "utf-8-sig", "utf-16")  # the utf-16 codec writes a byte-order mark
ENCODINGS = (*ACCEPTED, "latin-1", "utf-16-le")  # latin-1: refused unless ASCII; no BOM: NULs

# Cells: what spreadsheets and scripts write, plus characters that stress quoting and decoding.
cell_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
)
cells = st.one_of(
    cell_text,
    st.sampled_from(["", "NA", "?", "nan", "inf", "-", "1,5", '"', "a;b", "x\ty", "line\nbreak", " pad "]),
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
)
names = st.one_of(st.sampled_from(["x1", "x2", "label", "text", "id", "Größe", "a b"]), cell_text)


@st.composite
def tables(draw, min_rows=0):
    width = draw(st.integers(1, 4))
    header = draw(st.lists(names, min_size=width, max_size=width))
    rows = draw(st.lists(st.lists(cells, min_size=width, max_size=width), min_size=min_rows, max_size=6))
    return header, rows


def clean_header(header: list[str]) -> bool:
    stripped = [h.strip() for h in header]
    return all(stripped) and len(set(stripped)) == len(stripped)


def csv_bytes(header, rows, delimiter, quoting, terminator, encoding) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, quoting=quoting, lineterminator=terminator)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode(encoding, errors="replace")


def reads_or_names_the_file(source: str, path) -> dict | None:
    try:
        (records,) = load_source(source).values()
    except DataError as exc:
        assert str(path) in str(exc), str(exc)
        return None
    return records


def readable(encoding: str, data: bytes) -> bool:
    """Whether a file written in ``encoding`` must be read (latin-1 holding only ASCII is UTF-8)."""
    return encoding in ACCEPTED or (encoding == "latin-1" and data.isascii())


def valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def ambiguous(header, rows, delimiter, quoting) -> bool:
    """Unquoted cells holding another candidate delimiter can make a file readable two ways (and
    Python's writer leaves a lone carriage return unquoted: a line break to any reader)."""
    if quoting != csv.QUOTE_MINIMAL:
        return False
    others = {",", ";", "\t", "\r"} - {delimiter}
    return any(o in c for o in others for c in [*header, *(c for r in rows for c in r)])


# ----------------------------------------------------------------------------- CSV


@FUZZ
@given(
    table=tables(),
    delimiter=st.sampled_from([",", ";", "\t"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    terminator=st.sampled_from(["\n", "\r\n"]),
    encoding=st.sampled_from(ENCODINGS),
)
@example(table=(["a", "b"], [["1,5", "2,5"]]), delimiter=";", quoting=0, terminator="\n", encoding="utf-8")
@example(
    table=(["naïve", "label"], [["é", "x"]]), delimiter="\t", quoting=0, terminator="\r\n", encoding="utf-16"
)
@example(
    table=(["a", "label"], [["café", "x"]]), delimiter=",", quoting=0, terminator="\n", encoding="latin-1"
)
def test_csv_written_cleanly_reads_back_exactly(
    tmp_path_factory, table, delimiter, quoting, terminator, encoding
):
    header, rows = table
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    text = csv_bytes(header, rows, delimiter, quoting, terminator, "utf-8").decode()
    data = text.encode(encoding, errors="replace")
    path.write_bytes(data)
    records = reads_or_names_the_file(f"csv:{path}", path)
    accepted = readable(encoding, data)
    lossless = data.decode(encoding) == text
    exact = lossless and accepted and clean_header(header) and rows
    exact = exact and not ambiguous(header, rows, delimiter, quoting)
    if records is None:
        assert not exact, (header, rows)
        return
    assert accepted or (valid_utf8(data) and b"\0" not in data), "a file in a refused encoding was read"
    if exact:
        assert records.columns == [h.strip() for h in header]
        assert [list(r.values()) for r in records] == [[c.strip() for c in r] for r in rows]


@FUZZ
@given(
    table=tables(),
    delimiter=st.sampled_from([",", ";", "\t"]),
    damage=st.sampled_from(["ragged", "nul", "cut", "quote", "long", "blank-lines", "bytes", "header-only"]),
    where=st.floats(0, 1),
    junk=st.binary(max_size=8),
)
@example(table=(["a", "b"], [["1", "2"]]), delimiter=",", damage="long", where=0.5, junk=b"")
def test_damaged_csv_reads_or_names_the_file(tmp_path_factory, table, delimiter, damage, where, junk):
    header, rows = table
    data = csv_bytes(header, rows, delimiter, csv.QUOTE_MINIMAL, "\n", "utf-8")
    at = int(where * len(data))
    data = {
        "ragged": data + delimiter.join(["1"] * (len(header) + 1)).encode() + b"\n",
        "nul": data[:at] + b"\x00" + data[at:],
        "cut": data[:at],
        "quote": data[:at] + b'"' + data[at:],
        "long": data + delimiter.join(["y" * 200_000] * len(header)).encode() + b"\n",
        "blank-lines": b"\n\n" + data.replace(b"\n", b"\n\n"),
        "bytes": data[:at] + junk + data[at:],
        "header-only": data.split(b"\n")[0] + b"\n",
    }[damage]
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    path.write_bytes(data)
    records = reads_or_names_the_file(f"csv:{path}", path)
    if records is not None:
        assert len(records) >= 1 and all(len(r) == len(records.columns) for r in records)
        if damage == "long":
            assert "y" * 200_000 in records[len(records) - 1].values()  # a long cell is data, not an error


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty file"),
        (b"\n\n", "empty file"),
        (b"a,b\n", "no records"),
        (b"a,,b\n1,2,3\n", "column 2 of the header has no name"),
        (b",,\n1,2,3\n", "column 1 of the header has no name"),
        ("a,b\n1,2\n3,\udc80\n".encode("utf-16", "surrogatepass"), "not UTF-16 text"),
        (b" a ,a\n1,2\n", "duplicate column names"),
        (b"a,b\n1,2,3\n", "line 2 has 3 fields"),
        (b'a,b\n"1,2\n', "line 2"),
        (b"a,b\n1,\x002\n", "line 2 holds a NUL"),
        ("a,b\n1,é\n".encode("latin-1"), "byte 6 (line 2)"),
        ("a,b\n1,2\n".encode("utf-16-le"), "NUL"),
    ],
)
def test_csv_refusals_name_file_and_line(tmp_path, data, says):
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        load_source(f"csv:{path}")
    assert str(path) in str(info.value) and says in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("text", "columns", "first"),
    [
        ("a;b;label\n1;2;x\n", ["a", "b", "label"], ["1", "2", "x"]),
        ("a\tb\n1,5\t2\n", ["a", "b"], ["1,5", "2"]),
        ("a;b\n1,5;2,5\n3,5;4\n", ["a", "b"], ["1,5", "2,5"]),  # decimal commas, semicolon columns
        ("text\nhello; world\n", ["text"], ["hello; world"]),  # one column: its cells may hold anything
        ('a,b\n"x;y",2\n', ["a", "b"], ["x;y", "2"]),
        ("a,b\r1,2\r", ["a", "b"], ["1", "2"]),  # old Mac line endings
        ("\n\na,b\n\n1,2\n", ["a", "b"], ["1", "2"]),  # blank lines before the header
    ],
)
def test_csv_delimiters_are_sniffed(tmp_path, text, columns, first):
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8", newline="")
    (records,) = load_source(f"csv:{path}").values()
    assert records.columns == columns and list(records[0].values()) == first


# ----------------------------------------------------------------------------- JSONL

json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), cell_text
    ),  # fmt: skip
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(cell_text, inner, max_size=3)),
    max_leaves=5,
)


@FUZZ
@given(
    keys=st.lists(names, min_size=1, max_size=3, unique=True),
    values=st.lists(st.lists(json_values, min_size=3, max_size=3), min_size=0, max_size=5),
    encoding=st.sampled_from(ENCODINGS),
    damage=st.sampled_from(
        [
            "none",
            "none",
            "array-line",
            "trailing",
            "nan",
            "cut",
            "blank",
            "missing-key",
            "duplicate-key",
            "deep",
            "bytes",
        ]
    ),  # fmt: skip
    where=st.floats(0, 1),
    junk=st.binary(max_size=6),
)
@example(keys=["a"], values=[[1, 2, 3]], encoding="utf-8", damage="nan", where=0.0, junk=b"")
@example(keys=["a"], values=[[1, 2, 3]], encoding="utf-8", damage="deep", where=0.0, junk=b"")
def test_jsonl_reads_back_exactly_or_names_the_file(
    tmp_path_factory, keys, values, encoding, damage, where, junk
):
    rows = [dict(zip(keys, v, strict=False)) for v in values]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    extra = {
        "array-line": ["[1, 2]"],
        "trailing": ['{"a": 1} trailing'],
        "nan": ['{"a": NaN}'],
        "blank": ["", "   "],
        "missing-key": ['{"zzz": 1}'],
        "duplicate-key": ['{"k": 1, "k": 2}'],
        "deep": ["[" * 50_000 + "]" * 50_000],
    }.get(damage, [])
    at = int(where * (len(lines) + 1))
    text = "\n".join(lines[:at] + extra + lines[at:]) + "\n"
    data = text.encode(encoding, errors="replace")
    if damage == "cut":
        data = data[: int(where * len(data))]
    if damage == "bytes":
        data = data[: int(where * len(data))] + junk + data[int(where * len(data)) :]
    path = tmp_path_factory.mktemp("jsonl") / "t.jsonl"
    path.write_bytes(data)
    records = reads_or_names_the_file(f"jsonl:{path}", path)
    exact = damage in ("none", "blank") and readable(encoding, data) and rows
    exact = exact and data.decode(encoding) == text
    if records is None:
        assert not exact, (rows, encoding)
        return
    if exact:
        assert records.columns == keys
        assert [records[i] for i in range(len(records))] == rows
    for record in records:
        for value in record.values():
            assert not (isinstance(value, float) and not math.isfinite(value))


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"a": NaN}', "NaN is not a JSON value"),
        ('{"a": -Infinity}', "-Infinity is not a JSON value"),
        ('{"a": 1e999}', "out of range"),
        ('{"a": 1, "a": 2}', "'a' appears twice"),
        ('{"a": ' + "9" * 5000 + "}", "digits"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": 1} {"a": 2}', "not valid JSON"),
        ("[1]", "is a list"),
    ],
)
def test_jsonl_refusals_name_file_and_line(tmp_path, line, says):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 0}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_source(f"jsonl:{path}")
    assert f"{path}: line 2" in str(info.value) and says in str(info.value), str(info.value)


def test_jsonl_keeps_separators_inside_strings(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"text": "a\u2028b\rc\u0085d", "label": "x"}, {"text": "e", "label": "y"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    (records,) = load_source(f"jsonl:{path}").values()
    assert list(records) == rows


# ----------------------------------------------------------------------------- parquet


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 10))
@given(
    keys=st.lists(names, min_size=1, max_size=3, unique=True),
    column=st.sampled_from(["int", "float", "str", "mixed-null"]),
    n=st.integers(0, 5),
    damage=st.sampled_from(["none", "none", "cut", "bytes"]),
    where=st.floats(0, 1),
    junk=st.binary(max_size=8),
)
def test_parquet_reads_back_or_names_the_file(tmp_path_factory, keys, column, n, damage, where, junk):
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = {"int": list(range(n)), "float": [i / 3 for i in range(n)], "str": [f"s{i}" for i in range(n)],
              "mixed-null": [None if i % 2 else i for i in range(n)]}[column]  # fmt: skip
    table = pa.table({k: values for k in keys})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    data = sink.getvalue()
    cut = int(where * len(data))
    data = {"none": data, "cut": data[:cut], "bytes": data[:cut] + junk + data[cut + len(junk) :]}[damage]
    path = tmp_path_factory.mktemp("parquet") / "t.parquet"
    path.write_bytes(data)
    records = reads_or_names_the_file(f"parquet:{path}", path)
    if damage == "none":
        if n == 0:
            assert records is None
        else:
            assert records is not None and records.columns == keys and records.column(keys[0]) == values


def test_parquet_with_duplicate_column_names_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"]), path)
    with pytest.raises(DataError, match="duplicate column names"):
        load_source(f"parquet:{path}")


# ----------------------------------------------------------------------------- paths and splits


@pytest.mark.parametrize("what", ["{tmp}", "{tmp}/missing.csv", "a" * 5000, "bad\x00name.csv"])
def test_paths_that_are_not_readable_files(tmp_path, what):
    with pytest.raises(DataError, match="data.source"):
        load_source("csv:" + what.format(tmp=tmp_path))


@FUZZ
@given(
    n=st.integers(1, 30),
    classes=st.integers(1, 4),
    validation=st.floats(0, 0.95),
    test=st.floats(0, 0.95),
    seed=st.integers(0, 2**63 - 1),
    stratify=st.booleans(),
)
@example(n=2, classes=1, validation=0.5, test=0.4, seed=0, stratify=False)  # used to leave no train split
def test_random_splits_partition_the_records_or_say_why(
    tmp_path_factory, n, classes, validation, test, seed, stratify
):
    if validation + test >= 1:
        return  # the recipe refuses that (tests/recipe)
    path = tmp_path_factory.mktemp("splits") / "t.csv"
    path.write_text("x,label\n" + "".join(f"{i},{'abcd'[i % classes]}\n" for i in range(n)), encoding="utf-8")
    cfg = DataConfig(source=f"csv:{path}", split={"validation": validation, "test": test})
    strata = (lambda r: r.column("label")) if stratify else None
    try:
        splits, fingerprint = open_splits(cfg, seed, strata)
    except DataError as exc:
        assert "data.split" in str(exc) and str(path) in str(exc)
        return
    assert len(splits["train"]) >= 1 and len(fingerprint) == 64
    rows = sorted(int(r["x"]) for part in splits.values() for r in part)
    assert rows == list(range(n))  # a partition: nothing lost, nothing twice
    again, _ = open_splits(cfg, seed, strata)
    assert {k: [r["x"] for r in v] for k, v in again.items()} == {
        k: [r["x"] for r in v] for k, v in splits.items()
    }


# ----------------------------------------------------------------------------- a whole run

# Mostly clean, so that some runs train; each messy value is one a real file holds.
MESSY_NUMBERS = ["", "NA", "?", "nan", "inf", "-inf", "1,234.5", "1e3", " 7 ", "abc", "true"]
messy_number = st.integers(0, 9).flatmap(
    lambda k: st.sampled_from(MESSY_NUMBERS) if k == 0 else st.floats(-50, 50).map(lambda v: f"{v:.3g}")
)
messy_label = st.sampled_from(["a", "b", "c"] * 4 + ["1", "1.0", "NA", "?", "", " b ", "None"])


@settings(FUZZ, max_examples=max(EXAMPLES // 12, 4))
@given(
    rows=st.lists(st.tuples(messy_number, messy_number, messy_label), min_size=2, max_size=40),
    delimiter=st.sampled_from([",", ";", "\t"]),
    encoding=st.sampled_from(ACCEPTED),
    drop=st.booleans(),
)
@example(rows=[("1", "2", "a"), ("3", "4", "b")] * 6, delimiter=";", encoding="utf-16", drop=False)
def test_training_on_a_messy_file_works_or_explains(tmp_path_factory, rows, delimiter, encoding, drop):
    folder = tmp_path_factory.mktemp("train")
    path = folder / "data.csv"
    path.write_bytes(csv_bytes(["x1", "x2", "label"], rows, delimiter, csv.QUOTE_MINIMAL, "\n", encoding))
    recipe = {
        "name": "fuzz-train",
        "data": {"source": f"csv:{path}", "label": "label", "split": {"validation": 0.25, "test": 0.25}},
        "task": {"name": "classification", **({"missing_labels": "drop"} if drop else {})},
        "model": {"arch": "mlp", "hidden_sizes": [3]},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "checkpoint_every": 1000},
    }
    try:
        run = bigmodel.train(recipe, output=folder / "runs", progress=False)
    except UserError as exc:
        message = str(exc)
        assert str(path) in message or "data." in message or "label" in message, message
        assert not (folder / "runs").exists() or not any((folder / "runs").rglob("model.safetensors"))
        return
    for split, metrics in run.metrics.items():
        for key, value in metrics.items():
            if isinstance(value, float):
                assert math.isfinite(value), (split, key, value)
    assert np.isfinite(run.metrics["train"]["time_s"])


def test_an_absent_categorical_column_is_named_by_its_recipe_field(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("x1,label\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(12)), encoding="utf-8")
    recipe = {
        "name": "fuzz-categorical",
        "data": {"source": f"csv:{path}", "label": "label", "categorical": ["colour"]},
        "model": {"arch": "mlp", "hidden_sizes": [3]},
        "train": {"epochs": 1, "device": "cpu"},
    }
    with pytest.raises(UserError) as info:
        bigmodel.train(recipe, output=tmp_path / "runs", progress=False)
    assert "data.categorical:" in str(info.value), str(info.value)
