"""The fit loop: mini-batch training with penalties, dropout, validation, early stopping, callbacks.

Objective minimised (``R`` from ``engine.regularizers``, weights only)::

    J(theta) = (1/N) sum_n loss(f(x_n; theta), y_n) + R(W)

Mini-batch path (every optimizer except ``fista``), per batch (``engine.regularizers.Regularizer``
does steps 2 and 4):

1. forward in training mode (dropout masks drawn from the trainer's seeded ``rng``), loss, backward;
2. gradient of the penalty terms treated as smooth: ``dW += 2 * l2 * W`` (and, when
   ``l1_method == "subgradient"``, the L1 and group subgradients, what Keras/PyTorch do);
3. optimizer step;
4. proximal step (default ``l1_method == "proximal"``) in the optimizer's metric: ``W <-
   soft_threshold(W, s * l1)`` with ``s`` the per-coordinate step the optimizer just took, then for
   ``group_l1`` the exact group prox of the first kernel (rows of a Dense, whole filters of a
   Conv2D, see ``engine.regularizers``) in the metric
   ``diag(1 / s)`` (``regularizers.group_prox``). These produce EXACT zeros, and full-batch
   training stops at the penalised objective's KKT points.

Per-epoch history record (see ``HISTORY_KEYS``): ``data_loss`` and ``metric`` on the training split
are running means over the epoch's batches (computed in training mode while the weights move, as
Keras reports them) rather than a second pass; ``penalty`` is ``R(W)`` at the end of the epoch and
``loss = data_loss + penalty``. ``val_loss`` is a full predict-mode pass over the validation split
plus the same penalty (Keras convention) and ``val_metric`` its metric. ``metric`` is accuracy for
classification and R^2 = 1 - SSE/SST for regression.

FISTA path (``optimizer.name == "fista"``): full-batch accelerated proximal gradient (Beck &
Teboulle 2009) with backtracking on the Lipschitz constant (started from ``losses.curvature`` times
a few power iterations on ``[X, 1]``) and function-value restart (O'Donoghue & Candes 2015), started
from ``W = 0`` (from the network's weights when ``warm``). Only for linear models, smooth losses
(``losses.FISTA_LOSSES``) and no dropout; the L2 term is part of the smooth function and the L1 /
group terms always go through their prox (``l1_method`` does not apply to a proximal method). One
epoch = ``ceil(N / batch_size)`` iterations (as many updates as a mini-batch epoch). Training stops
("completed") once converged: for the Lasso / elastic net (mse, ``l1 > 0``, no group_l1) when the
duality gap is at most ``tol * var(y)`` (scikit-learn's criterion); for every other loss and penalty
(ridge included) when the KKT residual ``||G||_inf``, ``G = (y - prox(y - grad / L)) * L`` the
gradient mapping at the current point, is at most ``tol`` times the sup norm of the loss gradient at
``W = 0``; and, if ``step_tol > 0``, when an iteration moves no parameter by more than ``step_tol *
max(1, max|W|)``. Its ``data_loss``/``metric`` are exact full-batch values at the epoch's final
iterate and its ``learning_rate`` is the step ``1/L``.

Kept weights (``spec.keep``): ``"best"`` restores, at the end of training however it ends, the
weights of the epoch with the lowest ``val_loss`` (``loss`` without a validation split); ``"last"``
keeps the final weights. ``TrainResult.weights_epoch`` says which epoch they are from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import TrainingTimeout
from engine.layers import Dropout
from engine.losses import FISTA_LOSSES, LOSS_TASKS, curvature, make_loss
from engine.network import Network
from engine.optimizers import Fista, Optimizer, make_optimizer
from engine.regularizers import Regularizer
from engine.spec import Spec
from engine.spec_parse import parse

__all__ = ["FISTA_LOSSES", "HISTORY_KEYS", "Callback", "TrainResult", "train"]

HISTORY_KEYS: tuple[str, ...] = (
    "epoch",
    "loss",
    "data_loss",
    "penalty",
    "val_loss",
    "metric",
    "val_metric",
    "zero_fraction",
    "learning_rate",
    "seconds",
)


@dataclass
class TrainResult:
    """Outcome of ``train``: per-epoch records, why it stopped, the best epoch (1-based) and the
    epoch whose weights the network holds (``keep``)."""

    history: list[dict]
    stopped: str  # "completed" | "early_stopping" | "cancelled"
    best_epoch: int
    weights_epoch: int


Callback = Callable[[dict], bool | None]
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
# Batch-level progress calls (``on_batch``) come at most this often.
BATCH_PROGRESS_SECONDS = 0.5
# Images per chunk of a predict-mode pass over the validation split.
EVAL_CHUNK = 512
LossFn = Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]


# ---------------------------------------------------------------------------- helpers
def _targets(Y: np.ndarray, loss: str, dtype: np.dtype) -> np.ndarray:
    """Targets as the loss expects them: float in ``dtype`` or integer class indices."""
    if loss in ("softmax_cross_entropy", "multiclass_hinge", "squared_hinge"):
        return np.asarray(Y).astype(np.intp, copy=False)
    return np.ascontiguousarray(Y, dtype=dtype).reshape(-1)


class _Metric:
    """Accuracy (classification) or R^2 = 1 - SSE/SST (regression), accumulated over batches."""

    def __init__(self, loss: str, Y: np.ndarray) -> None:
        self.regression = LOSS_TASKS[loss] == "regression"
        self.binary = loss == "binary_cross_entropy"
        self.n = len(Y)
        self.sst = 0.0
        if self.regression:
            yc = Y.astype(np.float64) - float(np.mean(Y, dtype=np.float64))
            self.sst = float(np.dot(yc, yc))
        self.acc = 0.0

    def reset(self) -> None:
        self.acc = 0.0

    def add(self, scores: np.ndarray, y: np.ndarray) -> None:
        if self.regression:
            diff = scores[:, 0] - y
            self.acc += float(np.dot(diff, diff))
        elif self.binary:
            self.acc += float(np.count_nonzero((scores[:, 0] > 0.0) == (y > 0.5)))
        else:
            self.acc += float(np.count_nonzero(scores.argmax(axis=1) == y))

    def value(self) -> float:
        if not self.regression:
            return self.acc / self.n
        if self.sst == 0.0:
            return 1.0 if self.acc == 0.0 else 0.0
        return 1.0 - self.acc / self.sst


Validation = tuple[np.ndarray, np.ndarray, LossFn, _Metric]


def _evaluate(
    network: Network, X: np.ndarray, Y: np.ndarray, loss_fn: LossFn, metric: _Metric
) -> tuple[float, float]:
    """Full predict-mode pass: (mean data loss, metric). Images go through in chunks of
    ``EVAL_CHUNK`` (their conv activations are large); the scores ``(N, K)`` are joined."""
    if X.ndim > 2 and len(X) > EVAL_CHUNK:
        parts = [network.forward(X[i : i + EVAL_CHUNK]) for i in range(0, len(X), EVAL_CHUNK)]
        scores = np.concatenate(parts)
    else:
        scores = network.forward(X, training=False)
    value, _ = loss_fn(scores, Y)
    metric.reset()
    metric.add(scores, Y)
    return value, metric.value()


def _check_finite(value: float, epoch: int) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(
            f"training diverged at epoch {epoch}: the loss is {value}; "
            "lower the learning rate or standardize the inputs"
        )


class _BatchProgress:
    """Calls ``cb.on_batch({"epoch", "batch", "batches"})`` of the callbacks that have it, at most
    every ``BATCH_PROGRESS_SECONDS`` (one clock read per batch otherwise)."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        # on_batch is an optional extra of a callback, so it is looked up by name.
        self.hooks: list[Callable[[dict], object]] = []
        for cb in callbacks:
            on_batch = getattr(cb, "on_batch", None)
            if callable(on_batch):
                self.hooks.append(on_batch)
        self.last = time.monotonic()

    def tick(self, epoch: int, batch: int, batches: int) -> None:
        if not self.hooks or batch == 0:
            return
        now = time.monotonic()
        if now - self.last < BATCH_PROGRESS_SECONDS:
            return
        self.last = now
        info = {"epoch": int(epoch), "batch": int(batch), "batches": int(batches)}
        for hook in self.hooks:
            hook(info)


