"""FineTune: freezing, heads, LP-FT, the cached trunk, resuming, the sklearn contract, checkpoints."""

from __future__ import annotations

import errno
import os
import pickle

import numpy as np
import pytest
import torch
from cnncodes.finetune import FineTune, FineTuneError
from cnncodes.models import LayerError, build_model, resolve_spec
from cnncodes.transformers import CNNCodes, SkippedImagesWarning
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from cnncodes.images import ImageLoadError
from tests.conftest import paused_after_two_epochs

TINY = dict(model="tests.tiny_nets:tiny_cnn", resize=40, crop=32)
RESNET = dict(model="resnet18", weights="none", resize=40, crop=32)


@pytest.fixture
def data(make_images):
    paths = make_images(24)
    labels = np.array(["ant", "bee", "wasp"] * 8)
    return paths, labels


def fine_tune(tmp_path, **params):
    settings = {**TINY, "epochs": 2, "valid_size": 0.25, "cache_dir": str(tmp_path / "cache")}
    return FineTune(**{**settings, **params})


def test_frozen_layers_keep_weights_and_batchnorm_statistics(data, tmp_path):
    paths, labels = data
    ft = fine_tune(tmp_path, **RESNET, freeze="layer2", lr=1e-2).fit(paths, labels)
    before = build_model(resolve_spec(**RESNET)).state_dict()
    for name, value in before.items():
        same = np.array_equal(value.numpy(), ft.state_dict_[name])
        if name.startswith(("conv1", "bn1", "layer1", "layer2")) or name.startswith("fc."):
            assert same, f"{name} changed although frozen (or unused)"
    trained = [n for n in before if n.startswith("layer4") and n.endswith("weight")]
    assert not any(np.array_equal(before[n].numpy(), ft.state_dict_[n]) for n in trained)


def test_freeze_all_trains_only_the_head_and_freeze_none_trains_everything(data, tmp_path):
    paths, labels = data
    before = build_model(resolve_spec(**RESNET)).state_dict()
    head_only = fine_tune(tmp_path, **RESNET, freeze="all", augment="flip").fit(paths, labels)
    assert all(np.array_equal(v.numpy(), head_only.state_dict_[k]) for k, v in before.items())
    everything = fine_tune(tmp_path, **RESNET, freeze="none", lr=1e-2, train_bn=True)
    everything.fit(paths, labels)
    assert not np.array_equal(
        before["conv1.weight"].numpy(), everything.state_dict_["conv1.weight"]
    )
    assert not np.array_equal(
        before["bn1.running_mean"].numpy(), everything.state_dict_["bn1.running_mean"]
    )


def test_batchnorm_keeps_pretrained_statistics_unless_train_bn(data, tmp_path):
    paths, labels = data
    before = build_model(resolve_spec(**RESNET)).state_dict()
    ft = fine_tune(tmp_path, **RESNET, freeze="none", lr=1e-2).fit(paths, labels)
    for name in ("bn1", "layer4.1.bn2"):
        for stat in ("running_mean", "running_var"):
            key = f"{name}.{stat}"
            assert np.array_equal(before[key].numpy(), ft.state_dict_[key]), key
        assert not np.array_equal(
            before[f"{name}.weight"].numpy(), ft.state_dict_[f"{name}.weight"]
        )


@pytest.mark.parametrize("head, first", [("linear", "1.weight"), ("mlp", "0.weight")])
def test_the_new_head_has_one_output_per_class(data, tmp_path, head, first):
    paths, labels = data
    ft = fine_tune(tmp_path, head=head, hidden_units=7, epochs=1).fit(paths, labels)
    assert list(ft.classes_) == ["ant", "bee", "wasp"]
    last = sorted(k for k in ft.head_state_ if k.endswith("weight"))[-1]
    assert ft.head_state_[last].shape[0] == 3
    assert ft.head_state_[first].shape[1] == 16  # TinyCNN's penultimate codes
    assert ft.predict_proba(paths).shape == (24, 3)
    assert set(ft.predict(paths)) <= {"ant", "bee", "wasp"}


