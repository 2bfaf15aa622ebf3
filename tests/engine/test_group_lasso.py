"""Group lasso on the first layer: whole input features switch off (all-zero rows of W1).

Data: y = sin(x0) + x1 * x2 + x3^2 - x4 + noise; features 5..29 are pure noise. An MLP with
``group_l1`` must keep the 5 useful features, zero out at least 20 of the 25 noise rows exactly, and
predict no worse than 1.2x the test MSE of the same MLP without the penalty.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.network import Network
from engine.regularizers import block_soft_threshold, soft_threshold
from engine.trainer import train

N_TRAIN, N_TEST, D = 4000, 1000, 30
USEFUL = [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N_TRAIN + N_TEST, D))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2] + X[:, 3] ** 2 - X[:, 4]
    y += 0.1 * rng.standard_normal(len(y))
    Xtr, Xte = X[:N_TRAIN], X[N_TRAIN:]
    mu, sd = Xtr.mean(axis=0), Xtr.std(axis=0)  # standardize with training statistics
    Xtr, Xte = ((Xtr - mu) / sd).astype(np.float32), ((Xte - mu) / sd).astype(np.float32)
    return Xtr, y[:N_TRAIN].astype(np.float32), Xte, y[N_TRAIN:]


def fit_mlp(Xtr, ytr, group_l1: float) -> tuple[Network, list[dict]]:
    spec = {
        "model": {"hidden_layers": [16], "activation": "relu", "init": "he"},
        "loss": "mse",
        "regularization": {"l1": 0.0, "l2": 0.0, "group_l1": group_l1, "l1_method": "proximal"},
        "dropout": {"input": 0.0, "hidden": 0.0, "mode": "inverted"},
        "optimizer": {"name": "adam", "learning_rate": 0.01, "decay": 0.005},
        "epochs": 60,
        "batch_size": 200,
        "shuffle": True,
        "dtype": "float32",
    }
    net = Network.build(
        spec, D, 1, rng=np.random.default_rng(0), output_bias=np.array([ytr.mean()])
    )
    result = train(net, Xtr, ytr, spec, rng=np.random.default_rng(1))
    return net, result.history


def test_group_lasso_switches_off_noise_features(data):
    Xtr, ytr, Xte, yte = data
    net, history = fit_mlp(Xtr, ytr, group_l1=0.1)
    W1 = net.dense_layers[0].params["W"]
    dropped = {j for j in range(D) if not W1[j].any()}  # rows that are exactly 0.0
    assert dropped.isdisjoint(USEFUL)
    assert len(dropped) >= 20
    assert history[-1]["zero_fraction"] >= 20 * 16 / (D * 16 + 16)

    plain, _ = fit_mlp(Xtr, ytr, group_l1=0.0)
    assert not (plain.dense_layers[0].params["W"] == 0).all(axis=1).any()
    mse = float(np.mean((net.output(Xte)[:, 0] - yte) ** 2))
    mse_plain = float(np.mean((plain.output(Xte)[:, 0] - yte) ** 2))
    assert mse <= 1.2 * mse_plain


def test_block_soft_threshold_zeroes_whole_rows_and_shrinks_the_rest():
    W1 = np.array([[3.0, 4.0], [0.3, -0.4], [0.0, 0.0]])  # row norms 5, 0.5, 0
    out = block_soft_threshold(W1, 1.0)
    np.testing.assert_allclose(out[0], [3.0 * 0.8, 4.0 * 0.8])  # scaled by 1 - 1/5
    assert (out[1:] == 0.0).all()
    # per-row thresholds
    out = block_soft_threshold(W1, np.array([6.0, 0.1, 1.0]))
    assert (out[0] == 0.0).all()
    np.testing.assert_allclose(out[1], np.array([0.3, -0.4]) * 0.8)


def test_soft_threshold_gives_exact_zeros_with_scalar_and_per_coordinate_thresholds():
    W = np.array([[0.5, -0.05, 0.1], [-2.0, 0.2, 0.0]], dtype=np.float32)
    out = soft_threshold(W, 0.1)
    np.testing.assert_allclose(out, [[0.4, 0.0, 0.0], [-1.9, 0.1, 0.0]], rtol=1e-6)
    assert out.dtype == np.float32 and (out[0, 1:] == 0.0).all()
    t = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(soft_threshold(W, t), [[0.0, -0.05, 0.1], [-2.0, 0.0, 0.0]])
    soft_threshold(W, 0.1, out=W)  # in place
    assert W[0, 1] == 0.0
