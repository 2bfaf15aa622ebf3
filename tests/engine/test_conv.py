"""Image layers: float64 centred-difference gradient checks and agreement with PyTorch.

Gradient checks use ``check_layer`` of test_gradients (``f = sum(forward(x) * R)``, relative error
< 1e-6 for ``dx`` and every parameter) on random shapes under fixed seeds, with strides and
padding variants. The PyTorch comparisons put the same weights in ``torch.nn.functional`` and
compare outputs and gradients within 1e-5 (float32 and float64).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.batchnorm import BatchNorm
from engine.conv import Conv2D, make_conv2d, output_size
from engine.pooling import AvgPool2D, Flatten, MaxPool2D
from tests.engine.test_gradients import check_layer

SEED = 2024


def conv_case(
    seed: int, padding: str, strides: tuple[int, int], dtype: str = "float64"
) -> tuple[Conv2D, np.ndarray]:
    """A random Conv2D (random F, C, kernel, image size) and an input batch."""
    rng = np.random.default_rng(seed)
    N, C, F = (int(v) for v in rng.integers(1, 4, size=3))
    kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
    H, W = (int(v) for v in rng.integers(4, 8, size=2))
    layer = make_conv2d(
        C, F, (kh, kw), strides=strides, padding=padding, init="he", rng=rng, dtype=dtype
    )
    layer.params["b"][...] = rng.standard_normal(F)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    return layer, x


# ---------------------------------------------------------------- gradient checks (float64)
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 1)])
@pytest.mark.parametrize("case", range(2))
def test_conv2d_gradients(padding: str, strides: tuple[int, int], case: int) -> None:
    layer, x = conv_case(SEED + case, padding, strides)
    check_layer(layer, x)


def test_conv2d_gradient_of_the_first_layer_skips_dx() -> None:
    layer, x = conv_case(SEED, "same", (1, 1))
    layer.need_dx = False
    out = layer.forward(x, training=True)
    assert layer.backward(np.ones_like(out)) is None
    assert np.allclose(layer.grads["b"], out.shape[0] * out.shape[2] * out.shape[3])


@pytest.mark.parametrize(
    ("pool", "strides"), [((2, 2), None), ((3, 2), (1, 2)), ((2, 2), (1, 1)), ((3, 3), (2, 2))]
)
@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_pool_gradients(cls, pool, strides) -> None:
    rng = np.random.default_rng(SEED)
    N, C = (int(v) for v in rng.integers(1, 4, size=2))
    H, W = (int(v) for v in rng.integers(5, 9, size=2))
    check_layer(cls(pool, strides), rng.standard_normal((N, C, H, W)))


def test_flatten_gradient_and_shape() -> None:
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((3, 2, 4, 5))
    layer = Flatten()
    assert layer.forward(x, training=True).shape == (3, 40)
    assert layer.output_shape((2, 4, 5)) == (40,)
    check_layer(layer, x)


@pytest.mark.parametrize("shape", [(7, 5), (4, 3, 5, 6)])
def test_batch_norm_gradients(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(SEED)
    layer = BatchNorm(shape[1], dtype="float64")
    layer.params["gamma"][...] = rng.uniform(0.5, 2.0, shape[1])
    layer.params["beta"][...] = rng.standard_normal(shape[1])
    check_layer(layer, rng.standard_normal(shape) * 3.0 + 1.0)


# ---------------------------------------------------------------- shapes, init, predict
SIZES = [(28, 5, 1), (7, 3, 2), (8, 3, 2), (5, 5, 3), (4, 1, 3)]


@pytest.mark.parametrize(("size", "k", "s"), SIZES)
def test_output_size_follows_keras(size: int, k: int, s: int) -> None:
    out, _, _ = output_size(size, k, s, "valid")
    assert out == (size - k) // s + 1
    out, before, after = output_size(size, k, s, "same")
    assert out == -(-size // s)
    assert before + after == max((out - 1) * s + k - size, 0)
    assert after - before in (0, 1)


def test_make_conv2d_init_and_shapes() -> None:
    layer = make_conv2d(8, 16, 3, init="he", rng=np.random.default_rng(0), dtype="float32")
    W = layer.params["W"]
    assert W.shape == (16, 8, 3, 3) and W.dtype == np.float32
    assert layer.params["b"].shape == (16,) and not layer.params["b"].any()
    assert abs(W.std() - np.sqrt(2.0 / 72)) < 0.02  # he: fan_in = C * kh * kw
    assert layer.output_shape((8, 11, 11)) == (16, 9, 9)
    same = make_conv2d(8, 4, 3, strides=2, padding="same", rng=np.random.default_rng(0))
    assert same.output_shape((8, 11, 11)) == (4, 6, 6)
    x = np.random.default_rng(1).standard_normal((2, 8, 11, 11)).astype(np.float32)
    out = same.forward(x, training=True)
    assert out.shape == (2, 4, 6, 6) and out.dtype == np.float32
    assert np.array_equal(same.predict(x), out)


def test_conv2d_scratch_reuse_across_batch_sizes() -> None:
    layer, x = conv_case(SEED, "same", (1, 1))
    ref = [layer.predict(x[:1]), layer.predict(x)]
    for xb, r in zip([x[:1], x, x[:1]], [ref[0], ref[1], ref[0]], strict=True):
        assert np.allclose(layer.forward(xb, training=True), r)


def test_batch_norm_buffers_and_predict() -> None:
    rng = np.random.default_rng(SEED)
    layer = BatchNorm(3, momentum=0.9, dtype="float64")
    assert set(layer.buffers) == {"running_mean", "running_var"}
    x = rng.standard_normal((50, 3, 2, 2)) * 2.0 + 5.0
    layer.forward(x, training=True)
    M = 50 * 4
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3)) * M / (M - 1)
    assert np.allclose(layer.buffers["running_mean"], 0.1 * mean)
    assert np.allclose(layer.buffers["running_var"], 0.9 + 0.1 * var)
    layer.buffers["running_mean"][...] = mean
    layer.buffers["running_var"][...] = x.var(axis=(0, 2, 3))
    out = layer.predict(x)
    assert np.allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    assert np.array_equal(layer.forward(x, training=False), out)


# ---------------------------------------------------------------- PyTorch agreement
DTYPES = ["float32", "float64"]
ATOL = 1e-5


def to_torch(a: np.ndarray, grad: bool = False):
    torch = pytest.importorskip("torch")
    return torch.tensor(a, requires_grad=grad)


def assert_close(ours: np.ndarray, theirs, atol: float = ATOL) -> None:
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape
    scale = max(1.0, float(np.abs(theirs).max()))
    assert float(np.abs(ours - theirs).max()) <= atol * scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (1, 2)])
def test_conv2d_matches_torch(dtype: str, padding: str, strides: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    F_ = torch.nn.functional
    layer, x = conv_case(SEED + 7, padding, strides, dtype)
    W, b = layer.params["W"], layer.params["b"]
    kh, kw = layer.kernel_size
    _, pt, pb = output_size(x.shape[2], kh, strides[0], padding)
    _, pl, pr = output_size(x.shape[3], kw, strides[1], padding)
    xt, Wt, bt = to_torch(x, True), to_torch(W, True), to_torch(b, True)
    ref = F_.conv2d(F_.pad(xt, (pl, pr, pt, pb)), Wt, bt, stride=strides)
    out = layer.forward(x, training=True)
    assert_close(out, ref)
    dout = np.random.default_rng(3).standard_normal(out.shape).astype(dtype)
    ref.backward(torch.tensor(dout))
    dx = layer.backward(dout)
    assert dx.dtype == np.dtype(dtype)
    assert_close(dx, xt.grad)
    assert_close(layer.grads["W"], Wt.grad)
    assert_close(layer.grads["b"], bt.grad)


def torch_pool_check(layer, x: np.ndarray, fn) -> None:
    torch = pytest.importorskip("torch")
    xt = to_torch(x, True)
    ref = fn(xt, layer.pool_size, layer.strides)
    out = layer.forward(x, training=True)
    assert_close(out, ref)
    dout = np.random.default_rng(5).standard_normal(out.shape).astype(x.dtype)
    ref.backward(torch.tensor(dout))
    assert_close(layer.backward(dout), xt.grad)
    assert_close(layer.predict(x), ref)


POOLS = [((2, 2), None), ((3, 3), (2, 2)), ((2, 2), (1, 1)), ((3, 2), (2, 1)), ((2, 2), (3, 3))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("pool", "strides"), POOLS)
def test_max_pool_matches_torch(dtype: str, pool, strides) -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(SEED).standard_normal((3, 2, 9, 8)).astype(dtype)
    torch_pool_check(MaxPool2D(pool, strides), x, torch.nn.functional.max_pool2d)


@pytest.mark.parametrize(("pool", "strides"), POOLS)
def test_max_pool_ties_and_overlaps_route_like_torch(pool, strides) -> None:
    """Few distinct values (ties everywhere, whole windows of zeros as after a ReLU)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(SEED)
    x = np.maximum(rng.integers(-2, 3, size=(4, 3, 8, 9)), 0).astype(np.float64)
    torch_pool_check(MaxPool2D(pool, strides), x, torch.nn.functional.max_pool2d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("pool", "strides"), POOLS)