@pytest.mark.parametrize("n_classes", [2, 3])
def test_probe_head_equals_the_fitted_logistic_regression_at_epoch_0(
    make_images, tmp_path, n_classes
):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    paths = make_images(24)
    labels = np.arange(24) % n_classes
    ft = fine_tune(tmp_path, init_head="probe", epochs=0, valid_size=0).fit(paths, labels)
    codes = CNNCodes(**TINY, cache_dir=tmp_path / "cache").fit_transform(paths)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    probe.fit(codes, labels)
    np.testing.assert_allclose(ft.predict_proba(paths), probe.predict_proba(codes), atol=1e-4)
    assert ft.history_ == []


def test_cached_trunk_follows_the_full_forward_loss_trajectory(data, tmp_path):
    paths, labels = data
    settings = dict(**RESNET, freeze="layer2", augment="none", epochs=3, lr=1e-2)
    full = fine_tune(tmp_path, trunk_cache=False, **settings).fit(paths, labels)
    cached = fine_tune(tmp_path, trunk_cache=True, **settings).fit(paths, labels)
    assert not full.trunk_cached_ and cached.trunk_cached_
    for key in ("train_loss", "valid_loss"):
        np.testing.assert_allclose(
            [r[key] for r in cached.history_], [r[key] for r in full.history_], rtol=1e-3
        )
    np.testing.assert_allclose(cached.predict_proba(paths), full.predict_proba(paths), atol=5e-3)


def test_trunk_cache_true_says_why_it_is_impossible(data, tmp_path):
    paths, labels = data
    with pytest.raises(ValueError, match="augment='crop-flip' makes new views"):
        fine_tune(tmp_path, freeze="conv1", trunk_cache=True).fit(paths, labels)
    with pytest.raises(ValueError, match="freeze='none' trains every layer"):
        fine_tune(tmp_path, freeze="none", augment="none", trunk_cache=True).fit(paths, labels)
    with pytest.raises(ValueError, match="cannot be cut at freeze='layer1.0.conv1'"):
        fine_tune(
            tmp_path, **RESNET, freeze="layer1.0.conv1", augment="none", trunk_cache=True
        ).fit(paths, labels)


def test_same_seed_same_result_and_another_seed_differs(data, tmp_path):
    paths, labels = data
    a = fine_tune(tmp_path, freeze="none", seed=3).fit(paths, labels)
    b = fine_tune(tmp_path, freeze="none", seed=3).fit(paths, labels)
    c = fine_tune(tmp_path, freeze="none", seed=4).fit(paths, labels)
    assert a.history_[-1]["train_loss"] == b.history_[-1]["train_loss"]
    assert all(np.array_equal(a.state_dict_[k], b.state_dict_[k]) for k in a.state_dict_)
    assert not np.array_equal(a.head_state_["1.weight"], c.head_state_["1.weight"])


def test_untraceable_network_fine_tunes_through_hooks(data, tmp_path):
    paths, labels = data
    ft = fine_tune(
        tmp_path, model="tests.tiny_nets:dynamic_cnn", freeze="conv1", augment="none"
    ).fit(paths, labels)
    assert not ft.trunk_cached_
    assert ft.predict(paths).shape == (24,)


_FIT = """
import numpy as np
from cnncodes.finetune import FineTune
FineTune(**{params!r}).fit({paths!r}, np.array({labels!r}))
"""


def test_a_killed_run_resumes_where_it_stopped(data, tmp_path):
    paths, labels = data
    state = tmp_path / "run.state"
    params = dict(
        **TINY, freeze="none", epochs=4, valid_size=0.25, cache_dir=str(tmp_path / "cache"),
        checkpoint=str(state), lr=1e-2,
    )  # fmt: skip
    straight = FineTune(**{**params, "checkpoint": None}).fit(paths, labels)
    code = _FIT.format(params=params, paths=paths, labels=labels.tolist())
    with paused_after_two_epochs(code):
        pass  # killed (SIGKILL) on leaving the block
    with pytest.raises(FineTuneError, match="another run"):
        FineTune(**{**params, "lr": 0.5, "resume": True}).fit(paths, labels)
    resumed = FineTune(**params, resume=True).fit(paths, labels)
    assert [r["epoch"] for r in resumed.history_] == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [r["train_loss"] for r in resumed.history_],
        [r["train_loss"] for r in straight.history_],
        rtol=1e-5,
    )
    for key, value in straight.state_dict_.items():
        np.testing.assert_allclose(resumed.state_dict_[key], value, rtol=1e-5, atol=1e-6)


