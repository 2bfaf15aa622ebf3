"""Section 1: engine training throughput vs PyTorch CPU eager, hand-written NumPy, scikit-learn.

Network (every contender): 784-256-128-10, ReLU, inverted dropout 0.5 on both hidden layers (not on
the input), softmax cross-entropy on the batch mean, ``l2 * sum(W^2)`` on weights only, SGD with
momentum 0.9, learning rate 0.01, float32, one epoch over 60,000 synthetic rows in a fresh random
order.

Penalty mappings (our convention is ``l2 * sum(W^2)`` added to the MEAN data loss):

- PyTorch ``weight_decay`` adds ``wd * W`` to the gradient, the gradient of ``wd/2 * sum(W^2)``, so
  ``wd = 2 * l2``, applied to weights only (biases in a param group with ``weight_decay=0``).
- scikit-learn MLPClassifier adds ``alpha / (2 * batch) * sum(W^2)`` per mini-batch, so
  ``alpha = 2 * batch * l2``. It has no dropout and runs in float64 (its default); that is what a
  user gets from it.

The engine is timed through its lower-level API, ``engine.network.Network.build`` +
``engine.trainer.train`` on a normalized spec (``epochs=1``, no validation split), which excludes
preprocessing exactly as the PyTorch loop does; the time includes the trainer's per-epoch history
(running training loss/metric, penalty, zero fraction), which a PyTorch user would not compute.
``engine.fit`` (the public façade: label encoding, split, model assembly) is timed as well and
reported as information.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import SectionResult, best_of, now
from bench.numpy_mlp import NumpyMLP

SIZES = (784, 256, 128, 10)
DROPOUT = 0.5
L2 = 1e-4
L1 = 1e-5
LR = 0.01
MOMENTUM = 0.9
GOALS = {"torch": 1.5, "numpy": 0.85, "sklearn": 2.0, "peak_fraction": 0.70, "l1": 0.9}


def flops_per_epoch(n_rows: int) -> float:
    """Forward + backward matmul flops: ``2 * N * sum(D_k * M_k) * 3`` (fwd, dx, dW)."""
    macs = sum(a * b for a, b in itertools.pairwise(SIZES))
    return 2.0 * n_rows * macs * 3


def make_data(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic ``X (N, 784)`` float32 and integer labels in 0..9 from a random linear teacher."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, SIZES[0]), dtype=np.float32)
    teacher = rng.standard_normal((SIZES[0], SIZES[-1]), dtype=np.float32)
    y = np.argmax(X @ teacher, axis=1).astype(np.int64)
    return X, y


def engine_spec(batch_size: int, *, l1: float = 0.0) -> dict[str, Any]:
    return {
        "task": "classification",
        "model": {"hidden_layers": list(SIZES[1:-1]), "activation": "relu", "init": "he"},
        "loss": "softmax_cross_entropy",
        "regularization": {"l1": l1, "l2": L2, "group_l1": 0.0, "l1_method": "proximal"},
        "dropout": {"input": 0.0, "hidden": DROPOUT, "mode": "inverted"},
        "optimizer": {"name": "sgd", "learning_rate": LR, "momentum": MOMENTUM},
        "epochs": 1,
        "batch_size": batch_size,
        "validation_split": 0.0,
        "shuffle": True,
        "seed": 0,
        "standardize": False,
        "dtype": "float32",
    }


def engine_epoch(X: np.ndarray, y: np.ndarray, batch_size: int, *, l1: float = 0.0) -> float:
    """One epoch through ``Network.build`` + ``train`` (no preprocessing), seconds."""
    import engine
    from engine.network import Network
    from engine.trainer import train

    spec = engine.normalize_spec(engine_spec(batch_size, l1=l1))
    net = Network.build(spec, X.shape[1], SIZES[-1], rng=np.random.default_rng(0))
    t0 = now()
    train(net, X, y, spec, rng=np.random.default_rng(0))
    return now() - t0


def engine_fit_epoch(X: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """One epoch through the public ``engine.fit`` (label encoding, model assembly), seconds."""
    import engine

    spec = engine_spec(batch_size)
    t0 = now()
    engine.fit(spec, X, y)
    return now() - t0


def numpy_epoch(X: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    net = NumpyMLP(SIZES, dropout=DROPOUT, l2=L2, learning_rate=LR, momentum=MOMENTUM, seed=0)
    t0 = now()
    net.train_epoch(X, y, batch_size)
    return now() - t0


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_epoch(X: Any, y: Any, batch_size: int) -> float:
    """PyTorch CPU eager, the loop a PyTorch user writes (X, y already torch tensors)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for k, (m, n) in enumerate(itertools.pairwise(SIZES)):
        layers.append(nn.Linear(m, n))
        if k < len(SIZES) - 2:
            layers += [nn.ReLU(), nn.Dropout(DROPOUT)]
    net = nn.Sequential(*layers)
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in net.named_parameters() if name.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": weights, "weight_decay": 2 * L2}, {"params": biases, "weight_decay": 0.0}],
        lr=LR,
        momentum=MOMENTUM,
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


