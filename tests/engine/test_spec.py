"""normalize_spec: defaults, idempotence and one SpecError (loc, code) per kind of bad field."""

import copy
import dataclasses
import json

import numpy as np
import pytest

import engine
from engine import SpecError, normalize_spec
from engine.optimizers import OPTIMIZER_DEFAULTS, make_optimizer
from engine.spec import registry
from engine.spec_parse import check_classes, parse


def test_empty_spec_gets_documented_defaults():
    spec = normalize_spec({})
    assert spec == {
        "task": "classification",
        "model": {
            "hidden_layers": [64, 32],
            "layers": None,
            "activation": "relu",
            "init": "he",
            "leaky_slope": 0.01,
        },
        "loss": "softmax_cross_entropy",
        "loss_params": {"huber_delta": 1.0, "hinge_margin": 1.0, "eps": 1e-7},
        "regularization": {"l1": 0.0, "l2": 0.0, "group_l1": 0.0, "l1_method": "proximal"},
        "dropout": {"input": 0.0, "hidden": 0.0, "mode": "inverted"},
        "optimizer": {
            "name": "sgd",
            "learning_rate": 0.01,
            "momentum": 0.0,
            "nesterov": False,
            "decay": 0.0,
            "beta1": None,
            "beta2": None,
            "eps": None,
            "rho": None,
            "tol": None,
            "step_tol": None,
        },
        "epochs": 20,
        "batch_size": 32,
        "validation_split": 0.0,
        "shuffle": True,
        "seed": 0,
        "early_stopping": None,
        "standardize": True,
        "dtype": "float32",
        "keep": "last",
        "augmentation": None,
        "search": None,
    }


def test_each_optimizer_gets_its_own_defaults():
    # regression: adadelta used to train with the spec's generic lr 0.01, rho 0.9, eps 1e-8
    opt = normalize_spec({"optimizer": {"name": "adadelta"}})["optimizer"]
    assert (opt["learning_rate"], opt["rho"], opt["eps"]) == (1.0, 0.95, 1e-6)
    assert opt["beta1"] is None and opt["momentum"] is None
    built = make_optimizer(parse({"optimizer": {"name": "adadelta"}}).optimizer)
    assert (built.learning_rate, built.rho, built.eps) == (1.0, 0.95, 1e-6)
    adam = normalize_spec({"optimizer": {"name": "adam"}})["optimizer"]
    assert (adam["learning_rate"], adam["beta1"], adam["beta2"]) == (0.001, 0.9, 0.999)
    for name, own in OPTIMIZER_DEFAULTS.items():
        hidden = [] if name == "fista" else [4]
        opt = normalize_spec({"optimizer": {"name": name}, "model": {"hidden_layers": hidden}})
        assert {k: v for k, v in opt["optimizer"].items() if v is not None and k != "name"} == {
            k: v for k, v in own.items() if k != "nesterov" or v
        } | ({"nesterov": False} if "nesterov" in own and not own["nesterov"] else {})


def test_given_optimizer_fields_override_its_defaults():
    opt = normalize_spec({"optimizer": {"name": "adadelta", "learning_rate": 0.5}})["optimizer"]
    assert (opt["learning_rate"], opt["rho"]) == (0.5, 0.95)


def test_fista_tolerances_are_fields():
    spec = parse(
        {
            "optimizer": {"name": "fista", "tol": 1e-9, "step_tol": 1e-12},
            "model": {"hidden_layers": []},
        }
    )
    assert (spec.optimizer.tol, spec.optimizer.step_tol) == (1e-9, 1e-12)
    fista = make_optimizer(spec.optimizer)
    assert (fista.tol, fista.step_tol) == (1e-9, 1e-12)


def test_keep_defaults_to_best_with_validation_data():
    assert parse({}).keep == "last"
    assert parse({"validation_split": 0.2}).keep == "best"
    assert parse({"validation_split": 0.2, "keep": "last"}).keep == "last"