def test_sklearn_contract_clone_params_pickle(data, tmp_path):
    paths, labels = data
    ft = fine_tune(tmp_path, epochs=1)
    assert clone(ft).get_params() == ft.get_params()
    ft.fit(paths, labels)
    assert not hasattr(clone(ft), "classes_")
    again = pickle.loads(pickle.dumps(ft))
    assert "_module" not in again.__dict__
    np.testing.assert_array_equal(again.predict_proba(paths), ft.predict_proba(paths))
    assert 0 <= ft.score(paths, labels) <= 1


def test_grid_search_over_learning_rate_and_freeze_depth(data, tmp_path):
    paths, labels = data
    search = GridSearchCV(
        fine_tune(tmp_path, epochs=1, valid_size=0),
        {"lr": [1e-3, 1e-2], "freeze": ["all", "conv1"]},
        cv=2,
    ).fit(paths, labels)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_estimator_.predict(paths).shape == (24,)


def test_saved_checkpoint_feeds_cnncodes_and_carries_the_head(data, tmp_path):
    paths, labels = data
    ft = fine_tune(tmp_path, **RESNET, freeze="layer3", lr=1e-2).fit(paths, labels)
    path = ft.save_checkpoint(tmp_path / "ft.pth")
    saved = torch.load(path, weights_only=True)
    assert saved["finetune"]["classes"] == ["ant", "bee", "wasp"]
    codes = CNNCodes(model="resnet18", weights=path, cache_dir=None)
    fine_tuned = codes.fit_transform(paths)
    assert codes.spec_.preprocessing.crop == (32, 32)  # from the checkpoint
    codes.set_params(weights="none", resize=40, crop=32)
    assert not np.allclose(fine_tuned, codes.fit_transform(paths))
    # The fine-tuned codes through the saved head are the fine-tuned classifier.
    head = saved["finetune"]["head"]
    logits = torch.as_tensor(fine_tuned) @ head["1.weight"].T + head["1.bias"]
    np.testing.assert_allclose(torch.softmax(logits, 1), ft.predict_proba(paths), atol=1e-4)


def test_fitted_fine_tune_saves_and_loads_like_a_pipeline(data, tmp_path):
    from cnncodes import persistence

    paths, labels = data
    ft = fine_tune(tmp_path, epochs=1).fit(paths, labels)
    for suffix in ("skops", "joblib"):
        path = tmp_path / f"model.{suffix}"
        persistence.save(ft, path)
        with pytest.raises(persistence.UntrustedModelCodeError, match="tests.tiny_nets:tiny_cnn"):
            persistence.load(path)
        loaded = persistence.load(path, trust_model_code=["tests.tiny_nets:tiny_cnn"])
        np.testing.assert_allclose(loaded.predict_proba(paths), ft.predict_proba(paths), atol=1e-6)


def test_unknown_freeze_node_names_the_closest(data, tmp_path):
    paths, labels = data
    with pytest.raises(LayerError, match=r"freeze='layer22' .*Closest: layer2"):
        fine_tune(tmp_path, **RESNET, freeze="layer22").fit(paths, labels)


def test_too_few_images_per_class_for_validation_says_how_many(make_images, tmp_path):
    paths = make_images(6)
    with pytest.raises(FineTuneError, match=r"at least 30 images"):
        fine_tune(tmp_path, valid_size=0.1).fit(paths, [0, 1, 2] * 2)


def test_nan_loss_names_the_epoch_and_learning_rate(data, tmp_path):
    paths, labels = data
    with pytest.raises(FineTuneError, match=r"loss became nan in epoch \d+ \(learning rate \d"):
        fine_tune(tmp_path, freeze="none", lr=1e30, trunk_lr=1e30).fit(paths, labels)


