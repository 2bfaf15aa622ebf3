"""scikit-learn estimators over :func:`engine.fit`: ``RegulaClassifier`` and ``RegulaRegressor``.

Optional module: it imports scikit-learn, which the service does not need (``import engine`` never
imports it). Both estimators pass ``sklearn.utils.estimator_checks.check_estimator`` (see
tests/engine/test_sklearn.py for the few checks that do not apply).

Parameters are the spec's fields, flattened (``engine.spec_registry()`` describes each one)::

    hidden_layers, activation, init, leaky_slope         -> spec["model"]
    loss                                                 -> spec["loss"]
    l1, l2, group_l1, l1_method                          -> spec["regularization"]
    dropout, input_dropout, dropout_mode                 -> spec["dropout"] {hidden, input, mode}
    optimizer, learning_rate, momentum, nesterov, decay  -> spec["optimizer"] {name, ...}
    epochs, batch_size, validation_split, shuffle, seed, early_stopping, standardize, dtype

A parameter left at ``None`` takes *the spec's default* (``engine.default_spec()``: hidden layers
``(64, 32)``, relu, he, softmax cross-entropy / mse, no penalty, 20 epochs of batches of 32, seed 0,
standardized inputs), so those defaults live in one place. Three defaults differ from the spec's,
for scikit-learn-like behaviour, and are stated in the signature:

- ``dtype="float64"`` (spec: float32): scikit-learn computes in float64, and ``check_estimator``
  wants a row's prediction not to depend on the other rows of the batch to 1e-7, which float32
  BLAS products miss by an ulp;
- ``optimizer="adam"``, ``learning_rate=0.01`` (spec: sgd at 0.01): regression targets keep their
  units, and plain SGD at 0.01 diverges on targets in the hundreds (make_regression's, diabetes'),
  where Adam's steps do not grow with the target's scale.

With 20 epochs, a fit on a few hundred rows takes milliseconds (``check_estimator`` runs in about
a second per estimator). Training is seeded, so ``random_state`` is not needed: ``seed`` (default
0) plays its role.

Input is a numeric array (or a DataFrame of numeric columns, whose column names become
``feature_names_in_`` and the model's feature names). NaN is allowed and imputed with the training
mean, as the engine does; string columns belong in a ``ColumnTransformer`` before the estimator.

Fitted attributes: ``model_`` (the :class:`engine.Model`, ready for ``to_bytes``,
``engine.sparsity`` or ONNX export), ``n_features_in_``, ``feature_names_in_`` (named columns only),
``n_iter_`` (epochs run), ``classes_`` (classifier), ``feature_importances_`` (the first-layer row
norms of :func:`engine.sparsity`), and for linear models (``hidden_layers=()``) ``coef_`` and
``intercept_`` in the units of the raw ``X`` (the standardization folded in), so that
``X @ coef_.T + intercept_`` are the model's scores: ``coef_[j] == 0`` exactly when L1 dropped
feature ``j``. A pickled estimator holds its model as :meth:`engine.Model.to_bytes` (npz + JSON),
not as pickled NumPy objects.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

import engine
from engine.model import HINGE_LOSSES
from engine.preprocess import Preprocessor

__all__ = ["RegulaClassifier", "RegulaRegressor"]

_FLOAT_DTYPES = (np.float64, np.float32)


class _RegulaEstimator(BaseEstimator):
    """Shared parameters, spec building, validation and fitted attributes."""

    _task: str

    def __init__(
        self,
        hidden_layers: tuple[int, ...] | int | None = None,
        activation: str | None = None,
        init: str | None = None,
        leaky_slope: float | None = None,
        loss: str | None = None,
        l1: float | None = None,
        l2: float | None = None,
        group_l1: float | None = None,
        l1_method: str | None = None,
        dropout: float | None = None,
        input_dropout: float | None = None,
        dropout_mode: str | None = None,
        optimizer: str | None = "adam",
        learning_rate: float | None = 0.01,
        momentum: float | None = None,
        nesterov: bool | None = None,
        decay: float | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        validation_split: float | None = None,
        shuffle: bool | None = None,
        seed: int | None = None,
        early_stopping: bool | dict[str, Any] | None = None,
        standardize: bool | None = None,
        dtype: str | None = "float64",
    ) -> None:
        self.hidden_layers = hidden_layers
        self.activation = activation
        self.init = init
        self.leaky_slope = leaky_slope
        self.loss = loss
        self.l1 = l1
        self.l2 = l2
        self.group_l1 = group_l1
        self.l1_method = l1_method
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.dropout_mode = dropout_mode
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.nesterov = nesterov
        self.decay = decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.validation_split = validation_split
        self.shuffle = shuffle
        self.seed = seed
        self.early_stopping = early_stopping
        self.standardize = standardize
        self.dtype = dtype

    # -- spec ------------------------------------------------------------------------------------

    def to_spec(self) -> dict[str, Any]:
        """The (partial) engine spec these parameters stand for; ``None`` leaves the default."""
        hidden: list[int] | None = None
        if self.hidden_layers is not None:
            # An int is one hidden layer; numpy integers (from a param grid) become python ints.
            widths: Any = self.hidden_layers
            widths = [widths] if np.ndim(widths) == 0 else list(widths)
            hidden = [operator.index(units) for units in widths]
        early = self.early_stopping
        return {
            "task": self._task,
            "model": {
                "hidden_layers": hidden,
                "activation": self.activation,
                "init": self.init,
                "leaky_slope": self.leaky_slope,
            },
            "loss": self.loss,
            "regularization": {
                "l1": self.l1,
                "l2": self.l2,
                "group_l1": self.group_l1,
                "l1_method": self.l1_method,
            },
            "dropout": {
                "input": self.input_dropout,
                "hidden": self.dropout,
                "mode": self.dropout_mode,
            },
            "optimizer": {
                "name": self.optimizer,
                "learning_rate": self.learning_rate,
                "momentum": self.momentum,
                "nesterov": self.nesterov,
                "decay": self.decay,
            },
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "validation_split": self.validation_split,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "early_stopping": dict(early) if isinstance(early, dict) else early,
            "standardize": self.standardize,
            "dtype": self.dtype,
        }

    def __sklearn_tags__(self):  # sklearn.utils.Tags
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # imputed with the training mean by the engine
        if tags.classifier_tags is not None:
            tags.classifier_tags.multi_class = self.loss != "binary_cross_entropy"
        return tags

    # -- fit / predict helpers ---------------------------------------------------------------------

    def _fit(self, X: Any, y: Any) -> np.ndarray:
        """Validate, train ``model_`` and set the fitted attributes; returns the validated ``y``."""
        X, y = validate_data(
            self,
            X,
            y,
            dtype=_FLOAT_DTYPES,
            ensure_all_finite="allow-nan",
            ensure_min_samples=2,
            y_numeric=self._task == "regression",
        )
        if self._task == "classification":
            check_classification_targets(y)
        names = getattr(self, "feature_names_in_", None)
        self.model_ = engine.fit(
            self.to_spec(), X, y, feature_names=None if names is None else [str(n) for n in names]
        )
        self.n_iter_ = int(self.model_.metrics["epochs"])
        return y

    def _validate(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(
            self, X, reset=False, dtype=_FLOAT_DTYPES, ensure_all_finite="allow-nan"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if "model_" in state:
            state = dict(state, model_=state["model_"].to_bytes())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("model_"), bytes):
            state = dict(state, model_=engine.load(state["model_"]))
        super().__setstate__(state)

    # -- fitted attributes ------------------------------------------------------------------------

    @property
    def feature_importances_(self) -> np.ndarray:
        """``(D,)`` importance of each input feature: ``||W1[j, :]||_2`` from
        :func:`engine.sparsity`; exactly 0 for a feature the model dropped."""
        check_is_fitted(self)
        importance = engine.sparsity(self.model_)["feature_importance"]
        return np.array([importance[name] for name in self.model_.feature_names])

    def _linear(self) -> tuple[np.ndarray, np.ndarray]:
        """``(coef (K, D), intercept (K,))`` of a linear model in raw-``X`` units."""
        check_is_fitted(self)
        model = self.model_
        dense = model.network.dense_layers
        if len(dense) != 1:
            raise AttributeError(
                "coef_ and intercept_ exist only for linear models (hidden_layers=())."
            )
        W = np.asarray(dense[0].params["W"], dtype=np.float64)  # (D, K) on standardized z
        b = np.asarray(dense[0].params["b"], dtype=np.float64)
        pre = model.preprocessor
        if not isinstance(pre, Preprocessor):  # fit validates X as (N, D): never images
            raise AttributeError("coef_ and intercept_ exist only for models of table columns.")
        # z = (x - center) / scale, so z @ W + b = x @ (W / scale) + (b - (center / scale) @ W).
        coef = W / pre.scale[:, None]
        intercept = b - (pre.center / pre.scale) @ W
        return coef.T, intercept


class RegulaClassifier(ClassifierMixin, _RegulaEstimator):
    """Regularized neural-network (or linear, ``hidden_layers=()``) classifier.

    Parameters are documented in :mod:`engine.sklearn` and :mod:`engine.spec`; the loss is one of
    ``softmax_cross_entropy`` (default), ``binary_cross_entropy`` (two classes),
    ``multiclass_hinge``, ``squared_hinge`` (no ``predict_proba``).

    Attributes
    ----------
    classes_ : ndarray (C,)
        Sorted labels seen in ``fit``.
    coef_ : ndarray (1, D) for binary cross-entropy, else (C, D); linear models only
    intercept_ : ndarray (1,) or (C,); linear models only
    """

    _task = "classification"

    def fit(self, X: Any, y: Any) -> RegulaClassifier:
        """Train on ``X (N, D)`` and labels ``y (N,)``; returns ``self``."""
        y = self._fit(X, y)
        self.classes_ = np.unique(y)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Labels ``(N,)`` from ``classes_``."""
        X = self._validate(X)
        labels = self.model_.predict(X)
        return np.asarray(labels).astype(self.classes_.dtype, copy=False)

    def _has_proba(self) -> bool:
        if hasattr(self, "model_"):
            return self.model_.has_proba
        return self.loss not in HINGE_LOSSES

    @available_if(_has_proba)
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(N, C)``, columns in ``classes_`` order."""
        X = self._validate(X)
        return self.model_.predict_proba(X)

    @available_if(_has_proba)
    def predict_log_proba(self, X: Any) -> np.ndarray:
        """``log(predict_proba(X))``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    @property
    def coef_(self) -> np.ndarray:
        return self._linear()[0]

    @property
    def intercept_(self) -> np.ndarray:
        return self._linear()[1]


class RegulaRegressor(RegressorMixin, _RegulaEstimator):
    """Regularized neural-network (or linear, ``hidden_layers=()``) regressor.

    With ``hidden_layers=()`` and ``loss="mse"``: ``l1`` gives the Lasso and ``l2`` ridge
    regression, with the penalties of :mod:`engine.regularizers` added to the mean squared error
    (``l1 * sum|w| + l2 * sum(w^2)`` on the weights of the *standardized* inputs).

    Attributes
    ----------
    coef_ : ndarray (D,); linear models only
    intercept_ : float; linear models only
    """

    _task = "regression"

    def fit(self, X: Any, y: Any) -> RegulaRegressor:
        """Train on ``X (N, D)`` and targets ``y (N,)``; returns ``self``."""
        self._fit(X, y)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted values ``(N,)`` in the target's units."""
        X = self._validate(X)
        return self.model_.predict(X)

    @property
    def coef_(self) -> np.ndarray:
        return self._linear()[0][0]

    @property
    def intercept_(self) -> float:
        return float(self._linear()[1][0])
