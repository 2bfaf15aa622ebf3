"""The fitted model and ``fit``, the engine's front door.

``fit(spec, X, y)`` validates the spec and the data, splits off a seeded validation set, fits the
preprocessing on the training split only, builds the network, trains it and returns a :class:`Model`
that predicts from raw rows in the original label values. Same seed + same spec + same data =
bit-identical weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from engine.augment import ImageAugmenter, ImagePreprocessor, as_images
from engine.errors import InputError, SpecError
from engine.labels import classes_array, encode_labels, regression_target
from engine.network import Network
from engine.preprocess import Preprocessor
from engine.serialize import model_to_bytes
from engine.sparsity import sparsity
from engine.spec import Spec
from engine.spec_parse import check_classes, parse
from engine.table import Table, read_table
from engine.trainer import train

__all__ = ["HINGE_LOSSES", "MAX_CLASSES", "Callback", "Model", "fit", "split"]

Callback = Callable[[dict[str, Any]], bool | None]
# Hinge losses train margins, not likelihoods: their scores are not calibrated probabilities.
HINGE_LOSSES = frozenset({"multiclass_hinge", "squared_hinge"})
_METRIC_NAMES = {"classification": "accuracy", "regression": "r2"}
# A continuous target sent to a classifier by mistake would otherwise build an (N, C) softmax
# with one class per distinct value.
MAX_CLASSES = 1000
# Second word of the augmentation generator's seed, default_rng([seed, AUGMENT_STREAM]).
AUGMENT_STREAM = 0xA06


class Model:
    """A trained network with its preprocessing, labels, spec and training history.

    Attributes
    ----------
    config : engine.spec.Spec
        The typed spec.
    spec : dict
        ``config.to_dict()``, the normalized spec (JSON-able).
    task : {"classification", "regression"}
    feature_names : list of str
        Raw input columns, in order.
    classes : list or None
        Original labels (python ``int``/``float``/``str``/``bool``), sorted; ``None`` for
        regression.
    history : list of dict
        One record per epoch (keys: ``epoch``, ``loss``, ``data_loss``, ``penalty``, ``val_loss``,
        ``metric``, ``val_metric``, ``zero_fraction``, ``learning_rate``, ``seconds``).
    metrics : dict
        Summary of the returned weights: ``loss``, ``val_loss``, ``metric``, ``val_metric`` of
        epoch ``weights_epoch`` (the epoch the weights are from: the best one under ``keep ==
        "best"``, else the last), ``metric_name`` (``"accuracy"`` | ``"r2"``), ``epochs`` (epochs
        run), ``best_epoch`` (lowest val_loss, or loss without validation), ``weights_epoch``,
        ``keep``, ``stopped``, ``n_train``, ``n_val``, ``seconds``.
    stopped : {"completed", "early_stopping", "cancelled"}
    network : engine.network.Network
    preprocessor : engine.preprocess.Preprocessor or engine.augment.ImagePreprocessor
    n_inputs, n_outputs : int
        Width of the encoded input ``F`` (``C * H * W`` for images) and of the network output.
    input_shape : (C, H, W) or None
        One input image of an image model; ``None`` for a table model.
    """

    def __init__(
        self,
        *,
        spec: Spec | Mapping[str, Any],
        network: Network,
        preprocessor: Preprocessor | ImagePreprocessor,
        classes: list[Any] | None,
        history: list[dict[str, Any]],
        metrics: dict[str, Any],
        stopped: str,
        n_inputs: int,
        n_outputs: int,
    ) -> None:
        self.config: Spec = parse(spec)
        self.spec: dict[str, Any] = self.config.to_dict()
        self.task: str = self.config.task
        self.network = network
        self.preprocessor = preprocessor
        self.classes = None if classes is None else list(classes)
        self.history = history
        self.metrics = metrics
        self.stopped = stopped
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs
        self._dtype = np.dtype(self.config.dtype)
        self._classes_arr = None if classes is None else classes_array(classes)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """``(C, H, W)`` of an image model's input, else ``None``."""
        return self.network.input_shape

    @property
    def feature_names(self) -> list[str]:
        """Raw input columns, in order (the preprocessor's)."""
        return self.preprocessor.feature_names

    @property
    def has_proba(self) -> bool:
        """Whether :meth:`predict_proba` works: a classifier trained with a likelihood loss."""
        return self.task == "classification" and self.config.loss not in HINGE_LOSSES

    def _encode(self, X: Any) -> np.ndarray:
        return self.preprocessor.transform(X, dtype=self._dtype)

    def decision_function(self, X: Any) -> np.ndarray:
        """Network output for raw ``X`` as float64.

        ``(N, 1)`` regression values or binary cross-entropy probabilities; ``(N, C)`` softmax
        probabilities or hinge scores.
        """
        return np.asarray(self.network.output(self._encode(X)), dtype=np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """Predict raw rows.

        Parameters
        ----------
        X : mapping of str to array-like, or array-like (N, D), or images (N, C, H, W)
            Every feature in ``feature_names`` (extra mapping keys are ignored). An image model
            takes raw images of its ``input_shape`` (``(N, H, W)`` for one channel), encoded as
            at training (scaling, featurewise statistics); ``InputError`` ``shape_mismatch``
            for another size.

        Returns
        -------
        ndarray (N,)
            Regression: float64 values in the target's units. Classification: labels from
            ``classes`` (an object array of ``str`` for string labels, else int / float / bool);
            ``p >= 0.5 -> classes[1]`` for binary cross-entropy, ``argmax`` of the scores otherwise.

        Raises
        ------
        InputError
            Bad rows (``missing_column``, ``unknown_category``, ``not_numeric``, ``non_finite``,
            ...).
        """
        return self._labels(self.decision_function(X))

    def _labels(self, out: np.ndarray) -> np.ndarray:
        if self.task == "regression":
            return out[:, 0]
        if self.config.loss == "binary_cross_entropy":
            idx = (out[:, 0] >= 0.5).astype(np.intp)
        else:
            idx = out.argmax(axis=1)
        assert self._classes_arr is not None  # a classifier has classes
        return self._classes_arr[idx]

    def _proba(self, out: np.ndarray) -> np.ndarray:
        if self.config.loss == "binary_cross_entropy":
            p = out[:, 0]
            return np.stack([1.0 - p, p], axis=1)
        return out

    def predict_with_proba(self, X: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """``(predict(X), predict_proba(X) or None)`` from one encoding and one forward pass.

        The probabilities are ``None`` when :attr:`has_proba` is false (regression, hinge losses)
        instead of an error, so a caller serving both needs a single call per request.
        """
        out = self.decision_function(X)
        return self._labels(out), (self._proba(out) if self.has_proba else None)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(N, C)`` float64, columns in ``classes`` order; rows sum to 1.

        Raises
        ------
        InputError
            ``no_probabilities`` for regression models and hinge losses (whose scores are not
            calibrated probabilities), or bad rows as in :meth:`predict`.
        """
        if not self.has_proba:
            why = (
                "a regression model"
                if self.task == "regression"
                else f"trained with {self.config.loss}, whose scores are not probabilities"
            )
            raise InputError(
                f"predict_proba is not available: the model is {why}.", "no_probabilities"
            )
        return self._proba(self.decision_function(X))

    def sparsity(self, tolerance: float = 0.0) -> dict[str, Any]:
        """Same as ``engine.sparsity(self, tolerance)``."""
        return sparsity(self, tolerance)

    def to_bytes(self) -> bytes:
        """npz + JSON bytes, no pickle; ``engine.load(model.to_bytes())`` predicts identically."""
        return model_to_bytes(self)

    def __repr__(self) -> str:
        hidden = list(self.config.model.dense_widths())
        return (
            f"Model(task={self.task!r}, loss={self.config.loss!r}, hidden_layers={hidden}, "
            f"features={len(self.feature_names)}, stopped={self.stopped!r})"
        )


# --- fit ------------------------------------------------------------------------------------------


def _split(
    n: int, fraction: float, rng: np.random.Generator, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of ``range(n)``, stratified by ``labels`` when given.

    Each class keeps at least one training row, so every class is learned. When every class is too
    small to give a validation row, the split falls back to a plain random one. Both index arrays
    are sorted so that ``shuffle=False`` trains in the original row order.
    """
    perm = rng.permutation(n)
    if fraction <= 0:
        return np.arange(n), np.empty(0, dtype=np.intp)
    val = np.empty(0, dtype=perm.dtype)
    if labels is not None:
        parts = []
        shuffled = labels[perm]
        for c in np.unique(labels):
            members = perm[shuffled == c]
            n_val = min(round(len(members) * fraction), len(members) - 1)
            parts.append(members[:n_val])
        val = np.concatenate(parts)
    if len(val) == 0:
        n_val = min(max(round(n * fraction), 1), n - 1)
        val = perm[:n_val]
    mask = np.zeros(n, dtype=bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _targets(typed: Spec, y: Any, n: int) -> tuple[list[Any], np.ndarray | None, np.ndarray]:
    """``(classes, y_idx, y_reg)``: encoded labels (classification) or the float target, checked
    against the ``n`` rows of ``X`` and the task's rules."""
    classes: list[Any] = []
    y_idx: np.ndarray | None = None
    y_reg = np.empty(0)
    if typed.task == "classification":
        classes, y_idx = encode_labels(y)
    else:
        y_reg = regression_target(y)
    n_y = len(y_idx) if y_idx is not None else len(y_reg)
    if n_y != n:
        raise InputError(f"X has {n} rows but y has {n_y}.", "length_mismatch")
    if n < 2:
        raise InputError(f"Training needs at least 2 rows, got {n}.", "too_few_rows")

    if typed.task == "classification":
        if len(classes) < 2:
            raise InputError(
                f"The target has a single class ({classes[0]!r}); a classifier needs at least two.",
                "one_class",
            )
        if len(classes) > MAX_CLASSES:
            raise InputError(
                f"The target has {len(classes)} distinct values, more than the {MAX_CLASSES} "
                "classes a classifier supports; for a numeric target use task 'regression'.",
                "too_many_classes",
            )
        check_classes(typed, len(classes))
    elif float(y_reg.max()) == float(y_reg.min()):
        raise InputError(
            f"The target is constant ({y_reg[0]:g}); there is nothing to learn.", "constant_target"
        )
    return classes, y_idx, y_reg


def _n_rows(X: Any, feature_names: Sequence[str] | None) -> int:
    images = as_images(X, feature_names)
    return len(images[1]) if images is not None else read_table(X, feature_names).n_rows


def split(
    spec: Spec | Mapping[str, Any] | None,
    X: Any,
    y: Any,
    *,
    feature_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)``: the rows ``fit(spec, X, y)`` trains and validates on.

    Drawn exactly as ``fit`` draws them (``default_rng(seed)``, ``validation_split``, stratified
    by class for classification; both sorted; ``val_idx`` empty without a validation split), so a
    caller (a regularization path, a report) can score the same held-out rows.

    Raises
    ------
    SpecError, InputError
        As :func:`fit` for the spec and the target.
    """
    typed = parse(spec)
    n = _n_rows(X, feature_names)
    _, y_idx, _ = _targets(typed, y, n)
    rng = np.random.default_rng(typed.seed)
    return _split(n, typed.validation_split, rng, y_idx)


def _check_warm(warm: Model, typed: Spec, classes: list[Any], images: bool) -> None:
    """A warm start needs the same kind of input, task and (classification) classes."""
    if not isinstance(warm, Model):
        raise TypeError(f"warm_start must be an engine.Model, got {type(warm).__name__}")
    if warm.task != typed.task or isinstance(warm.preprocessor, ImagePreprocessor) != images:
        raise SpecError(
            ("task",),
            f"warm_start: the warm model is a {warm.task} model on "
            f"{'images' if isinstance(warm.preprocessor, ImagePreprocessor) else 'a table'}; "
            "it cannot start this fit.",
            "warm_start_mismatch",
        )
    if typed.task == "classification" and list(warm.classes or []) != list(classes):
        raise InputError(
            f"warm_start: the target's classes {classes[:10]!r} differ from the warm model's "
            f"{list(warm.classes or [])[:10]!r}.",
            "warm_start_mismatch",
        )


def _metric_summary(
    history: list[dict[str, Any]], best_epoch: int, weights_epoch: int, stopped: str, task: str
) -> dict[str, Any]:
    # The summary describes the epoch whose weights the model holds.
    record: dict[str, Any] = (
        history[weights_epoch - 1] if 1 <= weights_epoch <= len(history) else {}
    )
    return {
        "loss": record.get("loss"),
        "val_loss": record.get("val_loss"),
        "metric": record.get("metric"),
        "val_metric": record.get("val_metric"),
        "metric_name": _METRIC_NAMES[task],
        "epochs": len(history),
        "best_epoch": int(best_epoch),
        "weights_epoch": int(weights_epoch),
        "stopped": stopped,
    }


def fit(
    spec: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    *,
    feature_names: Sequence[str] | None = None,
    callbacks: Iterable[Callable[[dict[str, Any]], bool | None]] = (),
    max_seconds: float | None = None,
    warm_start: Model | None = None,
) -> Model:
    """Train a model from raw data.

    Parameters
    ----------
    spec : mapping or None
        A (partial) training spec; see :func:`engine.spec_parse.normalize_spec`.
    X : mapping of str to array-like (N,), or array-like (N, D), or images
        Numeric columns (NaN = missing, imputed with the training mean) and/or string columns
        (``None`` = missing, encoded as all-zero one-hot). Images: an array ``(N, C, H, W)`` or
        ``(N, H, W)`` (or a mapping with that one column), encoded by
        ``engine.augment.ImagePreprocessor`` (uint8 scaled by 1/255, the augmentation's
        featurewise statistics; no per-pixel standardization); ``spec["augmentation"]`` then
        transforms each training batch (seeded from ``spec["seed"]``).
    y : array-like (N,)
        Labels (classification: numbers, bools or strings) or float targets (regression).
    feature_names : sequence of str, optional
        For a mapping: which columns to use, in order (default: all). For an array: its column names
        (default ``"x0", "x1", ...``).
    callbacks : iterable of callables
        ``cb(record) -> bool | None`` after every epoch; ``True`` stops training (``stopped ==
        "cancelled"``).
    max_seconds : float, optional
        Wall-time limit of the whole fit, checked before every mini-batch, so one long epoch
        cannot overrun it.
    warm_start : Model, optional
        Start from this model's weights (and batch-norm statistics) instead of a fresh
        initialisation. Its fitted preprocessing is reused, not refitted, so the weights mean the
        same thing on the new rows; the spec must build the same network (``SpecError``
        ``warm_start_mismatch`` otherwise) and a classifier's target the same classes
        (``InputError`` ``warm_start_mismatch``). The split, shuffling and dropout draws are the
        same as without it. For regularization paths.

    Returns
    -------
    Model

    Raises
    ------
    SpecError
        Invalid spec; binary cross-entropy on a target without exactly 2 classes (``loc ==
        ("loss",)``, code ``"not_binary"``, from :func:`engine.spec_parse.check_classes`); a
        diverged run (non-finite loss, ``loc == ("optimizer", "learning_rate")``, code
        ``"diverged"``).
    TrainingTimeout
        ``max_seconds`` passed (no model is returned).
    InputError
        ``missing_target``, ``one_class``, ``too_many_classes``, ``constant_target``,
        ``non_finite``, ``not_numeric``, ``mixed_types``, ``length_mismatch``, ``too_few_rows``,
        ...
    """
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    started = time.perf_counter()
    typed = parse(spec)
    task = typed.task
    dtype = np.dtype(typed.dtype)
    images = as_images(X, feature_names)
    # The rows: images (name, x (N, C, H, W)) or, for anything else, a table of columns.
    data = images if images is not None else read_table(X, feature_names)
    n = data.n_rows if isinstance(data, Table) else len(data[1])
    if images is None and typed.augmentation is not None:
        raise SpecError(
            ("augmentation",),
            "augmentation transforms images; this data is a table (use images (N, C, H, W)).",
            "needs_images",
        )

    classes, y_idx, y_reg = _targets(typed, y, n)
    if warm_start is not None:
        _check_warm(warm_start, typed, classes, images is not None)

    rng = np.random.default_rng(typed.seed)
    train_rows, val_rows = _split(n, typed.validation_split, rng, y_idx)
    if typed.validation_split > 0 and (len(val_rows) == 0 or len(train_rows) == 0):
        raise InputError(
            f"{n} rows are too few for validation_split={typed.validation_split}.",
            "too_few_rows",
        )

    has_val = len(val_rows) > 0
    # Without a validation split the training rows are all rows: no index copies.
    fit_rows = train_rows if has_val else None
    augmenter = None
    input_shape: tuple[int, ...] | None = None
    preprocessor: Preprocessor | ImagePreprocessor
    if warm_start is not None:
        # The warm model's fitted preprocessing: its weights mean the same thing on these rows.
        preprocessor = warm_start.preprocessor
        Z = preprocessor.transform(X if images is None else images[1], dtype=dtype)
    elif isinstance(data, Table):
        # Z is only read from here on, so it may be the caller's array when the encoding is the
        # identity (standardize off, nothing missing, X already in the spec's dtype).
        preprocessor, Z = Preprocessor.fit_transform(
            data, rows=fit_rows, standardize=typed.standardize, dtype=dtype
        )
    else:
        if typed.augmentation is not None:
            augmenter = ImageAugmenter(**typed.augmentation.to_dict())
        preprocessor, Z = ImagePreprocessor.fit_transform(
            data[0], data[1], rows=fit_rows, augmenter=augmenter, dtype=dtype
        )
    # The encoder may have standardized a table's own stack in place: it is spent, and dropping
    # it frees a float64 copy of the data before training allocates anything.
    del data
    # An image model's (a warm one's too: _check_warm matched the kind of input).
    if isinstance(preprocessor, ImagePreprocessor):
        input_shape = preprocessor.input_shape
        if typed.augmentation is not None and augmenter is None:
            augmenter = ImageAugmenter(**typed.augmentation.to_dict())
    if preprocessor.n_features_out == 0:
        raise InputError(
            "No usable feature: every column is categorical with no value in the training split.",
            "empty",
        )

    output_bias: float | None = None
    if y_idx is None:
        Y = y_reg.astype(dtype)
        n_outputs = 1
        output_bias = float(y_reg[train_rows].mean())
    elif typed.loss == "binary_cross_entropy":
        Y = y_idx.astype(dtype)
        n_outputs = 1
    else:
        Y = y_idx
        n_outputs = len(classes)

    network = Network.build(
        typed,
        preprocessor.n_features_out,
        n_outputs,
        rng=rng,
        output_bias=output_bias,
        input_shape=input_shape,
    )
    if warm_start is not None:
        try:
            network.set_weights(warm_start.network.get_weights())
        except (KeyError, ValueError) as exc:
            raise SpecError(
                ("model",),
                f"warm_start: the warm model's network differs from this spec's ({exc}).",
                "warm_start_mismatch",
            ) from exc
    # Augmentation has its own generator (from the seed), so turning it on changes no other draw.
    augment = augmenter.random_transform if augmenter is not None and augmenter.transforms else None
    augment_rng = np.random.default_rng([typed.seed, AUGMENT_STREAM])
    try:
        result = train(
            network,
            Z[train_rows] if has_val else Z,
            Y[train_rows] if has_val else Y,
            typed,
            X_val=Z[val_rows] if has_val else None,
            Y_val=Y[val_rows] if has_val else None,
            callbacks=tuple(callbacks),
            rng=rng,
            deadline=deadline,
            augment=augment,
            augment_rng=augment_rng,
            warm=warm_start is not None,
        )
    except FloatingPointError as exc:
        # A NaN/inf loss is nearly always a step size too large for the data's scale.
        raise SpecError(
            ("optimizer", "learning_rate"),
            f"Training diverged ({exc}); lower optimizer.learning_rate.",
            "diverged",
        ) from exc
    history = [dict(record) for record in result.history]
    metrics = _metric_summary(
        history, result.best_epoch, result.weights_epoch, result.stopped, task
    )
    metrics["keep"] = typed.keep
    metrics["n_train"] = len(train_rows)
    metrics["n_val"] = len(val_rows)
    metrics["seconds"] = time.perf_counter() - started
    return Model(
        spec=typed,
        network=network,
        preprocessor=preprocessor,
        classes=classes if y_idx is not None else None,
        history=history,
        metrics=metrics,
        stopped=result.stopped,
        n_inputs=preprocessor.n_features_out,
        n_outputs=n_outputs,
    )