@pytest.mark.parametrize(
    "param, value, match",
    [
        ("freeze", 3, "freeze=3 is not a node"),
        ("head", "deep", "head='deep': choose one of 'linear', 'mlp'"),
        ("lr", 0, "lr=0: expected a float > 0"),
        ("epochs", 1.5, "epochs=1.5: expected an int >= 0"),
        ("augment", "rotate", "augment='rotate'"),
        ("valid_size", 1.0, r"valid_size=1.0: expected a float in \[0, 1\)"),
        ("init_head", "probe", None),
        ("early_stopping", 3, None),
        ("trunk_cache", "yes", "trunk_cache='yes'"),
        ("resume", True, "resume=True needs checkpoint="),
    ],
)
def test_bad_parameters_are_named(data, tmp_path, param, value, match):
    paths, labels = data
    extra = {}
    if param == "init_head":
        extra, match = {"head": "mlp"}, "init_head='probe' starts a linear head"
    if param == "early_stopping":
        extra, match = {"valid_size": 0}, "early_stopping=3 needs a validation split"
    with pytest.raises((ValueError, LayerError), match=match):
        fine_tune(tmp_path, **{param: value}, **extra).fit(paths, labels)


def test_unreadable_images_raise_before_training_or_are_skipped_with_labels(data, tmp_path):
    paths, labels = data
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    paths = [*paths, str(bad)]
    labels = np.append(labels, "ant")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        fine_tune(tmp_path).fit(paths, labels)
    with pytest.warns(SkippedImagesWarning, match="broken.jpg"):
        ft = fine_tune(tmp_path, on_error="skip").fit(paths, labels)
    assert ft.n_train_ == 18  # 24 readable images, a quarter held out


def test_early_stopping_keeps_the_best_epoch(data, tmp_path):
    paths, labels = data
    ft = fine_tune(tmp_path, freeze="none", epochs=30, early_stopping=2, lr=0.3, trunk_lr=0.3).fit(
        paths, labels
    )
    assert len(ft.history_) < 30


_FULL_DISK = [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 262400 vs 262292"),
    OSError(errno.ENOSPC, "No space left on device"),
]


@pytest.mark.parametrize("failure", _FULL_DISK, ids=["torch-writer", "oserror"])
def test_a_full_disk_names_the_file_and_keeps_what_was_written(
    data, tmp_path, monkeypatch, failure
):
    # Issue 23 (b): torch.save into a full disk says "unexpected pos ..." (a RuntimeError).
    paths, labels = data
    state = tmp_path / "run.state"
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        real_save(obj, f, *args, **kwargs)  # the bytes reach the disk, or part of them
        if len(calls) > 1:
            raise failure

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as info:
        fine_tune(tmp_path, epochs=3, checkpoint=str(state)).fit(paths, labels)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(state)
    assert "the disk is full" in str(info.value) and str(state) in str(info.value)
    assert len(calls) == 2
    assert torch.load(state, weights_only=True)["epochs"] == 1  # epoch 1's state is kept
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]

    monkeypatch.setattr(torch, "save", real_save)
    ft = fine_tune(tmp_path, epochs=1).fit(paths, labels)
    saved = ft.save_checkpoint(tmp_path / "ft.pth")
    before = (tmp_path / "ft.pth").read_bytes()
    calls.clear()
    calls.append(None)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as info:
        ft.save_checkpoint(saved)
    assert info.value.errno == errno.ENOSPC and info.value.filename == saved
    assert "the disk is full" in str(info.value)
    assert (tmp_path / "ft.pth").read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_one_writer_per_state_file_and_a_killed_one_leaves_it_free(data, tmp_path):
    # Issue 23 (c): a second run on a state file that a live run writes is refused, naming the
    # file and the other process; a run killed with SIGKILL leaves nothing held.
    paths, labels = data
    state = tmp_path / "run.state"
    params = dict(**TINY, epochs=3, valid_size=0.25, cache_dir=str(tmp_path / "cache"),
                  checkpoint=str(state))  # fmt: skip
    code = _FIT.format(params=params, paths=paths, labels=labels.tolist())
    with paused_after_two_epochs(code) as child:
        before = state.read_bytes()
        for resume in (True, False):
            with pytest.raises(FineTuneError) as info:
                FineTune(**params, resume=resume).fit(paths, labels)
            message = str(info.value)
            assert str(state) in message and f"process {child.pid}" in message, message
        assert state.read_bytes() == before  # the live run's state is untouched
    # Killed (SIGKILL) on leaving the block: the kernel released its lock.
    resumed = FineTune(**params, resume=True).fit(paths, labels)
    assert [r["epoch"] for r in resumed.history_] == [1, 2, 3]


