"""Tests for views (cnncodes.views, Preprocessing.view, extract_views, CNNCodes(views=), ViewStack)."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cnncodes.extract import extract_codes, extract_views, preprocess, preprocess_bytes
from cnncodes.models import resolve_spec
from cnncodes.views import VIEW_SETS, expand_views, view_box
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold

import pipelines
from cnncodes import CNNCodes, SkippedImagesWarning, ViewStack, persistence
from cnncodes.images import file_digest, load_image

TINY = "tests.tiny_nets:tiny_cnn"
NET = dict(model=TINY, resize=40, crop=32, batch_size=4)


def _square_images(folder, n, side=48, seed=0):
    """PNGs (lossless) of ``side`` x ``side``: resized to 40 and centre-cropped to 32, the crop
    is symmetric, so the centre view of a mirrored file is the mirrored centre view."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        path = folder / f"sq{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def _pixels(path, spec, view, digest=None):
    pre = dataclasses.replace(spec.preprocessing, view=view)
    return preprocess(load_image(path), pre, digest).numpy()


# ----------------------------------------------------------------------------- names


def test_view_sets_expand_to_view_strings():
    assert expand_views("center") == ["center"]
    assert expand_views("flip") == ["center", "flip"]
    assert expand_views("five_crop") == ["center", "crop:tl", "crop:tr", "crop:bl", "crop:br"]
    ten = expand_views("ten_crop")
    assert len(ten) == 10 and len(set(ten)) == 10 and set(expand_views("five_crop")) < set(ten)
    assert {"flip", "crop:br+flip"} < set(ten)
    assert expand_views(3, view_seed=5) == ["rrc:5:0", "rrc:5:1", "rrc:5:2"]


@pytest.mark.parametrize(
    "params, match",
    [
        ({"views": "eleven"}, r"views='eleven': choose one of 'center', 'flip', 'five_crop'"),
        ({"views": 0}, r"views=0: a count of random resized crops must be between 1 and"),
        ({"views": True}, r"views=True: choose one of"),
        ({"view_reduce": "median"}, r"view_reduce='median': choose one of 'mean', 'max', 'stack'"),
        ({"views": 2, "view_seed": -1}, r"view_seed=-1: expected an int >= 0"),
        (
            {"views": "five_crop", "crop": 0, "resize": (40, 40)},
            r"views='five_crop': view='crop:tl' cuts crops of",
        ),
    ],
)
def test_bad_views_are_refused_in_fit_naming_the_parameter(params, match):
    codes = CNNCodes(**{**NET, **params})  # __init__ stores them as given
    assert all(codes.get_params()[k] == v for k, v in params.items())
    with pytest.raises(ValueError, match=match):
        codes.fit(["a.png"])


def test_a_view_string_is_checked_where_preprocessing_is_made(cnn_spec):
    with pytest.raises(ValueError, match=r"view='crop:mid': expected 'center', 'flip', 'crop:tl'"):
        cnn_spec.with_view("crop:mid")
    with pytest.raises(ValueError, match=r"view='rrc:0:x'"):
        cnn_spec.with_view("rrc:0:x")


# ----------------------------------------------------------------------------- pixels


def test_flip_is_the_mirrored_centre(tmp_path, cnn_spec):
    [path] = _square_images(tmp_path / "a", 1)
    mirrored = tmp_path / "mirrored.png"
    Image.open(path).transpose(Image.FLIP_LEFT_RIGHT).save(mirrored)
    flip = _pixels(path, cnn_spec, "flip")
    assert np.array_equal(flip, _pixels(path, cnn_spec, "center")[:, :, ::-1])
    assert np.array_equal(flip, _pixels(mirrored, cnn_spec, "center"))


def test_flip_codes_are_the_codes_of_mirrored_files(tmp_path, cnn_spec):
    paths = _square_images(tmp_path / "a", 4)
    mirrored = []
    for path in paths:
        out = tmp_path / "m" / Path(path).name
        out.parent.mkdir(exist_ok=True)
        Image.open(path).transpose(Image.FLIP_LEFT_RIGHT).save(out)
        mirrored.append(str(out))
    both = extract_views(paths, cnn_spec, "flatten", views="flip", view_reduce="stack")
    plain = extract_codes(paths, cnn_spec, "flatten", cache_dir=None).codes["flatten"]
    of_mirrored = extract_codes(mirrored, cnn_spec, "flatten", cache_dir=None).codes["flatten"]
    assert np.array_equal(both.codes["flatten"][:, 0], plain)  # the centre view, unchanged
    assert np.array_equal(both.codes["flatten"][:, 1], of_mirrored)


def test_corner_crops_are_torchvision_five_crop_of_the_resized_image(tmp_path, cnn_spec):
    [path] = write_wide(tmp_path)
    resized = _pixels(
        path,
        dataclasses.replace(
            cnn_spec, preprocessing=dataclasses.replace(cnn_spec.preprocessing, crop=None)
        ),
        "center",
    )
    assert resized.shape == (3, 40, 53)  # shorter side to 40
    crops = {
        "crop:tl": resized[:, :32, :32],
        "crop:tr": resized[:, :32, -32:],
        "crop:bl": resized[:, -32:, :32],
        "crop:br": resized[:, -32:, -32:],
        "center": resized[:, 4:36, 10:42],  # torchvision: round((53 - 32) / 2) = 10
    }
    for view, expected in crops.items():
        assert np.array_equal(_pixels(path, cnn_spec, view), expected), view
        if view != "center":
            mirrored = _pixels(path, cnn_spec, view + "+flip")
            assert np.array_equal(mirrored, expected[:, :, ::-1]), view


def write_wide(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return [str(path)]


def test_random_resized_crops_depend_on_seed_index_and_content_only(tmp_path, cnn_spec):
    [path] = write_wide(tmp_path)
    digest = file_digest(path)
    a = _pixels(path, cnn_spec, "rrc:0:0", digest)
    assert a.shape == (3, 32, 32)
    assert np.array_equal(a, _pixels(path, cnn_spec, "rrc:0:0", digest))
    assert not np.array_equal(a, _pixels(path, cnn_spec, "rrc:0:1", digest))
    assert not np.array_equal(a, _pixels(path, cnn_spec, "rrc:1:0", digest))
    boxes = {view_box(f"rrc:0:{i}", (40, 53), (32, 32), digest) for i in range(20)}
    assert len(boxes) == 20 and {flip for *_, flip in boxes} == {True, False}
    for top, left, h, w, _ in boxes:
        assert 0 <= top <= 40 - h and 0 <= left <= 53 - w
        assert 0.08 * 40 * 53 * 0.9 <= h * w <= 40 * 53 and 0.7 <= w / h <= 1.4
    # Another process (another hash seed) draws the same box.
    code = (
        "from cnncodes.views import view_box\n"
        f"print(view_box('rrc:0:3', (40, 53), (32, 32), {digest!r}))"
    )
    env = {"PYTHONHASHSEED": "123", "PYTHONPATH": str(Path(__file__).parents[1])}
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert other.stdout.strip() == str(view_box("rrc:0:3", (40, 53), (32, 32), digest))


def test_random_crop_codes_do_not_depend_on_batch_or_order(make_images, cnn_spec):
    paths = make_images(7)
    spec = cnn_spec.with_view("rrc:4:2")
    batched = extract_codes(paths, spec, "flatten", cache_dir=None, batch_size=3).codes["flatten"]
    order = [6, 2, 0, 5, 1, 3, 4]
    shuffled = extract_codes(
        [paths[i] for i in order], spec, "flatten", cache_dir=None, batch_size=1
    ).codes["flatten"]
    assert np.array_equal(shuffled, batched[order])
    other = extract_codes(paths, cnn_spec.with_view("rrc:4:3"), "flatten", cache_dir=None)
    assert not np.allclose(other.codes["flatten"], batched)


@pytest.mark.parametrize("view", ["flip", "crop:br", "crop:tl+flip", "rrc:0:1"])
def test_the_torch_decoder_cuts_the_same_views(tmp_path, view):
    [path] = write_wide(tmp_path)
    data = Path(path).read_bytes()
    pil = resolve_spec(TINY, resize=40, crop=32).preprocessing
    tensors = resolve_spec(TINY, resize=40, crop=32, impl="torch").preprocessing
    digest = file_digest(path)
    a = preprocess(load_image(path), dataclasses.replace(pil, view=view), digest)
    b = preprocess_bytes(data, dataclasses.replace(tensors, view=view))
    # Same box, same resize arithmetic up to the two implementations' rounding.
    assert a.shape == b.shape == (3, 32, 32)
    assert (a.int() - b.int()).abs().max() <= 2
    centre = preprocess_bytes(data, tensors)
    if view == "flip":
        assert torch.equal(b, centre.flip(-1))


# ----------------------------------------------------------------------------- codes and cache


def test_views_reduce_to_mean_max_or_a_stack(tmp_path, images):
    codes = CNNCodes(**NET, cache_dir=tmp_path / "c", views="ten_crop", view_reduce="stack")
    stack = codes.fit_transform(images)
    assert stack.shape == (12, 10, codes.n_features_out_) and stack.dtype == np.float32
    mean = clone(codes).set_params(view_reduce="mean").fit_transform(images)
    high = clone(codes).set_params(view_reduce="max").fit_transform(images)
    assert mean.shape == high.shape == (12, codes.n_features_out_)
    np.testing.assert_allclose(mean, stack.mean(axis=1), rtol=1e-6)
    assert np.array_equal(high, stack.max(axis=1))
    centre = CNNCodes(**NET, cache_dir=tmp_path / "c").fit_transform(images)
    assert np.array_equal(stack[:, 0], centre)  # the centre view is today's codes, bit for bit


def test_every_view_is_cached_so_repeats_and_subsets_compute_nothing(
    tmp_path, images, forward_counter
):
    codes = CNNCodes(**NET, cache_dir=tmp_path / "c", views="ten_crop")
    first = codes.fit_transform(images)
    assert forward_counter.images == 12 * 10
    assert np.array_equal(codes.transform(images), first)
    for views in ("flip", "five_crop", "center"):
        clone(codes).set_params(views=views).fit_transform(images)
    assert forward_counter.images == 12 * 10  # every one of those views was cached
    clone(codes).set_params(views=2).fit_transform(images)
    assert forward_counter.images == 12 * 12  # random crops are views of their own


def test_a_skipped_image_is_skipped_in_every_view(with_bad):
    paths, _, bad = with_bad
    codes = CNNCodes(**NET, cache_dir=None, on_error="skip", views="flip", view_reduce="stack")
    with pytest.warns(SkippedImagesWarning, match="broken.png"):
        out = codes.fit_transform(paths)
    assert out.shape == (13, 2, codes.n_features_out_)
    assert np.isnan(out[5]).all() and not np.isnan(np.delete(out, 5, axis=0)).any()
    good = [p for p in paths if p != bad]
    alone = clone(codes).fit_transform(good)
    assert np.array_equal(np.delete(out, 5, axis=0), alone)


# ----------------------------------------------------------------------------- ViewStack


class _Recorder(ClassifierMixin, BaseEstimator):
    """Remembers what fit got; predicts the class whose first feature is nearest."""

    def fit(self, X, y, sample_weight=None):
        self.X_, self.y_, self.w_ = X, np.asarray(y), sample_weight
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        self.seen_ = X
        return self.classes_[(X[:, 0] > 0.5).astype(int)]


def test_view_stack_trains_on_every_view_and_predicts_from_their_mean():
    X = np.arange(3 * 2 * 4, dtype=float).reshape(3, 2, 4) / 24
    model = ViewStack(_Recorder()).fit(X, ["a", "b", "b"], sample_weight=[1.0, 2.0, 3.0])
    inner = model.estimator_
    assert inner.X_.shape == (6, 4) and np.array_equal(inner.X_[2:4], X[1])
    assert inner.y_.tolist() == ["a", "a", "b", "b", "b", "b"]
    assert inner.w_.tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    model.predict(X)
    assert np.array_equal(inner.seen_, X.mean(axis=1))
    assert model.classes_.tolist() == ["a", "b"] and model.n_views_ == 2
    assert ViewStack(_Recorder()).fit(X[:, 0], [0, 1, 1]).estimator_.X_.shape == (3, 4)
    with pytest.raises(ValueError, match=r"shape \(n_images, n_views, n_features\)"):
        model.predict(X[None])
    assert not hasattr(model, "predict_proba")  # the recorder has none
    assert hasattr(ViewStack(LogisticRegression()), "predict_proba")


def test_view_stack_clones_pickles_and_keeps_views_of_an_image_in_one_fold():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3, 5))
    y = np.array([0, 1] * 10)
    sizes = []

    class Counting(_Recorder):
        def fit(self, X, y, sample_weight=None):
            sizes.append(len(X))
            return super().fit(X, y, sample_weight)

    search = GridSearchCV(ViewStack(Counting()), {}, cv=KFold(4)).fit(X, y)
    assert sizes == [15 * 3] * 4 + [20 * 3]  # folds of images: every view of 15 images
    assert search.best_estimator_.estimator_.X_.shape == (60, 5)
    model = ViewStack(LogisticRegression()).fit(X, y)
    again = pickle.loads(pickle.dumps(model))
    assert np.array_equal(again.predict_proba(X), model.predict_proba(X))
    assert clone(ViewStack(LogisticRegression(C=2))).get_params()["estimator__C"] == 2


