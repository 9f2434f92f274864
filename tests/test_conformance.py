"""scikit-learn conformance of the project's estimators.

Numeric steps (and ``ViewStack``, on 2-D codes: one view per image) run the full
``parametrize_with_checks`` suite. ``CNNCodes`` takes file paths, so
its tags honestly say "not a 2-D array" and ``check_estimator`` cannot exercise it (it runs a
single check and warns that it cannot test the rest; claiming 2-D input makes 23 checks fail):
it runs the data-independent checks directly, and the data-dependent ones ported to image
fixtures below.
"""

from __future__ import annotations

import copy
import os
import pickle
import pickletools

import numpy as np
import pandas as pd
import pytest
from cnncodes.transformers import CNNCodes, SignedPower
from cnncodes.viewstack import ViewStack
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import parametrize_with_checks


@parametrize_with_checks(
    [SignedPower(), SignedPower(alpha=2.0), ViewStack(LogisticRegression(max_iter=200))]
)
def test_numeric_steps(estimator, check):
    check(estimator)


def test_signed_power_values_and_errors():
    X = np.array([[4.0, -9.0, 0.0]])
    np.testing.assert_allclose(SignedPower(alpha=0.5).fit_transform(X), [[2.0, -3.0, 0.0]])
    np.testing.assert_array_equal(SignedPower(alpha=1.0).fit_transform(X), X)
    for alpha in (0, -1.0, float("nan"), "half", True):
        with pytest.raises(ValueError, match=r"alpha=.*expected a float > 0"):
            SignedPower(alpha=alpha).fit(X)


# -------------------------------------------------------------------------------- fixtures


def _extractor(cache_dir, **params):
    return CNNCodes(
        model="cnncodes.demo_data:digits_net",
        weights="none",
        layer=["features.7", "penultimate"],
        resize=32,
        crop=32,
        cache_dir=cache_dir,
        num_workers=0,
        **params,
    )


@pytest.fixture
def extractor(tmp_path):
    return _extractor(str(tmp_path / "cache"))


@pytest.fixture
def paths(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "img"
    folder.mkdir()
    out = []
    for i in range(9):
        size = (20 + 3 * i, 30 - i)
        path = folder / f"{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        out.append(str(path))
    return out


# -------------------------------------------------------------------------------- data-independent

DATA_INDEPENDENT = [
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimator_repr",
    "check_estimator_cloneable",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_valid_tag_types",
    "check_mixin_order",
    "check_estimator_tags_renamed",
    "check_transformers_unfitted",
    "check_estimators_unfitted",
    "check_get_feature_names_out_error",
]


@pytest.mark.parametrize("name", DATA_INDEPENDENT)
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"model": "resnet18", "weights": "none", "layer": ["layer3", "layer4"], "cache_dir": None},
    ],
    ids=["defaults", "configured"],
)
def test_data_independent_checks(name, params):
    getattr(estimator_checks, name)("CNNCodes", CNNCodes(**params))


def test_tags_say_paths_not_arrays():
    tags = CNNCodes().__sklearn_tags__()
    assert tags.input_tags.two_d_array is False
    assert tags.input_tags.string is True
    assert tags.requires_fit is True and tags.non_deterministic is False
    assert tags.transformer_tags.preserves_dtype == []
    # check_estimator honestly cannot test an estimator that takes paths, and says so.
    with pytest.warns(UserWarning, match="Can't test estimator CNNCodes"):
        estimator_checks.check_estimator(CNNCodes(), on_fail=None)


# -------------------------------------------------------------------------------- ported checks


def test_fit_returns_self(extractor, paths):
    assert extractor.fit(paths) is extractor


def test_output_is_float32_of_shape_n_by_n_features_out(extractor, paths):
    out = extractor.fit(paths).transform(paths)
    assert out.dtype == np.float32
    assert out.shape == (len(paths), extractor.n_features_out_) == (9, 32 + 64)
    assert np.isfinite(out).all()


