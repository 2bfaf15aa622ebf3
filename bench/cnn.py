"""The tutorial's CNN: engine training throughput vs PyTorch eager, on one thread.

Network (both contenders), input ``(N, 1, 28, 28)`` float32::

    Conv2D(4, 5x5, valid) - tanh - Conv2D(8, 3x3, valid) - tanh - MaxPool2D(2x2)
    - Conv2D(16, 3x3, valid) - relu - MaxPool2D(2x2) - Flatten (256) - Dense(128, init normal)
    - tanh [- Dropout(0.5)] - Dense(10) - softmax cross-entropy

SGD with learning rate 0.05, Nesterov momentum 0.9. Two variants: ``plain``, and ``dropout+l2``
(Dropout(0.5) after the 128-unit tanh, ``l2 * sum(W^2)`` with ``l2 = 1e-4`` on every kernel and
weight matrix, never biases; PyTorch gets ``weight_decay = 2 * l2`` on those, biases in a group
without decay). The engine side is a plain sequential loop over the layers
``engine.network.Network.build`` makes of the tutorial's spec (``engine.conv``, ``engine.pooling``,
``engine.layers``; the activation before a max-pool runs after it, on a quarter of the values:
same function),
``engine.losses.softmax_cross_entropy``, ``engine.regularizers.penalty`` and ``engine.optimizers``
(Keras-form Nesterov, the same trajectory as PyTorch's for a constant rate).

Both run on ONE thread (``torch.set_num_threads(1)``, numpy's BLAS limited by threadpoolctl), in
the same process, interleaved round by round, timed by the process CPU clock by default (the
machine is shared). Reported: samples/s, the ratio engine / torch per batch size (median over
rounds of the per-round ratio), achieved GFLOP/s (multiply-adds of forward, weight gradient and
input gradient, times 2) against a float32 matmul peak measured in the same run, and the share of
a training step spent in augmentation (rotation 10, shifts 0.1, zoom 0.1, bilinear; goal <= 15%).

Run: ``python -m bench.cnn`` (``--rows``, ``--repeats``, ``--batch-sizes``, ``--clock wall``).
On this VM every fresh multi-megabyte NumPy temporary costs page faults when glibc trims the heap
between batches (~20k minor faults per 2,000 images); ``MALLOC_TRIM_THRESHOLD_=1073741824
MALLOC_TOP_PAD_=67108864 MALLOC_MMAP_THRESHOLD_=33554432`` in the command removes most of them,
for both contenders. ``run`` has the signature of a ``python -m bench`` section.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed from the environment before numpy loads, as in
``python -m bench``.
"""

from __future__ import annotations

import os

from bench.machine import OPENBLAS_ENV_VARS

if __name__ == "__main__":
    REMOVED_ENV = {k: os.environ.pop(k) for k in OPENBLAS_ENV_VARS if k in os.environ}

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import SectionResult, best_of, fmt, now, set_clock
from bench.training import sgemm_peak, thread_limit, torch_available

LR = 0.05
MOMENTUM = 0.9
DROPOUT = 0.5
L2 = 1e-4
BATCH_SIZES = (32, 100, 256)
VARIANTS = ("plain", "dropout+l2")
GOALS = {"torch": 1.5, "augment_share": 0.15}
AUGMENTATION = {
    "rotation_range": 10.0,
    "width_shift_range": 0.1,
    "height_shift_range": 0.1,
    "zoom_range": 0.1,
}
# (in_channels, filters, kernel, input side) of the three convolutions; then Dense 256-128-10.
CONVS = ((1, 4, 5, 28), (4, 8, 3, 24), (8, 16, 3, 11))
DENSES = ((256, 128), (128, 10))


def flops_per_sample() -> float:
    """2 x multiply-adds of forward + weight gradient + input gradient (none for the first
    convolution, whose input gradient is never computed)."""
    total = 0.0
    for k, (C, F, kh, side) in enumerate(CONVS):
        out = side - kh + 1
        macs = F * C * kh * kh * out * out
        total += macs * (2 if k == 0 else 3)
    total += sum(3 * d * m for d, m in DENSES)
    return 2.0 * total