def test_a_recipe_with_stacked_views_searches_views_and_saves(tmp_path, images, labels):
    pipe, grid = pipelines.get("linear_probe").build(
        **NET, cache_dir=str(tmp_path / "c"), views="flip", view_reduce="stack", Cs=[0.1, 10]
    )
    assert [name for name, _ in pipe.steps] == ["cnncodes", "views"]
    assert grid == {"views__estimator__clf__C": [0.1, 10]}
    grid["cnncodes__views"] = ["center", "flip"]
    search = GridSearchCV(pipe, grid, cv=3).fit(images, labels)
    assert len(search.cv_results_["params"]) == 4
    fitted = clone(pipe).fit(images, labels)  # views="flip"
    path = tmp_path / "model.skops"
    persistence.save(fitted, path)
    loaded = persistence.load(path, trust_model_code=[TINY])
    assert loaded.named_steps["cnncodes"].views_ == ["center", "flip"]
    assert np.array_equal(loaded.predict_proba(images), fitted.predict_proba(images))
    plain, _ = pipelines.get("linear_probe").build(**NET, views="flip")
    assert [name for name, _ in plain.steps] == ["cnncodes", "whiten", "l2", "scale", "clf"]


def test_every_named_view_set_is_documented():
    from cnncodes import views

    for name in VIEW_SETS:
        assert f'"{name}"' in views.__doc__