class _Stopper:
    """Early stopping, best-weights tracking (``keep``) and callbacks at the end of an epoch."""

    def __init__(
        self, spec: Spec, network: Network, has_val: bool, callbacks: Sequence[Callback]
    ) -> None:
        self.network = network
        self.callbacks = list(callbacks)
        self.keep_best = spec.keep == "best"
        self.best_key = "val_loss" if has_val else "loss"
        self.best_value = math.inf
        self.best_epoch = 0
        self.last_epoch = 0
        self.best_weights: dict[str, np.ndarray] | None = None
        self.es = spec.early_stopping
        self.es_best = math.inf
        self.wait = 0
        if self.es is not None:
            monitor = self.es.monitor or self.best_key
            self.monitor = monitor if (monitor != "val_loss" or has_val) else "loss"

    def end_epoch(self, record: dict) -> str | None:
        """Update the bookkeeping; return "cancelled"/"early_stopping" to stop, else None."""
        self.last_epoch = record["epoch"]
        value = record[self.best_key]
        if value < self.best_value:
            self.best_value = value
            self.best_epoch = record["epoch"]
            if self.keep_best:
                self.best_weights = self.network.get_weights()
        stop = None
        if self.es is not None:
            current = record[self.monitor]
            if current < self.es_best - self.es.min_delta:
                self.es_best = current
                self.wait = 0
            else:
                self.wait += 1
                if self.wait >= self.es.patience:
                    stop = "early_stopping"
        for cb in self.callbacks:
            if cb(record):
                stop = "cancelled"
                break
        return stop

    def finish(self, history: list[dict], stopped: str) -> TrainResult:
        """Restore the kept weights and describe the outcome."""
        weights_epoch = self.last_epoch
        if self.keep_best and self.best_weights is not None and self.best_epoch != weights_epoch:
            self.network.set_weights(self.best_weights)
            weights_epoch = self.best_epoch
        return TrainResult(
            history=history,
            stopped=stopped,
            best_epoch=self.best_epoch,
            weights_epoch=weights_epoch,
        )


