"""The one penalty implementation: proxes in the optimizer's metric, and the optimum they reach.

The group-lasso checks train a softmax linear model on wine (standardized) with
``F(W, b) = mean CE + group_l1 * sum_j ||W[j]||_2`` and compare with an optimum computed here
independently by plain proximal gradient (Euclidean block soft-thresholding).
"""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.optimizers import make_optimizer
from engine.regularizers import (
    Regularizer,
    block_soft_threshold,
    group_prox,
    penalty,
    soft_threshold,
)

datasets = pytest.importorskip("sklearn.datasets")

GROUP = 0.1


@pytest.fixture(scope="module")
def wine():
    X, y = datasets.load_wine(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X, y


def _objective(X, y, W, b, group_l1=GROUP):
    s = X @ W + b
    s = s - s.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean() + group_l1 * np.sqrt((W * W).sum(1)).sum())


@pytest.fixture(scope="module")
def optimum(wine):
    """Proximal gradient with step 1/L, L = 0.5 * lambda_max([X, 1].T [X, 1]) / N."""
    X, y = wine
    N, D = X.shape
    K = int(y.max()) + 1
    A = np.c_[X, np.ones(N)]
    L = 0.5 * np.linalg.eigvalsh(A.T @ A).max() / N
    onehot = np.eye(K)[y]
    W, b = np.zeros((D, K)), np.zeros(K)
    for _ in range(20_000):
        s = X @ W + b
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        d = (p - onehot) / N
        V = W - (X.T @ d) / L
        b = b - d.sum(axis=0) / L
        norms = np.sqrt((V * V).sum(axis=1))
        W = V * np.maximum(0.0, 1.0 - (GROUP / L) / np.maximum(norms, 1e-300))[:, None]
    return _objective(X, y, W, b), set(np.flatnonzero(~W.any(axis=1)))


def _fit(X, y, optimizer, epochs, method="proximal"):
    spec = {
        "model": {"hidden_layers": []},
        "regularization": {"group_l1": GROUP, "l1_method": method},
        "optimizer": optimizer,
        "epochs": epochs,
        "batch_size": len(y),  # full batch: the iteration has a fixed point to reach
        "shuffle": False,
        "standardize": False,
        "dtype": "float64",
    }
    model = engine.fit(spec, X, y)
    dense = model.network.dense_layers[0]
    return dense.params["W"], dense.params["b"]


@pytest.mark.parametrize(
    ("optimizer", "epochs", "rtol"),
    [
        ({"name": "adam", "learning_rate": 0.02}, 800, 1e-5),
        ({"name": "adagrad", "learning_rate": 0.3}, 800, 1e-5),
        ({"name": "rmsprop", "learning_rate": 0.01, "decay": 0.003}, 1500, 1e-3),
        ({"name": "adadelta", "eps": 1e-4}, 800, 1e-4),
        ({"name": "momentum", "learning_rate": 0.1}, 800, 1e-7),
    ],
    ids=lambda v: v["name"] if isinstance(v, dict) else None,
)
def test_group_l1_under_adaptive_steps_reaches_the_optimum(wine, optimum, optimizer, epochs, rtol):
    # regression: the prox used one averaged step per row; full-batch Adam ended 5-7% above
    # the optimum with the wrong features switched off
    X, y = wine
    best, zero_rows = optimum
    W, b = _fit(X, y, optimizer, epochs)
    assert _objective(X, y, W, b) <= best * (1.0 + rtol)
    assert set(np.flatnonzero(~W.any(axis=1))) == zero_rows