def test_a_list_of_view_strings_is_a_set_of_views(tmp_path, images):
    assert expand_views(["center", "crop:tl+flip"]) == ["center", "crop:tl+flip"]
    with pytest.raises(ValueError, match=r"views=\['center', 'top'\]: view='top': expected"):
        CNNCodes(**NET, views=["center", "top"]).fit(images)
    codes = CNNCodes(**NET, cache_dir=tmp_path / "c", views=["flip"]).fit(images)
    flip = codes.transform(images)
    both = clone(codes).set_params(views="flip", view_reduce="stack").fit_transform(images)
    assert np.array_equal(flip, both[:, 1])


def test_several_layers_of_several_views_sit_side_by_side_per_view(images):
    codes = CNNCodes(
        **NET, cache_dir=None, layer=["conv1", "flatten"], views="flip", view_reduce="stack"
    )
    stack = codes.fit_transform(images)
    assert stack.shape == (12, 2, codes.n_features_out_)
    alone = CNNCodes(**NET, cache_dir=None, layer="flatten", views="flip", view_reduce="stack")
    width = alone.fit(images).n_features_out_
    assert np.array_equal(stack[:, :, -width:], alone.transform(images))


def test_the_network_is_built_and_traced_once_whatever_the_number_of_views(
    make_images, tmp_path, monkeypatch
):
    """Per view, only the images go through the network: tracing the graph, building and
    folding the network are the same work for every view (issue 23: 1000 views took 7x as
    long as 300, the rebuilt networks' generated code piling up)."""
    import torch.fx
    from cnncodes.extract import extract_views
    from cnncodes.models import resolve_spec

    traces = []
    real = torch.fx.Tracer.trace

    def counting(self, *args, **kwargs):
        traces.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.fx.Tracer, "trace", counting)
    paths = make_images(3)
    spec = resolve_spec("tests.tiny_nets:tiny_cnn", "none", seed=5, resize=40, crop=32)
    counts = []  # after a first call that fills the memos of the model's graph
    for n, folder in ((1, "w"), (2, "a"), (12, "b")):
        traces.clear()
        extract_views(
            paths, spec, "conv2", views=n, view_seed=n, cache_dir=tmp_path / folder, num_workers=0
        )
        counts.append(len(traces))
    assert counts[1] == counts[2]  # the same few traces, whatever the number of views
