"""Preprocessing: standardization fitted on training rows, one-hot, imputation, errors, labels."""

import numpy as np
import pytest

from engine import InputError
from engine.labels import classes_array, encode_labels, regression_target
from engine.preprocess import Preprocessor
from engine.table import read_table


def _obj(*values):
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _fit(X, rows=None, standardize=True, feature_names=None):
    return Preprocessor.fit(read_table(X, feature_names), rows=rows, standardize=standardize)


def test_standardization_uses_training_rows_only():
    x = np.array([1.0, 2.0, 3.0, 100.0])
    pre = _fit({"x": x}, rows=np.array([0, 1, 2]))
    assert pre.center[0] == pytest.approx(2.0)
    assert pre.scale[0] == pytest.approx(np.std([1.0, 2.0, 3.0]))
    Z = pre.transform({"x": x})
    np.testing.assert_allclose(Z[:, 0], (x - 2.0) / np.std([1.0, 2.0, 3.0]))


def test_standardized_training_columns_have_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 3.0, size=(200, 3))
    pre = _fit(X)
    Z = pre.transform(X)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=0), 1.0, atol=1e-12)


def test_constant_column_gets_scale_one():
    pre = _fit({"c": np.full(5, 7.0)})
    assert pre.scale[0] == 1.0
    np.testing.assert_array_equal(pre.transform({"c": np.array([7.0, 8.0])})[:, 0], [0.0, 1.0])


def test_standardize_off_keeps_raw_values_but_imputes_mean():
    pre = _fit({"x": np.array([1.0, 3.0, np.nan])}, standardize=False)
    Z = pre.transform({"x": np.array([10.0, np.nan])})
    np.testing.assert_array_equal(Z[:, 0], [10.0, 2.0])


def test_nan_is_imputed_with_training_mean():
    x = np.array([1.0, np.nan, 3.0, 5.0])
    pre = _fit({"x": x})
    assert pre.fill[0] == pytest.approx(3.0)
    Z = pre.transform({"x": x})
    # The imputed mean standardizes to exactly 0.
    assert Z[1, 0] == 0.0
    assert not np.isnan(Z).any()


def test_none_in_object_numeric_column_is_missing():
    pre = _fit({"x": np.array([1.0, 2.0, 3.0])})
    Z = pre.transform({"x": _obj(None, 2.0)})
    np.testing.assert_array_equal(Z[:, 0], [0.0, 0.0])


def test_one_hot_sorted_categories_and_missing_row():
    city = _obj("Oslo", "Bergen", None, "Oslo", "Tromso")
    pre = _fit({"city": city, "x": np.arange(5.0)})
    assert pre.kinds == ["categorical", "numeric"]
    assert pre.categories[0] == ["Bergen", "Oslo", "Tromso"]
    assert pre.encoded_names == ["city=Bergen", "city=Oslo", "city=Tromso", "x"]
    assert pre.groups == [(0, 3), (3, 4)]
    Z = pre.transform({"city": city, "x": np.arange(5.0)})
    np.testing.assert_array_equal(Z[:, :3], [[0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]])


def test_categories_come_from_training_rows_only():
    city = _obj("a", "b", "c")
    pre = _fit({"city": city}, rows=np.array([0, 1]))
    assert pre.categories[0] == ["a", "b"]
    # At fit time the validation rows may hold unseen categories: they encode as all zeros.
    Z = pre.transform({"city": city}, unknown="ignore")
    np.testing.assert_array_equal(Z, [[1, 0], [0, 1], [0, 0]])


def test_unknown_category_at_predict_names_column_and_row():
    pre = _fit({"city": _obj("a", "b"), "x": np.array([1.0, 2.0])})
    with pytest.raises(InputError) as info:
        pre.transform({"city": _obj("a", "b", "zzz"), "x": np.zeros(3)})
    err = info.value
    assert (err.code, err.column, err.row) == ("unknown_category", "city", 2)
    assert "zzz" in err.msg and "city" in err.msg


def test_missing_column_names_it():
    pre = _fit({"a": np.ones(3), "b": np.arange(3.0)})
    with pytest.raises(InputError) as info:
        pre.transform({"a": np.ones(2)})
    assert (info.value.code, info.value.column) == ("missing_column", "b")


def test_extra_columns_are_ignored_and_order_follows_fit():
    pre = _fit({"a": np.array([0.0, 2.0]), "b": np.array([10.0, 30.0])})
    Z = pre.transform({"zzz": np.zeros(1), "b": np.array([30.0]), "a": np.array([0.0])})
    np.testing.assert_array_equal(Z, [[-1.0, 1.0]])