def test_avg_pool_matches_torch(dtype: str, pool, strides) -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(SEED).standard_normal((3, 2, 9, 8)).astype(dtype)
    torch_pool_check(AvgPool2D(pool, strides), x, torch.nn.functional.avg_pool2d)


def test_flatten_matches_torch_order() -> None:
    torch = pytest.importorskip("torch")
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    ref = torch.nn.Flatten()(torch.tensor(x))
    assert np.array_equal(Flatten().forward(x), ref.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 5), (6, 3, 4, 5)])
def test_batch_norm_matches_torch(dtype: str, shape: tuple[int, ...]) -> None:
    torch = pytest.importorskip("torch")
    F_ = torch.nn.functional
    rng = np.random.default_rng(SEED)
    C = shape[1]
    layer = BatchNorm(C, momentum=0.8, eps=1e-3, dtype=dtype)
    layer.params["gamma"][...] = rng.uniform(0.5, 2.0, C)
    layer.params["beta"][...] = rng.standard_normal(C)
    gt, bt = to_torch(layer.params["gamma"], True), to_torch(layer.params["beta"], True)
    rm, rv = torch.zeros(C, dtype=gt.dtype), torch.ones(C, dtype=gt.dtype)
    for step in range(3):  # the running statistics follow torch's over several batches
        x = (rng.standard_normal(shape) * 2.0 + step).astype(dtype)
        xt = to_torch(x, True)
        ref = F_.batch_norm(xt, rm, rv, gt, bt, training=True, momentum=0.2, eps=1e-3)
        out = layer.forward(x, training=True)
        assert_close(out, ref)
        dout = rng.standard_normal(shape).astype(dtype)
        gt.grad = bt.grad = None
        ref.backward(torch.tensor(dout))
        assert_close(layer.backward(dout), xt.grad)
        assert_close(layer.grads["gamma"], gt.grad)
        assert_close(layer.grads["beta"], bt.grad)
        assert_close(layer.buffers["running_mean"], rm)
        assert_close(layer.buffers["running_var"], rv)
    x = rng.standard_normal(shape).astype(dtype)
    ref = F_.batch_norm(to_torch(x), rm, rv, gt, bt, training=False, eps=1e-3)
    assert_close(layer.predict(x), ref)
    assert_close(layer.forward(x, training=False), ref)


