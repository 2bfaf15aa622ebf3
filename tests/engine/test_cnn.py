"""CNNs from ``model.layers``: network-level gradients, shape checks, the tutorial's CNN on
scikit-learn digits (plain, augmented, group_l1 on filters), serialization with batch norm,
seeding, warm starts and the public split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

import engine
from engine.batchnorm import BatchNorm
from engine.losses import make_loss
from engine.network import Network
from engine.pooling import Flatten
from engine.spec_parse import parse

TUTORIAL_LAYERS = [
    {"type": "conv2d", "filters": 4, "kernel_size": 5, "padding": "valid", "activation": "tanh"},
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "valid", "activation": "tanh"},
    {"type": "maxpool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": "valid", "activation": "relu"},
    {"type": "maxpool2d", "pool_size": 2},
    {"type": "flatten"},
    {"type": "dense", "units": 128, "activation": "tanh", "init": "normal"},
    {"type": "dropout", "rate": 0.5},
]
TUTORIAL_SPEC = {
    "model": {"layers": TUTORIAL_LAYERS, "init": "glorot_uniform"},
    "optimizer": {
        "name": "sgd",
        "learning_rate": 0.05,
        "momentum": 0.9,
        "nesterov": True,
        "decay": 1e-6,
    },
    "epochs": 20,
    "batch_size": 100,
    "validation_split": 0.2,
    "seed": 7,
}


def digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as uint8 images (N, 1, 28, 28): 8x8 upsampled 3x, padded by 2."""
    d = load_digits()
    img = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    img = img.repeat(3, axis=1).repeat(3, axis=2)
    img = np.pad(img, ((0, 0), (2, 2), (2, 2)))
    return img[:, None], d.target


def held_out_accuracy(model: engine.Model, X: np.ndarray, y: np.ndarray) -> float:
    _, val = engine.split(model.spec, X, y)
    return float(np.mean(model.predict(X[val]) == y[val]))


# --- network-level gradient check ---------------------------------------------------------------


def test_small_cnn_gradients_match_centred_differences_float64():
    spec = parse(
        {
            "model": {
                "layers": [
                    {"type": "conv2d", "filters": 3, "kernel_size": 3, "activation": "tanh"},
                    {"type": "batch_norm"},
                    {"type": "maxpool2d", "pool_size": 2},
                    {"type": "conv2d", "filters": 2, "kernel_size": 2, "padding": "same"},
                    {"type": "avgpool2d", "pool_size": 2},
                    {"type": "dense", "units": 5, "activation": "sigmoid"},
                ],
                "activation": "leaky_relu",
            },
            "dtype": "float64",
        }
    )
    rng = np.random.default_rng(3)
    net = Network.build(spec, 2 * 9 * 9, 4, rng=rng, input_shape=(2, 9, 9))
    kinds = [type(la).__name__ for la in net.layers]
    assert kinds[:4] == ["Conv2D", "Tanh", "BatchNorm", "MaxPool2D"]
    assert "Flatten" in kinds and kinds[-1] == "Dense"
    x = rng.standard_normal((6, 2, 9, 9))
    y = rng.integers(0, 4, size=6)
    loss = make_loss("softmax_cross_entropy", {})

    def value() -> float:
        return loss(net.forward(x, training=True), y)[0]

    _, dscores = loss(net.forward(x, training=True), y)
    net.backward(dscores)
    params, grads = net.parameters()
    analytic = [g.copy() for g in grads]
    h = 1e-6
    for p, g in zip(params, analytic, strict=True):
        flat, gflat = p.reshape(-1), g.reshape(-1)
        for i in rng.choice(flat.size, size=min(flat.size, 8), replace=False):
            old = flat[i]
            flat[i] = old + h
            up = value()
            flat[i] = old - h
            down = value()
            flat[i] = old
            numeric = (up - down) / (2 * h)
            assert abs(numeric - gflat[i]) <= 1e-6 + 1e-5 * abs(numeric)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "leaky_relu", "linear"])