def make_data(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic images ``X (N, 1, 28, 28)`` float32 in [0, 1] and labels 0..9."""
    rng = np.random.default_rng(seed)
    X = rng.random((n_rows, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=n_rows)
    return X, y


def engine_layers(variant: str, rng: np.random.Generator) -> list:
    """The layers ``engine.network.Network.build`` makes of the tutorial's spec (so the bench
    runs what a training job runs: in-place activations, max-pools before the activation)."""
    from engine.network import Network

    conv = [
        {"type": "conv2d", "filters": F, "kernel_size": k, "padding": "valid", "activation": act}
        for (_, F, k, _), act in zip(CONVS, ("tanh", "tanh", "relu"), strict=True)
    ]
    pool = {"type": "maxpool2d", "pool_size": 2}
    layers = [conv[0], conv[1], pool, conv[2], pool, {"type": "flatten"}]
    layers.append({"type": "dense", "units": DENSES[0][1], "activation": "tanh", "init": "normal"})
    if variant == "dropout+l2":
        layers.append({"type": "dropout", "rate": DROPOUT})
    spec = {"model": {"layers": layers, "init": "glorot_uniform"}}
    net = Network.build(spec, 28 * 28, DENSES[1][1], rng=rng, input_shape=(1, 28, 28))
    return net.layers


def engine_epoch(
    X: np.ndarray, y: np.ndarray, batch_size: int, variant: str, augment: Any = None
) -> tuple[float, float]:
    """One epoch of the engine loop: ``(seconds, seconds spent in augmentation)``."""
    from engine.losses import softmax_cross_entropy
    from engine.optimizers import make_optimizer
    from engine.regularizers import penalty

    rng = np.random.default_rng(0)
    layers = engine_layers(variant, rng)
    refs = [(la, k) for la in layers for k in la.params]
    params = [la.params[k] for la, k in refs]
    grads = [la.grads[k] for la, k in refs]
    kernels = [la.params["W"] for la, k in refs if k == "W"]
    kernel_grads = [la.grads["W"] for la, k in refs if k == "W"]
    l2 = L2 if variant == "dropout+l2" else 0.0
    opt = make_optimizer(
        {"name": "sgd", "learning_rate": LR, "momentum": MOMENTUM, "nesterov": True}
    )
    N = X.shape[0]
    aug_seconds = 0.0
    t0 = now()
    perm = rng.permutation(N)
    for i in range(0, N, batch_size):
        idx = perm[i : i + batch_size]
        out = X[idx]
        if augment is not None:
            ta = now()
            out = augment(out, rng)
            aug_seconds += now() - ta
        for layer in layers:
            out = layer.forward(out, True)
        _, d = softmax_cross_entropy(out, y[idx])
        for layer in reversed(layers):
            d = layer.backward(d)
            if d is None:
                break
        if l2:
            for g, pg in zip(kernel_grads, penalty(kernels, l2=l2)[1], strict=True):
                g += pg
        opt.step(params, grads)
    return now() - t0, aug_seconds


def torch_epoch(X: Any, y: Any, batch_size: int, variant: str) -> float:
    """PyTorch eager, the loop a PyTorch user writes (X, y already tensors)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = [
        nn.Conv2d(1, 4, 5),
        nn.Tanh(),
        nn.Conv2d(4, 8, 3),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 128),
        nn.Tanh(),
    ]
    if variant == "dropout+l2":
        layers.append(nn.Dropout(DROPOUT))
    layers.append(nn.Linear(128, 10))
    net = nn.Sequential(*layers)
    nn.init.normal_(net[9].weight, std=0.05)
    wd = 2 * L2 if variant == "dropout+l2" else 0.0
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in net.named_parameters() if name.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": weights, "weight_decay": wd}, {"params": biases, "weight_decay": 0.0}],
        lr=LR,
        momentum=MOMENTUM,
        nesterov=True,
    )
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    N = X.shape[0]
    t0 = now()
    perm = torch.randperm(N)
    for i in range(0, N, batch_size):
        idx = perm[i : i + batch_size]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(X[idx]), y[idx])
        loss.backward()
        opt.step()
    return now() - t0


