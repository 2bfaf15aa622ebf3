"""Centred-difference gradient checks in float64 (cs231n: relative error, away from kinks).

Every analytic gradient (layers, losses, penalties, a whole network) is compared with
``(f(x + h) - f(x - h)) / 2h`` element by element; the check passes when
``max |a - n| / max(|a| + |n|, 1e-8) < 1e-6``. Shapes are random under a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from engine.layers import (
    Dense,
    Dropout,
    LeakyReLU,
    Linear,
    PReLU,
    ReLU,
    Sigmoid,
    Tanh,
)
from engine.losses import LOSSES
from engine.network import Network
from engine.regularizers import penalty

H = 1e-5
TOL = 1e-6
SEED = 1234


def rel_error(a: np.ndarray, n: np.ndarray) -> float:
    return float(np.max(np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), 1e-8)))


def numeric_grad(f: Callable[[], float], x: np.ndarray) -> np.ndarray:
    """Centred difference of ``f()`` with respect to every entry of ``x`` (perturbed in place)."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + H
        fp = f()
        x[i] = old - H
        fm = f()
        x[i] = old
        grad[i] = (fp - fm) / (2 * H)
    return grad


def shapes(rng: np.random.Generator) -> tuple[int, int, int]:
    return int(rng.integers(2, 7)), int(rng.integers(2, 6)), int(rng.integers(2, 6))


def check_layer(layer, x: np.ndarray, reseed: Callable[[], None] = lambda: None) -> None:
    """Check ``dx`` and every ``grads[name]`` of ``layer`` with ``f = sum(forward(x) * R)``."""
    reseed()
    out = layer.forward(x, training=True)
    R = np.random.default_rng(SEED + 1).standard_normal(out.shape)

    def f() -> float:
        reseed()
        return float(np.sum(layer.forward(x, training=True) * R))

    reseed()
    layer.forward(x, training=True)
    dx = layer.backward(R.copy())
    analytic = {name: g.copy() for name, g in layer.grads.items()}
    assert rel_error(dx, numeric_grad(f, x)) < TOL
    for name, p in layer.params.items():
        assert rel_error(analytic[name], numeric_grad(f, p)) < TOL, name


