"""Tests for cnncodes.params: the image-path X every estimator takes, int parameters, spec_of."""

from __future__ import annotations

import argparse
import inspect

import numpy as np
import pandas as pd
import pytest
from cnncodes.models import resolve_spec
from cnncodes.transformers import CNNCodes

from cnncodes.networks.models import spec_of
from cnncodes.params import as_path_list, check_int
from cnncodes.spec import MODEL_PARAMS, PREPROCESSING_KEYS


@pytest.mark.parametrize(
    ("X", "error", "match"),
    [
        ("a.png", TypeError, r"single path; FineTune expects"),
        (pd.DataFrame({"a": ["x"], "b": ["y"]}), ValueError, r"\['a', 'b'\]; FineTune expects one"),
        (np.zeros((2, 3)), TypeError, r"FineTune expects .* without the FineTune step"),
        (np.array([["a", "b"]], dtype=object), ValueError, r"; FineTune expects one image path"),
        ((p for p in ["a.png"]), TypeError, r"read only once; FineTune expects"),
        (42, TypeError, r"^FineTune expects .*; got int$"),
        ([], ValueError, r"X is empty: FineTune needs"),
        (["a.png", 7], TypeError, r"X\[1\]=7 is a int; FineTune expects"),
    ],
)
def test_as_path_list_names_the_estimator_it_checks_for(X, error, match):
    with pytest.raises(error, match=match) as info:
        as_path_list(X, who="FineTune")
    assert "CNNCodes" not in str(info.value)


def test_as_path_list_returns_paths_and_the_column_name():
    assert as_path_list(pd.DataFrame({"path": ["a.png", "b.png"]})) == (
        ["a.png", "b.png"],
        ["path"],
    )
    assert as_path_list(np.array(["a.png"])) == (["a.png"], None)


def test_check_int_names_the_parameter():
    check_int(np.int64(3), "epochs", 1)
    check_int(None, "workers", 0, allow_none=True)
    with pytest.raises(ValueError, match=r"epochs=0: expected an int >= 1$"):
        check_int(0, "epochs", 1)
    with pytest.raises(ValueError, match=r"workers=True: expected an int >= 0 or None"):
        check_int(True, "workers", 0, allow_none=True)


def test_model_params_are_what_resolve_spec_takes_and_estimators_carry():
    assert MODEL_PARAMS == tuple(inspect.signature(resolve_spec).parameters)
    assert set(PREPROCESSING_KEYS) < set(MODEL_PARAMS)
    assert set(MODEL_PARAMS) <= set(CNNCodes().get_params())


def test_spec_of_resolves_any_object_carrying_the_model_params():
    settings = {"model": "cnncodes.demo_data:digits_net", "weights": "none", "seed": 3}
    preprocessing = {"resize": 40, "crop": 32, "mean": 0.5, "std": 0.25, "interpolation": None}
    expected = resolve_spec(**settings, **preprocessing)
    options = argparse.Namespace(**settings, **preprocessing, impl="pil")
    assert spec_of(options) == expected
    assert spec_of(CNNCodes(**settings, **preprocessing)) == expected
    changed = spec_of(options, crop=24, seed=4)
    assert changed.preprocessing.crop == (24, 24) and changed.seed == 4