def sklearn_epoch(X64: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """scikit-learn MLPClassifier, same net without dropout, float64, one epoch via max_iter=1."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=SIZES[1:-1],
        activation="relu",
        solver="sgd",
        alpha=2 * batch_size * L2,
        batch_size=batch_size,
        learning_rate_init=LR,
        momentum=MOMENTUM,
        nesterovs_momentum=False,
        shuffle=True,
        random_state=0,
        max_iter=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = now()
        clf.fit(X64, y)
        return now() - t0


def sgemm_peak(threads: int, n: int, repeats: int) -> float:
    """Float32 matmul peak in GFLOP/s measured now: best of ``repeats`` ``(n, n) @ (n, n)``."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up: thread pool start, page faults
    times = []
    for _ in range(repeats):
        t0 = now()
        np.matmul(a, b, out=out)
        times.append(now() - t0)
    return 2.0 * n**3 / best_of(times) / 1e9


@contextlib.contextmanager
def thread_limit(threads: int):
    """Same thread count for every contender: BLAS/OpenMP (threadpoolctl), torch's intra-op pool."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        if torch_available():
            import torch

            old = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                yield
            finally:
                torch.set_num_threads(old)
        else:
            yield


def run(res: SectionResult, *, quick: bool, threads: int, repeats: int, profile: bool) -> None:
    n_rows = 512 if quick else 60_000
    batch_sizes = (32, 128, 512)
    X, y = make_data(n_rows)
    X64 = X.astype(np.float64)
    res.note(
        f"{n_rows} rows x {SIZES[0]} features, net {'-'.join(map(str, SIZES))}, one epoch, "
        f"{threads} thread(s) for every contender, best of {repeats} interleaved rounds"
    )
    res.note(
        "engine timed through Network.build + trainer.train (no preprocessing; incl. the per-epoch "
        "history record); engine.fit (epochs=1, validation_split=0, standardize=False) shown "
        "as info"
    )
    res.note("l2 mapping: torch weight_decay = 2*l2 (weights only); sklearn alpha = 2*batch*l2")
    res.note(
        "reference figures measured elsewhere (samples/s at batch 32/128/512): PyTorch 2.13 eager "
        "15.7k/22.2k/38.2k, careful NumPy 32.8k/34.6k/71.2k, sklearn 7.0k/16.2k/29.3k"
    )
    contenders: dict[str, Callable[[int], float]] = {
        "regula": lambda b: engine_epoch(X, y, b),
        "regula_l1": lambda b: engine_epoch(X, y, b, l1=L1),
        "regula_fit": lambda b: engine_fit_epoch(X, y, b),
        "numpy": lambda b: numpy_epoch(X, y, b),
    }
    have_torch = torch_available()
    if have_torch:
        import torch

        Xt = torch.from_numpy(X)
        yt = torch.from_numpy(y)
        contenders["torch"] = lambda b: torch_epoch(Xt, yt, b)
    else:
        res.skip("PyTorch not installed (pip install 'regula[bench]' for torch==2.13.0)")
    try:
        import sklearn  # noqa: F401

        contenders["sklearn"] = lambda b: sklearn_epoch(X64, y, b)
    except ImportError:
        res.skip("scikit-learn not installed")

    with thread_limit(threads):
        peaks = [sgemm_peak(threads, 512 if quick else 2048, repeats=3 if quick else 5)]
        times: dict[tuple[str, int], list[float]] = {}
        # One run fewer for the slowest peer keeps the section's wall time bounded.
        runs = {"sklearn": max(1, repeats - 1)}
        names = list(contenders)
        for b in batch_sizes:
            for r in range(repeats):
                # The peak is re-measured every round: the machine's load changes under us.
                peaks.append(sgemm_peak(threads, 512 if quick else 2048, repeats=2))
                # Rotate the order every round: the first run after the sgemm probe (or a new
                # batch size) is measurably slower, and no contender should always take that seat.
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    fn = contenders[name]
                    if len(times.get((name, b), [])) >= runs.get(name, repeats):
                        continue
                    seconds = fn(b)
                    times.setdefault((name, b), []).append(seconds)
                    print(f"  batch {b} {name}: {n_rows / seconds:,.0f} samples/s", flush=True)
        peak = max(peaks)
        res.info("float32 matmul peak (sgemm)", peak, "GFLOP/s", note="best of all rounds")
        if profile:
            from bench.profiling import profile_call

            for b in (32, 512):
                res.note(
                    f"cProfile of Network.build + train at batch {b}:\n"
                    + profile_call(lambda b=b: engine_epoch(X, y, b))
                )

    flops = flops_per_epoch(n_rows)
    for b in batch_sizes:
        sps = {
            name: n_rows / best_of(times[(name, b)]) for name in contenders if (name, b) in times
        }
        ours = sps["regula"]
        if "torch" in sps:
            res.check(
                f"batch {b} samples/s",
                ours,
                "torch",
                sps["torch"],
                "samples/s",
                ">=",
                GOALS["torch"],
            )
        res.check(
            f"batch {b} samples/s", ours, "numpy", sps["numpy"], "samples/s", ">=", GOALS["numpy"]
        )
        if "sklearn" in sps:
            res.check(
                f"batch {b} samples/s",
                ours,
                "sklearn",
                sps["sklearn"],
                "samples/s",
                ">=",
                GOALS["sklearn"],
                note="sklearn: no dropout, float64",
            )
        res.check(
            f"batch {b} with l1 {L1:g} (proximal)",
            sps["regula_l1"],
            "regula without l1",
            ours,
            "samples/s",
            ">=",
            GOALS["l1"],
        )
        res.info(
            f"batch {b} engine.fit (public API) samples/s",
            sps["regula_fit"],
            "samples/s",
            note=f"{sps['regula_fit'] / ours:.2f}x of the Network/train figure",
        )
        gflops = flops / best_of(times[("regula", b)]) / 1e9
        if b == 512:
            res.check(
                f"batch {b} achieved GFLOP/s",
                gflops,
                "sgemm peak",
                peak,
                "GFLOP/s",
                ">=",
                GOALS["peak_fraction"],
            )
        else:
            res.info(
                f"batch {b} achieved GFLOP/s",
                gflops,
                "GFLOP/s",
                note=f"{gflops / peak:.0%} of peak",
            )
        if b == 512:
            np_gflops = flops / best_of(times[("numpy", b)]) / 1e9
            res.info(
                "numpy floor at batch 512",
                np_gflops,
                "GFLOP/s",
                note=f"{np_gflops / peak:.0%} of peak",
            )