def _epoch_record(
    network: Network,
    epoch: int,
    data_loss: float,
    pen: float,
    metric: float,
    lr: float,
    t0: float,
    validation: Validation | None,
) -> dict:
    """Close an epoch: check the loss, evaluate the validation split, build the history record."""
    _check_finite(data_loss, epoch)
    val = val_metric = None
    if validation is not None:
        X_val, Y_val, loss_fn, metric_val = validation
        val, val_metric = _evaluate(network, X_val, Y_val, loss_fn, metric_val)
    return {
        "epoch": int(epoch),
        "loss": float(data_loss + pen),
        "data_loss": float(data_loss),
        "penalty": float(pen),
        "val_loss": None if val is None else float(val + pen),
        "metric": float(metric),
        "val_metric": None if val_metric is None else float(val_metric),
        "zero_fraction": float(network.zero_fraction()),
        "learning_rate": float(lr),
        "seconds": float(time.perf_counter() - t0),
    }


def _regularizer(spec: Spec) -> Regularizer:
    r = spec.regularization
    return Regularizer(r.l1, r.l2, r.group_l1, r.l1_method)


# ---------------------------------------------------------------------------- entry point
def train(
    network: Network,
    X: np.ndarray,
    Y: np.ndarray,
    spec: Spec | Mapping[str, Any],
    *,
    X_val: np.ndarray | None = None,
    Y_val: np.ndarray | None = None,
    callbacks: Sequence[Callback] = (),
    rng: np.random.Generator,
    deadline: float | None = None,
    augment: Augment | None = None,
    augment_rng: np.random.Generator | None = None,
    warm: bool = False,
) -> TrainResult:
    """Train ``network`` in place on ``X (N, D)`` (or images ``(N, C, H, W)``), ``Y (N,)``.

    Parameters
    ----------
    network : Network
        Built with ``Network.build`` from the same spec.
    X : ndarray (N, D)
        Preprocessed inputs (cast to the network's dtype if needed).
    Y : ndarray (N,)
        Float targets (regression), {0, 1} (binary cross-entropy) or class indices.
    spec : Spec or mapping
        Reads ``loss``, ``loss_params``, ``regularization``, ``optimizer``, ``epochs``,
        ``batch_size``, ``shuffle``, ``early_stopping``, ``keep`` (a mapping is parsed).
    X_val, Y_val : ndarray, optional
        Validation split.
    callbacks : sequence of callables
        ``cb(record) -> bool | None`` after every epoch; a truthy return stops ("cancelled").
        A callback with an ``on_batch(info)`` method also gets ``{"epoch", "batch", "batches"}``
        (``batch`` = batches done in this epoch) at most every ``BATCH_PROGRESS_SECONDS`` while
        an epoch runs (mini-batch optimizers), so a long epoch shows progress.
    rng : numpy.random.Generator
        Shuffling and dropout masks.
    deadline : float, optional
        A ``time.monotonic()`` value; checked before every mini-batch (FISTA: every iteration).
    augment : callable, optional
        ``augment(xb, augment_rng) -> xb'``, applied to each training batch only (never to the
        validation split); e.g. ``engine.augment.ImageAugmenter.random_transform``.
    augment_rng : numpy.random.Generator, optional
        The augmentation's own generator (default ``rng``).
    warm : bool
        The network holds a warm start's weights. FISTA then starts from them (a cold FISTA run
        starts from ``W = 0``); the mini-batch optimizers always start from the network's weights.

    Returns
    -------
    TrainResult
    """
    spec = parse(spec)
    dtype = network.dtype
    X = np.ascontiguousarray(X, dtype=dtype)
    Y = _targets(Y, spec.loss, dtype)
    validation: Validation | None = None
    if X_val is not None and Y_val is not None and len(X_val) > 0:
        loss_fn = make_loss(spec.loss, spec.loss_params.to_dict())
        Y_val = _targets(Y_val, spec.loss, dtype)
        X_val = np.ascontiguousarray(X_val, dtype=dtype)
        validation = (X_val, Y_val, loss_fn, _Metric(spec.loss, Y_val))
    network.set_rng(rng)
    opt = make_optimizer(spec.optimizer)
    stopper = _Stopper(spec, network, validation is not None, callbacks)
    # Overflow shows up as a non-finite epoch loss, reported by _check_finite with a clear message.
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(opt, Fista):
            history, stopped = _train_fista(
                network, X, Y, spec, opt, validation, stopper, deadline, warm
            )
        else:
            history, stopped = _train_minibatch(
                network,
                X,
                Y,
                spec,
                opt,
                validation,
                stopper,
                rng,
                deadline,
                augment,
                augment_rng if augment_rng is not None else rng,
            )
    return stopper.finish(history, stopped)


