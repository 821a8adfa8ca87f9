"""TabularEncoder: column kinds, dirty numbers, missing values, normalisation, layout, state, threads."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from bigmodel.data.tabular import TabularEncoder
from bigmodel.data.values import clean_labels, is_missing
from bigmodel.errors import DataError

# 24 rows: an id, a numeric column with gaps, a city, a boolean, a label.
N = 24
AGES = [20 + (5 * i) % 17 for i in range(N)]  # repeats: not an id
CITIES = ["Paris", "Lyon", "Nice"] * 8


def table(**extra) -> dict:
    columns = {
        "id": list(range(100, 100 + N)),
        "age": list(AGES),
        "city": list(CITIES),
        "smoker": [i % 3 == 0 for i in range(N)],
        "y": ["a", "b"] * (N // 2),
    }
    return columns | extra


def fit(columns, label="y", features=None, **kwargs) -> tuple[TabularEncoder, list[str]]:
    encoder = TabularEncoder()
    notes = encoder.fit(columns, label, features, where="train.csv", **kwargs)
    return encoder, notes


def records(columns) -> list[dict]:
    n = len(next(iter(columns.values())))
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


# ------------------------------------------------------------------------------------------ kinds


def test_kinds_and_layout_numeric_then_sorted_onehot():
    enc, notes = fit(table())
    assert enc.kinds == {"age": "numeric", "smoker": "numeric", "city": "categorical"}
    assert enc.columns == ["age", "smoker", "city"]
    assert enc.feature_names == ["age", "smoker", "city=Lyon", "city=Nice", "city=Paris"]
    assert enc.input_shape == (5,)
    assert enc.excluded == ["id"]
    assert "column 'smoker': booleans encoded as 1/0" in notes
    assert "column 'city': 3 categories one-hot encoded; values unseen in training map to all zeros" in notes
    x = enc.encode({"age": 41, "city": "Nice", "smoker": True})
    assert x.dtype == np.float32 and x.shape == (5,)
    np.testing.assert_array_equal(x[2:], [0, 1, 0])  # Lyon, Nice, Paris: sorted, Nice is slot 1


def test_numeric_strings_and_numbers_parse_alike():
    strings = [" 3 ", "1e-3", "-2.5", "7", "+4"] * 5
    numbers = [3, 0.001, -2.5, 7.0, 4] * 5
    cols = {"s": strings, "n": numbers, "y": [0, 1] * 12 + [0]}
    enc, _ = fit(cols, normalize="none")
    assert enc.kinds == {"s": "numeric", "n": "numeric"}
    out = enc.encode_many(cols)
    np.testing.assert_array_equal(out[:, 0], out[:, 1])
    np.testing.assert_allclose(out[:5, 0], [3, 0.001, -2.5, 7, 4], rtol=1e-7)


def test_strings_are_categorical_and_numbers_in_them_are_canonical():
    cols = {"c": ["x", 1, "1.0", " 1 ", "y", 2.0] * 4, "y": [0] * 24}
    enc, _ = fit(cols, categorical_columns=None)
    assert enc.kinds == {"c": "categorical"}
    assert enc.feature_names == ["c=1", "c=2", "c=x", "c=y"]
    out = enc.encode_many(cols)
    np.testing.assert_array_equal(out[1], out[2])
    np.testing.assert_array_equal(out[2], out[3])
    np.testing.assert_array_equal(enc.encode({"c": "2"}), [0, 1, 0, 0])


def test_bools_mixed_with_strings_are_categories():
    cols = {"b": [True, False, "maybe"] * 8, "y": [0] * 24}
    enc, _ = fit(cols)
    assert enc.kinds == {"b": "categorical"}
    assert enc.feature_names == ["b=False", "b=True", "b=maybe"]


def test_array_column_keeps_its_shape_and_list_values_work():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, size=(30, 1, 8, 8)).astype(np.float64)
    for column in (images, [im.tolist() for im in images], list(images)):
        enc, _ = fit({"image": column, "y": [0] * 30}, normalize="none")
        assert enc.kinds == {"image": "array"}
        assert enc.input_shape == (1, 8, 8)
        assert enc.feature_names[:2] == ["image[0,0,0]", "image[0,0,1]"]
        np.testing.assert_array_equal(enc.encode({"image": column[3]}), images[3].astype(np.float32))
        np.testing.assert_array_equal(enc.encode_many({"image": column}), images.astype(np.float32))


def test_array_beside_other_columns_is_flattened_first():
    arrays = [[i, i + 1, i + 2] for i in range(6)]
    cols = {"c": ["u", "v"] * 3, "a": arrays, "x": [0.5 * i for i in range(6)]}
    enc, _ = fit(cols, label=None, normalize="none")
    assert enc.feature_names == ["a[0]", "a[1]", "a[2]", "x", "c=u", "c=v"]
    np.testing.assert_array_equal(enc.encode({"a": [7, 8, 9], "x": 1.5, "c": "v"}), [7, 8, 9, 1.5, 0, 1])


@pytest.mark.parametrize(
    "array, match",
    [
        (None, "row 3, column 'a': None is not a numeric array"),
        ([1.0, float("nan")], "row 3, column 'a': the array holds a non-finite value"),
        ([1.0, float("inf")], "row 3, column 'a': the array holds a non-finite value"),
        (
            [1.0, 2.0, 3.0],
            r"row 3, column 'a': an array of shape \(3,\); the column's arrays have shape \(2,\)",
        ),
        (["p", "q"], "row 3, column 'a': \\['p', 'q'\\] is not a numeric array"),
    ],
)
def test_bad_arrays_are_refused(array, match):
    cols = {"a": [[1.0, 2.0], [3.0, 4.0], array, [5.0, 6.0]]}
    with pytest.raises(DataError, match=match):
        fit(cols, label=None)
    enc, _ = fit({"a": [[1.0, 2.0]] * 3}, label=None)
    with pytest.raises(DataError, match="column 'a'"):
        enc.encode({"a": array})


# ------------------------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "name", ["id", "ID", "uuid", "index", "row_id", "CustomerId", "user id", "Unnamed: 0"]
)
def test_columns_named_like_ids_are_excluded(name):
    cols = {name: [1, 2, 2, 3] * 6, "x": [0.5, 2.0, 3.5] * 8, "y": [0] * 24}
    enc, notes = fit(cols)
    assert enc.excluded == [name] and name not in enc.columns
    assert notes[0] == (
        f"column '{name}' looks like a row id (by its name); excluded from the features — "
        f"list it in data.features to keep it"
    )


def test_distinct_integer_and_string_columns_are_ids():
    cols = {
        "ticket": [str(7000 + 13 * i) for i in range(800)],
        "code": [f"K{i:04d}" for i in range(800)],
        "x": [0.25 * i for i in range(800)],  # distinct too, but floats: a measurement
        "y": list(range(800)),  # distinct integers, but the label
    }
    enc, notes = fit(cols)
    assert enc.excluded == ["ticket", "code"] and enc.columns == ["x"]
    assert (
        "column 'ticket' looks like a row id (all 800 values distinct integers); excluded from the "
        "features — list it in data.features to keep it"
    ) in notes
    assert any("'code' looks like a row id (all 800 values distinct strings)" in n for n in notes)


def test_a_named_id_with_distinct_values_says_so():
    enc, notes = fit({"id": list(range(800)), "x": [0.5, 1.5] * 400}, label=None)
    assert notes[0] == (
        "column 'id' looks like a row id (all 800 values distinct integers); excluded from the "
        "features — list it in data.features to keep it"
    )


def test_ids_are_kept_when_features_are_explicit_or_rows_few():
    cols = {"id": list(range(30)), "k": list(range(30)), "y": [0] * 30}
    enc, notes = fit(cols, features=["id", "k"])
    assert enc.columns == ["id", "k"] and not enc.excluded
    enc, _ = fit({"k": list(range(19)), "y": [0] * 19})  # 19 < 20 rows prove nothing
    assert enc.columns == ["k"]


def test_categorical_columns_override_numbers_and_id_rule():
    cols = {"zip": [str(10000 + i) for i in range(25)], "x": [1.0] * 25}
    enc, _ = fit(cols, label=None, categorical_columns=["zip"])
    assert enc.kinds == {"zip": "categorical", "x": "numeric"}
    assert enc.feature_names[1:3] == ["zip=10000", "zip=10001"]


# ------------------------------------------------------------------------------------ dirty numbers


@pytest.mark.parametrize("dirty", ["1,234", "3.5 kg", "12%", "abc", True])
def test_mostly_numeric_column_with_dirty_values_is_refused(dirty):
    values = [str(i) for i in range(40)]
    values[6] = dirty
    cols = {"price": values, "y": [0] * 40}
    with pytest.raises(DataError) as info:
        fit(cols, row_numbers=list(range(2, 42)))  # the file's rows start at 2 (line 1: header)
    msg = str(info.value)
    assert msg.startswith(f"train.csv: row 8, column 'price': {dirty!r} is not a plain number")
    assert "97% of the column's 40 non-missing train values are plain numbers" in msg
    assert "clean the column" in msg and "list it as categorical in data.categorical" in msg
    enc, _ = fit(cols, categorical_columns=["price"])  # the documented way out
    assert enc.kinds == {"price": "categorical"}


def test_numbers_written_with_formatting_are_refused():
    cols = {"income": ["$1,200", "12,500", "3,400", "15%", "2.5 kg", "7"] * 4}
    with pytest.raises(DataError, match=r"row 1, column 'income': '\$1,200' is not a plain number"):
        fit(cols, label=None)


def test_few_numbers_among_words_make_a_categorical_column():
    cols = {"size": ["S", "M", "L", "1st", "2nd", "XL", "10", "M"] * 3}
    enc, _ = fit(cols, label=None)
    assert enc.kinds == {"size": "categorical"}


def test_threshold_is_ninety_percent():
    cols = {"v": [str(i) for i in range(9)] + ["x"]}  # 9 of 10 numeric: exactly at the threshold
    with pytest.raises(DataError, match="90% of the column's 10"):
        fit(cols, label=None)
    enc, _ = fit({"v": [str(i) for i in range(8)] + ["x", "y"]}, label=None)
    assert enc.kinds == {"v": "categorical"}


# ----------------------------------------------------------------------------------------- missing


@pytest.mark.parametrize("token", ["", "NA", "n/a", "N/A", "null", "None", "?", "nan", "NaN", " na ", None])
def test_missing_tokens(token):
    assert is_missing(token)
    values = [1.0, 2.0, token, 4.0, 10.0] * 4
    enc, notes = fit({"x": values}, label=None, normalize="none")
    assert "column 'x': 4 missing values in the train split, imputed with the train median 3.0" in notes
    assert enc.encode({"x": token})[0] == 3.0
    assert enc.encode_many({"x": values})[2, 0] == 3.0


def test_median_imputation_matches_numpy():
    rng = np.random.default_rng(1)
    ages = rng.integers(18, 90, size=200).astype(float)
    holes = rng.choice(200, size=12, replace=False)
    values = [str(int(a)) for a in ages]
    for k, i in enumerate(holes):
        values[i] = ["", "NA", None, "?"][k % 4]
    enc, notes = fit({"age": values}, label=None, normalize="none")
    median = float(np.median(np.delete(ages, holes)))
    assert (
        f"column 'age': 12 missing values in the train split, imputed with the train median {median}" in notes
    )
    out = enc.encode_many({"age": values})[:, 0]
    np.testing.assert_array_equal(out[holes], np.float32(median))


def test_categorical_missing_gets_its_own_slot():
    cols = {"city": ["Paris", "", "Lyon", None, "NA", "Paris"] * 4}
    enc, notes = fit(cols, label=None)
    assert enc.feature_names == ["city=Lyon", "city=Paris", "city=<missing>"]
    assert (
        "column 'city': 12 missing values in the train split, encoded as their own category "
        "'city=<missing>'" in notes
    )
    np.testing.assert_array_equal(enc.encode({"city": "null"}), [0, 0, 1])
    np.testing.assert_array_equal(enc.encode({"city": "Rome"}), [0, 0, 0])  # unseen: all zeros
    enc, _ = fit({"city": ["Paris", "Lyon"] * 4}, label=None)  # no missing in train: no slot
    np.testing.assert_array_equal(enc.encode({"city": None}), [0, 0])


def test_non_finite_numbers_count_as_missing():
    values = [1.0, float("inf"), 2.0, "-inf", 5.0, 4.0, float("nan")]
    enc, notes = fit({"x": values}, label=None, normalize="none")
    assert "column 'x': 2 non-finite values (inf) in the train split treated as missing" in notes
    assert "column 'x': 3 missing values in the train split, imputed with the train median 3.0" in notes
    assert enc.encode({"x": float("-inf")})[0] == 3.0
    assert np.isfinite(enc.encode_many({"x": values})).all()


def test_missing_refuse_names_column_row_and_value():
    with pytest.raises(
        DataError, match=r"train.csv: row 3, column 'x': missing value 'N/A', and data.missing"
    ):
        fit({"x": [1, 2, "N/A"]}, label=None, missing="refuse")
    with pytest.raises(DataError, match=r"row 2, column 'c': missing value None"):
        fit({"c": ["a", None]}, label=None, missing="refuse")
    enc, _ = fit({"x": [1, 2, 3], "c": ["a", "b", "a"]}, label=None, missing="refuse")
    with pytest.raises(DataError, match="record: column 'x': missing value ''"):
        enc.encode({"x": "", "c": "a"})
    with pytest.raises(DataError, match="row 2, column 'c': missing value '\\?'"):
        enc.encode_many({"x": [1, 2], "c": ["a", "?"]})


def test_column_with_no_values():
    cols = {"empty": ["", None, "NA"] * 3, "x": list(range(9))}
    enc, notes = fit(cols, label=None)
    assert enc.columns == ["x"]
    assert "column 'empty' has no value in the train split (all 9 missing); excluded" in notes
    with pytest.raises(DataError, match="column 'empty' \\(listed by you\\) has no value"):
        fit(cols, label=None, features=["empty", "x"])


# -------------------------------------------------------------------------------------- normalising


def test_standard_normalisation_matches_numpy_and_leaves_onehot():
    rng = np.random.default_rng(2)
    a, b = rng.normal(5, 3, size=50), rng.uniform(-1, 1, size=50)
    cols = {"a": a.tolist(), "b": b.tolist(), "const": [7.5] * 50, "c": ["p", "q"] * 25}
    enc, _ = fit(cols, label=None)
    out = enc.encode_many(cols)
    np.testing.assert_allclose(out[:, 0], (a - a.mean()) / a.std(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 1], (b - b.mean()) / b.std(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[:, 2], 0.0)  # constant: std 1, so (7.5 - 7.5) / 1
    np.testing.assert_array_equal(out[:, 3:], [[1, 0], [0, 1]] * 25)
    assert enc.encode({"a": 1e6, "b": 0, "const": 1e6, "c": "q"})[2] == np.float32(1e6 - 7.5)


def test_standard_normalisation_counts_imputed_values():
    values = [1.0, 2.0, None, 10.0]
    enc, _ = fit({"x": values}, label=None)
    filled = np.array([1.0, 2.0, 2.0, 10.0])
    expected = (filled - filled.mean()) / filled.std()
    np.testing.assert_allclose(enc.encode_many({"x": values})[:, 0], expected, rtol=1e-6)


def test_global_and_none_normalisation_on_digits():
    from sklearn.datasets import load_digits

    images = load_digits().data.reshape(-1, 1, 8, 8)
    cols = {"image": images, "label": load_digits().target}
    enc, _ = fit(cols, label="label", normalize="global")
    assert enc.input_shape == (1, 8, 8)
    out = enc.encode_many(cols)
    assert out.shape == (len(images), 1, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, (images - images.mean()) / images.std(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(enc.encode({"image": images[5].tolist()}), out[5])
    raw, _ = fit(cols, label="label", normalize="none")
    np.testing.assert_array_equal(raw.encode_many(cols), images.astype(np.float32))
    per_pixel, _ = fit(cols, label="label", normalize="standard")  # corner pixels are always 0: std 1
    assert np.isfinite(per_pixel.encode_many(cols)).all()


# ------------------------------------------------------------------------------------- predict time


def test_predict_time_errors_name_column_and_value():
    enc, _ = fit(table())
    with pytest.raises(DataError, match="record: column 'city' is absent, but the model was trained with it"):
        enc.encode({"age": 30, "smoker": False})
    with pytest.raises(DataError, match="record: column 'age': 'abc' is not a number"):
        enc.encode({"age": "abc", "city": "Paris", "smoker": False})
    with pytest.raises(DataError, match="record: column 'age': True is not a number"):
        enc.encode({"age": True, "city": "Paris", "smoker": False})
    cols = table(age=[30, "3,5"] + AGES[2:])
    with pytest.raises(DataError, match="eval.csv: row 2, column 'age': '3,5' is not a number"):
        enc.encode_many(cols, where="eval.csv")
    with pytest.raises(DataError, match="eval.csv: column 'smoker' is absent"):
        enc.encode_many({"age": AGES, "city": CITIES}, where="eval.csv")


def test_boolean_column_accepts_booleans_and_numbers():
    enc, _ = fit(table(), normalize="none")
    base = {"age": 30, "city": "Paris"}
    ones = [enc.encode(base | {"smoker": v})[1] for v in (True, np.bool_(True), 1, "true", " TRUE ")]
    assert ones == [1.0] * 5
    assert enc.encode(base | {"smoker": False})[1] == 0.0


def test_encode_many_equals_encode_row_by_row():
    cols = table(
        age=[a if a % 4 else "" for a in AGES], city=[c if i % 5 else None for i, c in enumerate(CITIES)]
    )
    enc, _ = fit(cols)
    np.testing.assert_array_equal(enc.encode_many(cols), np.stack([enc.encode(r) for r in records(cols)]))


def test_no_nan_ever():
    rng = np.random.default_rng(3)
    junk = ["", "NA", None, float("nan"), float("inf"), "-inf", "?"]
    cols = {
        "x": [junk[i % 7] if i % 3 == 0 else float(rng.normal()) for i in range(300)],
        "c": [junk[i % 7] if i % 4 == 0 else "abc"[i % 3] for i in range(300)],
        "const": [4.0] * 300,
    }
    for normalize in ("standard", "global", "none"):
        enc, _ = fit(cols, label=None, normalize=normalize)
        assert np.isfinite(enc.encode_many(cols)).all()
        for value in junk:
            assert np.isfinite(enc.encode({"x": value, "c": value, "const": value})).all()
        assert np.isfinite(enc.encode({"x": 1e30, "c": "unseen", "const": -1e30})).all()


def test_numbers_beyond_float32_are_refused_not_inf():
    enc, _ = fit({"x": [1.0, 2.0, 3.0]}, label=None, normalize="none")
    with np.errstate(all="raise"):  # and no NumPy warning on the way
        with pytest.raises(DataError, match="record: column 'x': a value too large to encode as float32"):
            enc.encode({"x": 1e300})
        with pytest.raises(DataError, match="data: row 2, column 'x': a value too large"):
            enc.encode_many({"x": [1.0, -1e300]})
        with pytest.raises(DataError, match="train.csv: column 'x': a value too large to normalise"):
            fit({"x": [1e308, 1.7e308, -1e308]}, label=None)


# ------------------------------------------------------------------------------------ state, threads


def test_state_round_trip_through_json():
    cols = table(age=[a if a % 4 else "NA" for a in AGES], img=[[i, -i] for i in range(N)])
    for normalize in ("standard", "global", "none"):
        enc, _ = fit(cols, normalize=normalize)
        state = json.loads(json.dumps(enc.state()))
        again = TabularEncoder.from_state(state)
        assert again.feature_names == enc.feature_names and again.input_shape == enc.input_shape
        np.testing.assert_array_equal(again.encode_many(cols), enc.encode_many(cols))
        record = {"age": 1, "city": "Rome", "smoker": 1, "img": [0, 0]}
        np.testing.assert_array_equal(again.encode(record), enc.encode(record))
    with pytest.raises(DataError, match="format 99 is not supported"):
        TabularEncoder.from_state(state | {"format": 99})


def test_encode_from_eight_threads_gives_the_same_results():
    cols = table(age=[a if a % 4 else "" for a in AGES])
    enc, _ = fit(cols)
    rows = records(cols) * 20
    expected = np.stack([enc.encode(r) for r in rows])
    results: list = [None] * 8

    def work(k):
        results[k] = np.stack([enc.encode(r) for r in rows[k:] + rows[:k]])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, got in enumerate(results):
        np.testing.assert_array_equal(got, np.roll(expected, -k, axis=0))


def test_failed_fit_keeps_the_previous_fit():
    enc, _ = fit(table())
    before = enc.encode_many(table())
    with pytest.raises(DataError):
        enc.fit({"x": [1, 2, "N/A"]}, None, missing="refuse")
    np.testing.assert_array_equal(enc.encode_many(table()), before)


# ---------------------------------------------------------------------------------------- fit errors


def test_fit_refuses_bad_arguments():
    with pytest.raises(DataError, match="data.normalize: unknown value 'minmax'"):
        fit(table(), normalize="minmax")
    with pytest.raises(DataError, match="data.missing: unknown value 'drop'"):
        fit(table(), missing="drop")
    with pytest.raises(DataError, match="data.label: column 'target' is not in train.csv"):
        fit(table(), label="target")
    with pytest.raises(
        DataError, match="data.features: column 'agee' is not in train.csv.*Did you mean 'age'"
    ):
        fit(table(), features=["agee"])
    with pytest.raises(DataError, match="'y' is the label column"):
        fit(table(), features=["age", "y"])
    with pytest.raises(DataError, match="data.categorical: column 'town'"):
        fit(table(), categorical_columns=["town"])
    with pytest.raises(DataError, match="different lengths"):
        fit({"a": [1, 2], "b": [1]}, label=None)
    with pytest.raises(DataError, match="no feature columns left \\(excluded: id\\)"):
        fit({"id": [1, 2], "y": [0, 1]})
    with pytest.raises(RuntimeError, match="not fitted"):
        TabularEncoder().encode({})


# ---------------------------------------------------------------------------------------- real data


def test_wine_with_injected_categorical_missing_and_id_columns():
    from sklearn.datasets import load_wine

    wine = load_wine()
    n = len(wine.target)
    rng = np.random.default_rng(4)
    columns = {"row_no": [str(i + 1) for i in range(n)]}  # distinct integers as text: an id
    for j, name in enumerate(wine.feature_names):
        columns[name] = wine.data[:, j].tolist()
    holes = rng.choice(n, size=9, replace=False)
    for i in holes:
        columns["alcohol"][i] = "NA"
    columns["region"] = [["north", "south", "east", ""][i % 4] for i in range(n)]
    columns["cultivar"] = [wine.target_names[t] for t in wine.target]

    enc, notes = fit(columns, label="cultivar")
    assert enc.excluded == ["row_no"]
    assert enc.input_shape == (13 + 4,)  # 13 numbers, 3 regions + <missing>
    assert enc.feature_names[-4:] == ["region=east", "region=north", "region=south", "region=<missing>"]
    median = float(np.median(np.delete(wine.data[:, 0], holes)))
    assert (
        f"column 'alcohol': 9 missing values in the train split, imputed with the train median {median}"
        in notes
    )
    out = enc.encode_many(columns)
    assert np.isfinite(out).all()
    filled = wine.data.copy()
    filled[holes, 0] = median
    np.testing.assert_allclose(out[:, :13], (filled - filled.mean(0)) / filled.std(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out[np.arange(n) % 4 == 3, -1], 1.0)
    kept, label_notes = clean_labels(columns["cultivar"], "wine", "cultivar")
    assert len(kept) == n and label_notes == []


def test_diabetes_regression_targets_and_mixed_types():
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    columns = {name: data.data[:, j] for j, name in enumerate(data.feature_names)}  # NumPy columns
    columns["target"] = [str(v) for v in data.target]
    columns["target"][10] = ""
    kept, notes = clean_labels(
        columns["target"], "diabetes.csv", "target", row_numbers=range(2, 444), policy="drop"
    )
    assert len(kept) == len(data.target) - 1
    assert notes == ["1 row with a missing label in column 'target' was left out (row 12)"]
    enc, _ = fit(columns, label="target", normalize="none")
    assert enc.columns == list(data.feature_names)
    np.testing.assert_array_equal(enc.encode_many(columns), data.data.astype(np.float32))
    assert math.isclose(enc.encode({k: v[7] for k, v in columns.items()})[2], data.data[7, 2], rel_tol=1e-6)


def test_predict_mode_refuses_what_training_never_imputed_and_encodes_the_rest_alike():
    cols = {"a": [1.0, None, 3.0, 4.0], "b": [1.0, 2.0, 3.0, 4.0], "c": ["u", None, "v", "u"],
            "d": ["p", "q", "p", "q"], "y": [0, 1, 0, 1]}  # fmt: skip
    enc, _ = fit(cols, label="y")
    state = enc.state()["columns"]
    assert [c.get("imputed") for c in state[:2]] == [True, False]
    ok = {"a": [None, 2.0], "b": [1.5, "2"], "c": [None, "w"], "d": ["p", "zz"]}
    np.testing.assert_array_equal(enc.encode_many(ok, predict=True), enc.encode_many(ok))
    for column, value, match in [
        ("b", None, "missing value None, and the column had no missing values in training"),
        ("b", math.inf, "inf is not a finite number"),
        ("a", "inf", "'inf' is not a finite number"),
        ("d", "NA", "missing value 'NA'"),
        ("c", ["u"], r"\['u'\] is a list, not a category"),
    ]:
        with pytest.raises(DataError, match=rf"in.csv: row 12, column '{column}': {match}"):
            enc.encode_many({**ok, column: [ok[column][0], value]}, where="in.csv", row_numbers=[11, 12],
                            predict=True)  # fmt: skip
    old = enc.state()
    for c in old["columns"]:
        c.pop("imputed", None)  # a task.json written before 'imputed' was recorded imputes as it did
    np.testing.assert_array_equal(
        TabularEncoder.from_state(old).encode_many({**ok, "b": [None, 2.0]}, predict=True),
        enc.encode_many({**ok, "b": [None, 2.0]}),
    )
