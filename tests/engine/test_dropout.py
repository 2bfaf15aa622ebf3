"""Dropout modes: expectations match between train and predict, predict is deterministic,
DropConnect masks weights."""

from __future__ import annotations

import numpy as np
import pytest

from engine.layers import Dense, Dropout
from engine.network import Network


@pytest.mark.parametrize("mode", ["inverted", "standard"])
def test_train_expectation_equals_predict_output(mode):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 2.0, (4, 50))
    layer = Dropout(0.4, mode)
    layer.rng = np.random.default_rng(1)
    draws = np.stack([layer.forward(x, training=True) for _ in range(4000)])
    predict = layer.forward(x, training=False)
    # Monte-Carlo mean over 4000 masks: standard error <= 2 * sqrt(0.4 * 0.6 / 4000) / 0.6 ~ 0.03
    np.testing.assert_allclose(draws.mean(axis=0), predict, rtol=0.1)
    assert abs(draws.mean() / predict.mean() - 1.0) < 0.01


def test_modes_differ_in_where_the_scaling_happens():
    x = np.ones((1, 1000))
    inv, std = Dropout(0.25, "inverted"), Dropout(0.25, "standard")
    inv.rng, std.rng = np.random.default_rng(3), np.random.default_rng(3)
    out_inv, out_std = inv.forward(x, training=True), std.forward(x, training=True)
    assert set(np.unique(out_inv)) == {0.0, 1.0 / 0.75}
    assert set(np.unique(out_std)) == {0.0, 1.0}
    np.testing.assert_array_equal(out_inv == 0, out_std == 0)  # same seed, same mask
    assert 0.2 < (out_std == 0).mean() < 0.3  # rate = DROP probability
    np.testing.assert_array_equal(inv.forward(x, training=False), x)
    np.testing.assert_allclose(std.forward(x, training=False), 0.75 * x)


def test_backward_applies_the_cached_mask():
    layer = Dropout(0.5, "inverted")
    layer.rng = np.random.default_rng(0)
    out = layer.forward(np.ones((3, 20)), training=True)
    dx = layer.backward(np.ones((3, 20)))
    np.testing.assert_array_equal(dx, out)  # d(x * m)/dx = m


@pytest.mark.parametrize("mode", ["inverted", "standard", "dropconnect"])
def test_predict_is_deterministic(mode):
    spec = {
        "model": {"hidden_layers": [16, 8], "activation": "relu", "init": "he"},
        "loss": "softmax_cross_entropy",
        "dropout": {"input": 0.2, "hidden": 0.5, "mode": mode},
        "dtype": "float32",
    }
    net = Network.build(spec, 6, 3, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((10, 6)).astype(np.float32)
    first = net.output(x)
    np.testing.assert_array_equal(first, net.output(x))
    assert not np.array_equal(net.forward(x, training=True), net.forward(x, training=True))


def test_dropconnect_masks_weights_not_activations():
    spec = {
        "model": {"hidden_layers": [16], "activation": "relu", "init": "he"},
        "loss": "mse",
        "dropout": {"input": 0.1, "hidden": 0.5, "mode": "dropconnect"},
        "dtype": "float64",
    }
    net = Network.build(spec, 5, 1, rng=np.random.default_rng(0))
    assert not any(isinstance(layer, Dropout) for layer in net.layers)
    assert [d.dropconnect for d in net.dense_layers] == [0.1, 0.5]

    dense = net.dense_layers[0]
    W, b = dense.params["W"], dense.params["b"]
    x = np.random.default_rng(2).standard_normal((7, 5))
    dense.rng = np.random.default_rng(11)
    out = dense.forward(x, training=True)
    # the same seed reproduces the weight mask: a (D, M) Bernoulli(0.9) mask scaled by 1/0.9
    mask = (np.random.default_rng(11).random(W.shape) < 0.9) / 0.9
    np.testing.assert_allclose(out, x @ (W * mask) + b)
    # activations are not dropped: identical rows give identical outputs (one mask per batch)
    twin = dense.forward(np.vstack([x[:1], x[:1]]), training=True)
    np.testing.assert_array_equal(twin[0], twin[1])
    np.testing.assert_allclose(dense.forward(x, training=False), x @ W + b)


def test_dropconnect_gradient_is_masked():
    rng = np.random.default_rng(0)
    dense = Dense(rng.standard_normal((4, 3)), np.zeros(3), dropconnect=0.5)
    dense.rng = np.random.default_rng(5)
    dense.forward(rng.standard_normal((6, 4)), training=True)
    dense.backward(np.ones((6, 3)))
    _, _, mask = dense.cache
    assert (mask == 0).any()
    assert (dense.grads["W"][mask == 0] == 0).all()  # dropped weights get no gradient


@pytest.mark.parametrize("mode", ["inverted", "standard", "dropconnect"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "linear", "prelu", "sigmoid"])
def test_predict_plan_equals_every_layers_predict_mode_forward(mode, activation):
    spec = {
        "model": {"hidden_layers": [16, 8], "activation": activation, "init": "he"},
        "loss": "softmax_cross_entropy",
        "dropout": {"input": 0.2, "hidden": 0.5, "mode": mode},
        "dtype": "float32",
    }
    net = Network.build(spec, 6, 3, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((10, 6)).astype(np.float32)
    x_before = x.copy()
    expected = x
    for layer in net.layers:
        expected = layer.forward(expected, training=False)
    np.testing.assert_array_equal(net.forward(x, training=False), expected)
    np.testing.assert_array_equal(x, x_before)  # the input itself is never overwritten
    skipped = len(net.layers) - len(net._predict_plan)
    assert skipped == (3 if mode == "inverted" else 0) + (2 if activation == "linear" else 0)


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.75, 0.3, 0.9])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keep_mask_has_the_exact_keep_probability_and_scaled_values(rate, dtype):
    from engine.layers import _keep_mask

    keep = 1.0 - rate
    shape = (301, 333)  # not a multiple of 8 units: the bit path must cut its last byte
    mask = _keep_mask(np.random.default_rng(7), shape, rate, np.dtype(dtype), scale=True)
    assert mask.shape == shape and mask.dtype == dtype
    assert set(np.unique(mask).tolist()) == {0.0, float(dtype(1.0 / keep))}
    n = mask.size
    kept = np.count_nonzero(mask) / n
    assert abs(kept - keep) < 5 * np.sqrt(keep * (1 - keep) / n)
    again = _keep_mask(np.random.default_rng(7), shape, rate, np.dtype(dtype), scale=False)
    np.testing.assert_array_equal(again != 0, mask != 0)  # seeded: the same units
    assert set(np.unique(again).tolist()) == {0.0, 1.0}