def test_string_in_numeric_column_is_not_numeric():
    pre = _fit({"x": np.array([1.0, 2.0])})
    with pytest.raises(InputError) as info:
        pre.transform({"x": _obj(1.0, "abc")})
    assert (info.value.code, info.value.column, info.value.row) == ("not_numeric", "x", 1)


def test_infinity_is_non_finite():
    pre = _fit({"x": np.array([1.0, 2.0])})
    with pytest.raises(InputError) as info:
        pre.transform(np.array([[1.0], [np.inf]]))
    assert (info.value.code, info.value.column, info.value.row) == ("non_finite", "x", 1)


def test_mixed_object_column_is_rejected_at_fit():
    with pytest.raises(InputError) as info:
        _fit({"m": _obj("a", 1.0)})
    assert (info.value.code, info.value.column, info.value.row) == ("mixed_types", "m", 1)


def test_array_input_names_columns_and_matches_mapping_path():
    X = np.array([[1.0, 10.0], [2.0, np.nan], [4.0, 30.0]])
    pre = _fit(X)
    assert pre.feature_names == ["x0", "x1"]
    from_array = pre.transform(X)
    from_mapping = pre.transform({"x0": X[:, 0], "x1": X[:, 1]})
    np.testing.assert_array_equal(from_array, from_mapping)


def test_array_with_wrong_width_is_bad_shape():
    pre = _fit(np.ones((3, 2)))
    with pytest.raises(InputError) as info:
        pre.transform(np.ones((1, 3)))
    assert info.value.code == "bad_shape"


def test_scalars_are_one_row():
    pre = _fit({"a": np.array([0.0, 2.0]), "c": _obj("u", "v")})
    np.testing.assert_array_equal(pre.transform({"a": 2.0, "c": "v"}), [[1.0, 0.0, 1.0]])


def test_transform_dtype():
    pre = _fit({"a": np.array([0.0, 2.0]), "c": _obj("u", "v")})
    assert pre.transform({"a": [1.0], "c": ["u"]}, dtype=np.float32).dtype == np.float32


def test_state_round_trip_transforms_identically():
    X = {"a": np.array([1.0, np.nan, 5.0]), "c": _obj("x", None, "y")}
    pre = _fit(X)
    meta, arrays = pre.to_state()
    again = Preprocessor.from_state(meta, arrays)
    np.testing.assert_array_equal(again.transform(X), pre.transform(X))


@pytest.mark.parametrize(
    ("y", "classes", "kind"),
    [
        (np.array([3, 1, 3, 2]), [1, 2, 3], int),
        (_obj("yes", "no", "yes"), ["no", "yes"], str),
        (np.array(["b", "a"]), ["a", "b"], str),
        (np.array([0.5, 1.5, 0.5]), [0.5, 1.5], float),
        (_obj(1, 0, 1), [0, 1], int),
        (np.array([True, False]), [False, True], bool),
    ],
)
def test_labels_round_trip_with_python_types(y, classes, kind):
    got, idx = encode_labels(y)
    assert got == classes
    assert all(type(c) is kind for c in got)
    decoded = classes_array(got)[idx].tolist()
    assert decoded == list(y)
    assert all(type(v) is kind for v in decoded)


def test_missing_label_names_row():
    with pytest.raises(InputError) as info:
        encode_labels(_obj("a", None, "b"))
    assert (info.value.code, info.value.row) == ("missing_target", 1)
    with pytest.raises(InputError) as info:
        encode_labels(np.array([1.0, np.nan]))
    assert (info.value.code, info.value.row) == ("missing_target", 1)


def test_mixed_labels_rejected():
    with pytest.raises(InputError) as info:
        encode_labels(_obj("a", 1))
    assert info.value.code == "mixed_types"


def test_regression_target_checks():
    np.testing.assert_array_equal(regression_target(_obj(1, 2.5)), [1.0, 2.5])
    for y, code, row in [
        (np.array([1.0, np.nan]), "missing_target", 1),
        (np.array([np.inf, 1.0]), "non_finite", 0),
        (_obj(1.0, "x"), "not_numeric", 1),
    ]:
        with pytest.raises(InputError) as info:
            regression_target(y)
        assert (info.value.code, info.value.row) == (code, row)


