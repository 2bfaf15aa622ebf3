"""Regula's engine: regularized neural networks in pure NumPy, with exact L1 sparsity.

Public API (everything the service may use)::

    import engine

    spec = engine.normalize_spec(spec_dict)          # defaults + validation, or SpecError
    typed = engine.parse_spec(spec_dict)             # the same as frozen objects (engine.spec.Spec)
    fields = engine.spec_registry()                  # every field: type, default, bounds, choices
    model = engine.fit(spec_dict, X, y, callbacks=[cb])   # X: a table or images (N, C, H, W)
    warm = engine.fit(spec_dict, X, y, warm_start=model)  # start from model's weights
    train_idx, val_idx = engine.split(spec_dict, X, y)  # the rows fit trains / validates on
    shapes = engine.layer_shapes(spec_dict, (1, 28, 28))  # hidden layers' shapes, or SpecError
    model.predict(X); model.predict_proba(X); model.history; model.metrics; model.classes
    data = model.to_bytes(); model2 = engine.load(data)
    stats = engine.sparsity(model, tolerance=0.0)

Errors: :class:`SpecError` (bad spec, with ``loc``/``msg``/``code``), :class:`InputError` (bad data,
with ``column``/``row``/``msg``/``code``), :class:`ModelFormatError` (bytes that are not a model).
All are ``ValueError`` subclasses. Registries (tuples of names) describe the valid spec values for
schemas; ``HISTORY_KEYS`` names the fields of a history record.
"""

from engine.cv import PathResult, combine
from engine.errors import InputError, ModelFormatError, SpecError, TrainingTimeout
from engine.model import Model, fit, split
from engine.path import final_model, path, path_fold, path_gram_block, path_grid
from engine.path_setup import PathCancelled, final_spec
from engine.serialize import load
from engine.sparsity import sparsity
from engine.spec import DTYPES, KEEP, LOSS_TASKS, LOSSES, TASKS, Spec
from engine.spec import registry as spec_registry
from engine.spec_model import ACTIVATIONS, INITIALIZERS, LAYER_TYPES
from engine.spec_optimizer import OPTIMIZERS
from engine.spec_parse import check_classes, default_spec, normalize_spec
from engine.spec_parse import parse as parse_spec
from engine.spec_regularization import DROPOUT_MODES, L1_METHODS
from engine.spec_shapes import layer_shapes
from engine.trainer import HISTORY_KEYS

__all__ = [
    "ACTIVATIONS",
    "DROPOUT_MODES",
    "DTYPES",
    "HISTORY_KEYS",
    "INITIALIZERS",
    "KEEP",
    "L1_METHODS",
    "LAYER_TYPES",
    "LOSSES",
    "LOSS_TASKS",
    "OPTIMIZERS",
    "TASKS",
    "InputError",
    "Model",
    "ModelFormatError",
    "PathCancelled",
    "PathResult",
    "Spec",
    "SpecError",
    "TrainingTimeout",
    "check_classes",
    "combine",
    "default_spec",
    "final_model",
    "final_spec",
    "fit",
    "layer_shapes",
    "load",
    "normalize_spec",
    "parse_spec",
    "path",
    "path_fold",
    "path_gram_block",
    "path_grid",
    "sparsity",
    "spec_registry",
    "split",
]
