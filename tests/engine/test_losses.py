"""Loss values on hand-computed cases, stability, and the sanity checks of cs231n."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.losses import FISTA_LOSSES, LOSS_TASKS, LOSSES, curvature, make_loss, softmax


def test_initial_softmax_loss_is_about_log_c():
    rng = np.random.default_rng(0)
    C = 10
    scores = 0.001 * rng.standard_normal((500, C))  # what small initial weights produce
    value, _ = LOSSES["softmax_cross_entropy"](scores, rng.integers(0, C, 500))
    assert value == pytest.approx(math.log(C), rel=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_is_finite_at_extreme_scores(dtype):
    scores = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 1000.0]], dtype=dtype)
    y = np.array([1, 0])
    value, d = LOSSES["softmax_cross_entropy"](scores, y)
    assert math.isfinite(value) and np.isfinite(d).all()
    # row 0: -log softmax = 2000 exactly; row 1: log(2 e^1000) - (-1000) = 2000 + ln 2
    assert value == pytest.approx((2000.0 + 2000.0 + math.log(2)) / 2, rel=1e-6)
    assert d.dtype == dtype
    np.testing.assert_allclose(d, np.array([[0.5, -0.5, 0.0], [-0.5, 0.25, 0.25]]), atol=1e-7)
    assert np.isfinite(softmax(scores)).all()


def test_softmax_cross_entropy_known_value():
    scores = np.array([[1.0, 2.0, 3.0]])
    value, d = LOSSES["softmax_cross_entropy"](scores, np.array([0]))
    p = np.exp(scores[0]) / np.exp(scores[0]).sum()
    assert value == pytest.approx(-math.log(p[0]))
    np.testing.assert_allclose(d[0], p - np.array([1.0, 0.0, 0.0]))


def test_multiclass_hinge_excludes_the_correct_class():
    # correct class 0 scores 2.0; the j = y term would add max(0, 0 + 1) = 1 if it were included
    scores = np.array([[2.0, 1.5, -1.0]])
    value, d = LOSSES["multiclass_hinge"](scores, np.array([0]))
    assert value == pytest.approx(max(0, 1.5 - 2 + 1) + max(0, -1 - 2 + 1))  # 0.5
    np.testing.assert_allclose(d, [[-1.0, 1.0, 0.0]])


def test_multiclass_hinge_known_value_with_margin():
    scores = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0]])  # cs231n's example, columns = classes
    y = np.array([0, 1])
    value, _ = LOSSES["multiclass_hinge"](scores, y, hinge_margin=1.0)
    assert value == pytest.approx((2.9 + 0.0) / 2)
    value, _ = LOSSES["multiclass_hinge"](scores, y, hinge_margin=2.0)
    assert value == pytest.approx((3.9 + 0.0 + 0.0) / 2 + 0.0)


def test_squared_hinge_known_value():
    scores = np.array([[2.0, 1.5, -1.0]])
    value, d = LOSSES["squared_hinge"](scores, np.array([0]))
    assert value == pytest.approx(0.25)
    np.testing.assert_allclose(d, [[-1.0, 1.0, 0.0]])


def test_mse_mae_huber_known_values():
    scores = np.array([[1.0], [0.0], [4.0]])
    y = np.array([0.0, 0.5, 1.0])  # residuals 1, -0.5, 3
    assert LOSSES["mse"](scores, y)[0] == pytest.approx((1 + 0.25 + 9) / 3)
    assert LOSSES["mae"](scores, y)[0] == pytest.approx((1 + 0.5 + 3) / 3)
    # huber delta 1: 0.5*1, 0.5*0.25, 1*(3 - 0.5)
    assert LOSSES["huber"](scores, y)[0] == pytest.approx((0.5 + 0.125 + 2.5) / 3)
    # delta 2: 0.5, 0.125, 2*(3 - 1)
    assert LOSSES["huber"](scores, y, huber_delta=2.0)[0] == pytest.approx((0.5 + 0.125 + 4) / 3)
    _, d = LOSSES["huber"](scores, y)
    np.testing.assert_allclose(d[:, 0], np.array([1.0, -0.5, 1.0]) / 3)
    _, d = LOSSES["mse"](scores, y)
    np.testing.assert_allclose(d[:, 0], 2 * np.array([1.0, -0.5, 3.0]) / 3)


def test_binary_cross_entropy_known_value_from_logits():
    scores = np.array([[0.0], [math.log(3.0)]])  # p = 0.5 and 0.75
    y = np.array([1.0, 0.0])
    value, d = LOSSES["binary_cross_entropy"](scores, y)
    assert value == pytest.approx((math.log(2) + -math.log(0.25)) / 2)
    np.testing.assert_allclose(d[:, 0], [(0.5 - 1) / 2, 0.75 / 2])
    # a confidently wrong logit costs exactly its size: -log(sigmoid(-1000)) = 1000 + log1p(e^-1000)
    value, d = LOSSES["binary_cross_entropy"](np.array([[-1000.0]]), np.array([1.0]))
    assert value == 1000.0
    np.testing.assert_allclose(d, [[-1.0]])


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_keep_float32(name):
    rng = np.random.default_rng(0)
    if LOSS_TASKS[name] == "regression" or name == "binary_cross_entropy":
        scores = rng.standard_normal((8, 1)).astype(np.float32)
        y = (rng.random(8) > 0.5).astype(np.float32)
    else:
        scores = rng.standard_normal((8, 4)).astype(np.float32)
        y = rng.integers(0, 4, 8)
    value, d = LOSSES[name](scores, y)
    assert isinstance(value, float)
    assert d.dtype == np.float32 and d.shape == scores.shape


def test_make_loss_binds_spec_params_and_ignores_others():
    scores, y = np.array([[4.0]]), np.array([0.0])
    f = make_loss("huber", {"huber_delta": 2.0, "hinge_margin": 1.0, "eps": 1e-7})
    assert f(scores, y)[0] == pytest.approx(2.0 * (4.0 - 1.0))
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("nope")


def test_loss_tasks_cover_every_loss():
    assert set(LOSS_TASKS) == set(LOSSES)
    assert {LOSS_TASKS[n] for n in ("mse", "mae", "huber")} == {"regression"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_cross_entropy_is_exact_and_finite_at_extreme_logits(dtype):
    # regression: p clipped to [eps, 1 - eps] reported 16.1 for a logit of -30 (exact: 30) and,
    # with eps = 1e-8 in float32 (1 - eps rounds to 1), log(0) = -inf and NaN
    s = np.array([[-30.0], [30.0], [-1e4], [1e4], [0.0]], dtype=dtype)
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0], dtype=dtype)
    value, d = LOSSES["binary_cross_entropy"](s, y)
    exact = (30.0 + math.log1p(math.exp(-30.0))) * 2 + 2 * math.log1p(math.exp(-1e4)) + math.log(2)
    assert value == pytest.approx(exact / 5, rel=1e-6)
    assert np.isfinite(d).all() and d.dtype == dtype
    np.testing.assert_allclose(d[:, 0], [-0.2, 0.2, 0.0, 0.0, -0.1], atol=1e-7)
    value, _ = make_loss("binary_cross_entropy", {"eps": 1e-8})(s, y)
    assert math.isfinite(value)


def test_binary_cross_entropy_fit_in_float32_with_tiny_eps_does_not_diverge():
    import engine

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    y = (X[:, 0] > 0).astype(int)  # separable: logits grow large
    spec = {
        "loss": "binary_cross_entropy",
        "loss_params": {"eps": 1e-8},
        "model": {"hidden_layers": []},
        "optimizer": {"name": "sgd", "learning_rate": 5.0},
        "epochs": 30,
        "dtype": "float32",
    }
    model = engine.fit(spec, X, y)
    assert all(math.isfinite(r["loss"]) for r in model.history)


@pytest.mark.parametrize("name", list(FISTA_LOSSES))
def test_curvature_bounds_the_gradient_lipschitz_constant_and_is_attained(name):
    # ||grad L(s1) - grad L(s2)||_F <= (c / N) ||s1 - s2||_F for the mean loss over N rows;
    # squared hinge with K classes has c = 2K (it was documented as 2)
    rng = np.random.default_rng(0)
    N, K = 64, 5
    k = 1 if name in ("mse", "huber", "binary_cross_entropy") else K
    c = curvature(name, k)
    y = rng.integers(0, 2, N).astype(float) if k == 1 else rng.integers(0, K, N)
    fn = LOSSES[name]
    ratios = []
    for trial in range(200):
        s1 = rng.standard_normal((N, k)) * (0.1 if trial % 2 else 3.0)
        s2 = s1 + 1e-6 * rng.standard_normal((N, k))
        if name == "squared_hinge" and trial % 2:
            # every margin active, moving along (e_j - e_y) summed: the top eigenvector
            s1 = np.zeros((N, k))
            direction = np.ones((N, k))
            direction[np.arange(N), y] = -(k - 1)
            s2 = s1 + 1e-6 * direction
        if name == "softmax_cross_entropy" and trial % 2:
            # two classes tie and the rest vanish: diag(p) - p p.T has eigenvalue 1/2 on e0 - e1
            s1 = np.full((N, k), -40.0)
            s1[:, :2] = 0.0
            s2 = s1.copy()
            s2[:, 0] += 1e-6
            s2[:, 1] -= 1e-6
        g1, g2 = fn(s1, y)[1], fn(s2, y)[1]
        ratios.append(np.linalg.norm(g1 - g2) / np.linalg.norm(s1 - s2) * N)
    assert max(ratios) <= c * (1 + 1e-6)
    assert max(ratios) >= 0.9 * c


def test_huber_with_a_delta_beyond_float32_trains_as_with_any_delta_above_every_residual():
    # regression: huber_delta=1e308 is inf in float32, inf * 0 = NaN, and the run "diverged"
    # blaming the learning rate; every residual is below it, so it is half the squared error
    import engine

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.standard_normal(200)
    runs = [
        engine.fit(
            {"loss": "huber", "loss_params": {"huber_delta": d}, "epochs": 5, "seed": 1}, X, y
        ).history
        for d in (1e308, 1e30)
    ]
    assert all(math.isfinite(r["loss"]) for r in runs[0])
    assert [r["loss"] for r in runs[0]] == [r["loss"] for r in runs[1]]