def away_from_zero(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal entries pushed at least 0.1 away from the kink at 0."""
    x = rng.standard_normal(shape)
    return x + np.sign(x) * 0.1


def test_dense_gradients():
    rng = np.random.default_rng(SEED)
    N, D, M = shapes(rng)
    layer = Dense(rng.standard_normal((D, M)), rng.standard_normal(M))
    check_layer(layer, rng.standard_normal((N, D)))


def test_dense_dropconnect_gradients_with_seeded_mask():
    rng = np.random.default_rng(SEED)
    N, D, M = shapes(rng)
    layer = Dense(rng.standard_normal((D, M)), rng.standard_normal(M), dropconnect=0.4)

    def reseed() -> None:
        layer.rng = np.random.default_rng(99)

    check_layer(layer, rng.standard_normal((N, D)), reseed)


@pytest.mark.parametrize(
    "make",
    [Sigmoid, Tanh, ReLU, lambda: LeakyReLU(0.1), Linear],
    ids=["sigmoid", "tanh", "relu", "leaky_relu", "linear"],
)
def test_activation_gradients(make):
    rng = np.random.default_rng(SEED)
    N, M, _ = shapes(rng)
    check_layer(make(), away_from_zero(rng, (N, M)))


def test_prelu_gradients_include_alpha():
    rng = np.random.default_rng(SEED)
    N, M, _ = shapes(rng)
    layer = PReLU(rng.uniform(0.05, 0.5, M))
    x = away_from_zero(rng, (N, M))
    assert (x < 0).any() and (x > 0).any()
    check_layer(layer, x)


@pytest.mark.parametrize("mode", ["inverted", "standard"])
def test_dropout_gradients_with_seeded_mask(mode):
    rng = np.random.default_rng(SEED)
    N, M, _ = shapes(rng)
    layer = Dropout(0.5, mode)

    def reseed() -> None:
        layer.rng = np.random.default_rng(7)

    check_layer(layer, rng.standard_normal((N, M)), reseed)


def _loss_case(name: str, rng: np.random.Generator):
    N, C = int(rng.integers(3, 8)), int(rng.integers(3, 6))
    if name in ("mse", "mae", "huber"):
        y = rng.standard_normal(N)
        # |s - y| in [0.2, 2] with random sign: away from mae's kink and huber's delta=1.0 switch
        r = rng.uniform(0.2, 0.8, N) * rng.choice([-1.0, 1.0], N)
        r[: N // 2] *= 2.5  # some residuals on the linear branch of huber (|r| > 1)
        return (y + r)[:, None], y
    if name == "binary_cross_entropy":
        return rng.standard_normal((N, 1)) * 2, rng.integers(0, 2, N).astype(np.float64)
    y = rng.integers(0, C, N)
    scores = rng.standard_normal((N, C)) * 2
    if name in ("multiclass_hinge", "squared_hinge"):
        # keep every margin s_j - s_y + 1 at least 0.05 away from the kink at 0
        rows = np.arange(N)
        margins = scores - scores[rows, y][:, None] + 1.0
        near = np.abs(margins) < 0.05
        near[rows, y] = False
        scores[near] += 0.2
    return scores, y


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_gradients(name):
    rng = np.random.default_rng(SEED)
    scores, y = _loss_case(name, rng)
    fn = LOSSES[name]
    _, dscores = fn(scores, y)
    assert dscores.shape == scores.shape
    num = numeric_grad(lambda: fn(scores, y)[0], scores)
    assert rel_error(dscores, num) < TOL


def test_hinge_case_has_active_and_inactive_margins():
    rng = np.random.default_rng(SEED)
    scores, y = _loss_case("multiclass_hinge", rng)
    _, d = LOSSES["multiclass_hinge"](scores, y)
    assert (d > 0).any() and (d == 0).any()


@pytest.mark.parametrize(
    ("l1", "l2", "g"), [(0.0, 0.3, 0.0), (0.2, 0.0, 0.0), (0.0, 0.0, 0.5), (0.1, 0.2, 0.3)]
)
def test_penalty_gradients_l2_l1_group(l1, l2, g):
    rng = np.random.default_rng(SEED)
    D, M, K = shapes(rng)
    weights = [away_from_zero(rng, (D, M)), away_from_zero(rng, (M, K))]
    _, grads = penalty(weights, l1=l1, l2=l2, group_l1=g)
    for W, dW in zip(weights, grads, strict=True):
        num = numeric_grad(lambda: penalty(weights, l1=l1, l2=l2, group_l1=g)[0], W)
        assert rel_error(dW, num) < TOL


def test_penalty_value_formula():
    W1 = np.array([[3.0, -4.0], [0.0, 0.0]])
    W2 = np.array([[1.0], [-2.0]])
    value, _ = penalty([W1, W2], l1=0.1, l2=0.01, group_l1=0.5)
    expected = 0.1 * (7 + 3) + 0.01 * (25 + 5) + 0.5 * (5.0 + 0.0)
    assert value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("loss", "activation", "dropout"),
    [
        ("softmax_cross_entropy", "prelu", {"input": 0.2, "hidden": 0.3, "mode": "inverted"}),
        ("softmax_cross_entropy", "relu", {"input": 0.2, "hidden": 0.3, "mode": "inverted"}),
        ("multiclass_hinge", "relu", {"input": 0.0, "hidden": 0.3, "mode": "standard"}),
        ("huber", "linear", {"input": 0.0, "hidden": 0.3, "mode": "inverted"}),
        ("mse", "tanh", {"input": 0.0, "hidden": 0.5, "mode": "standard"}),
        ("binary_cross_entropy", "sigmoid", {"input": 0.3, "hidden": 0.3, "mode": "dropconnect"}),
        ("squared_hinge", "leaky_relu", {"input": 0.0, "hidden": 0.0, "mode": "inverted"}),
    ],
)
def test_network_end_to_end_gradients(loss, activation, dropout):
    rng = np.random.default_rng(SEED)
    N, D = int(rng.integers(4, 8)), int(rng.integers(3, 6))
    K = 1 if loss in ("mse", "huber", "binary_cross_entropy") else 3
    spec = {
        "model": {"hidden_layers": [5, 4], "activation": activation, "init": "glorot_normal"},
        "loss": loss,
        "dropout": dropout,
        "dtype": "float64",
    }
    net = Network.build(spec, D, K, rng=rng)
    for name, layer, key in net.param_refs:
        if name.endswith(".b"):  # zero biases put ReLU exactly on its kink for all-dropped rows
            layer.params[key][...] = rng.uniform(0.1, 0.5, layer.params[key].shape)
    x = rng.standard_normal((N, D))
    if K == 1:
        y = rng.integers(0, 2, N).astype(float)
        if loss != "binary_cross_entropy":
            y = 5.0 * rng.standard_normal(N)  # residuals mostly beyond huber's delta: no kink
    else:
        y = rng.integers(0, K, N)
    fn = LOSSES[loss]
    l2 = 0.05

    def objective() -> float:
        net.set_rng(np.random.default_rng(5))  # the same dropout masks at every evaluation
        value, _ = fn(net.forward(x, training=True), y)
        return value + penalty(net.weights, l2=l2)[0]

    net.set_rng(np.random.default_rng(5))
    _, dscores = fn(net.forward(x, training=True), y)
    net.backward(dscores)
    _, pgrads = penalty(net.weights, l2=l2)
    params, grads = net.parameters()
    analytic = [g.copy() for g in grads]
    w_pos = [i for i, (name, _, _) in enumerate(net.param_refs) if name.endswith(".W")]
    for j, i in enumerate(w_pos):
        analytic[i] += pgrads[j]
    for (name, _, _), p, a in zip(net.param_refs, params, analytic, strict=True):
        assert rel_error(a, numeric_grad(objective, p)) < TOL, name