def test_large_inputs_take_the_vectorised_one_hot_with_the_same_result():
    rng = np.random.default_rng(0)
    values = rng.choice(["a", "b", "c"], size=300).astype(object)
    values[::11] = None
    values[5] = float("nan")
    pre = _fit({"v": values})
    big = pre.transform({"v": values})
    rows = [pre.transform({"v": values[i : i + 1]})[0] for i in range(0, 300, 7)]
    np.testing.assert_array_equal(big[::7], np.array(rows))
    assert big[0].sum() == 0 and big[5].sum() == 0
    assert (big.sum(axis=1) <= 1).all()


def test_unknown_category_in_a_large_input_names_the_first_bad_row():
    pre = _fit({"v": _obj(*(["a", "b"] * 50))})
    values = _obj(*(["a", "b"] * 50))
    values[77] = "zzz"
    values[90] = "yyy"
    with pytest.raises(InputError) as info:
        pre.transform({"v": values})
    assert (info.value.code, info.value.row) == ("unknown_category", 77)


# --- the vectorised all-numeric path agrees with the column path ---------------------------------


def _numeric_data(seed=0, n=257, d=6):
    rng = np.random.default_rng(seed)
    X = rng.normal(3.0, 2.0, size=(n, d)) * rng.uniform(0.1, 100.0, size=d)
    X[rng.random((n, d)) < 0.1] = np.nan
    X[:, 2] = 7.5  # constant: scale 1
    X[:, 4] = np.nan  # no value at all: mean 0, scale 1
    return X


def _object_columns(X):
    # object dtype forces the column path (the vectorised one takes only float arrays)
    return {f"x{j}": _obj(*X[:, j].tolist()) for j in range(X.shape[1])}


@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("with_rows", [False, True])
def test_every_container_gives_bit_identical_statistics(standardize, with_rows):
    X = _numeric_data()
    rows = np.arange(0, len(X), 3) if with_rows else None
    ref = _fit(X, rows=rows, standardize=standardize)
    for other in (
        _object_columns(X),  # column path
        {f"x{j}": X[:, j] for j in range(X.shape[1])},  # mapping of float arrays
        np.asfortranarray(X),  # another memory layout
    ):
        pre = _fit(other, rows=rows, standardize=standardize)
        assert pre.feature_names == ref.feature_names and pre.kinds == ref.kinds
        for attr in ("center", "scale", "fill"):
            np.testing.assert_array_equal(getattr(pre, attr), getattr(ref, attr))
        np.testing.assert_array_equal(pre.transform(X), ref.transform(X))
    assert ref.scale[2] == 1.0 and ref.scale[4] == 1.0 and ref.fill[4] == 0.0


def test_all_numeric_inputs_encode_identically_on_every_path():
    X = _numeric_data(seed=1, n=40)
    pre = _fit(X)
    from_array = pre.transform(X, dtype=np.float32)
    from_floats = pre.transform({f"x{j}": X[:, j] for j in range(X.shape[1])}, dtype=np.float32)
    from_objects = pre.transform(_object_columns(X), dtype=np.float32)
    assert from_array.dtype == np.float32
    np.testing.assert_array_equal(from_array, from_floats)
    np.testing.assert_array_equal(from_array, from_objects)
    for i in (0, 7, 39):
        scalars = {f"x{j}": float(X[i, j]) for j in range(X.shape[1])}
        np.testing.assert_array_equal(
            pre.transform(scalars, dtype=np.float32), from_array[i : i + 1]
        )


def test_one_row_mapping_with_odd_scalars_takes_the_column_path():
    pre = _fit({"a": np.array([0.0, 2.0]), "b": np.array([1.0, 3.0])})
    np.testing.assert_array_equal(pre.transform({"a": True, "b": None}), [[0.0, 0.0]])
    with pytest.raises(InputError) as info:
        pre.transform({"a": 1.0, "b": "x"})
    assert (info.value.code, info.value.column, info.value.row) == ("not_numeric", "b", 0)
    with pytest.raises(InputError) as info:
        pre.transform({"a": 1.0})
    assert (info.value.code, info.value.column) == ("missing_column", "b")


def test_vectorised_transform_names_the_first_infinite_column_and_row():
    pre = _fit(np.ones((3, 3)) * np.arange(3.0)[:, None])
    X = np.zeros((4, 3))
    X[3, 0] = np.inf
    X[1, 2] = -np.inf
    with pytest.raises(InputError) as info:
        pre.transform(X)
    assert (info.value.code, info.value.column, info.value.row) == ("non_finite", "x0", 3)
    with pytest.raises(InputError) as info:
        pre.transform({"x0": 1.0, "x1": 2.0, "x2": float("inf")})
    assert (info.value.code, info.value.column, info.value.row) == ("non_finite", "x2", 0)