def test_typed_spec_is_frozen_and_round_trips():
    spec = parse({"optimizer": {"name": "adam"}, "regularization": {"l1": 1e-3}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.epochs = 3  # type: ignore[misc]
    assert parse(spec.to_dict()) == spec
    assert parse(spec) is spec


FULL = {
    "task": "classification",
    "model": {
        "layers": [
            {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same"},
            {"type": "batch_norm"},
            {"type": "maxpool2d"},
            {"type": "flatten"},
            {"type": "dense", "units": 16, "activation": "tanh"},
            {"type": "dropout", "rate": 0.5},
        ]
    },
    "validation_split": 0.1,
    "augmentation": {"rotation_range": 10, "horizontal_flip": True},
    "search": {"param": "regularization.l1", "num": 10, "folds": 3, "select": "1se"},
    "early_stopping": True,
}


def test_new_sections_normalize_idempotently_and_json_able():
    once = normalize_spec(FULL)
    assert normalize_spec(once) == once
    assert json.loads(json.dumps(once)) == once
    conv = once["model"]["layers"][0]
    assert conv == {
        "type": "conv2d",
        "filters": 8,
        "kernel_size": [3, 3],
        "strides": [1, 1],
        "padding": "same",
        "activation": None,
        "init": None,
    }
    assert once["model"]["layers"][2] == {"type": "maxpool2d", "pool_size": [2, 2], "strides": None}
    assert once["model"]["hidden_layers"] is None
    assert once["augmentation"]["rotation_range"] == 10.0
    assert once["augmentation"]["vertical_flip"] is False
    assert once["search"] == {
        "param": "regularization.l1",
        "values": None,
        "num": 10,
        "min_ratio": 1e-3,
        "folds": 3,
        "select": "1se",
    }
    explicit = normalize_spec({"search": {"values": [0.1, 0.01], "folds": 2}})["search"]
    assert explicit["values"] == [0.1, 0.01] and explicit["num"] is None


def test_registry_describes_every_field_with_its_default_and_bounds():
    reg = registry()
    assert json.loads(json.dumps(reg)) == reg
    sections = reg["sections"]
    by_name = {f["name"]: f for f in sections["optimizer"]}
    assert by_name["learning_rate"]["default"] is None  # the optimizer's own
    assert (by_name["learning_rate"]["lo"], by_name["learning_rate"]["lo_open"]) == (0.0, True)
    assert by_name["name"]["choices"] == list(engine.OPTIMIZERS)
    assert reg["optimizer_defaults"]["adadelta"]["learning_rate"] == 1.0
    dropout = {f["name"]: f for f in sections["dropout"]}["input"]
    assert (dropout["lo"], dropout["hi"], dropout["hi_open"]) == (0.0, 1.0, True)
    assert {f["name"] for f in sections["layers.conv2d"]} >= {"filters", "kernel_size", "padding"}
    # every default in the registry is what normalization fills in for an empty spec
    empty = normalize_spec({})
    for section in ("model", "loss_params", "regularization", "dropout"):
        for f in sections[section]:
            assert empty[section][f["name"]] == f["default"], (section, f["name"])
    for f in sections[""]:
        if f["type"] != "section" and f["name"] not in ("task", "loss", "keep"):
            assert empty[f["name"]] == f["default"], f["name"]


def test_registry_bounds_are_what_normalization_enforces():
    # derive a just-outside value from each numeric bound and check it is rejected
    for section in ("loss_params", "regularization", "dropout", "optimizer", "augmentation"):
        for f in registry()["sections"][section]:
            if f["type"] != "float":
                continue
            for bound, is_open, sign in ((f["lo"], f["lo_open"], -1), (f["hi"], f["hi_open"], 1)):
                if bound is None:
                    continue
                bad = bound if is_open else bound + sign * 1e-3
                raw = {section: {f["name"]: bad}}
                if section == "optimizer":
                    raw[section]["name"] = "adam"
                with pytest.raises(SpecError) as info:
                    normalize_spec(raw)
                assert info.value.loc == (section, f["name"])


def test_check_classes_is_the_one_binary_rule():
    with pytest.raises(SpecError) as info:
        check_classes(parse({"loss": "binary_cross_entropy"}), 3)
    assert (info.value.loc, info.value.code) == (("loss",), "not_binary")
    check_classes({"loss": "binary_cross_entropy"}, 2)
    check_classes({"loss": "softmax_cross_entropy"}, 5)


def test_none_spec_is_the_default_spec():
    assert normalize_spec(None) == normalize_spec({}) == engine.default_spec()


def test_partial_sections_are_merged_over_defaults():
    spec = normalize_spec({"optimizer": {"name": "adam", "learning_rate": 0.001}, "epochs": 5})
    assert spec["optimizer"]["name"] == "adam"
    assert spec["optimizer"]["learning_rate"] == 0.001
    assert spec["optimizer"]["beta2"] == 0.999
    assert spec["epochs"] == 5


def test_task_is_inferred_from_loss():
    assert normalize_spec({"loss": "huber"})["task"] == "regression"
    assert normalize_spec({"loss": "multiclass_hinge"})["task"] == "classification"


def test_regression_task_defaults_to_mse():
    assert normalize_spec({"task": "regression"})["loss"] == "mse"


def test_normalization_is_idempotent_and_json_able():
    raw = {
        "task": "regression",
        "model": {"hidden_layers": [8], "init": "glorot"},
        "regularization": {"l1": 1e-3},
        "validation_split": 0.2,
        "early_stopping": {"patience": 3},
    }
    once = normalize_spec(raw)
    assert normalize_spec(once) == once
    assert json.loads(json.dumps(once)) == once


def test_input_is_not_modified():
    raw = {"model": {"hidden_layers": [4]}, "optimizer": {"name": "adam"}}
    before = copy.deepcopy(raw)
    normalize_spec(raw)
    assert raw == before


def test_init_alias_is_stored_canonically():
    assert normalize_spec({"model": {"init": "glorot"}})["model"]["init"] == "glorot_uniform"


def test_integral_floats_become_ints():
    spec = normalize_spec({"epochs": 3.0, "model": {"hidden_layers": [4.0]}})
    assert spec["epochs"] == 3 and isinstance(spec["epochs"], int)
    assert spec["model"]["hidden_layers"] == [4]


def test_int_rates_become_floats():
    spec = normalize_spec({"regularization": {"l2": 1}, "optimizer": {"learning_rate": 1}})
    assert spec["regularization"]["l2"] == 1.0 and isinstance(spec["regularization"]["l2"], float)
    assert isinstance(spec["optimizer"]["learning_rate"], float)


def test_none_fields_take_defaults():
    spec = normalize_spec({"seed": None, "optimizer": {"momentum": None}})
    assert spec["seed"] == 0
    assert spec["optimizer"]["momentum"] == 0.0  # sgd's own


def test_early_stopping_monitor_defaults_follow_validation_split():
    assert normalize_spec({"early_stopping": {}})["early_stopping"] == {
        "monitor": "loss",
        "patience": 5,
        "min_delta": 0.0,
    }
    with_val = normalize_spec({"early_stopping": True, "validation_split": 0.1})
    assert with_val["early_stopping"]["monitor"] == "val_loss"


def test_linear_fista_is_accepted():
    spec = normalize_spec({"optimizer": {"name": "fista"}, "model": {"hidden_layers": []}})
    assert spec["optimizer"]["name"] == "fista"


def test_every_registry_value_is_accepted():
    for loss in engine.LOSSES:
        assert normalize_spec({"loss": loss})["task"] == engine.LOSS_TASKS[loss]
    for act in engine.ACTIVATIONS:
        assert normalize_spec({"model": {"activation": act}})["model"]["activation"] == act
    for mode in engine.DROPOUT_MODES:
        assert normalize_spec({"dropout": {"mode": mode}})["dropout"]["mode"] == mode
    for name in engine.OPTIMIZERS:
        hidden = [] if name == "fista" else [4]
        spec = {"optimizer": {"name": name}, "model": {"hidden_layers": hidden}}
        assert normalize_spec(spec)["optimizer"]["name"] == name


INVALID = [
    # (spec, loc, code)
    ({"bogus": 1}, ("bogus",), "unknown_field"),
    ({"optimizer": {"lr": 0.1}}, ("optimizer", "lr"), "unknown_field"),
    ({"model": {"units": [3]}}, ("model", "units"), "unknown_field"),
    ({"model": {"layers": [3]}}, ("model", "layers", 0), "type_error"),
    ({"model": {"layers": [{"type": "lstm"}]}}, ("model", "layers", 0, "type"), "unknown_layer"),
    ({"model": {"layers": [{"type": "dense"}]}}, ("model", "layers", 0, "units"), "missing_field"),
    (
        {"model": {"layers": [{"type": "dense", "units": 4}], "hidden_layers": [4]}},
        ("model", "layers"),
        "conflict",
    ),
    (
        {"model": {"layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "x"}]}},
        ("model", "layers", 0, "padding"),
        "unknown_value",
    ),
    ({"keep": "first"}, ("keep",), "unknown_value"),
    ({"optimizer": {"name": "fista", "tol": -1.0}}, ("optimizer", "tol"), "out_of_range"),
    ({"augmentation": {"rotation_range": -5}}, ("augmentation", "rotation_range"), "out_of_range"),
    ({"augmentation": {"shear_range": 0.1}}, ("augmentation", "shear_range"), "unknown_field"),
    ({"search": {"param": "dropout"}}, ("search", "param"), "unknown_value"),
    ({"search": {"values": [0.1], "num": 5}}, ("search", "num"), "conflict"),
    ({"search": {"folds": 1}}, ("search", "folds"), "out_of_range"),
    ({"search": {"select": "max"}}, ("search", "select"), "unknown_value"),
    ({"task": "clustering"}, ("task",), "unknown_task"),
    ({"loss": "cross_entropy"}, ("loss",), "unknown_loss"),
    ({"loss": 3}, ("loss",), "type_error"),
    ({"task": "regression", "loss": "softmax_cross_entropy"}, ("loss",), "loss_task_mismatch"),
    ({"task": "classification", "loss": "mse"}, ("loss",), "loss_task_mismatch"),
    ({"model": {"activation": "swish"}}, ("model", "activation"), "unknown_activation"),
    ({"model": {"init": "zeros"}}, ("model", "init"), "unknown_init"),
    ({"model": {"hidden_layers": 64}}, ("model", "hidden_layers"), "type_error"),
    ({"model": {"hidden_layers": [64, 0]}}, ("model", "hidden_layers", 1), "out_of_range"),
    ({"model": {"hidden_layers": [2.5]}}, ("model", "hidden_layers", 0), "type_error"),
    ({"model": {"hidden_layers": [True]}}, ("model", "hidden_layers", 0), "type_error"),
    ({"model": {"leaky_slope": -0.1}}, ("model", "leaky_slope"), "out_of_range"),
    ({"loss_params": {"huber_delta": 0}}, ("loss_params", "huber_delta"), "out_of_range"),
    ({"loss_params": {"hinge_margin": -1}}, ("loss_params", "hinge_margin"), "out_of_range"),
    ({"loss_params": {"eps": 0.5}}, ("loss_params", "eps"), "out_of_range"),
    ({"regularization": {"l1": -0.1}}, ("regularization", "l1"), "out_of_range"),
    ({"regularization": {"l2": float("inf")}}, ("regularization", "l2"), "out_of_range"),
    ({"regularization": {"l2": float("nan")}}, ("regularization", "l2"), "out_of_range"),
    ({"regularization": {"group_l1": -1e-9}}, ("regularization", "group_l1"), "out_of_range"),
    ({"regularization": {"l1": "0.1"}}, ("regularization", "l1"), "type_error"),
    ({"regularization": {"l1": True}}, ("regularization", "l1"), "type_error"),
    (
        {"regularization": {"l1_method": "admm"}},
        ("regularization", "l1_method"),
        "unknown_l1_method",
    ),
    ({"dropout": {"input": 1.0}}, ("dropout", "input"), "out_of_range"),
    ({"dropout": {"hidden": -0.1}}, ("dropout", "hidden"), "out_of_range"),
    ({"dropout": {"mode": "gaussian"}}, ("dropout", "mode"), "unknown_dropout_mode"),
    ({"optimizer": {"name": "lbfgs"}}, ("optimizer", "name"), "unknown_optimizer"),
    ({"optimizer": {"learning_rate": 0}}, ("optimizer", "learning_rate"), "out_of_range"),
    ({"optimizer": {"learning_rate": -0.1}}, ("optimizer", "learning_rate"), "out_of_range"),
    ({"optimizer": {"momentum": 1.0}}, ("optimizer", "momentum"), "out_of_range"),
    ({"optimizer": {"beta1": 1.0}}, ("optimizer", "beta1"), "out_of_range"),
    ({"optimizer": {"beta2": -0.5}}, ("optimizer", "beta2"), "out_of_range"),
    ({"optimizer": {"rho": 1.5}}, ("optimizer", "rho"), "out_of_range"),
    ({"optimizer": {"eps": 0.0}}, ("optimizer", "eps"), "out_of_range"),
    ({"optimizer": {"decay": -1e-6}}, ("optimizer", "decay"), "out_of_range"),
    ({"optimizer": {"nesterov": "yes"}}, ("optimizer", "nesterov"), "type_error"),
    ({"optimizer": {"name": "fista"}}, ("optimizer", "name"), "requires_linear"),
    (
        {"optimizer": {"name": "fista"}, "model": {"hidden_layers": []}, "loss": "mae"},
        ("loss",),
        "requires_smooth_loss",
    ),
    (
        {"optimizer": {"name": "fista"}, "model": {"hidden_layers": []}, "dropout": {"input": 0.1}},
        ("dropout", "input"),
        "requires_no_dropout",
    ),
    ({"optimizer": "adam"}, ("optimizer",), "type_error"),
    ({"epochs": 0}, ("epochs",), "out_of_range"),
    ({"epochs": 10**9}, ("epochs",), "out_of_range"),
    ({"epochs": 2.5}, ("epochs",), "type_error"),
    ({"batch_size": 0}, ("batch_size",), "out_of_range"),
    ({"validation_split": 1.0}, ("validation_split",), "out_of_range"),
    ({"validation_split": -0.1}, ("validation_split",), "out_of_range"),
    ({"shuffle": 1}, ("shuffle",), "type_error"),
    ({"seed": -1}, ("seed",), "out_of_range"),
    ({"seed": "42"}, ("seed",), "type_error"),
    ({"standardize": "true"}, ("standardize",), "type_error"),
    ({"dtype": "float16"}, ("dtype",), "unknown_dtype"),
    (
        {"early_stopping": {"monitor": "val_loss"}},
        ("early_stopping", "monitor"),
        "requires_validation",
    ),
    ({"early_stopping": {"monitor": "acc"}}, ("early_stopping", "monitor"), "unknown_monitor"),
    ({"early_stopping": {"patience": 0}}, ("early_stopping", "patience"), "out_of_range"),
    ({"early_stopping": {"min_delta": -1}}, ("early_stopping", "min_delta"), "out_of_range"),
    ({"early_stopping": {"wait": 3}}, ("early_stopping", "wait"), "unknown_field"),
    ({"early_stopping": 5}, ("early_stopping",), "type_error"),
]


@pytest.mark.parametrize(("raw", "loc", "code"), INVALID, ids=[f"{c[2]}:{c[1]}" for c in INVALID])
def test_invalid_field_raises_spec_error_naming_it(raw, loc, code):
    with pytest.raises(SpecError) as info:
        normalize_spec(raw)
    err = info.value
    assert err.loc == loc
    assert err.code == code
    # The message names the field so a user can find it without reading loc.
    assert str(loc[-1]) in err.msg
    assert isinstance(err, ValueError)


def test_non_mapping_spec_is_a_type_error():
    with pytest.raises(SpecError) as info:
        normalize_spec([("epochs", 3)])
    assert info.value.loc == ()
    assert info.value.code == "type_error"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_optimizer_eps_the_dtype_cannot_hold_is_refused_naming_the_field(dtype: str) -> None:
    # regression: adam eps=5e-324 (0 in float32) trained to NaN and blamed the learning rate
    with pytest.raises(SpecError) as info:
        normalize_spec({"optimizer": {"name": "adam", "eps": 5e-324}, "dtype": dtype})
    assert info.value.loc == ("optimizer", "eps") and info.value.code == "out_of_range"
    tiny = float(np.finfo(dtype).tiny)
    assert f"at least {tiny:.3g}" in info.value.msg
    assert normalize_spec({"optimizer": {"name": "adam", "eps": tiny}, "dtype": dtype})


@pytest.mark.parametrize(
    ("spec", "loc", "code"),
    [
        # regression: accepted, then the job failed (a service search without folds crashed)
        ({"search": {"num": 5}}, ("search", "folds"), "requires_validation"),
        # regression: accepted, then every point failed on its dropout rate
        (
            {
                "model": {"hidden_layers": []},
                "loss": "mse",
                "optimizer": {"name": "fista"},
                "search": {"param": "dropout.input", "folds": 3},
            },
            ("search", "param"),
            "requires_no_dropout",
        ),
    ],
)
def test_a_search_that_cannot_run_is_refused(spec, loc, code):
    with pytest.raises(SpecError) as err:
        normalize_spec(spec)
    assert err.value.loc == loc and err.value.code == code
    # with held-out rows from the validation split instead of folds it is fine
    normalize_spec({"validation_split": 0.2, "search": {"num": 5}})