def test_a_state_of_another_run_names_the_settings_that_differ(data, tmp_path):
    paths, labels = data
    state = tmp_path / "run.state"
    params = dict(**TINY, epochs=2, valid_size=0.25, cache_dir=str(tmp_path / "cache"),
                  checkpoint=str(state))  # fmt: skip
    code = _FIT.format(params=params, paths=paths, labels=labels.tolist())
    with paused_after_two_epochs(code):
        pass  # killed (SIGKILL) on leaving the block
    with pytest.raises(FineTuneError) as info:
        FineTune(**{**params, "seed": 1, "lr": 0.5}, resume=True).fit(paths, labels)
    message = str(info.value)
    assert "seed: 0 in the state, 1 now" in message and "lr: 0.001 in the state, 0.5 now" in message
    assert str(state) in message and "another run" in message
    with pytest.raises(FineTuneError, match="images and labels: 24 images"):
        FineTune(**params, resume=True).fit(paths[::-1], labels[::-1])
    # A state file written before the settings were stored: the message of then.
    old = torch.load(state, weights_only=True)
    old.pop("settings")
    torch.save(old, state)
    with pytest.raises(FineTuneError, match="holds the state of another run") as info:
        FineTune(**{**params, "seed": 1}, resume=True).fit(paths, labels)
    assert "seed:" not in str(info.value)
    assert FineTune(**params, resume=True).fit(paths, labels).history_[-1]["epoch"] == 2


@pytest.mark.parametrize(
    "settings",
    [dict(freeze="all"), dict(**RESNET, freeze="layer2", lr=1e-2)],
    ids=["head-only", "cached-trunk"],
)
def test_prediction_from_the_cache_equals_the_full_forward_path(
    data, make_images, tmp_path, settings
):
    paths, labels = data
    ft = fine_tune(tmp_path, augment="none", **settings).fit(paths, labels)
    assert ft.trunk_cached_
    unseen = make_images(5, seed=7, prefix="unseen")
    cached = ft.predict_proba(paths + unseen)
    # Without a cache (e.g. loaded elsewhere with cache_dir=None): the whole network runs.
    elsewhere = pickle.loads(pickle.dumps(ft)).set_params(cache_dir=None)
    np.testing.assert_allclose(cached, elsewhere.predict_proba(paths + unseen), atol=1e-5)
    assert ft.score(paths, labels) == elsewhere.score(paths, labels)


def test_head_only_prediction_runs_no_network_on_cached_images(
    data, make_images, tmp_path, forward_counter, monkeypatch
):
    from cnncodes.estimators.finetune import estimator

    paths, labels = data
    ft = fine_tune(tmp_path, freeze="all", augment="none").fit(paths, labels)
    assert ft.trunk_cached_ and forward_counter.images == 24

    def whole_network(*args, **kwargs):
        raise AssertionError("the whole fine-tuned network ran")

    monkeypatch.setattr(estimator, "predict_logits", whole_network)
    ft.predict(paths)
    ft.predict_proba(paths)
    ft.score(paths, labels)
    assert forward_counter.images == 24
    unseen = make_images(5, seed=7, prefix="unseen")
    ft.predict(unseen + paths)  # codes of the unseen images: computed once, then cached
    assert forward_counter.images == 29
    ft.predict(unseen)
    assert forward_counter.images == 29


def test_cached_prediction_falls_back_to_the_held_weights_when_the_checkpoint_is_gone(
    data, make_images, tmp_path
):
    paths, labels = data
    weights = tmp_path / "pretrained.pth"
    torch.save(build_model(resolve_spec(**RESNET)).state_dict(), weights)
    settings = {**RESNET, "weights": str(weights), "freeze": "layer3", "augment": "none"}
    ft = fine_tune(tmp_path, **settings).fit(paths, labels)
    assert ft.trunk_cached_
    unseen = make_images(4, seed=7, prefix="unseen")  # not in the cache
    expected = pickle.loads(pickle.dumps(ft)).set_params(cache_dir=None).predict_proba(unseen)
    weights.unlink()  # the frozen part's codes cannot be computed from the pretrained network
    np.testing.assert_allclose(ft.predict_proba(unseen), expected, atol=1e-6)


