"""Optimizers: descent on a quadratic, hyperparameter validation, decay, effective steps."""

from __future__ import annotations

import numpy as np
import pytest

from engine.optimizers import (
    OPTIMIZERS,
    Adam,
    Fista,
    Momentum,
    make_optimizer,
)

STOCHASTIC = [name for name in OPTIMIZERS if name != "fista"]
# Per-optimizer settings that make 300 steps enough (Adadelta's step grows from sqrt(eps)).
SETTINGS = {
    "adadelta": {"learning_rate": 1.0, "eps": 1e-3},
    "adagrad": {"learning_rate": 0.5},
    "rmsprop": {"learning_rate": 0.01},
    "adam": {"learning_rate": 0.05},
}


def quadratic(W: np.ndarray) -> tuple[float, np.ndarray]:
    """``f(W) = 0.5 * sum(a * (W - c)^2)``, an ill-conditioned bowl with minimum 0 at ``c``."""
    a = np.array([[1.0, 10.0], [0.5, 3.0]], dtype=W.dtype)
    c = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=W.dtype)
    r = W - c
    return float(0.5 * np.sum(a * r * r)), a * r


@pytest.mark.parametrize("name", STOCHASTIC)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_optimizer_reduces_a_quadratic(name, dtype):
    opt = make_optimizer({"name": name, **SETTINGS.get(name, {"learning_rate": 0.05})})
    W = np.zeros((2, 2), dtype=dtype)
    f0, _ = quadratic(W)
    for _ in range(300):
        _, g = quadratic(W)
        opt.step([W], [g])
    f1, _ = quadratic(W)
    assert W.dtype == dtype
    assert f1 < 0.1 * f0
    assert opt.t == 300


@pytest.mark.parametrize(
    "opt_spec",
    [
        {"name": "sgd", "learning_rate": 0.0},
        {"name": "sgd", "learning_rate": -1.0},
        {"name": "sgd", "learning_rate": float("nan")},
        {"name": "sgd", "learning_rate": 0.1, "decay": -0.1},
        {"name": "momentum", "momentum": 1.0},
        {"name": "sgd", "momentum": -0.5},
        {"name": "adam", "beta1": 1.0},
        {"name": "adam", "beta2": -0.1},
        {"name": "adam", "eps": 0.0},
        {"name": "rmsprop", "rho": 1.5},
        {"name": "adadelta", "rho": 1.0},
        {"name": "adagrad", "eps": -1e-8},
        {"name": "lbfgs"},
    ],
)
def test_bad_hyperparameters_are_rejected(opt_spec):
    with pytest.raises(ValueError):
        make_optimizer(opt_spec)


def test_learning_rate_decay_formula():
    opt = make_optimizer({"name": "sgd", "learning_rate": 0.1, "decay": 0.5})
    W = np.zeros(1)
    assert opt.current_lr == pytest.approx(0.1)
    for t in range(4):
        # the t-th update (t updates done before it) moves W by lr / (1 + decay * t)
        before = W.copy()
        opt.step([W], [np.ones(1)])
        assert before[0] - W[0] == pytest.approx(0.1 / (1 + 0.5 * t))
        assert opt.step_size(0) == pytest.approx(0.1 / (1 + 0.5 * t))
    assert opt.current_lr == pytest.approx(0.1 / (1 + 0.5 * 4))


def test_sgd_spec_routes_momentum_and_nesterov():
    assert isinstance(make_optimizer({"name": "sgd", "momentum": 0.9}), Momentum)
    nest = make_optimizer({"name": "sgd", "momentum": 0.9, "nesterov": True})
    assert isinstance(nest, Momentum) and nest.nesterov
    # "momentum" with the spec's default momentum 0.0 means the conventional 0.9
    assert make_optimizer({"name": "momentum", "momentum": 0.0}).momentum == 0.9
    assert isinstance(make_optimizer({"name": "fista"}), Fista)


def test_momentum_update_matches_formula():
    opt = make_optimizer({"name": "momentum", "learning_rate": 0.1, "momentum": 0.5})
    W = np.zeros(1)
    opt.step([W], [np.array([1.0])])  # v = -0.1, W = -0.1
    opt.step([W], [np.array([1.0])])  # v = -0.05 - 0.1 = -0.15, W = -0.25
    assert W[0] == pytest.approx(-0.25)
    nest = make_optimizer({"name": "nesterov", "learning_rate": 0.1, "momentum": 0.5})
    W = np.zeros(1)
    nest.step([W], [np.array([1.0])])  # v = -0.1; W += 0.5 * -0.1 - 0.1 = -0.15
    assert W[0] == pytest.approx(-0.15)


def test_adam_first_step_is_learning_rate_times_sign():
    opt = Adam(learning_rate=0.01)
    W = np.zeros(3)
    opt.step([W], [np.array([0.3, -5.0, 0.02])])
    np.testing.assert_allclose(W, [-0.01, 0.01, -0.01], rtol=1e-4)


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adadelta", "adam"])
def test_adaptive_step_size_is_per_coordinate_and_explains_the_update(name):
    opt = make_optimizer({"name": name, "learning_rate": 0.1})
    W = np.zeros((2, 3))
    g = np.array([[1.0, -2.0, 0.5], [3.0, 0.1, -1.0]])
    opt.step([W], [g.copy()])
    s = opt.step_size(0)
    assert s.shape == W.shape and (s > 0).all()
    # the first update moved W by exactly -s * g (for Adam too: m_hat = g at the first step)
    np.testing.assert_allclose(W, -s * g, rtol=1e-10)


def test_buffers_are_per_parameter():
    opt = make_optimizer({"name": "adam", "learning_rate": 0.1})
    A, B = np.zeros(2), np.zeros((3, 1))
    opt.step([A, B], [np.ones(2), np.ones((3, 1))])
    assert set(opt.state) == {0, 1}
    assert opt.state[0]["m"].shape == (2,) and opt.state[1]["v"].shape == (3, 1)


def test_momentum_effective_step_is_lr_over_one_minus_mu():
    # a steady gradient g moves heavy-ball momentum by lr * g / (1 - mu) per update
    opt = make_optimizer({"name": "momentum", "learning_rate": 0.1, "momentum": 0.75})
    W = np.zeros(1)
    for _ in range(200):
        before = W.copy()
        opt.step([W], [np.array([1.0])])
    assert before[0] - W[0] == pytest.approx(opt.step_size(0))
    assert opt.step_size(0) == pytest.approx(0.1 / 0.25)