def test_transform_is_idempotent_and_fit_transform_agrees(extractor, paths):
    a = extractor.fit_transform(paths)
    np.testing.assert_array_equal(extractor.transform(paths), a)
    np.testing.assert_array_equal(extractor.transform(paths), a)


def test_invariant_to_batch_split_and_batch_size(tmp_path, paths):
    whole = _extractor(None, batch_size=32).fit(paths).transform(paths)
    one = _extractor(None, batch_size=1).fit(paths).transform(paths)
    np.testing.assert_allclose(one, whole, rtol=1e-5, atol=1e-6)
    est = _extractor(None).fit(paths)
    halves = np.vstack([est.transform(paths[:4]), est.transform(paths[4:])])
    np.testing.assert_allclose(halves, whole, rtol=1e-5, atol=1e-6)


def test_invariant_to_sample_order(extractor, paths):
    out = extractor.fit(paths).transform(paths)
    order = np.random.default_rng(1).permutation(len(paths))
    np.testing.assert_array_equal(extractor.transform([paths[i] for i in order]), out[order])


def test_methods_subset_invariance(extractor, paths):
    out = extractor.fit(paths).transform(paths)
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(extractor.transform([path])[0], out[i])


def test_clone_and_pickle_round_trips_give_equal_output(extractor, paths):
    out = extractor.fit(paths).transform(paths)
    np.testing.assert_array_equal(clone(extractor).fit(paths).transform(paths), out)
    restored = pickle.loads(pickle.dumps(extractor))
    np.testing.assert_array_equal(restored.transform(paths), out)
    assert restored.spec_ == extractor.spec_
    cloned = clone(extractor)
    assert not hasattr(cloned, "spec_") and cloned.get_params() == extractor.get_params()