def test_head_only_fit_on_cached_codes_decodes_no_image_and_builds_no_network(
    data, tmp_path, forward_counter, monkeypatch
):
    from cnncodes.estimators.finetune import data as finetune_data
    from cnncodes.estimators.finetune import estimator

    paths, labels = data
    settings = dict(**RESNET, freeze="all", augment="none", init_head="probe")
    fine_tune(tmp_path, **settings).warm_codes(paths)
    assert forward_counter.images == 24
    decodes, builds = [], []
    real_load, real_build = finetune_data.load_image, estimator.build_model
    monkeypatch.setattr(finetune_data, "load_image", lambda p: decodes.append(p) or real_load(p))
    monkeypatch.setattr(estimator, "build_model", lambda s: builds.append(s) or real_build(s))
    threads = torch.get_num_threads()
    ft = fine_tune(tmp_path, **settings).fit(paths, labels)
    assert ft.trunk_cached_ and len(ft.history_) == 2
    assert forward_counter.images == 24 and decodes == [] and builds == []
    assert torch.get_num_threads() == threads  # the head trained on one thread, then restored
    ft.predict(paths)
    assert forward_counter.images == 24 and decodes == [] and builds == []
    assert torch.get_num_threads() == threads
    # The weights it holds are the pretrained network's, read when first asked for.
    pretrained = build_model(resolve_spec(**RESNET)).state_dict()
    assert all(np.array_equal(v.numpy(), ft.state_dict_[k]) for k, v in pretrained.items())
    assert len(builds) == 1
    elsewhere = pickle.loads(pickle.dumps(ft)).set_params(cache_dir=None)
    assert "_state_dict" in vars(elsewhere)
    np.testing.assert_allclose(elsewhere.predict_proba(paths), ft.predict_proba(paths), atol=1e-5)


def test_head_only_fit_on_cached_codes_still_refuses_or_skips_an_unreadable_image(data, tmp_path):
    paths, labels = data
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    settings = dict(freeze="all", augment="none")
    fine_tune(tmp_path, **settings).warm_codes(paths)
    paths, labels = [*paths, str(bad)], np.append(labels, "ant")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        fine_tune(tmp_path, **settings).fit(paths, labels)
    with pytest.warns(SkippedImagesWarning, match="broken.jpg"):
        ft = fine_tune(tmp_path, **settings, on_error="skip").fit(paths, labels)
    assert ft.n_train_ == 18 and ft.trunk_cached_


def test_auto_validation_adapts_to_many_classes_of_few_images(make_images, tmp_path):
    paths = make_images(40)
    labels = np.arange(40) % 10  # 10 classes of 4: 0.1 would hold out 4 images, fewer than 10
    ft = fine_tune(tmp_path, valid_size="auto", epochs=1).fit(paths, labels)
    assert ft.n_train_ == 30 and ft.valid_size_ == pytest.approx(0.25)
    assert "valid_acc" in ft.history_[0]
    assert FineTune().valid_size == "auto"
    with pytest.raises(FineTuneError, match=r"valid_size=0.1 holds out 4 of 40 images"):
        fine_tune(tmp_path, valid_size=0.1).fit(paths, labels)  # a value given is refused


def test_auto_validation_is_none_with_a_class_of_one_image_said_in_a_warning(make_images, tmp_path):
    paths = make_images(7)
    labels = [0, 0, 0, 1, 1, 1, 2]
    with pytest.warns(UserWarning, match=r"valid_size='auto': no validation split") as caught:
        ft = fine_tune(tmp_path, valid_size="auto", epochs=1).fit(paths, labels)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert ft.n_train_ == 7 and ft.valid_size_ == 0 and "valid_acc" not in ft.history_[0]
    with pytest.raises(ValueError, match="early_stopping=2 needs a validation split"):
        fine_tune(tmp_path, valid_size="auto", early_stopping=2).fit(paths, labels)


def test_a_single_class_is_named_as_plain_text(make_images, tmp_path):
    paths = make_images(4)
    with pytest.raises(ValueError, match=r"y holds a single class '5';"):
        fine_tune(tmp_path).fit(paths, np.array(["5"] * 4))
