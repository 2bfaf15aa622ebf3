"""First-order optimizers with per-parameter state.

An optimizer updates a fixed list of parameter arrays IN PLACE from their gradients:
``opt.step(params, grads)``; ``params[i]`` and ``grads[i]`` have the same shape and dtype and the
i-th entry must be the same parameter at every call (its buffers are ``opt.state[i]``). ``grads``
are used as scratch space and may be overwritten.

Learning-rate decay (Keras convention): the ``t``-th update (``t = 0, 1, ...`` updates done so far)
uses ``lr_t = lr / (1 + decay * t)``.

Update rules, ``g`` the gradient, ``lr`` meaning ``lr_t``:

- ``sgd``: ``W -= lr * g`` (with ``momentum > 0`` it is ``momentum``, with ``nesterov`` it is
  ``nesterov``).
- ``momentum`` (Sutskever et al. 2013, Keras form): ``v = mu * v - lr * g; W += v``. PyTorch keeps
  ``v = mu * v + g; W -= lr * v`` instead; the two agree for a constant learning rate.
- ``nesterov`` (Keras form): ``v = mu * v - lr * g; W += mu * v - lr * g``.
- ``adagrad``: ``G += g^2; W -= lr * g / (sqrt(G) + eps)``.
- ``rmsprop``: ``E = rho * E + (1 - rho) * g^2; W -= lr * g / (sqrt(E) + eps)``.
- ``adadelta`` (Zeiler 2012): ``Eg = rho * Eg + (1 - rho) * g^2;
  dx = -sqrt(Edx + eps) / sqrt(Eg + eps) * g; Edx = rho * Edx + (1 - rho) * dx^2; W += lr * dx``
  (the original method has no learning rate, i.e. ``lr = 1``; Keras multiplies by it as here).
- ``adam`` (Kingma & Ba 2015, with the paper's efficient ordering of section 2):
  ``m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g^2;
  W -= lr * sqrt(1 - b2^k) / (1 - b1^k) * m / (sqrt(v) + eps)`` with ``k = t + 1``.
- ``fista``: not a stochastic optimizer; it selects the trainer's full-batch accelerated proximal
  gradient (see ``engine.trainer``). ``make_optimizer`` returns a ``Fista`` holder of its settings.

``step_size(i, out=None)`` returns the effective per-coordinate step ``s`` of the last update of
parameter ``i`` (a float, or an array shaped like the parameter for adaptive methods): the factor by
which the update just taken moved ``W`` per unit of a gradient that has been steady since the first
update, ``W_new - W_old = -s * g``. It is ``lr_t`` for SGD, ``sum_k mu^k lr_(t-k)`` for heavy-ball
momentum (``lr / (1 - mu)`` in the limit, only ``lr`` at the first update), ``lr_t / (sqrt(G) +
eps)`` and the like for adaptive methods, and for Adam ``lr_t sqrt(1 - b2^k) / (sqrt(v) + eps)``,
i.e. ``lr_t / (sqrt(v_hat) + eps')`` without the first-moment bias correction, which the steady
gradient's ``m_hat = g`` already accounts for. Proximal L1 uses ``thresh = s * l1`` (and the group
penalty the metric ``diag(1 / s)``), which makes the fixed points of "step then prox" satisfy the
optimality condition of the penalised objective.

Defaults: ``OPTIMIZER_DEFAULTS`` states each optimizer's own hyperparameters once; the spec resolves
a missing field from it, and each class's ``None`` arguments mean the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

OPTIMIZERS: tuple[str, ...] = (
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "adadelta",
    "rmsprop",
    "adam",
    "fista",
)

# The hyperparameters each optimizer reads, with its own defaults (the one place they are stated).
OPTIMIZER_DEFAULTS: dict[str, dict[str, float | bool]] = {
    "sgd": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False, "decay": 0.0},
    "momentum": {"learning_rate": 0.01, "momentum": 0.9, "nesterov": False, "decay": 0.0},
    "nesterov": {"learning_rate": 0.01, "momentum": 0.9, "nesterov": True, "decay": 0.0},
    "adagrad": {"learning_rate": 0.01, "eps": 1e-8, "decay": 0.0},
    "rmsprop": {"learning_rate": 0.001, "rho": 0.9, "eps": 1e-8, "decay": 0.0},
    "adadelta": {"learning_rate": 1.0, "rho": 0.95, "eps": 1e-6, "decay": 0.0},
    "adam": {"learning_rate": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "decay": 0.0},
    "fista": {"tol": 1e-4, "step_tol": 0.0},
}


def _own(name: str, key: str, value: float | None) -> float:
    """``value``, or optimizer ``name``'s own default for ``key`` when ``None``."""
    return float(OPTIMIZER_DEFAULTS[name][key] if value is None else value)