def test_max_pool_after_a_monotone_activation_runs_first_with_the_same_results(activation):
    """conv -> act -> maxpool is built as conv -> maxpool -> act (max(act(x)) = act(max(x))) for
    non-decreasing activations; output and every gradient equal the spec order's."""
    spec = parse(
        {
            "model": {
                "layers": [
                    {"type": "conv2d", "filters": 3, "kernel_size": 3, "activation": activation},
                    {"type": "maxpool2d", "pool_size": 2},
                ],
            },
            "dtype": "float64",
        }
    )
    net = Network.build(spec, 2 * 9 * 8, 4, rng=np.random.default_rng(5), input_shape=(2, 9, 8))
    assert [type(la).__name__ for la in net.layers][1] == "MaxPool2D"
    spec_order = list(net.layers)
    spec_order[1], spec_order[2] = spec_order[2], spec_order[1]
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 2, 9, 8))
    dscores = rng.standard_normal((5, 4))
    results = []
    for layers in (net.layers, spec_order):
        out = x
        for la in layers:
            out = la.forward(out, training=True)
        d = dscores
        for la in reversed(layers):
            d = la.backward(d) if d is not None else None
        results.append([out] + [la.grads[k].copy() for la in layers for k in sorted(la.grads)])
    for ours, ref in zip(*results, strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


def test_convolutions_read_by_a_pool_hand_it_a_view_the_others_a_copy():
    """The tutorial's network: the two convolutions right before a max-pool return strided
    views, the first (read by tanh) a contiguous array; the scores equal a build without."""
    spec = parse({**TUTORIAL_SPEC, "dtype": "float64"})
    net = Network.build(spec, 784, 10, rng=np.random.default_rng(3), input_shape=(1, 28, 28))
    convs = net.conv_layers
    assert [c.strided_output for c in convs] == [False, True, True]
    x = np.random.default_rng(4).random((6, 1, 28, 28))
    assert convs[0].forward(x, training=True).flags.c_contiguous
    assert not convs[1].forward(np.ones((2, 4, 24, 24)), training=True).flags.c_contiguous
    scores = net.forward(x)
    for c in convs:
        c.strided_output = False
    np.testing.assert_array_equal(net.forward(x), scores)


# --- shapes -------------------------------------------------------------------------------------


def test_layer_shapes_follow_keras_rules():
    shapes = engine.layer_shapes({"model": {"layers": TUTORIAL_LAYERS}}, (1, 28, 28))
    assert [s.out_shape for s in shapes[:6]] == [
        (4, 24, 24),
        (8, 22, 22),
        (8, 11, 11),
        (16, 9, 9),
        (16, 4, 4),
        (256,),
    ]
    same = engine.layer_shapes(
        {
            "model": {
                "layers": [
                    {
                        "type": "conv2d",
                        "filters": 2,
                        "kernel_size": 3,
                        "strides": 2,
                        "padding": "same",
                    }
                ]
            }
        },
        (3, 7, 8),
    )
    assert same[0].out_shape == (2, 4, 4)


def test_a_layer_with_an_empty_output_names_its_index():
    layers = [*TUTORIAL_LAYERS[:5], {"type": "conv2d", "filters": 2, "kernel_size": 5}]
    with pytest.raises(engine.SpecError) as info:
        engine.layer_shapes({"model": {"layers": layers}}, (1, 28, 28))
    assert info.value.loc == ("model", "layers", 5) and info.value.code == "shape_error"
    X = np.zeros((10, 1, 28, 28), dtype=np.uint8)
    with pytest.raises(engine.SpecError) as info:
        engine.fit({"model": {"layers": layers}}, X, np.arange(10) % 2)
    assert info.value.loc == ("model", "layers", 5)


def test_conv_after_flatten_and_dropconnect_and_prelu_are_refused():
    bad = [{"type": "flatten"}, {"type": "conv2d", "filters": 2, "kernel_size": 3}]
    with pytest.raises(engine.SpecError) as info:
        engine.layer_shapes({"model": {"layers": bad}}, (1, 8, 8))
    assert (info.value.loc, info.value.code) == (("model", "layers", 1), "needs_images")
    conv = [{"type": "conv2d", "filters": 2, "kernel_size": 3}]
    with pytest.raises(engine.SpecError) as info:
        engine.layer_shapes(
            {"model": {"layers": conv}, "dropout": {"mode": "dropconnect", "hidden": 0.2}},
            (1, 8, 8),
        )
    assert info.value.loc == ("dropout", "mode") and "conv2d" in info.value.msg
    with pytest.raises(engine.SpecError) as info:
        engine.layer_shapes({"model": {"layers": conv, "activation": "prelu"}}, (1, 8, 8))
    assert info.value.loc == ("model", "layers", 0, "activation")


def test_a_dense_only_spec_on_images_flattens_them():
    X, y = digits_28()
    X, y = X[:300], y[:300]
    model = engine.fit({"model": {"hidden_layers": [16]}, "epochs": 2, "seed": 1}, X, y)
    assert isinstance(model.network.layers[0], Flatten)
    assert model.network.weights[0].shape == (784, 16)
    assert model.input_shape == (1, 28, 28)
    # (N, H, W) is one channel; other sizes are refused by name
    np.testing.assert_array_equal(model.predict(X[:5, 0]), model.predict(X[:5]))
    with pytest.raises(engine.InputError) as info:
        model.predict(np.zeros((2, 1, 27, 28), dtype=np.uint8))
    assert info.value.code == "shape_mismatch"


# --- the tutorial's CNN on digits ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tutorial_model():
    X, y = digits_28()
    return engine.fit(TUTORIAL_SPEC, X, y), X, y


@pytest.mark.integration
def test_tutorial_cnn_learns_digits(tutorial_model):
    model, X, y = tutorial_model
    assert [type(la).__name__ for la in model.network.layers][:3] == ["Conv2D", "Tanh", "Conv2D"]
    assert held_out_accuracy(model, X, y) >= 0.95
    assert model.metrics["val_metric"] >= 0.95


@pytest.mark.integration
def test_tutorial_cnn_with_augmentation_learns_digits():
    X, y = digits_28()
    spec = {
        **TUTORIAL_SPEC,
        "augmentation": {
            "rotation_range": 10.0,
            "width_shift_range": 0.08,
            "height_shift_range": 0.08,
        },
    }
    model = engine.fit(spec, X, y)
    assert held_out_accuracy(model, X, y) >= 0.93


def test_augmentation_is_seeded_and_changes_the_batches():
    X, y = digits_28()
    X, y = X[:200], y[:200]
    spec = {
        "model": {"layers": TUTORIAL_LAYERS[:3]},
        "epochs": 1,
        "batch_size": 50,
        "augmentation": {"rotation_range": 15.0, "width_shift_range": 0.1},
    }
    a, b = engine.fit(spec, X, y), engine.fit(spec, X, y)
    plain = engine.fit({**spec, "augmentation": None}, X, y)
    for name, w in a.network.get_weights().items():
        np.testing.assert_array_equal(w, b.network.get_weights()[name])
    assert not np.array_equal(a.network.weights[0], plain.network.weights[0])
    with pytest.raises(engine.SpecError) as info:
        engine.fit(spec, X.reshape(200, -1).astype(float), y)
    assert info.value.loc == ("augmentation",)


def test_featurewise_statistics_are_saved_and_applied_at_predict():
    X, y = digits_28()
    X, y = X[:200], y[:200]
    spec = {
        "model": {"layers": TUTORIAL_LAYERS[:3]},
        "epochs": 1,
        "validation_split": 0.25,
        "augmentation": {"featurewise_center": True, "featurewise_std_normalization": True},
    }
    model = engine.fit(spec, X, y)
    train, _ = engine.split(spec, X, y)
    aug = model.preprocessor.augmenter
    np.testing.assert_allclose(aug.mean, [X[train].mean()], rtol=1e-5)
    np.testing.assert_allclose(aug.std, [X[train].astype(np.float64).std()], rtol=1e-4)
    z = model.preprocessor.transform(X[:3], dtype=np.float64)
    np.testing.assert_allclose(
        z.mean(), (X[:3].mean() - aug.mean[0]) / (aug.std[0] + 1e-6), rtol=1e-4
    )
    restored = engine.load(model.to_bytes())
    np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))


