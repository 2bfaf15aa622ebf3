"""End-to-end quality on scikit-learn's bundled datasets (held-out test split, fixed seeds)."""

import numpy as np
import pytest

import engine

datasets = pytest.importorskip("sklearn.datasets")
model_selection = pytest.importorskip("sklearn.model_selection")
linear_model = pytest.importorskip("sklearn.linear_model")
metrics = pytest.importorskip("sklearn.metrics")


def _split(X, y, stratify=True):
    return model_selection.train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y if stratify else None
    )


def _accuracy(model, X, y):
    return float(np.mean(model.predict(X) == y))


def test_mlp_on_digits():
    X_tr, X_te, y_tr, y_te = _split(*datasets.load_digits(return_X_y=True))
    spec = {
        "model": {"hidden_layers": [64], "activation": "relu"},
        "optimizer": {"name": "adam", "learning_rate": 0.003},
        "epochs": 20,
    }
    model = engine.fit(spec, X_tr, y_tr)
    assert _accuracy(model, X_te, y_te) >= 0.95


def test_logistic_regression_on_breast_cancer():
    X_tr, X_te, y_tr, y_te = _split(*datasets.load_breast_cancer(return_X_y=True))
    spec = {
        "loss": "binary_cross_entropy",
        "model": {"hidden_layers": []},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "epochs": 30,
    }
    model = engine.fit(spec, X_tr, y_tr)
    assert model.classes == [0, 1]
    assert _accuracy(model, X_te, y_te) >= 0.95


def test_linear_svm_on_digits():
    X_tr, X_te, y_tr, y_te = _split(*datasets.load_digits(return_X_y=True))
    spec = {
        "loss": "multiclass_hinge",
        "model": {"hidden_layers": []},
        "regularization": {"l2": 1e-4},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "epochs": 20,
    }
    model = engine.fit(spec, X_tr, y_tr)
    assert _accuracy(model, X_te, y_te) >= 0.93


def test_linear_regression_on_diabetes_matches_ridge():
    X_tr, X_te, y_tr, y_te = _split(*datasets.load_diabetes(return_X_y=True), stratify=False)
    ridge = linear_model.Ridge(alpha=1.0).fit(X_tr, y_tr)
    ridge_r2 = metrics.r2_score(y_te, ridge.predict(X_te))
    spec = {
        "loss": "mse",
        "model": {"hidden_layers": []},
        "optimizer": {"name": "adam", "learning_rate": 0.5},
        "epochs": 100,
    }
    model = engine.fit(spec, X_tr, y_tr)
    r2 = metrics.r2_score(y_te, model.predict(X_te))
    assert abs(r2 - ridge_r2) <= 0.05


def test_lasso_on_diabetes_drops_features_and_stays_accurate():
    X_tr, X_te, y_tr, y_te = _split(*datasets.load_diabetes(return_X_y=True), stratify=False)
    names = [f"f{j}" for j in range(X_tr.shape[1])]
    spec = {
        "loss": "mse",
        "model": {"hidden_layers": []},
        "regularization": {"l1": 10.0},
        "optimizer": {"name": "fista"},
        "epochs": 200,
    }
    model = engine.fit(spec, X_tr, y_tr, feature_names=names)
    stats = engine.sparsity(model)
    assert stats["dropped_features"], "a strong L1 penalty should zero some coefficients exactly"
    assert sorted(stats["dropped_features"] + stats["selected_features"]) == sorted(names)
    assert metrics.r2_score(y_te, model.predict(X_te)) > 0.3
