"""The regularization sections of a spec: weight penalties, dropout and image augmentation.

``regularization`` (:class:`Regularization`) is added to the mean data loss, on weights only
(``engine.regularizers``, with Dense weights ``W_1 (D, M_1), ..., W_L``)::

    R(W) = l1 * sum_l sum|W_l| + l2 * sum_l sum(W_l^2) + group_l1 * sum_j ||W_1[j, :]||_2

``l1_method`` is ``proximal`` (the proximal step: exact zeros) or ``subgradient``. ``dropout``
(:class:`DropoutSpec`) drops the inputs with probability ``input`` and the hidden units with
``hidden``, both in ``[0, 1)``, as ``mode`` says (``engine.layers``). ``augmentation``
(:class:`Augmentation`) transforms each training batch of images ``x (N, C, H, W)``, with Keras
``ImageDataGenerator`` names (``engine.augment``).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.layers import DROPOUT_MODES as _DROPOUT_MODES
from engine.spec_fields import Section, spec_field

__all__ = ["DROPOUT_MODES", "L1_METHODS", "Augmentation", "DropoutSpec", "Regularization"]

L1_METHODS: tuple[str, ...] = ("proximal", "subgradient")
DROPOUT_MODES: tuple[str, ...] = tuple(_DROPOUT_MODES)


@dataclass(frozen=True)
class Regularization(Section):
    """``l1 * sum|W| + l2 * sum(W^2) + group_l1 * sum_j ||W1[j, :]||_2`` (weights only)."""

    l1: float = spec_field(0.0, lo=0.0)
    l2: float = spec_field(0.0, lo=0.0)
    group_l1: float = spec_field(0.0, lo=0.0)
    l1_method: str = spec_field("proximal", "str", choices=L1_METHODS)


@dataclass(frozen=True)
class DropoutSpec(Section):
    """Dropout: rates are DROP probabilities in [0, 1)."""

    input: float = spec_field(0.0, lo=0.0, hi=1.0, hi_open=True)
    hidden: float = spec_field(0.0, lo=0.0, hi=1.0, hi_open=True)
    mode: str = spec_field("inverted", "str", choices=DROPOUT_MODES)


@dataclass(frozen=True)
class Augmentation(Section):
    """Image augmentation per training batch, Keras ``ImageDataGenerator`` names (see
    ``engine.augment``)."""

    featurewise_center: bool = spec_field(False, "bool")
    featurewise_std_normalization: bool = spec_field(False, "bool")
    rotation_range: float = spec_field(0.0, lo=0.0, hi=180.0, doc="Degrees.")
    width_shift_range: float = spec_field(0.0, lo=0.0, hi=1.0, doc="Fraction of the width.")
    height_shift_range: float = spec_field(0.0, lo=0.0, hi=1.0, doc="Fraction of the height.")
    zoom_range: float = spec_field(0.0, lo=0.0, hi=1.0, hi_open=True, doc="Zoom in [1 - z, 1 + z].")
    horizontal_flip: bool = spec_field(False, "bool")
    vertical_flip: bool = spec_field(False, "bool")