# --- group_l1 on filters ------------------------------------------------------------------------


@pytest.mark.integration
def test_group_l1_switches_off_whole_filters_of_the_first_conv_layer():
    X, y = digits_28()
    wide = [{**TUTORIAL_LAYERS[0], "filters": 16}, *TUTORIAL_LAYERS[1:]]
    spec = {
        **TUTORIAL_SPEC,
        "model": {"layers": wide, "init": "glorot_uniform"},
        "regularization": {"group_l1": 0.03},
        "epochs": 12,
    }
    model = engine.fit(spec, X, y)
    W = model.network.weights[0]
    assert W.shape == (16, 1, 5, 5)
    off = [f for f in range(16) if not W[f].any()]
    assert len(off) >= 4  # whole filters are exactly zero
    partial = [f for f in range(16) if 0 < np.count_nonzero(W[f]) < W[f].size]
    assert partial == []  # group_l1 alone zeroes filters, not single weights
    assert held_out_accuracy(model, X, y) >= 0.9
    stats = engine.sparsity(model)
    conv0 = stats["layers"][0]
    assert conv0["name"] == "conv0" and conv0["shape"] == [16, 1, 5, 5]
    assert conv0["filters_off"] == len(off) and conv0["filter_indices_off"] == off
    assert len(conv0["filter_l2_norms"]) == 16
    np.testing.assert_allclose(
        conv0["filter_l2_norms"], np.sqrt((W.astype(np.float64) ** 2).sum(axis=(1, 2, 3)))
    )
    # the next conv layer reads nothing from a filter that is off
    assert set(off) <= set(stats["layers"][1]["dead_channel_indices"]) | set(off)
    assert model.history[-1]["zero_fraction"] > 0