def run(
    res: SectionResult,
    *,
    quick: bool = False,
    threads: int = 1,
    repeats: int = 5,
    profile: bool = False,
    n_rows: int | None = None,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> dict[str, Any]:
    """Measure and record checks in ``res``; returns the table (see ``print_table``)."""
    from engine.augment import ImageAugmenter

    if n_rows is None:
        n_rows = 512 if quick else 6000
    X, y = make_data(n_rows)
    res.note(
        f"{n_rows} synthetic 28x28 images, {threads} thread(s) for both, median of {repeats} "
        "interleaved rounds (ratio per round)"
    )
    contenders: dict[str, Callable[[int, str], float]] = {
        "regula": lambda b, v: engine_epoch(X, y, b, v)[0]
    }
    if torch_available():
        import torch

        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        contenders["torch"] = lambda b, v: torch_epoch(Xt, yt, b, v)
    else:
        res.skip("PyTorch not installed (pip install 'regula[bench]' for torch==2.13.0)")
    augmenter = ImageAugmenter(**AUGMENTATION)
    table: dict[str, Any] = {"rows": []}
    with thread_limit(threads):
        peaks = [sgemm_peak(threads, 512 if quick else 1024, repeats=3)]
        times: dict[tuple[str, int, str], list[float]] = {}
        aug_share: dict[int, list[float]] = {}
        names = list(contenders)
        for r in range(repeats):
            peaks.append(sgemm_peak(threads, 512 if quick else 1024, repeats=2))
            for b in batch_sizes:
                for v in VARIANTS:
                    for name in names[r % len(names) :] + names[: r % len(names)]:
                        times.setdefault((name, b, v), []).append(contenders[name](b, v))
                total, aug = engine_epoch(X, y, b, "plain", augmenter)
                aug_share.setdefault(b, []).append(aug / total)
            print(f"  round {r + 1}/{repeats} done", flush=True)
        peak = max(peaks)
        if profile:
            from bench.profiling import profile_call

            res.note(
                "cProfile of one engine epoch at batch 100:\n"
                + profile_call(lambda: engine_epoch(X, y, 100, "plain"))
            )
    res.info("float32 matmul peak (sgemm)", peak, "GFLOP/s", note="best of all rounds")
    flops = flops_per_sample()
    for b in batch_sizes:
        for v in VARIANTS:
            ours = n_rows / best_of(times[("regula", b, v)])
            row = {"batch": b, "variant": v, "regula": ours}
            if "torch" in contenders:
                ratios = [
                    t / o
                    for o, t in zip(times[("regula", b, v)], times[("torch", b, v)], strict=True)
                ]
                ratio = statistics.median(ratios)
                theirs = ours / ratio
                row.update(torch=theirs, ratio=ratio)
                res.check(
                    f"batch {b} {v} samples/s", ours, "torch", theirs, "samples/s", ">=",
                    GOALS["torch"], note="median per-round ratio",
                )  # fmt: skip
            gflops = ours * flops / 1e9
            row.update(gflops=gflops, peak_fraction=gflops / peak)
            table["rows"].append(row)
        share = statistics.median(aug_share[b])
        table.setdefault("augment_share", {})[b] = share
        res.check(
            f"batch {b} augmentation share of a step", share, "1 step", 1.0, "fraction", "<=",
            GOALS["augment_share"],
        )  # fmt: skip
    table["peak"] = peak
    return table


def print_table(table: dict[str, Any]) -> None:
    print()
    print(f"float32 matmul peak: {table['peak']:.1f} GFLOP/s")
    print("| batch | variant | regula samples/s | torch samples/s | ratio | GFLOP/s | % peak |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in table["rows"]:
        torch_sps = fmt(row["torch"]) if "torch" in row else "-"
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "-"
        print(
            f"| {row['batch']} | {row['variant']} | {fmt(row['regula'])} | {torch_sps} | {ratio} "
            f"| {row['gflops']:.2f} | {row['peak_fraction']:.1%} |"
        )
    for b, share in table["augment_share"].items():
        print(f"augmentation share of a training step at batch {b}: {share:.1%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cnn", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=6000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    set_clock(args.clock)
    res = SectionResult(name="cnn", title="The tutorial's CNN, 1 thread")
    table = run(
        res,
        threads=1,
        repeats=args.repeats,
        profile=args.profile,
        n_rows=args.rows,
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
    )
    print_table(table)
    return 0 if all(c.passed for c in res.checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