@pytest.mark.parametrize(("padding", "strides"), [("same", (1, 1)), ("valid", (2, 1))])
def test_conv2d_blocks_of_images_give_the_same_results(padding, strides) -> None:
    """Cache blocking (here 2 images per block, the last one partial) changes nothing."""
    rng = np.random.default_rng(SEED)
    layer = make_conv2d(3, 4, 3, strides=strides, padding=padding, rng=rng, dtype="float64")
    x = rng.standard_normal((5, 3, 7, 6))
    whole = layer.forward(x, training=True)
    dout = rng.standard_normal(whole.shape)
    dx = layer.backward(dout)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    layer.block_bytes, layer.block_min_images = 1, 2
    assert np.allclose(layer.forward(x, training=True), whole, atol=1e-12)
    assert np.allclose(layer.backward(dout), dx, atol=1e-12)
    for name, g in grads.items():
        assert np.allclose(layer.grads[name], g, atol=1e-12)
    check_layer(layer, x[:3])


def test_small_cnn_trains_like_torch() -> None:
    """Engine conv layers + Dense + softmax cross-entropy + SGD: three steps from the same
    weights give the same weights as PyTorch (float64)."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from engine.layers import Dense, ReLU, Tanh
    from engine.losses import softmax_cross_entropy
    from engine.optimizers import SGD

    rng = np.random.default_rng(SEED)
    conv1 = make_conv2d(2, 3, 3, padding="same", init="he", rng=rng, dtype="float64")
    conv2 = make_conv2d(3, 4, 3, strides=2, init="he", rng=rng, dtype="float64")
    bn = BatchNorm(4, momentum=0.9, dtype="float64")
    dense = Dense(rng.standard_normal((16, 5)) * 0.3, np.zeros(5))
    layers = [conv1, Tanh(), MaxPool2D(2, 1), conv2, bn, ReLU(), AvgPool2D(2, 1), Flatten(), dense]
    x = rng.standard_normal((6, 2, 9, 9))
    y = rng.integers(0, 5, size=6)

    tconv1, tconv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2)
    tbn, tdense = nn.BatchNorm2d(4, eps=1e-3, momentum=0.1), nn.Linear(16, 5)
    net = nn.Sequential(
        tconv1, nn.Tanh(), nn.MaxPool2d(2, 1), tconv2, tbn, nn.ReLU(), nn.AvgPool2d(2, 1),
        nn.Flatten(), tdense,
    ).double()  # fmt: skip
    with torch.no_grad():
        for t, la in ((tconv1, conv1), (tconv2, conv2)):
            t.weight.copy_(torch.tensor(la.params["W"]))
            t.bias.copy_(torch.tensor(la.params["b"]))
        tdense.weight.copy_(torch.tensor(dense.params["W"].T))
        tdense.bias.copy_(torch.tensor(dense.params["b"]))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ours = SGD(learning_rate=0.1)
    params = [la.params[k] for la in layers for k in la.params]
    grads = [la.grads[k] for la in layers for k in la.params]
    for _ in range(3):
        out = x
        for la in layers:
            out = la.forward(out, training=True)
        loss, d = softmax_cross_entropy(out, y)
        for la in reversed(layers):
            d = la.backward(d)
        ours.step(params, grads)
        opt.zero_grad()
        tloss = nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y))
        tloss.backward()
        opt.step()
        assert abs(loss - tloss.item()) < 1e-10
    assert np.allclose(conv1.params["W"], tconv1.weight.detach().numpy(), atol=1e-10)
    assert np.allclose(conv2.params["b"], tconv2.bias.detach().numpy(), atol=1e-10)
    assert np.allclose(bn.params["gamma"], tbn.weight.detach().numpy(), atol=1e-10)
    assert np.allclose(bn.buffers["running_var"], tbn.running_var.numpy(), atol=1e-10)
    assert np.allclose(dense.params["W"], tdense.weight.detach().numpy().T, atol=1e-10)


@pytest.mark.parametrize(("padding", "strides"), [("same", (1, 1)), ("valid", (2, 1))])
@pytest.mark.parametrize("blocks", [(1 << 20, 16), (1, 2)])
def test_conv2d_strided_output_is_a_view_with_the_same_values(padding, strides, blocks) -> None:
    """``strided_output`` returns the products as a strided view, in one block or several:
    the values and every gradient are exactly those of the contiguous output."""
    rng = np.random.default_rng(SEED)
    layer = make_conv2d(3, 4, 3, strides=strides, padding=padding, rng=rng, dtype="float64")
    layer.block_bytes, layer.block_min_images = blocks
    x = rng.standard_normal((5, 3, 7, 6))
    dout = rng.standard_normal(layer.forward(x).shape)
    results = []
    for strided in (False, True):
        layer.strided_output = strided
        out = layer.forward(x, training=True)
        assert out.flags.c_contiguous is not strided
        dx = layer.backward(dout)
        results.append([out, layer.predict(x), dx] + [g.copy() for g in layer.grads.values()])
    for ours, ref in zip(*results, strict=True):
        np.testing.assert_array_equal(ours, ref)