# --- serialization, seeds, warm starts, split ---------------------------------------------------


def _bn_spec(**extra):
    layers = [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "activation": "relu"},
        {"type": "batch_norm"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "batch_norm", "momentum": 0.9},
        {"type": "dense", "units": 16},
    ]
    return {"model": {"layers": layers}, "epochs": 2, "batch_size": 50, "seed": 3, **extra}


def test_batch_norm_cnn_round_trips_and_uses_running_statistics():
    X, y = digits_28()
    X, y = X[:300], y[:300]
    model = engine.fit(_bn_spec(), X, y)
    bn = [la for la in model.network.layers if isinstance(la, BatchNorm)]
    assert len(bn) == 2 and bn[0].buffers["running_mean"].shape == (4,)
    assert not np.allclose(bn[0].buffers["running_mean"], 0.0)  # the statistics moved
    restored = engine.load(model.to_bytes())
    np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))
    rbn = [la for la in restored.network.layers if isinstance(la, BatchNorm)]
    np.testing.assert_array_equal(rbn[1].buffers["running_var"], bn[1].buffers["running_var"])
    # predict uses the running statistics: one image alone gets the same answer as in a batch
    np.testing.assert_allclose(
        model.predict_proba(X[:1]), model.predict_proba(X[:10])[:1], rtol=1e-5, atol=1e-7
    )


def test_same_seed_gives_identical_cnn_weights():
    X, y = digits_28()
    X, y = X[:200], y[:200]
    spec = _bn_spec(dropout={"hidden": 0.2})
    a, b = engine.fit(spec, X, y), engine.fit(spec, X, y)
    wa, wb = a.network.get_weights(), b.network.get_weights()
    assert set(wa) == set(wb) and any(k.startswith("conv0") for k in wa)
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name])
    other = engine.fit({**spec, "seed": 4}, X, y)
    assert not np.array_equal(other.network.weights[0], a.network.weights[0])


