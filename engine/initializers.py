"""Weight initializers.

Every initializer draws a weight matrix ``W (D, M)`` for a Dense layer with ``D = fan_in`` inputs
and
``M = fan_out`` units from the caller's seeded ``numpy.random.Generator``, directly in the requested
dtype (no float64 detour, so float32 weights are drawn bit-identically for a given seed).

==================  ==========================================================================
name                distribution
==================  ==========================================================================
``normal``          ``W ~ N(0, 0.05^2)`` (Keras ``RandomNormal`` default scale)
``glorot_uniform``  ``W ~ U(-l, l)``, ``l = sqrt(6 / (D + M))`` (Glorot & Bengio 2010)
``glorot_normal``   ``W ~ N(0, 2 / (D + M))`` (plain, not truncated, normal)
``he``              ``W ~ N(0, 2 / D)`` (He et al. 2015, for ReLU-like activations)
``glorot``          alias of ``glorot_uniform``
==================  ==========================================================================

Biases are always initialised to zero by the network (the regression output bias may start at the
target mean instead).
"""

from __future__ import annotations

import math

import numpy as np

INITIALIZERS: tuple[str, ...] = ("normal", "glorot_uniform", "glorot_normal", "he", "glorot")

_NORMAL_STD = 0.05


def init_weights(
    name: str, D: int, M: int, *, rng: np.random.Generator, dtype: np.dtype | str = "float32"
) -> np.ndarray:
    """Draw a weight matrix for a Dense layer.

    Parameters
    ----------
    name : str
        One of ``INITIALIZERS``.
    D, M : int
        Fan-in (inputs) and fan-out (units).
    rng : numpy.random.Generator
        Source of randomness; the only one used.
    dtype : dtype
        ``float32`` or ``float64``.

    Returns
    -------
    W : ndarray (D, M)
    """
    dtype = np.dtype(dtype)
    if name == "glorot":
        name = "glorot_uniform"
    if name == "normal":
        std = _NORMAL_STD
    elif name == "glorot_normal":
        std = math.sqrt(2.0 / (D + M))
    elif name == "he":
        std = math.sqrt(2.0 / D)
    elif name == "glorot_uniform":
        limit = math.sqrt(6.0 / (D + M))
        W = rng.random((D, M), dtype=dtype)
        # U(0, 1) -> U(-limit, limit), in place and in the target dtype.
        W *= 2.0 * limit
        W -= limit
        return W
    else:
        raise ValueError(f"unknown initializer {name!r}; expected one of {INITIALIZERS}")
    W = rng.standard_normal((D, M), dtype=dtype)
    W *= std
    return W
