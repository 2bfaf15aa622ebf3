"""The exact path of a linear mse model: an active-set Lasso / elastic-net solver on its Gram.

A training split of ``n`` rows with encoded inputs ``Z (n, F)`` and target ``y (n,)``, centred
(``Zc = Z - mean(Z)``, ``yc = y - mean(y)``), enters only through :class:`GramStats`
``G = Zc^T Zc / n (F, F)`` and ``c = Zc^T yc / n (F,)``. At the optimal intercept
``b = mean(y) - mean(Z) w`` our objective (``engine.path``) of one output is, with
``tau = (l1 + group_l1) / 2`` (a group of one output is one weight)::

    J(w) = (1/n) ||yc - Zc w||^2 + l1 ||w||_1 + l2 ||w||^2 + group_l1 sum_j |w_j|
         = f(w) + ||yc||^2 / n,   f(w) = w^T G w - 2 c^T w + l2 ||w||^2 + 2 tau ||w||_1

:func:`gram_path` minimises ``f`` exactly for each value of the descending grid (``P`` values),
warm-started from the previous solution, as glmnet does it fast: an active-set (feature-sign)
solver over the sequential strong-rule set ``S = supp(w) U {j : |g_j| >= 2 tau_k - tau_(k-1)}``
(``g = c - G w``), and a KKT check ``|g_j| <= tau`` on all features. The inverse of the active
block of ``G + l2 I`` is kept as a base inverse plus a bordered Schur block as features enter and
leave (:class:`_ActiveSet`). A value with ``tau = 0`` is ridge (or, with ``l2 = 0``, the
minimum-norm least squares), one solve. Returns ``W (F, P)`` and ``b (P,)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["GramStats", "gram_path"]


@dataclass
class GramStats:
    """Centred ``G = Xc^T Xc / n`` and ``c = Xc^T yc / n`` of a training split."""

    G: np.ndarray  # (F, F)
    c: np.ndarray  # (F,)
    x_mean: np.ndarray  # (F,)
    y_mean: float
    n: int


class _ActiveSet:
    """The active block ``M = G[A, A] + l2 I`` and its inverse, kept as a base plus a border.

    Positions ``0 <= p < m`` hold features ``idx[p]``. The first ``m0`` (the base) have ``M0`` and
    its explicit inverse ``B = M0^-1`` (contiguous ``(m0, m0)``); the ``r = m - m0`` added since
    (the border) are kept in bordered form: with ``U = M[base, border] (m0, r)``,
    ``C = M[border, border] (r, r)``, ``P = B U`` and the Schur complement ``S = C - U^T P``,

        M^-1 = [[B + P S^-1 P^T, -P S^-1],
                [-S^-1 P^T,       S^-1 ]],

    so adding ``k`` features costs one product ``U_new^T B`` (``O(m0^2 k)``, one read of ``B``)
    and updates of the ``r``-sized parts, not a rewrite of the ``m x m`` inverse. Removing a
    feature only marks its position dead: with the dead positions ``R`` and ``y = M^-1 [b; 0]``,
    the solution on the live block is ``y - M^-1[:, R] M^-1[R, R]^-1 y[R]``, and a feature that
    comes back costs nothing. Border and dead are folded into a new explicit base in one batch
    (``B + P S^-1 P^T``, then ``E - F H^-1 F^T`` for the dead) once they are many.
    """

    def __init__(self, G: np.ndarray, l2: float) -> None:
        F = G.shape[0]
        self.G, self.l2, self.m, self.m0 = G, l2, 0, 0
        self.idx = np.zeros(F, dtype=np.intp)
        self.pos = np.full(F, -1, dtype=np.intp)  # position of each feature, -1 if not in
        self.alive = np.zeros(F, dtype=bool)  # by position
        self.n_dead = 0
        self.M0 = np.zeros((0, 0))
        self.B = np.zeros((0, 0))
        # G's rows of the features by position, contiguous: G w = w[idx] @ rows, no gather
        self.rows = np.empty((_BORDER_MIN, F))
        self._new_border(0)
        # (dead positions R, M^-1[:, R], M^-1[R, R]^-1), until the set changes
        self._dead: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.solves = 0

    def _new_border(self, capacity: int) -> None:
        m0 = self.m0
        self.UT = np.empty((capacity, m0))  # U^T: rows M[border, base]
        self.PT = np.empty((capacity, m0))  # P^T = U^T B
        self.QT = np.empty((capacity, m0))  # (P S^-1)^T = S^-1 P^T
        self.C = np.zeros((0, 0))
        self.Si = np.zeros((0, 0))  # S^-1

    @property
    def A(self) -> np.ndarray:
        """Active features (in position order)."""
        m = self.m
        return self.idx[:m][self.alive[:m]] if self.n_dead else self.idx[:m]

    def add(self, new: np.ndarray) -> None:
        if len(new) == 0:
            return
        self._dead = None
        back = self.pos[new] >= 0
        if back.any():
            self.alive[self.pos[new[back]]] = True
            self.n_dead -= int(back.sum())
            new = new[~back]
        k = len(new)
        if k == 0:
            return
        m, m0 = self.m, self.m0
        r = m - m0
        end = m + k
        self.idx[m:end] = new
        self.pos[new] = np.arange(m, end)
        self.alive[m:end] = True
        self.m = end
        rows = self.G[new]  # (k, F): contiguous rows of the symmetric G
        if end > len(self.rows):
            grown = np.empty((max(2 * len(self.rows), end), self.rows.shape[1]))
            grown[:m] = self.rows[:m]
            self.rows = grown
        self.rows[m:end] = rows
        Cnn = rows[:, new]
        Cnn.flat[:: k + 1] += self.l2
        if m0 == 0:  # nothing yet: the first features are the base
            self.m0, self.M0, self.B = end, Cnn, _inv(Cnn)
            self._new_border(_BORDER_MIN)
            return
        if r + k > len(self.UT):
            self._grow(r, max(2 * len(self.UT), r + k))
        Un = rows[:, self.idx[:m0]]  # (k, m0) = M[new, base]
        Pn = Un @ self.B  # (k, m0) = (B U_new)^T
        Snn = Cnn - Un @ Pn.T
        if r:
            # S gains k rows and columns: border its inverse (and Q^T = S^-1 P^T) in turn
            Cnb = rows[:, self.idx[m0:m]]  # (k, r) = M[new, border]
            Snb = Cnb - Un @ self.PT[:r].T
            E = self.Si @ Snb.T  # (r, k)
            Sk = _inv(Snn - Snb @ E)
            ES = E @ Sk
            D = E.T @ self.PT[:r] - Pn  # (k, m0)
            self.QT[:r] += ES @ D
            self.QT[r : end - m0] = -Sk @ D
            Si = np.empty((r + k, r + k))
            Si[:r, :r] = self.Si + ES @ E.T
            Si[:r, r:] = -ES
            Si[r:, :r] = -ES.T
            Si[r:, r:] = Sk
            C = np.empty((r + k, r + k))
            C[:r, :r] = self.C
            C[:r, r:] = Cnb.T
            C[r:, :r] = Cnb
            C[r:, r:] = Cnn
            self.Si, self.C = Si, C
        else:
            self.Si, self.C = _inv(Snn), Cnn
            self.QT[:k] = self.Si @ Pn
        self.UT[r : end - m0] = Un
        self.PT[r : end - m0] = Pn
        if end - m0 > max(_BORDER_MIN, m0 // _BORDER_SHARE):
            self.compact()

    def _grow(self, r: int, capacity: int) -> None:
        """Room for ``capacity`` border rows, keeping the first ``r``."""
        for name in ("UT", "PT", "QT"):
            old = getattr(self, name)
            buf = np.empty((capacity, self.m0))
            buf[:r] = old[:r]
            setattr(self, name, buf)

    def remove(self, drop: np.ndarray) -> None:
        """Mark the features ``drop`` (active) dead; compact when the dead are many."""
        self.alive[self.pos[drop]] = False
        self.n_dead += len(drop)
        self._dead = None
        if self.n_dead > max(16, self.m // 8):
            self.compact()

    def compact(self) -> None:
        """Fold the border into the base and drop the dead positions, in one batch."""
        m, m0 = self.m, self.m0
        r = m - m0
        if r == 0 and self.n_dead == 0:
            return
        Minv, M = self.B, self.M0
        if r:
            PT, QT, UT = self.PT[:r], self.QT[:r], self.UT[:r]
            Minv = np.empty((m, m))
            np.matmul(PT.T, QT, out=Minv[:m0, :m0])
            Minv[:m0, :m0] += self.B
            Minv[:m0, m0:] = -QT.T
            Minv[m0:, :m0] = -QT
            Minv[m0:, m0:] = self.Si
            M = np.empty((m, m))
            M[:m0, :m0] = self.M0
            M[:m0, m0:] = UT.T
            M[m0:, :m0] = UT
            M[m0:, m0:] = self.C
        q = m
        if self.n_dead:
            live = np.flatnonzero(self.alive[:m])
            dead = np.flatnonzero(~self.alive[:m])
            q = len(live)
            Fb = Minv[np.ix_(live, dead)]
            H = Minv[np.ix_(dead, dead)]
            Minv = Minv[np.ix_(live, live)]
            Minv -= Fb @ _inv(H) @ Fb.T
            M = M[np.ix_(live, live)]
            self.pos[self.idx[dead]] = -1
            self.rows[:q] = self.rows[live]
            self.idx[:q] = self.idx[live]
            self.pos[self.idx[:q]] = np.arange(q)
            self.alive[:m] = False
            self.alive[:q] = True
        self.m = self.m0 = q
        self.n_dead = 0
        self.B, self.M0 = Minv, M
        self._new_border(max(_BORDER_MIN, q // _BORDER_SHARE))
        self._dead = None

    def _full(self, v: np.ndarray) -> np.ndarray:
        if not self.n_dead:
            return v
        out = np.zeros(self.m)
        out[self.alive[: self.m]] = v
        return out

    def _matvec_full(self, v: np.ndarray) -> np.ndarray:
        """``M v`` over every position (dead ones included)."""
        m0 = self.m0
        r = self.m - m0
        out = np.empty(self.m)
        out[:m0] = self.M0 @ v[:m0]
        if r:
            UT = self.UT[:r]
            out[:m0] += v[m0:] @ UT
            out[m0:] = UT @ v[:m0] + self.C @ v[m0:]
        return out

    def _apply_inverse(self, b: np.ndarray) -> np.ndarray:
        """``M^-1 b`` over every position (dead ones included)."""
        m0 = self.m0
        r = self.m - m0
        x = np.empty(self.m)
        b0 = b[:m0]
        x[:m0] = self.B @ b0
        if r:
            z = self.PT[:r] @ b0
            b1 = b[m0:]
            x[:m0] += (z - b1) @ self.QT[:r]
            x[m0:] = self.Si @ (b1 - z)
        return x

    def _inverse_columns(self, p: np.ndarray) -> np.ndarray:
        """``M^-1[:, p] (m, len(p))`` for positions ``p``."""
        m0 = self.m0
        r = self.m - m0
        PT, QT = self.PT[:r], self.QT[:r]
        out = np.empty((self.m, len(p)))
        base = p < m0
        pb, pr = p[base], p[~base] - m0
        if len(pb):
            # B is symmetric: its rows pb (contiguous) are its columns pb
            out[:m0, base] = (self.B[pb] + QT[:, pb].T @ PT).T
            out[m0:, base] = -QT[:, pb]
        if len(pr):
            out[:m0, ~base] = -QT[pr].T
            out[m0:, ~base] = self.Si[:, pr]
        return out

    def gram_times(self, w: np.ndarray) -> np.ndarray:
        """``G w`` for a ``w (F,)`` whose support is in the set (zero at dead positions)."""
        m = self.m
        return w[self.idx[:m]] @ self.rows[:m]

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """``M v`` on the live block (``v`` in the order of ``A``)."""
        out = self._matvec_full(self._full(v))
        return out[self.alive[: self.m]] if self.n_dead else out

    def solve(self, rhs: np.ndarray, final: bool = False) -> np.ndarray:
        """``M_live^-1 rhs`` (order of ``A``), checked by its residual when ``final`` and every
        ``_CHECK_EVERY`` solves (the block updates can drift)."""
        b = self._full(rhs)
        x = self._apply_inverse(b)
        dead = None
        if self.n_dead:
            if self._dead is None:
                dead = np.flatnonzero(~self.alive[: self.m])
                cols = self._inverse_columns(dead)
                self._dead = (dead, cols, _inv(cols[dead]))
            dead, cols, Hinv = self._dead
            x -= cols @ (Hinv @ x[dead])
            x[dead] = 0.0
        self.solves += 1
        drift = False
        if final or self.solves % _CHECK_EVERY == 0:
            res = b - self._matvec_full(x)
            if dead is not None:
                res[dead] = 0.0
            scale = float(np.abs(b).max(initial=0.0)) + 1e-300
            drift = float(np.abs(res).max(initial=0.0)) > 1e-10 * scale
        if drift:
            # the block updates drifted (or M is singular): refactor from scratch
            self.compact()
            self.B = _inv(self.M0)
            return np.linalg.lstsq(self.M0, rhs, rcond=None)[0]
        return x[self.alive[: self.m]] if self.n_dead else x


def _inv(M: np.ndarray) -> np.ndarray:
    if M.shape == (1, 1) and M[0, 0] != 0:
        return 1.0 / M
    try:
        return np.linalg.inv(M)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(M)


_CHECK_EVERY = 4
_BORDER_MIN = 32  # the border is folded into the base past max(_BORDER_MIN, m0 / _BORDER_SHARE)
_BORDER_SHARE = 4
_MULTI_DROPS = 2  # sign-conflict rounds per point that drop all conflicting coordinates at once
_LINE_POINTS = 16  # zero crossings tried by a feature-sign line search (plus the full step)


def _solve_point(
    c: np.ndarray,
    w: np.ndarray,
    g: np.ndarray,
    tau: float,
    strong: np.ndarray,
    active: _ActiveSet,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact minimiser of ``f(w) = w^T G w - 2 c^T w + l2 ||w||^2 + 2 tau ||w||_1`` from ``w``.

    ``f`` is our objective ``J`` minus a constant. Feature-sign search (Lee et al. 2007): with the
    active set ``A`` and signs ``theta`` solve ``(G_AA + l2 I) x = c_A - tau theta``; when a sign
    disagrees, move to the best of the first zero crossings and the full step on the segment
    ``w -> x`` (the objective decreases) and drop the zeros. The violators of ``|g_j| <= tau``
    (``g = c - G w``) enter from the strong set, then from all features (the KKT check). ``g`` is
    the gradient at the starting ``w`` (the previous point's, returned by its solve). Returns
    ``(w, g)`` with ``active`` holding ``supp(w)``.
    """
    F = len(c)
    tol = 1e-10 * max(tau, 1e-300)
    # accuracy asked of the active equations (what a solve accepts is 10x tighter, see solve)
    tol_active = 1e-9 * (tau + float(np.abs(c).max(initial=0.0)))
    in_set = strong.copy()
    w = w.copy()
    theta = np.sign(w)  # by feature
    one_at_a_time = False
    drops = 0
    fresh = True  # g is the gradient at w
    for _ in range(10 * F + 100):
        A = active.A
        if not fresh:
            g = c - active.gram_times(w) if len(A) else c.copy()
        fresh = True
        viol = (w == 0) & (np.abs(g) > tau + tol)
        inside = viol & in_set
        # the active coefficients must satisfy g_j - l2 w_j = tau sign(w_j) at THIS tau
        wa = w[A]
        off = np.abs(g[A] - active.l2 * wa - tau * np.sign(wa)).max(initial=0.0) > tol_active
        if not inside.any() and not off:
            if not viol.any():
                return w, g
            in_set |= viol  # the strong rule missed them
            continue
        new = np.flatnonzero(inside)
        if one_at_a_time and len(new) > 1:
            new = new[[int(np.argmax(np.abs(g[new])))]]
        theta[new] = np.sign(g[new])
        active.add(new)
        one_at_a_time = False
        fresh = False  # the solves below move w
        # nothing enters: the active equations are re-solved, so check that solve's accuracy
        final = len(new) == 0
        for _ in range(4 * F + 10):
            A = active.A
            x = active.solve(c[A] - tau * theta[A], final=final)
            final = False
            wa = w[A]
            if np.all(np.sign(x) == theta[A]):
                w[A] = x
                break
            if drops < _MULTI_DROPS:
                # Drop every coordinate whose sign disagrees, at once, and re-solve: one solve
                # instead of one per zero crossing. Not a guaranteed descent step, so only a few
                # per point; the KKT checks re-admit a feature dropped wrongly.
                drops += 1
                bad = np.sign(x) != theta[A]
                x[bad] = 0.0
                w[A] = x
                theta[A] = np.sign(x)
                active.remove(A[bad])
                if len(active.A) == 0:
                    break
                continue
            d = x - wa
            with np.errstate(divide="ignore", invalid="ignore"):
                t_cross = -wa / d
            cand = np.flatnonzero((wa != 0) & (t_cross > 0) & (t_cross < 1))
            if len(cand) > _LINE_POINTS:
                cand = cand[np.argpartition(t_cross[cand], _LINE_POINTS)[:_LINE_POINTS]]
            ts = np.concatenate([t_cross[cand], [1.0]])
            vals = _objective_change(wa, d, active.matvec(d), c[A], tau, ts)
            best = int(np.argmin(vals))
            if vals[best] >= 0 and len(new) > 1:
                one_at_a_time = True  # several entering features fought: add them singly
            t = ts[best]
            nw = wa + t * d
            if best < len(cand):
                nw[cand[best]] = 0.0
            nw[np.abs(nw) <= 1e-15 * (np.abs(wa) + np.abs(x))] = 0.0
            w[A] = nw
            theta[A] = np.sign(nw)
            zero = A[nw == 0]
            if len(zero):
                active.remove(zero)
            if len(active.A) == 0:
                break
    raise FloatingPointError("the Lasso path solver did not converge")  # pragma: no cover