def _check_deadline(deadline: float | None, epoch: int) -> None:
    # A monotonic clock read per batch (~50 ns): a long epoch cannot overrun the caller's limit.
    if deadline is not None and time.monotonic() > deadline:
        raise TrainingTimeout(f"training reached its time limit during epoch {epoch}", epoch)


def _train_minibatch(
    network: Network,
    X: np.ndarray,
    Y: np.ndarray,
    spec: Spec,
    opt: Optimizer,
    validation: Validation | None,
    stopper: _Stopper,
    rng: np.random.Generator,
    deadline: float | None,
    augment: Augment | None,
    augment_rng: np.random.Generator,
) -> tuple[list[dict], str]:
    loss_fn = make_loss(spec.loss, spec.loss_params.to_dict())
    progress = _BatchProgress(stopper.callbacks)
    reg = _regularizer(spec)
    N = X.shape[0]
    bs = max(1, min(spec.batch_size, N))

    params, grads = network.parameters()
    # Optimizer indices of the penalised kernels (Dense and Conv2D ``W``), input side first.
    kernels = {f"{name}.W" for name in network.kernel_names}
    w_idx = [i for i, (name, _, _) in enumerate(network.param_refs) if name in kernels]
    Ws = [params[i] for i in w_idx]
    dWs = [grads[i] for i in w_idx]

    if spec.shuffle:
        x_buf = np.empty((bs, *X.shape[1:]), dtype=X.dtype)
        y_buf = np.empty((bs, *Y.shape[1:]), dtype=Y.dtype)
    metric = _Metric(spec.loss, Y)
    history: list[dict] = []
    batches = -(-N // bs)

    for epoch in range(1, spec.epochs + 1):
        t0 = time.perf_counter()
        perm = rng.permutation(N) if spec.shuffle else None
        total = 0.0
        metric.reset()
        for b, start in enumerate(range(0, N, bs)):
            _check_deadline(deadline, epoch)
            progress.tick(epoch, b, batches)
            if perm is None:
                xb = X[start : start + bs]
                yb = Y[start : start + bs]
            else:
                # Gather each batch into a reused buffer: a shuffled copy of the whole X per
                # epoch is a fresh (N, D) allocation whose page faults cost as much as the
                # forward pass. The buffer is free again once backward has read the batch.
                idx = perm[start : start + bs]
                xb = X.take(idx, axis=0, out=x_buf[: len(idx)], mode="clip")
                yb = Y.take(idx, axis=0, out=y_buf[: len(idx)], mode="clip")
            if augment is not None:
                xb = augment(xb, augment_rng)
            scores = network.forward(xb, training=True)
            value, dscores = loss_fn(scores, yb)
            total += value * xb.shape[0]
            metric.add(scores, yb)
            network.backward(dscores)
            reg.add_gradient(Ws, dWs)
            opt.step(params, grads)
            if reg.has_prox:
                for k, i in enumerate(w_idx):
                    W = params[i]
                    reg.prox(k, W, opt.step_size(i, out=reg.step_buffer(k, W)))
        record = _epoch_record(
            network,
            epoch,
            total / N,
            reg.value(Ws),
            metric.value(),
            opt.current_lr,
            t0,
            validation,
        )
        history.append(record)
        stop = stopper.end_epoch(record)
        if stop is not None:
            return history, stop
    return history, "completed"


# ---------------------------------------------------------------------------- FISTA
def _check_fista(network: Network, loss_name: str) -> None:
    if len(network.dense_layers) != 1:
        raise ValueError("optimizer 'fista' needs a linear model (hidden_layers must be empty)")
    if loss_name not in FISTA_LOSSES:
        raise ValueError(f"optimizer 'fista' needs a smooth loss, one of {FISTA_LOSSES}")
    dropout = any(isinstance(la, Dropout) and la.rate > 0 for la in network.layers)
    if dropout or network.dense_layers[0].dropconnect:
        raise ValueError("optimizer 'fista' is full-batch and deterministic: dropout must be 0")


def _lambda_max(X: np.ndarray, iters: int = 3) -> float:
    """Power-iteration estimate of the largest eigenvalue of ``A.T @ A``, ``A = [X, 1] (N, D + 1)``.

    A lower bound (Rayleigh quotient) from a few iterations: a slightly small ``L`` means longer
    steps, and the backtracking raises it wherever the descent condition fails.
    """
    D = X.shape[1]
    v = np.ones(D, dtype=X.dtype) / math.sqrt(D + 1)
    c = 1.0 / math.sqrt(D + 1)
    lam = 0.0
    for _ in range(iters):
        u = X @ v
        u += c
        lam = float(np.dot(u, u))  # ||A v||^2 with ||v|| = 1
        v = X.T @ u
        c = float(u.sum())
        norm = math.sqrt(float(np.dot(v, v)) + c * c)
        if norm == 0.0:
            return 1.0
        v /= norm
        c /= norm
    return max(lam, 1e-12)


# Below this fraction of non-zero rows in W, X @ W reads only the columns of X that matter.
_SPARSE_FRACTION = 0.125


def _scores(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``X (N, D) @ W (D, K)``, reading only the columns of ``X`` whose row of ``W`` is non-zero
    when ``W`` is sparse (the Lasso's iterates are): a gather of ``nnz`` columns costs far less
    memory traffic than a pass over all of ``X``."""
    nz = np.flatnonzero(W.any(axis=1))
    if len(nz) > _SPARSE_FRACTION * W.shape[0]:
        return X @ W
    return X.take(nz, axis=1) @ W[nz]


def _lasso_gap(
    Xt_r: np.ndarray,
    r: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    colsum: np.ndarray,
    l1: float,
    l2: float,
) -> float:
    """Duality gap of the elastic net ``F = (1/N)||r||^2 + l1 ||w||_1 + l2 ||w||^2``, ``l1 > 0``.

    An upper bound of ``F(w, b) - min F`` at ``w (D,)`` with residual ``r = y - X w - b (N,)`` and
    ``Xt_r = X.T @ r (D,)``, ``colsum = X.T @ 1 (D,)`` (all float64). It is scikit-learn's gap for
    ``0.5 ||r||^2 + a ||w||_1 + 0.5 c ||w||^2`` (``a = N l1 / 2``, ``c = N l2``) on the centred
    residual (the intercept eliminated; ``X.T @ (r - mean r) = Xt_r - mean(r) * colsum``, so X
    needs no centring), times ``2 / N``, plus ``mean(r)^2``, the part of ``F`` that the optimal
    ``b`` for this ``w`` would remove. (With ``l1 = 0`` its dual point degenerates to 0 and the
    "gap" to the primal value: ridge stops on the KKT residual instead.)
    """
    N = r.shape[0]
    r_mean = float(r.mean())
    rc = r - r_mean
    a, c = 0.5 * N * l1, N * l2
    XtA = Xt_r - r_mean * colsum
    if c:
        XtA -= c * w
    dual_norm = float(np.abs(XtA).max(initial=0.0))
    r_norm2 = float(rc @ rc)
    if dual_norm > a:
        const = a / dual_norm
        gap = 0.5 * r_norm2 * (1.0 + const * const)
    else:
        const = 1.0
        gap = r_norm2
    gap += a * float(np.abs(w).sum()) - const * float(rc @ y)
    gap += 0.5 * c * (1.0 + const * const) * float(w @ w)
    return 2.0 / N * gap + r_mean * r_mean


def _train_fista(
    network: Network,
    X: np.ndarray,
    Y: np.ndarray,
    spec: Spec,
    opt: Fista,
    validation: Validation | None,
    stopper: _Stopper,
    deadline: float | None,
    warm: bool,
) -> tuple[list[dict], str]:
    loss_name = spec.loss
    _check_fista(network, loss_name)
    loss_fn = make_loss(loss_name, spec.loss_params.to_dict())
    # Full batch: the L2 term is smooth (in f), the L1 and group terms go through the prox.
    reg = _regularizer(spec)
    reg_prox = Regularizer(reg.l1, 0.0, reg.group_l1, "proximal")
    l1, l2, gl1 = reg.l1, reg.l2, reg.group_l1
    N = X.shape[0]
    bs = max(1, min(spec.batch_size, N))
    iters = math.ceil(N / bs)
    dtype = network.dtype
    rtol_f = 10.0 * float(np.finfo(dtype).eps)
    # Lasso / elastic net: stop on the duality gap (scikit-learn's criterion), relative to the
    # variance of y, i.e. to the objective of the model that predicts the mean. The gap is taken
    # at the extrapolated point from the gradient computed there anyway, so it costs O(N + D); the
    # prox-gradient step from that point can only lower the objective, so the returned iterate is
    # at least as close to the optimum.
    use_gap = loss_name == "mse" and l1 > 0 and not gl1
    if use_gap:
        y64 = Y.astype(np.float64)
        gap_tol = opt.tol * float(np.var(y64))
        colsum = X.sum(axis=0, dtype=np.float64)
    kkt_tol: float | None = None  # tol * ||grad f(0)||_inf, set at the first iteration

    dense = network.dense_layers[0]
    W, b = dense.params["W"], dense.params["b"]

    def smooth(u: np.ndarray, Wc: np.ndarray) -> tuple[float, np.ndarray]:
        value, ds = loss_fn(u, Y)
        if l2:
            value += reg.smooth_value([Wc])
        return value, ds

    def prox(V: np.ndarray, step: float) -> np.ndarray:
        reg_prox.prox(0, V, step)
        return V

    L = curvature(loss_name, W.shape[1]) * _lambda_max(X) / N + 2.0 * l2
    # The problem is convex: a cold start is W = 0 like coordinate-descent Lasso solvers (close to
    # a sparse optimum), b its initial value (the target mean for regression); a warm start is the
    # network's weights (glmnet's warm starts: near the optimum, it is reached sooner).
    x_b = b.copy()
    if warm:
        x_W = W.copy()
        u_x = _scores(X, x_W)
        u_x += x_b
    else:
        x_W = np.zeros_like(W)
        u_x = np.empty((N, W.shape[1]), dtype=dtype)
        u_x[...] = x_b  # X @ 0 + b, without a pass over X
    f_x, _ = smooth(u_x, x_W)
    F_x = f_x + reg_prox.value([x_W])
    y_W, y_b, u_y = x_W.copy(), x_b.copy(), u_x.copy()
    t_k = 1.0

    metric = _Metric(loss_name, Y)
    history: list[dict] = []
    converged = False

    for epoch in range(1, spec.epochs + 1):
        t0 = time.perf_counter()
        for _ in range(iters):
            _check_deadline(deadline, epoch)
            f_y, ds = smooth(u_y, y_W)
            gW = X.T @ ds
            gb = ds.sum(axis=0)
            if kkt_tol is None:
                g0 = max(float(np.abs(gW).max(initial=0.0)), float(np.abs(gb).max(initial=0.0)))
                kkt_tol = opt.tol * g0
            if use_gap:
                # mse: ds = -2 r / N, so r and X.T @ r come for free from ds and gW
                scale_r = -0.5 * N
                r_y = scale_r * ds[:, 0].astype(np.float64)
                Xt_r = scale_r * gW[:, 0].astype(np.float64)
                w_y = y_W[:, 0].astype(np.float64)
                converged = _lasso_gap(Xt_r, r_y, y64, w_y, colsum, l1, l2) <= gap_tol
            if l2:
                reg.add_gradient([y_W], [gW])
            while True:
                step = 1.0 / L
                n_W = prox(y_W - step * gW, step)
                n_b = y_b - step * gb
                u_n = _scores(X, n_W)
                u_n += n_b
                f_n, _ = smooth(u_n, n_W)
                dW = n_W - y_W
                db = n_b - y_b
                quad = float(np.einsum("ij,ij->", dW, dW)) + float(np.dot(db, db))
                lin = float(np.einsum("ij,ij->", gW, dW)) + float(np.dot(gb, db))
                bound = f_y + lin + 0.5 * L * quad
                if f_n <= bound + rtol_f * abs(f_y) or L > 1e30:
                    break
                L *= 2.0
            F_n = f_n + reg_prox.value([n_W])
            move = float(max(np.abs(dW).max(initial=0.0), np.abs(db).max(initial=0.0)))
            if not use_gap:
                # KKT residual: the gradient mapping (y - prox(y - g / L)) * L at y, 0 exactly at
                # a minimiser of f + R, for every smooth loss and penalty.
                converged = move * L <= kkt_tol
            if opt.step_tol > 0 or move == 0.0:
                converged = converged or move <= opt.step_tol * max(
                    1.0, float(np.abs(n_W).max(initial=0.0))
                )
            if F_n > F_x:
                # function-value restart: drop the momentum
                t_k = 1.0
                y_W, y_b, u_y = n_W.copy(), n_b.copy(), u_n.copy()
            else:
                t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t_k * t_k))
                beta = (t_k - 1.0) / t_next
                y_W = n_W + beta * (n_W - x_W)
                y_b = n_b + beta * (n_b - x_b)
                u_y = u_n + beta * (u_n - u_x)
                t_k = t_next
            x_W, x_b, u_x, f_x, F_x = n_W, n_b, u_n, f_n, F_n
            if converged:
                break
        W[...] = x_W
        b[...] = x_b
        data_loss, _ = loss_fn(u_x, Y)
        metric.reset()
        metric.add(u_x, Y)
        record = _epoch_record(
            network, epoch, data_loss, reg.value([W]), metric.value(), 1.0 / L, t0, validation
        )
        history.append(record)
        stop = stopper.end_epoch(record)
        if stop is not None:
            return history, stop
        if converged:
            break
    return history, "completed"