def _check(name: str, value: float, lo: float, hi: float, lo_open: bool, hi_open: bool) -> float:
    value = float(value)
    ok = math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo)
    ok = ok and (value < hi if hi_open else value <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"optimizer {name} must be in {lb}{lo}, {hi}{rb}, got {value}")
    return value


class Optimizer:
    """Base class: learning rate with decay and per-parameter buffers.

    Parameters
    ----------
    learning_rate : float
        ``lr > 0``.
    decay : float
        ``decay >= 0``; ``lr_t = lr / (1 + decay * t)``.
    """

    name = "sgd"

    def __init__(self, learning_rate: float | None = None, decay: float | None = None) -> None:
        lr = _own(self.name, "learning_rate", learning_rate)
        self.learning_rate = _check("learning_rate", lr, 0.0, math.inf, True, True)
        self.decay = _check("decay", _own(self.name, "decay", decay), 0.0, math.inf, False, True)
        self.t = 0  # number of updates done so far
        self.state: dict[int, dict[str, np.ndarray]] = {}
        self._last_lr = self.learning_rate

    def lr_at(self, t: int) -> float:
        """``lr / (1 + decay * t)``."""
        return self.learning_rate / (1.0 + self.decay * t)

    @property
    def current_lr(self) -> float:
        """Learning rate the next update will use."""
        return self.lr_at(self.t)

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """Update every ``params[i]`` in place from ``grads[i]``; then ``t += 1``."""
        lr = self.lr_at(self.t)
        self._last_lr = lr
        self._prepare(lr)
        for i, (W, g) in enumerate(zip(params, grads, strict=True)):
            st = self.state.get(i)
            if st is None:
                st = self.state[i] = self._init_state(W)
            self._update(W, g, st, lr)
        self.t += 1

    def step_size(self, i: int, out: np.ndarray | None = None) -> float | np.ndarray:
        """Effective step of the last update of parameter ``i`` (see the module docstring).

        A float for non-adaptive methods; else an array shaped like the parameter, written to
        ``out`` when given (no allocation).
        """
        return self._last_lr

    def _prepare(self, lr: float) -> None:
        """Hook: per-step scalars (e.g. Adam's bias corrections)."""

    def _init_state(self, W: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def _update(self, W: np.ndarray, g: np.ndarray, st: dict, lr: float) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Plain SGD: ``W -= lr_t * g``."""

    def _update(self, W: np.ndarray, g: np.ndarray, st: dict, lr: float) -> None:
        g *= lr
        W -= g


class Momentum(Optimizer):
    """Heavy-ball momentum (Keras form): ``v = mu * v - lr_t * g; W += v`` (Nesterov if asked).

    Nesterov: ``v = mu * v - lr_t * g; W += mu * v - lr_t * g``.
    """

    name = "momentum"

    def __init__(
        self,
        learning_rate: float | None = None,
        momentum: float | None = None,
        nesterov: bool = False,
        decay: float | None = None,
    ) -> None:
        super().__init__(learning_rate, decay)
        mu = _own(self.name, "momentum", momentum)
        self.momentum = _check("momentum", mu, 0.0, 1.0, False, True)
        self.nesterov = bool(nesterov)
        self._s_v = 0.0  # sum_k mu^k lr_(t-k): |v| per unit of a steady gradient

    def _prepare(self, lr: float) -> None:
        self._s_v = self.momentum * self._s_v + lr

    def _init_state(self, W: np.ndarray) -> dict[str, np.ndarray]:
        return {"v": np.zeros_like(W)}

    def step_size(self, i: int, out: np.ndarray | None = None) -> float:
        """``s_v = sum_k mu^k lr_(t-k)`` (``mu * s_v + lr_t`` for Nesterov): the move per unit of
        a gradient steady since the first update. It grows from ``lr`` to ``lr / (1 - mu)``; a
        proximal L1 step with ``lr`` alone would make the penalty ``1 / (1 - mu)`` times weaker
        than the objective says (10x at ``mu = 0.9``), one with ``lr / (1 - mu)`` from the start
        10x too strong in the first updates."""
        if self.nesterov:
            return self.momentum * self._s_v + self._last_lr
        return self._s_v

    def _update(self, W: np.ndarray, g: np.ndarray, st: dict, lr: float) -> None:
        v = st["v"]
        mu = self.momentum
        g *= lr  # g now holds lr * g
        v *= mu
        v -= g
        if self.nesterov:
            # W += mu * v - lr * g, reusing g as the scratch buffer
            g *= -1.0
            g += mu * v
            W += g
        else:
            W += v


def _divide(num: float, denom: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    return np.divide(num, denom, out=out) if out is not None else num / denom


class Adagrad(Optimizer):
    """``G += g^2; W -= lr_t * g / (sqrt(G) + eps)`` (Duchi et al. 2011)."""

    name = "adagrad"

    def __init__(
        self,
        learning_rate: float | None = None,
        eps: float | None = None,
        decay: float | None = None,
    ) -> None:
        super().__init__(learning_rate, decay)
        self.eps = _check("eps", _own(self.name, "eps", eps), 0.0, math.inf, True, True)

    def _init_state(self, W: np.ndarray) -> dict[str, np.ndarray]:
        return {"G": np.zeros_like(W), "denom": np.zeros_like(W)}

    def _update(self, W: np.ndarray, g: np.ndarray, st: dict, lr: float) -> None:
        G, denom = st["G"], st["denom"]
        G += g * g
        np.sqrt(G, out=denom)
        denom += self.eps
        g /= denom
        g *= lr
        W -= g

    def step_size(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        return _divide(self._last_lr, self.state[i]["denom"], out)


class RMSprop(Optimizer):
    """``E = rho * E + (1 - rho) * g^2; W -= lr_t * g / (sqrt(E) + eps)`` (Tieleman & Hinton
    2012)."""

    name = "rmsprop"

    def __init__(
        self,
        learning_rate: float | None = None,
        rho: float | None = None,
        eps: float | None = None,
        decay: float | None = None,
    ) -> None:
        super().__init__(learning_rate, decay)
        self.rho = _check("rho", _own(self.name, "rho", rho), 0.0, 1.0, False, True)
        self.eps = _check("eps", _own(self.name, "eps", eps), 0.0, math.inf, True, True)

    def _init_state(self, W: np.ndarray) -> dict[str, np.ndarray]:
        return {"E": np.zeros_like(W), "denom": np.zeros_like(W)}

    def _update(self, W: np.ndarray, g: np.ndarray, st: dict, lr: float) -> None:
        E, denom = st["E"], st["denom"]
        E *= self.rho
        np.multiply(g, g, out=denom)
        denom *= 1.0 - self.rho
        E += denom
        np.sqrt(E, out=denom)
        denom += self.eps
        g /= denom
        g *= lr
        W -= g

    def step_size(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        return _divide(self._last_lr, self.state[i]["denom"], out)


class Adadelta(Optimizer):
    """Adadelta (Zeiler 2012) times the learning rate (its own default ``learning_rate=1.0`` is
    the original method)."""

    name = "adadelta"

    def __init__(
        self,
        learning_rate: float | None = None,
        rho: float | None = None,
        eps: float | None = None,
        decay: float | None = None,
    ) -> None:
        super().__init__(learning_rate, decay)
        self.rho = _check("rho", _own(self.name, "rho", rho), 0.0, 1.0, False, True)
        self.eps = _check("eps", _own(self.name, "eps", eps), 0.0, math.inf, True, True)

    def _init_state(self, W: np.ndarray) -> dict[str, np.ndarray]:
        return {"Eg": np.zeros_like(W), "Edx": np.zeros_like(W), "ratio": np.zeros_like(W)}

    def _update(self, W: np.ndarray, g: np.ndarray, st: dict, lr: float) -> None:
        Eg, Edx, ratio = st["Eg"], st["Edx"], st["ratio"]
        rho = self.rho
        Eg *= rho
        Eg += (1.0 - rho) * (g * g)
        # ratio = sqrt(Edx + eps) / sqrt(Eg + eps): the per-coordinate step before lr
        np.divide(Edx + self.eps, Eg + self.eps, out=ratio)
        np.sqrt(ratio, out=ratio)
        g *= ratio  # g now holds -dx
        Edx *= rho
        Edx += (1.0 - rho) * (g * g)
        g *= lr
        W -= g

    def step_size(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        ratio = self.state[i]["ratio"]
        if out is None:
            return self._last_lr * ratio
        return np.multiply(ratio, self._last_lr, out=out)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with the bias corrections folded into the step size."""

    name = "adam"

    def __init__(
        self,
        learning_rate: float | None = None,
        beta1: float | None = None,
        beta2: float | None = None,
        eps: float | None = None,
        decay: float | None = None,
    ) -> None:
        super().__init__(learning_rate, decay)
        self.beta1 = _check("beta1", _own(self.name, "beta1", beta1), 0.0, 1.0, False, True)
        self.beta2 = _check("beta2", _own(self.name, "beta2", beta2), 0.0, 1.0, False, True)
        self.eps = _check("eps", _own(self.name, "eps", eps), 0.0, math.inf, True, True)
        self._alpha = self.learning_rate
        self._alpha_s = self.learning_rate

    def _prepare(self, lr: float) -> None:
        k = self.t + 1
        # alpha multiplies m / (sqrt(v) + eps); alpha_s = alpha * (1 - b1^k) multiplies g
        self._alpha_s = lr * math.sqrt(1.0 - self.beta2**k)
        self._alpha = self._alpha_s / (1.0 - self.beta1**k)

    def _init_state(self, W: np.ndarray) -> dict[str, np.ndarray]:
        return {"m": np.zeros_like(W), "v": np.zeros_like(W), "denom": np.zeros_like(W)}

    def _update(self, W: np.ndarray, g: np.ndarray, st: dict, lr: float) -> None:
        m, v, denom = st["m"], st["v"], st["denom"]
        b1, b2 = self.beta1, self.beta2
        m *= b1
        v *= b2
        np.multiply(g, g, out=denom)
        denom *= 1.0 - b2
        v += denom
        g *= 1.0 - b1
        m += g
        np.sqrt(v, out=denom)
        denom += self.eps
        np.divide(m, denom, out=g)
        g *= self._alpha
        W -= g

    def step_size(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """``lr_t sqrt(1 - b2^k) / (sqrt(v) + eps)``: the step per unit of ``m_hat``, which is
        ``g`` for a steady gradient (``alpha / denom`` would be ``1 / (1 - b1^k)`` times larger,
        10x at the first update)."""
        return _divide(self._alpha_s, self.state[i]["denom"], out)


class Fista:
    """Settings of the full-batch FISTA path (run by ``engine.trainer``, not via ``step``).

    Parameters
    ----------
    tol : float
        Stop when the Lasso duality gap is at most ``tol * var(y)`` (mse with ``l1 > 0`` and no
        group_l1: scikit-learn's criterion for its coordinate descent, same default), otherwise
        when the KKT residual, the sup norm of the gradient mapping ``(y - prox(y - g / L)) * L``,
        is at most ``tol`` times the sup norm of the loss gradient at the start (``W = 0``).
    step_tol : float
        Also stop when no parameter moves by more than ``step_tol * max(1, max |W|)`` in one
        iteration (default 0: only an iteration that moves nothing stops).
    """

    name = "fista"

    def __init__(self, tol: float | None = None, step_tol: float | None = None) -> None:
        self.tol = _check("tol", _own(self.name, "tol", tol), 0.0, math.inf, False, True)
        step = _own(self.name, "step_tol", step_tol)
        self.step_tol = _check("step_tol", step, 0.0, math.inf, False, True)
        self.learning_rate = 0.0  # the step is 1/L from the data; the trainer reports it per epoch


def make_optimizer(opt_spec: Any) -> Optimizer | Fista:
    """Build an optimizer from the spec's optimizer section.

    ``opt_spec`` is an ``engine.spec_optimizer.OptimizerSpec`` or a mapping with the same keys
    (``name``, ``learning_rate``, ``decay``, ``momentum``, ``nesterov``, ``beta1``, ``beta2``,
    ``eps``, ``rho``, ``tol``, ``step_tol``); absent or ``None`` values take the optimizer's own
    default (``OPTIMIZER_DEFAULTS``). ``sgd`` with ``momentum > 0`` or ``nesterov`` is heavy-ball
    momentum (Nesterov if ``nesterov``); ``momentum``/``nesterov`` with ``momentum == 0`` use
    0.9. Raises ``ValueError`` on bad hyperparameters.
    """
    get = opt_spec.get if isinstance(opt_spec, Mapping) else lambda k: getattr(opt_spec, k, None)
    name = get("name") or "sgd"
    if name not in OPTIMIZER_DEFAULTS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")

    def pick(*keys: str) -> dict[str, Any]:
        return {k: get(k) for k in keys}

    if name == "fista":
        return Fista(**pick("tol", "step_tol"))
    kw = pick("learning_rate", "decay")
    if name in ("sgd", "momentum", "nesterov"):
        nesterov = name == "nesterov" or bool(get("nesterov"))
        mu = float(get("momentum") or 0.0)
        if name == "sgd" and mu == 0.0 and not nesterov:
            return SGD(**kw)
        opt = Momentum(momentum=mu or None, nesterov=nesterov, **kw)
        return opt
    if name == "adagrad":
        return Adagrad(**kw, **pick("eps"))
    if name == "rmsprop":
        return RMSprop(**kw, **pick("rho", "eps"))
    if name == "adadelta":
        return Adadelta(**kw, **pick("rho", "eps"))
    return Adam(**kw, **pick("beta1", "beta2", "eps"))
