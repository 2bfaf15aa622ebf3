"""The fit loop: overfitting, determinism, early stopping, cancellation, history records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.losses import LOSSES
from engine.network import Network
from engine.regularizers import penalty_value
from engine.trainer import HISTORY_KEYS, train


def make_spec(**overrides) -> dict:
    spec = {
        "model": {"hidden_layers": [32], "activation": "relu", "init": "he", "leaky_slope": 0.01},
        "loss": "softmax_cross_entropy",
        "loss_params": {"huber_delta": 1.0, "hinge_margin": 1.0, "eps": 1e-7},
        "regularization": {"l1": 0.0, "l2": 0.0, "group_l1": 0.0, "l1_method": "proximal"},
        "dropout": {"input": 0.0, "hidden": 0.0, "mode": "inverted"},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "epochs": 10,
        "batch_size": 16,
        "shuffle": True,
        "early_stopping": None,
        "dtype": "float32",
    }
    spec.update(overrides)
    return spec


def blobs(n: int = 200, d: int = 5, c: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    centers = rng.standard_normal((c, d)) * 2
    X = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return X, y


def fit(spec, X, y, seed=0, **kw):
    n_out = (
        1 if spec["loss"] in ("mse", "mae", "huber", "binary_cross_entropy") else int(y.max()) + 1
    )
    net = Network.build(spec, X.shape[1], n_out, rng=np.random.default_rng(seed))
    result = train(net, X, y, spec, rng=np.random.default_rng(seed + 1), **kw)
    return net, result


def test_overfits_twenty_examples():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 8)).astype(np.float32)
    y = rng.integers(0, 4, 20)  # random labels: only memorisation can fit them
    spec = make_spec(epochs=300, batch_size=20, model={"hidden_layers": [64], "activation": "tanh"})
    net, result = fit(spec, X, y)
    assert (net.output(X).argmax(axis=1) == y).all()
    assert result.history[-1]["data_loss"] < 0.05
    assert result.history[-1]["metric"] == 1.0


@pytest.mark.parametrize("mode", ["inverted", "dropconnect"])
def test_same_seed_gives_bit_identical_weights(mode):
    X, y = blobs()
    spec = make_spec(
        dropout={"input": 0.1, "hidden": 0.3, "mode": mode},
        regularization={"l1": 1e-3, "l2": 1e-4, "group_l1": 1e-3, "l1_method": "proximal"},
        epochs=3,
    )
    a, _ = fit(spec, X, y, seed=7)
    b, _ = fit(spec, X, y, seed=7)
    c, _ = fit(spec, X, y, seed=8)
    wa, wb, wc = a.get_weights(), b.get_weights(), c.get_weights()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert all(wa[k].dtype == np.float32 for k in wa)
    assert not np.array_equal(wa["dense0.W"], wc["dense0.W"])


def test_history_records_have_the_contract_keys_and_consistent_values():
    X, y = blobs(n=150)
    spec = make_spec(
        regularization={"l1": 0.01, "l2": 0.001, "group_l1": 0.0, "l1_method": "proximal"},
        optimizer={"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "decay": 0.01},
        epochs=4,
        batch_size=32,
    )
    net, result = fit(spec, X[:100], y[:100], X_val=X[100:], Y_val=y[100:])
    history = result.history
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    json.dumps(history)  # plain python numbers only
    for r in history:
        assert tuple(r) == HISTORY_KEYS
        assert r["loss"] == pytest.approx(r["data_loss"] + r["penalty"])
        assert r["penalty"] > 0 and r["val_loss"] is not None and 0 <= r["val_metric"] <= 1
        assert r["seconds"] >= 0
    last = history[-1]
    # a completed run keeps its final weights: the last record describes them
    weights = net.weights
    assert last["penalty"] == pytest.approx(penalty_value(weights, l1=0.01, l2=0.001), rel=1e-6)
    zeros = sum(int((W == 0).sum()) for W in weights)
    assert last["zero_fraction"] == zeros / sum(W.size for W in weights)
    assert zeros > 0  # proximal L1 produced exact zeros
    val_data = LOSSES["softmax_cross_entropy"](net.forward(X[100:]), y[100:])[0]
    assert last["val_loss"] == pytest.approx(val_data + last["penalty"], rel=1e-5)
    assert last["val_metric"] == pytest.approx((net.output(X[100:]).argmax(1) == y[100:]).mean())
    updates = 4 * 4  # 4 epochs of ceil(100 / 32) batches
    assert last["learning_rate"] == pytest.approx(0.1 / (1 + 0.01 * updates))
    assert result.stopped == "completed"


def test_train_data_loss_is_the_sample_mean_over_uneven_batches():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3)).astype(np.float32)
    yr = (X @ np.array([1.0, -1.0, 2.0]) + 0.5).astype(np.float32)
    # a learning rate so small the weights do not move: the running mean equals a full pass
    spec = make_spec(loss="mse", optimizer={"name": "sgd", "learning_rate": 1e-30}, epochs=1)
    net, result = fit(spec, X, yr)
    full = LOSSES["mse"](net.forward(X), yr)[0]
    assert result.history[0]["data_loss"] == pytest.approx(full, rel=1e-5)
    r2 = 1 - ((net.forward(X)[:, 0] - yr) ** 2).sum() / ((yr - yr.mean()) ** 2).sum()
    assert result.history[0]["metric"] == pytest.approx(r2, rel=1e-4)
    assert result.history[0]["val_loss"] is None


def test_callback_returning_true_cancels_and_restores_best_weights():
    X, y = blobs()
    snapshots = {}
    records = []

    def callback(record):
        records.append(record)
        snapshots[record["epoch"]] = net_holder[0].get_weights()
        return record["epoch"] == 4

    spec = make_spec(epochs=50, optimizer={"name": "sgd", "learning_rate": 2.0})
    net = Network.build(spec, X.shape[1], 3, rng=np.random.default_rng(0))
    net_holder = [net]
    result = train(net, X, y, spec, callbacks=[callback], rng=np.random.default_rng(1))
    assert result.stopped == "cancelled"
    assert len(result.history) == 4 and records == result.history
    best = min(result.history, key=lambda r: r["loss"])["epoch"]
    assert result.best_epoch == best
    final = net.get_weights()
    assert all(np.array_equal(final[k], snapshots[best][k]) for k in final)


def test_early_stopping_stops_and_restores_the_best_val_loss_weights():
    rng = np.random.default_rng(0)
    # few noisy rows and a wide net: validation loss soon rises (overfitting)
    X = rng.standard_normal((60, 10)).astype(np.float32)
    y = (X[:, 0] + 2.0 * rng.standard_normal(60) > 0).astype(np.intp)
    spec = make_spec(
        model={"hidden_layers": [128], "activation": "relu", "init": "he"},
        optimizer={"name": "adam", "learning_rate": 0.02},
        epochs=200,
        batch_size=10,
        early_stopping={"monitor": "val_loss", "patience": 3, "min_delta": 0.0},
        validation_split=0.3,  # as fit would split; train gets the split directly
        keep="best",
    )
    net = Network.build(spec, 10, 2, rng=np.random.default_rng(0))
    snapshots = {}

    def keep(record):
        snapshots[record["epoch"]] = net.get_weights()

    result = train(
        net,
        X[:40],
        y[:40],
        spec,
        X_val=X[40:],
        Y_val=y[40:],
        callbacks=[keep],
        rng=np.random.default_rng(1),
    )
    assert result.stopped == "early_stopping"
    val = [r["val_loss"] for r in result.history]
    best = int(np.argmin(val)) + 1
    assert result.best_epoch == best
    assert len(result.history) == best + 3  # patience epochs without improvement
    final = net.get_weights()
    assert all(np.array_equal(final[k], snapshots[best][k]) for k in final)


def test_divergence_raises_instead_of_returning_nan_weights():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((64, 4)) * 100).astype(np.float32)
    yr = (X.sum(axis=1) * 100).astype(np.float32)
    spec = make_spec(loss="mse", optimizer={"name": "sgd", "learning_rate": 10.0}, epochs=20)
    with pytest.raises(FloatingPointError, match="diverged"):
        fit(spec, X, yr)


def test_fista_linear_model_history_and_determinism():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20)).astype(np.float32)
    y = (X[:, :3] @ np.array([2.0, -1.0, 0.5]) + 0.1 * rng.standard_normal(300)).astype(np.float32)
    spec = make_spec(
        model={"hidden_layers": []},
        loss="mse",
        optimizer={"name": "fista"},
        regularization={"l1": 0.05, "l2": 0.0, "group_l1": 0.0, "l1_method": "proximal"},
        epochs=30,
        batch_size=100,
    )
    a, ra = fit(spec, X, y)
    b, _ = fit(spec, X, y)
    assert np.array_equal(a.get_weights()["dense0.W"], b.get_weights()["dense0.W"])
    losses = [r["loss"] for r in ra.history]
    assert losses[-1] <= losses[0]
    assert all(tuple(r) == HISTORY_KEYS for r in ra.history)
    assert ra.history[-1]["zero_fraction"] >= 0.5  # 17 of 20 coefficients are irrelevant


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model": {"hidden_layers": [4]}}, "linear model"),
        ({"loss": "mae"}, "not smooth"),
        ({"dropout": {"input": 0.2, "hidden": 0.0, "mode": "inverted"}}, "dropout"),
    ],
)
def test_fista_rejects_what_it_cannot_train(changes, match):
    X, _ = blobs(n=20)
    yr = X[:, 0].copy()
    spec = make_spec(model={"hidden_layers": []}, loss="mse", optimizer={"name": "fista"}, epochs=1)
    spec.update(changes)
    with pytest.raises(ValueError, match=match):
        fit(spec, X, yr)


@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adagrad", "adadelta", "rmsprop", "adam"])
def test_float32_training_never_upcasts(optimizer):
    X, y = blobs(n=64)
    spec = make_spec(
        model={"hidden_layers": [8, 8], "activation": "prelu", "init": "he"},
        regularization={"l1": 1e-3, "l2": 1e-3, "group_l1": 1e-3, "l1_method": "proximal"},
        dropout={"input": 0.1, "hidden": 0.2, "mode": "standard"},
        optimizer={"name": optimizer, "learning_rate": 0.01, "momentum": 0.9, "decay": 1e-3},
        epochs=2,
    )
    net = Network.build(spec, X.shape[1], 3, rng=np.random.default_rng(0))
    seen = []
    for layer in net.layers:
        for method in ("forward", "backward"):
            original = getattr(layer, method)

            def wrapped(arr, *args, _original=original, **kwargs):
                out = _original(arr, *args, **kwargs)
                seen.extend(a.dtype for a in (arr, out) if a is not None)
                return out

            setattr(layer, method, wrapped)
    train(net, X, y, spec, X_val=X[:16], Y_val=y[:16], rng=np.random.default_rng(1))
    assert seen and set(seen) == {np.dtype(np.float32)}
    params, grads = net.parameters()
    assert {p.dtype for p in params} | {g.dtype for g in grads} == {np.dtype(np.float32)}


def test_fit_time_limit_interrupts_a_long_epoch() -> None:
    import engine

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 20))
    y = (X[:, 0] > 0).astype(int)
    records: list[dict] = []
    spec = {"model": {"hidden_layers": [64]}, "epochs": 3, "batch_size": 1}
    with pytest.raises(engine.TrainingTimeout) as caught:
        engine.fit(spec, X, y, callbacks=[records.append], max_seconds=0.0)
    # Stopped inside the first epoch: no epoch ever finished, so no callback ran.
    assert caught.value.epoch == 1
    assert records == []
    assert caught.value.code == "timeout"
