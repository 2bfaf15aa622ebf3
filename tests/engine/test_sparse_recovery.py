"""Exact sparsity: a linear model with mse + L1 is the Lasso, and recovers the true support.

Scaling. Our objective for a linear model ``scores = X w + b`` with mse and penalties is::

    F(w, b) = (1/n) ||y - X w - b||^2 + l1 ||w||_1 + l2 ||w||^2

scikit-learn's Lasso minimises ``(1/(2n)) ||y - X w - b||^2 + alpha ||w||_1`` and its ElasticNet
``(1/(2n)) ||y - X w - b||^2 + alpha * l1_ratio ||w||_1 + 0.5 * alpha * (1 - l1_ratio) ||w||^2``.
Multiplying those by 2 gives ``F`` with ``l1 = 2 * alpha`` (Lasso), and
``l1 = 2 * alpha * l1_ratio``, ``l2 = alpha * (1 - l1_ratio)`` (ElasticNet): same minimiser, and
``F = 2 * sklearn objective``.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression

import engine
from engine.network import Network
from engine.trainer import train

N, D = 500, 50
SUPPORT = np.array([3, 11, 19, 27, 42])
COEF = np.array([2.0, -1.5, 1.0, -0.8, 0.6])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    X = rng.standard_normal((N, D))
    X = (X - X.mean(axis=0)) / X.std(axis=0)  # standardized, as engine.fit would do
    w = np.zeros(D)
    w[SUPPORT] = COEF
    y = X @ w + 0.5 + 0.1 * rng.standard_normal(N)
    return X, y


def objective(X, y, w, b, l1, l2=0.0) -> float:
    r = y - X @ w - b
    return float(r @ r / len(y) + l1 * np.abs(w).sum() + l2 * (w @ w))


def fit_linear(
    X,
    y,
    *,
    l1,
    l2=0.0,
    method="proximal",
    optimizer=None,
    epochs=50,
    batch_size=32,
    dtype="float64",
):
    spec = {
        "model": {"hidden_layers": [], "activation": "linear", "init": "glorot_uniform"},
        "loss": "mse",
        "regularization": {"l1": l1, "l2": l2, "group_l1": 0.0, "l1_method": method},
        "dropout": {"input": 0.0, "hidden": 0.0, "mode": "inverted"},
        "optimizer": optimizer or {"name": "fista"},
        "epochs": epochs,
        "batch_size": batch_size,
        "shuffle": True,
        "dtype": dtype,
    }
    net = Network.build(spec, D, 1, rng=np.random.default_rng(0), output_bias=np.array([y.mean()]))
    result = train(net, X.astype(dtype), y.astype(dtype), spec, rng=np.random.default_rng(1))
    w = net.dense_layers[0].params["W"][:, 0].astype(np.float64)
    b = float(net.dense_layers[0].params["b"][0])
    return w, b, result


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lasso_recovers_the_support_and_matches_sklearn(data, dtype):
    X, y = data
    alpha = 0.05
    l1 = 2 * alpha  # see the module docstring
    w, b, _ = fit_linear(X, y, l1=l1, dtype=dtype)
    assert set(np.flatnonzero(w)) == set(SUPPORT)  # exact zeros everywhere else

    sk = Lasso(alpha=alpha, tol=1e-10, max_iter=100_000).fit(X, y)
    assert set(np.flatnonzero(sk.coef_)) == set(SUPPORT)
    ours = objective(X, y, w, b, l1)
    best = objective(X, y, sk.coef_, sk.intercept_, l1)  # = 2 * sklearn's own objective
    assert ours <= 1.01 * best
    np.testing.assert_allclose(w, sk.coef_, atol=1e-3 if dtype == "float64" else 1e-2)


def test_sgd_with_proximal_l1_and_decay_gets_close_with_exact_zeros(data):
    X, y = data
    l1 = 0.1
    opt = {"name": "sgd", "learning_rate": 0.02, "decay": 1e-3}
    # batches of 100 keep the gradient noise of the irrelevant coefficients below l1, so the
    # soft-threshold holds them at exactly zero
    w, b, _ = fit_linear(X, y, l1=l1, optimizer=opt, epochs=60, batch_size=100)
    assert set(SUPPORT) <= set(np.flatnonzero(w))
    noise = np.delete(w, SUPPORT)
    # close to the Lasso, not equal: a borderline coefficient may keep a tiny stochastic value
    assert np.count_nonzero(noise == 0.0) >= len(noise) - 3
    assert np.abs(noise).max() < 1e-3
    sk = Lasso(alpha=l1 / 2, tol=1e-10, max_iter=100_000).fit(X, y)
    assert objective(X, y, w, b, l1) <= 1.01 * objective(X, y, sk.coef_, sk.intercept_, l1)


def test_subgradient_l1_leaves_almost_no_exact_zeros(data):
    X, y = data
    opt = {"name": "sgd", "learning_rate": 0.02, "decay": 1e-3}
    w, _, result = fit_linear(
        X, y, l1=0.1, method="subgradient", optimizer=opt, epochs=60, batch_size=100
    )
    assert np.count_nonzero(w == 0.0) <= 2
    assert result.history[-1]["zero_fraction"] <= 2 / D
    # ...although the noise coefficients are small: the subgradient only jitters around zero
    noise = np.delete(w, SUPPORT)
    assert np.abs(noise).max() < 0.05


def test_elastic_net_matches_sklearn(data):
    X, y = data
    alpha, l1_ratio = 0.1, 0.5
    l1, l2 = 2 * alpha * l1_ratio, alpha * (1 - l1_ratio)  # see the module docstring
    w, b, _ = fit_linear(X, y, l1=l1, l2=l2)
    sk = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-10, max_iter=100_000).fit(X, y)
    ours = objective(X, y, w, b, l1, l2)
    best = objective(X, y, sk.coef_, sk.intercept_, l1, l2)
    assert ours <= 1.01 * best
    assert set(np.flatnonzero(w)) == set(np.flatnonzero(sk.coef_)) == set(SUPPORT)


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "learning_rate": 0.002, "momentum": 0.9, "decay": 1e-3},
        {"name": "nesterov", "learning_rate": 0.002, "momentum": 0.9, "decay": 1e-3},
        {"name": "adam", "learning_rate": 0.05, "decay": 1e-2},
        {"name": "rmsprop", "learning_rate": 0.02, "decay": 1e-2},
        {"name": "adagrad", "learning_rate": 0.5},
        {"name": "adadelta", "learning_rate": 1.0, "eps": 1e-4},
    ],
    ids=lambda o: o["name"],
)
def test_proximal_l1_reaches_the_lasso_with_every_optimizer(data, optimizer):
    # the threshold uses each optimizer's effective step (lr/(1-mu) with momentum, per coordinate
    # for adaptive ones), so the penalty keeps its meaning: the same Lasso optimum for all
    X, y = data
    l1 = 0.1
    w, b, _ = fit_linear(X, y, l1=l1, optimizer=optimizer, epochs=60, batch_size=100)
    assert set(SUPPORT) <= set(np.flatnonzero(w))
    assert np.count_nonzero(np.delete(w, SUPPORT) == 0.0) >= D - len(SUPPORT) - 3
    sk = Lasso(alpha=l1 / 2, tol=1e-10, max_iter=100_000).fit(X, y)
    assert objective(X, y, w, b, l1) <= 1.01 * objective(X, y, sk.coef_, sk.intercept_, l1)


def test_fista_l1_logistic_regression_matches_sklearn():
    # sklearn minimises C * sum_n logloss_n + ||w||_1 (intercept not penalised with saga);
    # dividing by C * n gives our mean logloss + l1 ||w||_1 with l1 = 1 / (C * n).
    rng = np.random.default_rng(3)
    n, d = 400, 30
    X = rng.standard_normal((n, d))
    w_true = np.zeros(d)
    w_true[:4] = [2.0, -2.0, 1.5, 1.0]
    y = (X @ w_true + 0.3 + rng.logistic(size=n) > 0).astype(float)
    C = 0.1
    l1 = 1.0 / (C * n)
    spec = {
        "model": {"hidden_layers": [], "activation": "linear", "init": "glorot_uniform"},
        "loss": "binary_cross_entropy",
        "regularization": {"l1": l1, "l2": 0.0, "group_l1": 0.0, "l1_method": "proximal"},
        "optimizer": {"name": "fista"},
        "epochs": 200,
        "batch_size": 40,
        "dtype": "float64",
    }
    net = Network.build(spec, d, 1, rng=np.random.default_rng(0))
    train(net, X, y, spec, rng=np.random.default_rng(1))
    w = net.dense_layers[0].params["W"][:, 0]
    b = float(net.dense_layers[0].params["b"][0])

    def obj(w, b):
        s = X @ w + b
        return float(np.mean(np.logaddexp(0.0, s) - y * s) + l1 * np.abs(w).sum())

    sk = LogisticRegression(C=C, l1_ratio=1.0, solver="saga", tol=1e-10, max_iter=100_000)
    sk.fit(X, y)
    best = obj(sk.coef_[0], sk.intercept_[0])
    assert obj(w, b) <= best * 1.001
    assert set(np.flatnonzero(w)) == set(np.flatnonzero(np.abs(sk.coef_[0]) > 1e-6))


def test_fista_l1_logistic_on_breast_cancer_reaches_the_optimum_with_a_tight_tol():
    # regression: the step-size stop ended after 10 epochs with 26 non-zeros (sklearn: 25).
    # Ours: mean logloss + l1 ||w||_1; sklearn: C sum logloss + ||w||_1, so C = 1 / (n l1).
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    n, d = X.shape
    l1 = 1e-4
    spec = {
        "model": {"hidden_layers": []},
        "loss": "binary_cross_entropy",
        "regularization": {"l1": l1},
        "optimizer": {"name": "fista", "tol": 1e-7},
        "epochs": 5000,
        "dtype": "float64",
    }
    net = Network.build(spec, d, 1, rng=np.random.default_rng(0))
    result = train(net, X, y.astype(float), spec, rng=np.random.default_rng(1))
    assert result.stopped == "completed" and len(result.history) < 5000  # the KKT test stopped it
    w = net.dense_layers[0].params["W"][:, 0]
    b = float(net.dense_layers[0].params["b"][0])

    def obj(w, b):
        s = X @ w + b
        return float(np.mean(np.logaddexp(0.0, s) - y * s) + l1 * np.abs(w).sum())

    # liblinear penalises the intercept; a huge intercept_scaling makes that penalty negligible
    sk = LogisticRegression(
        C=1.0 / (n * l1),
        l1_ratio=1.0,
        solver="liblinear",
        tol=1e-8,
        max_iter=1_000_000,
        intercept_scaling=1e4,
    ).fit(X, y)
    best = obj(sk.coef_[0], sk.intercept_[0])
    assert obj(w, b) <= best * (1.0 + 1e-6)
    assert np.count_nonzero(w) == np.count_nonzero(sk.coef_[0]) == 25
    assert set(np.flatnonzero(w)) == set(np.flatnonzero(sk.coef_[0]))


def test_fista_ridge_stops_on_its_kkt_residual_at_the_ridge_solution():
    # regression: the duality-gap test needs l1 > 0, so ridge (l1 = 0) ran every epoch
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.linear_model import Ridge

    X, y = datasets.load_diabetes(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    n, d = X.shape
    l2 = 1e-2  # ours: (1/n)||r||^2 + l2 ||w||^2; sklearn: ||r||^2 + alpha ||w||^2, alpha = n l2
    spec = {
        "model": {"hidden_layers": []},
        "loss": "mse",
        "regularization": {"l2": l2},
        "optimizer": {"name": "fista", "tol": 1e-8},
        "epochs": 2000,
        "batch_size": n,
        "dtype": "float64",
    }
    net = Network.build(spec, d, 1, rng=np.random.default_rng(0), output_bias=np.array([y.mean()]))
    result = train(net, X, y, spec, rng=np.random.default_rng(1))
    assert len(result.history) < 2000
    ridge = Ridge(alpha=n * l2).fit(X, y)
    np.testing.assert_allclose(net.dense_layers[0].params["W"][:, 0], ridge.coef_, rtol=1e-5)


def test_fista_starts_from_a_warm_starts_weights():
    # regression: FISTA started every fit from W = 0, so engine.fit's warm_start (the warm starts
    # of a linear path) changed nothing but the intercept
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_diabetes(return_X_y=True)
    n = len(y)
    spec = {
        "model": {"hidden_layers": []},
        "loss": "mse",
        "regularization": {"l1": 0.05},
        "optimizer": {"name": "fista", "tol": 1e-10},
        "epochs": 2000,
        "batch_size": n,
        "dtype": "float64",
    }
    optimum = engine.fit(spec, X, y)
    # one FISTA iteration (one epoch of one full batch): from the optimum it stays there, from
    # W = 0 it is nowhere near
    one_step = {**spec, "epochs": 1}
    warm = engine.fit(one_step, X, y, warm_start=optimum)
    cold = engine.fit(one_step, X, y)
    w_opt = optimum.network.weights[0]
    scale = np.abs(w_opt).max()
    np.testing.assert_allclose(warm.network.weights[0], w_opt, rtol=0, atol=1e-6 * scale)
    assert np.abs(cold.network.weights[0] - w_opt).max() > 0.1 * scale