def test_conv_kernels_are_penalised_and_biases_are_not():
    X, y = digits_28()
    X, y = X[:200], y[:200]
    spec = {"model": {"layers": TUTORIAL_LAYERS[:3]}, "epochs": 2, "regularization": {"l1": 0.01}}
    model = engine.fit(spec, X, y)
    weights = model.network.weights
    assert [w.ndim for w in weights] == [4, 4, 2]
    penalty = 0.01 * sum(float(np.abs(w).sum(dtype=np.float64)) for w in weights)
    assert model.history[-1]["penalty"] == pytest.approx(penalty, rel=1e-6)
    zeros = sum(w.size - np.count_nonzero(w) for w in weights)
    assert model.history[-1]["zero_fraction"] == pytest.approx(zeros / sum(w.size for w in weights))
    stats = engine.sparsity(model)
    assert [la["name"] for la in stats["layers"]] == ["conv0", "conv1", "dense0"]
    assert stats["total_weights"] == sum(w.size for w in weights)


def test_batch_progress_reaches_callbacks_with_on_batch(monkeypatch):
    import engine.trainer

    monkeypatch.setattr(engine.trainer, "BATCH_PROGRESS_SECONDS", 0.0)
    seen: list[dict] = []

    class Recorder:
        def __call__(self, record: dict) -> None:
            return None

        def on_batch(self, info: dict) -> None:
            seen.append(info)

    X, y = digits_28()
    engine.fit(
        {"model": {"hidden_layers": [8]}, "epochs": 2, "batch_size": 50},
        X[:200],
        y[:200],
        callbacks=[Recorder()],
    )
    assert seen[0] == {"epoch": 1, "batch": 1, "batches": 4}
    assert [(s["epoch"], s["batch"]) for s in seen] == [(e, b) for e in (1, 2) for b in (1, 2, 3)]


def test_warm_start_continues_from_the_given_weights():
    X, y = digits_28()
    X, y = X[:300], y[:300]
    spec = _bn_spec(epochs=1, validation_split=0.2)
    first = engine.fit(spec, X, y)
    again = engine.fit(
        {**spec, "epochs": 0 + 1, "optimizer": {"learning_rate": 1e-12}}, X, y, warm_start=first
    )
    # a vanishing step leaves the warm weights (almost) where they were, unlike a fresh start
    np.testing.assert_allclose(again.network.weights[0], first.network.weights[0], atol=1e-6)
    assert again.preprocessor is first.preprocessor
    cold = engine.fit({**spec, "optimizer": {"learning_rate": 1e-12}}, X, y)
    assert not np.allclose(cold.network.weights[0], first.network.weights[0], atol=1e-3)
    with pytest.raises(engine.SpecError) as info:
        engine.fit({**spec, "model": {"layers": TUTORIAL_LAYERS[:1]}}, X, y, warm_start=first)
    assert info.value.code == "warm_start_mismatch"
    with pytest.raises(engine.InputError) as info:
        engine.fit(spec, X, np.where(y == 0, 10, y), warm_start=first)
    assert info.value.code == "warm_start_mismatch"


def test_warm_start_on_a_table_reuses_the_preprocessing():
    rng = np.random.default_rng(0)
    X = rng.normal(loc=5.0, scale=3.0, size=(200, 4))
    y = X[:, 0] * 2.0 + rng.normal(size=200)
    spec = {"task": "regression", "model": {"hidden_layers": [8]}, "epochs": 3, "seed": 1}
    first = engine.fit(spec, X, y)
    shifted = X + 100.0  # refitted standardization would hide the shift; the warm model's sees it
    warm = engine.fit(spec, shifted, y, warm_start=first)
    np.testing.assert_array_equal(warm.preprocessor.center, first.preprocessor.center)


def test_split_is_the_split_fit_uses():
    X, y = digits_28()
    spec = {"validation_split": 0.3, "seed": 11}
    train, val = engine.split(spec, X, y)
    assert len(train) + len(val) == len(y) and not set(train) & set(val)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    # stratified: each class keeps its share in the validation rows
    for c in range(10):
        assert abs(np.mean(y[val] == c) - np.mean(y == c)) < 0.02
    model = engine.fit({**spec, "model": {"hidden_layers": [4]}, "epochs": 1}, X, y)
    assert model.metrics["n_val"] == len(val)
    again_train, _ = engine.split(spec, X.reshape(len(X), -1).astype(float), y)
    np.testing.assert_array_equal(again_train, train)
    none_train, none_val = engine.split({"validation_split": 0.0}, X, y)
    assert len(none_val) == 0 and len(none_train) == len(y)