def _objective_change(
    w: np.ndarray, d: np.ndarray, Md: np.ndarray, c: np.ndarray, tau: float, ts: np.ndarray
) -> np.ndarray:
    """``f(w + t d) - f(w)`` for each ``t`` in ``ts`` on the active block (``Md = M d``)."""
    a = float(d @ Md)
    b = 2.0 * (float(w @ Md) - float(c @ d))
    l1 = np.abs(w[None, :] + ts[:, None] * d[None, :]).sum(axis=1) - np.abs(w).sum()
    return a * ts * ts + b * ts + 2.0 * tau * l1


def gram_path(
    stats: GramStats, grid: np.ndarray, spec: dict, param: str, tick: Callable[[int], None]
) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``W (F, P)`` and intercepts ``b (P,)`` along ``grid`` (warm starts).

    The solves run on one BLAS thread, as scikit-learn's KMeans runs its iterations: they are
    thousands of small products (``O(F^2)`` at most) whose thread synchronisation costs more than
    it saves, and far more when another process holds the other cores (a 100-point path on 4000 x
    1000 took 2.4x as long on two threads of a busy two-core machine as on one). The Gram
    products before it keep every thread.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _gram_path_points(stats, grid, spec, param, tick)


def _gram_path_points(
    stats: GramStats, grid: np.ndarray, spec: dict, param: str, tick: Callable[[int], None]
) -> tuple[np.ndarray, np.ndarray]:
    G, c = stats.G, stats.c
    F, P = len(c), len(grid)
    reg = spec["regularization"]
    W = np.zeros((F, P))
    w = np.zeros(F)
    g = c.copy()
    active = None
    tau_prev = None

    for k, value in enumerate(grid):
        point = dict(reg)
        point[param.split(".")[1]] = float(value)
        tau = 0.5 * (point["l1"] + point["group_l1"])
        l2 = point["l2"]
        if tau_prev is None or param == "regularization.l2":
            strong = np.ones(F, dtype=bool)
        else:
            strong = (w != 0) | (np.abs(g) >= 2.0 * tau - tau_prev)
        if tau and (active is None or active.l2 != l2):
            active = _ActiveSet(G, l2)
            active.add(np.flatnonzero(w))
        if tau == 0:
            # no L1 term: ridge (or, with l2 = 0, the minimum-norm least squares) in one solve
            M = G.copy()
            M.flat[:: F + 1] += l2
            w = np.linalg.lstsq(M, c, rcond=None)[0]
            g = c - G @ w
            active = None
        else:
            assert active is not None  # made above for every tau > 0
            w, g = _solve_point(c, w, g, tau, strong, active)
        W[:, k] = w
        tau_prev = tau
        tick(k)
    b = stats.y_mean - stats.x_mean @ W
    return W, b