def test_subgradient_method_applies_no_group_prox(wine):
    X, y = wine
    W, _ = _fit(X, y, {"name": "adam", "learning_rate": 0.02}, 50, method="subgradient")
    assert W.all(), "the subgradient method never sets a weight exactly to zero"
    # and its gradient is the subgradient the penalty formula gives
    reg = Regularizer(group_l1=GROUP, l1_method="subgradient")
    grads = [np.zeros_like(W)]
    reg.add_gradient([W], grads)
    norms = np.sqrt((W * W).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(grads[0], GROUP * W / norms, rtol=1e-12)
    assert not reg.has_prox


def test_group_prox_is_the_minimiser_in_the_diagonal_metric():
    rng = np.random.default_rng(0)
    V = rng.standard_normal((40, 7))
    V[::5] *= 0.01  # rows that must vanish
    s = rng.uniform(0.1, 3.0, size=V.shape)
    lam = 0.4
    W = group_prox(V, lam, s)
    zero = ~W.any(axis=1)
    assert zero[::5].all() and not zero.all()
    # zero rows: 0 is optimal iff ||v / (lam s)|| <= 1
    np.testing.assert_array_less(np.sqrt(((V / (lam * s)) ** 2).sum(axis=1))[zero], 1.0 + 1e-12)
    assert (np.sqrt(((V / (lam * s)) ** 2).sum(axis=1))[~zero] > 1.0).all()
    # other rows: (w - v) / s + lam * w / ||w|| = 0
    Wn = W[~zero]
    kkt = (Wn - V[~zero]) / s[~zero] + lam * Wn / np.linalg.norm(Wn, axis=1, keepdims=True)
    np.testing.assert_allclose(kkt, 0.0, atol=1e-10)
    # a scalar step is block soft-thresholding; so is a constant array of steps
    np.testing.assert_allclose(group_prox(V, lam, 0.5), block_soft_threshold(V, 0.2), rtol=1e-12)
    np.testing.assert_allclose(
        group_prox(V, lam, np.full(V.shape, 0.5)), block_soft_threshold(V, 0.2), rtol=1e-10
    )


@pytest.mark.parametrize("name", ["adam", "momentum", "nesterov", "rmsprop", "adagrad", "sgd"])
def test_l1_threshold_is_the_step_just_taken_from_the_first_update(name):
    # For a steady gradient g the update moves w by s * g and the prox shrinks it by s * l1:
    # shrink / move = l1 / |g| at EVERY step. Adam's bias correction and momentum's warm-up used
    # to make the first thresholds up to 1 / (1 - 0.9) = 10x too large.
    l1, g = 0.01, 0.5
    opt = make_optimizer({"name": name, "learning_rate": 0.01})
    reg = Regularizer(l1=l1)
    W = np.full((1, 1), 5.0)
    for _ in range(5):
        before = W.copy()
        opt.step([W], [np.full((1, 1), g)])
        moved = before - W
        after_step = W.copy()
        reg.prox(0, W, opt.step_size(0, out=reg.step_buffer(0, W)))
        shrink = after_step - W
        np.testing.assert_allclose(shrink / moved, l1 / g, rtol=1e-9)


def test_soft_threshold_scratch_path_equals_the_allocating_path():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((6, 5)).astype(np.float32)
    t = rng.uniform(0.0, 1.0, size=W.shape).astype(np.float32)
    expected = np.sign(W) * np.maximum(np.abs(W) - t, 0.0)
    np.testing.assert_array_equal(soft_threshold(W, t), expected)
    out = W.copy()
    soft_threshold(out, t, out=out, scratch=np.empty_like(W))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(
        soft_threshold(W, 0.3, scratch=np.empty_like(W)), soft_threshold(W, 0.3)
    )


def test_penalty_is_the_regularizer_that_trains():
    rng = np.random.default_rng(2)
    Ws = [rng.standard_normal((4, 3)), rng.standard_normal((3, 2))]
    Ws[0][1] = 0.0
    value, grads = penalty(Ws, l1=0.1, l2=0.2, group_l1=0.3)
    reg = Regularizer(0.1, 0.2, 0.3, "subgradient")
    mine = [np.zeros_like(W) for W in Ws]
    reg.add_gradient(Ws, mine)
    assert value == reg.value(Ws)
    for a, b in zip(grads, mine, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (grads[0][1] == 0.0).all()  # zero row: l1 sign(0) = 0 and no group subgradient