def test_pickle_is_small_and_holds_no_tensor(extractor, paths):
    extractor.fit(paths).transform(paths)
    for est in (extractor, CNNCodes("resnet50", weights="none", layer="layer4").fit(paths)):
        data = pickle.dumps(est)
        assert len(data) < 20_000, len(data)
        modules = {
            arg.split(" ")[0]
            for op, arg, _ in pickletools.genops(data)
            if op.name in ("GLOBAL", "STACK_GLOBAL") and isinstance(arg, str)
        }
        strings = {arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
        assert not any(s.startswith("torch") for s in modules | strings)


@pytest.mark.parametrize("kind", ["list", "array", "frame"])
def test_input_is_not_mutated(extractor, paths, kind):
    X = {
        "list": list(paths),
        "array": np.array(paths, dtype=object),
        "frame": pd.DataFrame({"path": paths}),
    }[kind]
    before = copy.deepcopy(X)
    extractor.fit(X).transform(X)
    extractor.fit_transform(X)
    if kind == "frame":
        pd.testing.assert_frame_equal(X, before)
    else:
        assert list(X) == list(before)


def test_get_feature_names_out(extractor, paths):
    with pytest.raises(NotFittedError):
        extractor.get_feature_names_out()
    names = extractor.fit(paths).get_feature_names_out()
    assert names.dtype == object and len(names) == extractor.n_features_out_
    assert len(set(names)) == len(names)
    assert names[0] == "features.7__avg0" and names[-1] == "flatten__avg63"


def test_set_output_pandas(extractor, paths):
    out = extractor.set_output(transform="pandas").fit(paths).transform(paths)
    assert isinstance(out, pd.DataFrame) and out.shape == (9, 96)
    assert list(out.columns) == list(extractor.get_feature_names_out())
    assert (out.dtypes == np.float32).all()
    np.testing.assert_array_equal(
        out.to_numpy(), extractor.set_output(transform="default").transform(paths)
    )


def test_empty_input_is_a_clear_value_error(extractor, paths):
    with pytest.raises(ValueError, match="X is empty: CNNCodes needs at least one image path"):
        extractor.fit([])
    extractor.fit(paths)
    with pytest.raises(ValueError, match="X is empty"):
        extractor.transform([])


def test_numeric_input_is_a_type_error_saying_what_is_expected(extractor, paths):
    X = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(TypeError, match=r"expects a sequence of image file paths .* got an array"):
        extractor.fit(X)
    extractor.fit(paths)
    with pytest.raises(TypeError, match="one-column DataFrame of paths"):
        extractor.transform(X)


def test_unfitted_transform_raises_not_fitted(extractor, paths):
    with pytest.raises(NotFittedError):
        extractor.transform(paths)
    assert not os.path.exists(extractor.cache_dir)


# -------------------------------------------------------------------------------- FineTune
#
# FineTune is a classifier over image paths: as for CNNCodes, its tags honestly say "not a 2-D
# array", so check_estimator cannot exercise it; the data-independent checks run directly and
# the data-dependent ones are ported to image fixtures, on a tiny untrained network.

FINETUNE_DATA_INDEPENDENT = [
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimator_repr",
    "check_estimator_cloneable",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_valid_tag_types",
    "check_mixin_order",
    "check_estimator_tags_renamed",
    "check_estimators_unfitted",
]
# Not run, each for a reason:
# - check_transformers_unfitted, check_get_feature_names_out_error: FineTune is no transformer.
# - check_classifiers_* / check_fit2d_* / check_estimators_dtypes / check_n_features_in and the
#   other data-dependent checks: they feed numeric 2-D arrays, which a FineTune refuses (it takes
#   image paths); the ones that apply are ported below.

FINETUNE_TINY = dict(
    model="tests.tiny_nets:tiny_cnn", weights="none", resize=32, crop=32, epochs=1,
    valid_size=0, num_workers=0, augment="none",
)  # fmt: skip


@pytest.mark.parametrize("name", FINETUNE_DATA_INDEPENDENT)
@pytest.mark.parametrize(
    "params", [{}, dict(FINETUNE_TINY, cache_dir=None)], ids=["defaults", "configured"]
)
def test_finetune_data_independent_checks(name, params):
    from cnncodes.finetune import FineTune

    getattr(estimator_checks, name)("FineTune", FineTune(**params))


def test_finetune_tags_say_paths_not_arrays():
    from cnncodes.finetune import FineTune

    tags = FineTune().__sklearn_tags__()
    assert tags.input_tags.two_d_array is False and tags.input_tags.string is True
    assert tags.estimator_type == "classifier" and tags.requires_fit is True
    with pytest.warns(UserWarning, match="Can't test estimator FineTune"):
        estimator_checks.check_estimator(FineTune(), on_fail=None)


@pytest.fixture
def fine_tuned(tmp_path, paths):
    from cnncodes.finetune import FineTune

    labels = np.array(["a", "b", "c"] * 3)
    ft = FineTune(**FINETUNE_TINY, cache_dir=str(tmp_path / "cache"))
    return ft, labels


def test_finetune_unfitted_predict_proba_score_raise_not_fitted(fine_tuned, paths):
    ft, labels = fine_tuned
    for method in (ft.predict, ft.predict_proba):
        with pytest.raises(NotFittedError):
            method(paths)
    with pytest.raises(NotFittedError):
        ft.score(paths, labels)
    with pytest.raises(NotFittedError):
        ft.save_checkpoint("never.pth")


def test_finetune_fit_returns_self_and_predictions_have_the_classes(fine_tuned, paths):
    ft, labels = fine_tuned
    assert ft.fit(paths, labels) is ft
    assert list(ft.classes_) == ["a", "b", "c"] and ft.n_features_in_ == 1
    proba = ft.predict_proba(paths)
    assert proba.shape == (9, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(ft.predict(paths), ft.classes_[proba.argmax(axis=1)])
    assert 0.0 <= ft.score(paths, labels) <= 1.0


def test_finetune_is_deterministic_and_invariant_to_order_and_subsets(fine_tuned, paths):
    ft, labels = fine_tuned
    proba = ft.fit(paths, labels).predict_proba(paths)
    np.testing.assert_array_equal(clone(ft).fit(paths, labels).predict_proba(paths), proba)
    order = np.random.default_rng(1).permutation(len(paths))
    shuffled = ft.predict_proba([paths[i] for i in order])
    np.testing.assert_allclose(shuffled, proba[order], rtol=1e-5, atol=1e-6)
    for i in (0, 4):
        np.testing.assert_allclose(ft.predict_proba([paths[i]])[0], proba[i], atol=1e-6)


def test_finetune_clone_and_pickle_round_trips(fine_tuned, paths):
    ft, labels = fine_tuned
    proba = ft.fit(paths, labels).predict_proba(paths)
    restored = pickle.loads(pickle.dumps(ft))
    np.testing.assert_allclose(restored.predict_proba(paths), proba, atol=1e-6)
    cloned = clone(ft)
    assert not hasattr(cloned, "state_dict_") and cloned.get_params() == ft.get_params()


@pytest.mark.parametrize("kind", ["list", "array", "frame"])
def test_finetune_input_is_not_mutated(fine_tuned, paths, kind):
    ft, labels = fine_tuned
    X = {
        "list": list(paths),
        "array": np.array(paths, dtype=object),
        "frame": pd.DataFrame({"path": paths}),
    }[kind]
    before = copy.deepcopy(X)
    ft.fit(X, labels).predict(X)
    if kind == "frame":
        pd.testing.assert_frame_equal(X, before)
    else:
        assert list(X) == list(before)


def test_finetune_empty_and_numeric_input_are_clear_errors(fine_tuned, paths):
    ft, labels = fine_tuned
    with pytest.raises(ValueError, match="X is empty: FineTune needs at least one image path"):
        ft.fit([], [])
    with pytest.raises(TypeError, match="FineTune expects a sequence of image file paths"):
        ft.fit(np.zeros((9, 3)), labels)


def test_both_network_steps_share_one_contract(fine_tuned, extractor):
    from sklearn.pipeline import make_pipeline

    from cnncodes.estimators.steps import RUNTIME_PARAMS, NetworkStep, network_step

    ft, _ = fine_tuned
    for step in (ft, extractor):
        assert isinstance(step, NetworkStep)
        assert set(RUNTIME_PARAMS) <= set(step.get_params())
        assert network_step(step) == (step, "")
    pipe = make_pipeline(extractor, LogisticRegression())
    assert network_step(pipe) == (extractor, "cnncodes__")
    assert ft.network_spec() == ft.set_params(epochs=3).network_spec()
    with pytest.raises(ValueError, match="set_runtime: 'epochs' would change"):
        ft.set_runtime(epochs=2)
    assert ft.set_runtime(engine="local", ray_address=None, batch_size=4).batch_size == 4


@pytest.mark.parametrize(
    "params, message",
    [
        ({"on_error": "ignore"}, r"on_error='ignore': choose one of 'raise', 'skip'"),
        ({"precision": "fp64"}, r"precision='fp64': choose one of 'auto', 'fp32'"),
        ({"engine": "dask"}, r"engine='dask': choose one of 'local', 'ray'"),
        ({"batch_size": 0}, r"batch_size=0: expected an int >= 1"),
    ],
)
def test_both_network_steps_refuse_a_parameter_in_the_same_words(params, message, paths):
    from cnncodes.finetune import FineTune

    for step in (CNNCodes(**params), FineTune(**params)):
        with pytest.raises(ValueError, match=message):
            step.network_spec()


def test_network_step_finds_the_step_of_a_fitted_search_and_names_what_it_lacks(extractor, paths):
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    from cnncodes.estimators.steps import network_step

    pipe = make_pipeline(extractor, LogisticRegression(max_iter=200))
    search = GridSearchCV(pipe, {"logisticregression__C": [1.0]}, cv=2)
    search.fit(paths[:8], [0, 1] * 4)
    step, prefix = network_step(search)
    assert step is search.best_estimator_.steps[0][1] and prefix == "cnncodes__"
    with pytest.raises(ValueError, match="LogisticRegression has no CNNCodes step"):
        network_step(LogisticRegression())
