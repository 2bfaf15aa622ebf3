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

``step_size(i)`` returns the effective per-coordinate step of the last update of parameter ``i``
(a float, or an array shaped like the parameter for adaptive methods): the factor ``s`` by which
a steady gradient ``g`` moves ``W`` per update (``lr_t`` for SGD, ``lr_t / (1 - mu)`` with momentum,
``lr_t / (sqrt(v) + eps)``-like for adaptive methods). Proximal L1 uses ``thresh = s * l1``, which
makes the fixed points of "step then soft-threshold" satisfy the Lasso optimality condition
``|dJ/dw| <= l1`` at ``w = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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

DEFAULT_MOMENTUM = 0.9  # used by "momentum"/"nesterov" when the spec leaves momentum at 0


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

    def __init__(self, learning_rate: float = 0.01, decay: float = 0.0) -> None:
        self.learning_rate = _check("learning_rate", learning_rate, 0.0, math.inf, True, True)
        self.decay = _check("decay", decay, 0.0, math.inf, False, True)
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

    def step_size(self, i: int) -> float | np.ndarray:
        """Effective step of the last update of parameter ``i`` (scalar unless adaptive)."""
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

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = DEFAULT_MOMENTUM,
        nesterov: bool = False,
        decay: float = 0.0,
    ) -> None:
        super().__init__(learning_rate, decay)
        self.momentum = _check("momentum", momentum, 0.0, 1.0, False, True)
        self.nesterov = bool(nesterov)

    def _init_state(self, W: np.ndarray) -> dict[str, np.ndarray]:
        return {"v": np.zeros_like(W)}

    def step_size(self, i: int) -> float:
        """``lr_t / (1 - mu)``: the step heavy-ball (and Nesterov) momentum takes per unit of a
        steady gradient. A proximal L1 step with ``lr_t`` alone would make the penalty act
        ``1 / (1 - mu)`` times weaker than the objective says (10x at ``mu = 0.9``)."""
        return self._last_lr / (1.0 - self.momentum)

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


class Adagrad(Optimizer):
    """``G += g^2; W -= lr_t * g / (sqrt(G) + eps)`` (Duchi et al. 2011)."""

    def __init__(self, learning_rate: float = 0.01, eps: float = 1e-8, decay: float = 0.0) -> None:
        super().__init__(learning_rate, decay)
        self.eps = _check("eps", eps, 0.0, math.inf, True, True)

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

    def step_size(self, i: int) -> np.ndarray:
        return self._last_lr / self.state[i]["denom"]


class RMSprop(Optimizer):
    """``E = rho * E + (1 - rho) * g^2; W -= lr_t * g / (sqrt(E) + eps)`` (Tieleman & Hinton
    2012)."""

    def __init__(
        self, learning_rate: float = 0.001, rho: float = 0.9, eps: float = 1e-8, decay: float = 0.0
    ) -> None:
        super().__init__(learning_rate, decay)
        self.rho = _check("rho", rho, 0.0, 1.0, False, True)
        self.eps = _check("eps", eps, 0.0, math.inf, True, True)

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

    def step_size(self, i: int) -> np.ndarray:
        return self._last_lr / self.state[i]["denom"]


class Adadelta(Optimizer):
    """Adadelta (Zeiler 2012) times the learning rate (use ``learning_rate=1.0`` for the
    original)."""

    def __init__(
        self, learning_rate: float = 1.0, rho: float = 0.95, eps: float = 1e-6, decay: float = 0.0
    ) -> None:
        super().__init__(learning_rate, decay)
        self.rho = _check("rho", rho, 0.0, 1.0, False, True)
        self.eps = _check("eps", eps, 0.0, math.inf, True, True)

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

    def step_size(self, i: int) -> np.ndarray:
        return self._last_lr * self.state[i]["ratio"]


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with the bias corrections folded into the step size."""

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        decay: float = 0.0,
    ) -> None:
        super().__init__(learning_rate, decay)
        self.beta1 = _check("beta1", beta1, 0.0, 1.0, False, True)
        self.beta2 = _check("beta2", beta2, 0.0, 1.0, False, True)
        self.eps = _check("eps", eps, 0.0, math.inf, True, True)
        self._alpha = self.learning_rate

    def _prepare(self, lr: float) -> None:
        k = self.t + 1
        self._alpha = lr * math.sqrt(1.0 - self.beta2**k) / (1.0 - self.beta1**k)

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

    def step_size(self, i: int) -> np.ndarray:
        return self._alpha / self.state[i]["denom"]


class Fista:
    """Settings of the full-batch FISTA path (run by ``engine.trainer``, not via ``step``).

    Parameters
    ----------
    tol : float
        Lasso / elastic net (mse without group_l1): stop when the duality gap is at most
        ``tol * var(y)`` (scikit-learn's ``tol`` for its coordinate descent, same default).
    step_tol : float
        Other losses: stop when no parameter moves by more than ``step_tol * max(1, max |W|)``
        in one iteration.
    """

    def __init__(self, tol: float = 1e-4, step_tol: float = 1e-7) -> None:
        self.tol = _check("tol", tol, 0.0, math.inf, False, True)
        self.step_tol = _check("step_tol", step_tol, 0.0, math.inf, False, True)
        self.learning_rate = 0.0  # the step is 1/L from the data; the trainer reports it per epoch


def make_optimizer(opt_spec: dict) -> Optimizer | Fista:
    """Build an optimizer from the spec's ``optimizer`` dict.

    Keys used: ``name``, ``learning_rate``, ``decay``, ``momentum``, ``nesterov``, ``beta1``,
    ``beta2``, ``eps``, ``rho``. ``sgd`` with ``momentum > 0`` is heavy-ball momentum (Nesterov if
    ``nesterov``); ``momentum``/``nesterov`` with ``momentum == 0`` use ``DEFAULT_MOMENTUM`` (0.9).
    Missing keys take each optimizer's own default. Raises ``ValueError`` on bad hyperparameters.
    """
    name = opt_spec.get("name", "sgd")
    kw = {k: opt_spec[k] for k in ("learning_rate", "decay") if opt_spec.get(k) is not None}

    def pick(*keys: str) -> dict:
        return {k: opt_spec[k] for k in keys if opt_spec.get(k) is not None}

    if name == "sgd":
        mu = float(opt_spec.get("momentum") or 0.0)
        if mu == 0.0 and not opt_spec.get("nesterov"):
            return SGD(**kw)
        if mu == 0.0:
            mu = DEFAULT_MOMENTUM
        return Momentum(momentum=mu, nesterov=bool(opt_spec.get("nesterov")), **kw)
    if name in ("momentum", "nesterov"):
        mu = float(opt_spec.get("momentum") or 0.0) or DEFAULT_MOMENTUM
        nesterov = name == "nesterov" or bool(opt_spec.get("nesterov"))
        return Momentum(momentum=mu, nesterov=nesterov, **kw)
    if name == "adagrad":
        return Adagrad(**kw, **pick("eps"))
    if name == "rmsprop":
        return RMSprop(**kw, **pick("rho", "eps"))
    if name == "adadelta":
        return Adadelta(**kw, **pick("rho", "eps"))
    if name == "adam":
        return Adam(**kw, **pick("beta1", "beta2", "eps"))
    if name == "fista":
        return Fista(**pick("tol", "step_tol"))
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