@pytest.mark.parametrize("path", ["matrix", "columns"])
def test_inf_in_the_training_split_names_the_input_row(path):
    X = np.ones((5, 2))
    X[3, 1] = np.inf
    rows = np.array([1, 3, 4])
    with pytest.raises(InputError) as info:
        _fit(X if path == "matrix" else _object_columns(X), rows=rows)
    assert (info.value.code, info.value.column, info.value.row) == ("non_finite", "x1", 3)
    assert "row 3" in info.value.msg


def test_read_table_takes_the_matrix_only_for_plainly_numeric_input():
    X = np.arange(6.0).reshape(3, 2)
    table = read_table(X)
    assert table.names == ["x0", "x1"] and table.matrix is X  # no copy of a float64 array
    assert read_table(X.astype(int), ["a", "b"]).matrix.dtype == np.float64
    table = read_table({"b": X[:, 1], "a": X[:, 0]})
    assert table.names == ["b", "a"]
    np.testing.assert_array_equal(table.matrix, X[:, ::-1])
    assert read_table({"a": X[:, 0], "s": _obj("u", "v", "w")}, ["a"]).matrix is not None
    assert read_table({"a": X[:, 0], "s": _obj("u", "v", "w")}).matrix is None
    with pytest.raises(InputError) as info:
        read_table({"a": X[:, 0], "b": X[:2, 1]})
    assert info.value.code == "length_mismatch"
    with pytest.raises(InputError) as info:
        read_table(X, ["a", "a"])
    assert info.value.code == "duplicate_column"
    assert read_table(np.array([["a", "b"]])).matrix is None


def test_float32_input_is_read_as_is_with_float64_statistics():
    rng = np.random.default_rng(5)
    X32 = (1e4 + rng.normal(size=(3000, 3))).astype(np.float32)
    assert read_table(X32).matrix is X32
    fast = _fit(X32)
    slow = _fit(X32.astype(np.float64))
    # float32 accumulation would be off by ~1e-7 relative; here the statistics are the same bits
    np.testing.assert_array_equal(fast.center, slow.center)
    np.testing.assert_array_equal(fast.scale, slow.scale)
    np.testing.assert_array_equal(
        fast.transform(X32, dtype=np.float32),
        slow.transform(X32.astype(np.float64), dtype=np.float32),
    )
    raw, Z = Preprocessor.fit_transform(read_table(X32), standardize=False, dtype=np.float32)
    assert Z is X32  # identity encoding of an all-finite matrix in the target dtype: no copy
    assert raw.transform(X32, dtype=np.float32) is not X32


def test_fit_transform_checks_rows_outside_the_fit_and_imputes_missing_values():
    X = np.arange(12.0).reshape(6, 2)
    names = ["a", "b"]
    X_nan = X.copy()
    X_nan[2, 1] = np.nan
    pre, Z = Preprocessor.fit_transform(read_table(X_nan, names), standardize=False)
    assert Z[2, 1] == pre.fill[1] == pytest.approx(np.mean([1.0, 3.0, 7.0, 9.0, 11.0]))
    X_inf = X.copy()
    X_inf[4, 0] = np.inf  # only in a row outside the fit: the encoding must still catch it
    with pytest.raises(InputError) as info:
        Preprocessor.fit_transform(read_table(X_inf, names), rows=np.array([0, 1, 2]))
    assert (info.value.code, info.value.column, info.value.row) == ("non_finite", "a", 4)


def test_dataframe_like_input_is_read_by_column_name():
    class Frame:
        """The two things read_table uses of a DataFrame: .columns and frame[name]."""

        def __init__(self, data):
            self.data = data
            self.columns = list(data)

        def __getitem__(self, name):
            return self.data[name]

    X = _numeric_data(seed=2, n=30)
    frame = Frame({f"x{j}": list(X[:, j]) for j in range(X.shape[1])})
    pre = _fit(frame)
    assert pre.feature_names == [f"x{j}" for j in range(X.shape[1])]
    np.testing.assert_array_equal(pre.center, _fit(X).center)
    np.testing.assert_array_equal(pre.transform(frame), _fit(X).transform(X))
