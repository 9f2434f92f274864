"""Non-finite preprocessing values and non-finite codes are refused, never cached (issue 23)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from cnncodes.cache import list_configs
from cnncodes.extract import extract_codes
from cnncodes.models import resolve_spec

from cnncodes.errors import UsageError
from tests.conftest import write_classes
from tests.tiny_nets import TinyCNN

SMALL = dict(resize=40, crop=32)
NAN_NET = "tests.tiny_nets:nan_for_bright_cnn"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"std": math.nan}, r"std=nan: values must be finite"),
        ({"std": (0.5, math.inf, 0.5)}, r"std=\(0.5, inf, 0.5\): values must be finite"),
        ({"mean": math.inf}, r"mean=inf: values must be finite"),
        ({"mean": (0.1, -math.inf, 0.2)}, r"mean=.*values must be finite"),
    ],
)
def test_non_finite_mean_and_std_are_refused(kwargs, match):
    with pytest.raises(UsageError, match=match):
        resolve_spec("resnet18", "none", **kwargs)


def _stored(cache):
    """Rows stored in the cache folder, all configurations together."""
    return sum(len(store.index()) for store, _info in list_configs(cache))


def test_a_nan_checkpoint_raises_naming_model_weights_layer_and_caches_nothing(
    tmp_path, make_images
):
    net = TinyCNN()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(math.nan)
    weights = tmp_path / "nan.pth"
    torch.save(net.state_dict(), weights)
    spec = resolve_spec("tests.tiny_nets:tiny_cnn", str(weights), **SMALL)
    paths = make_images(4)
    cache = tmp_path / "cache"
    for on_error in ("raise", "skip"):
        with pytest.raises(UsageError) as info:
            extract_codes(
                paths, spec, "penultimate", cache_dir=cache, num_workers=0, on_error=on_error
            )
        message = str(info.value)
        assert "non-finite" in message
        assert "tests.tiny_nets:tiny_cnn" in message and "nan.pth" in message
        assert "'flatten'" in message and os.path.basename(paths[0]) in message
    assert _stored(cache) == 0


def test_a_few_non_finite_images_are_skipped_with_on_error_skip(tmp_path):
    paths, labels = write_classes(tmp_path / "images", per_class=3)
    spec = resolve_spec(NAN_NET, "none", **SMALL)
    cache = tmp_path / "cache"
    bright = [p for p, label in zip(paths, labels) if label == "bright"]
    with pytest.raises(UsageError, match="non-finite"):
        extract_codes(paths, spec, "penultimate", cache_dir=cache, num_workers=0)
    for _ in range(2):  # the second time too: nothing non-finite was cached
        result = extract_codes(
            paths, spec, "penultimate", cache_dir=cache, num_workers=0, on_error="skip"
        )
        assert sorted(s.path for s in result.skipped) == sorted(bright)
        assert all("non-finite" in s.reason for s in result.skipped)
        assert (codes := next(iter(result.codes.values()))).shape[0] == 3
        assert np.isfinite(codes).all()
    assert _stored(cache) == 3
    # Only such images: all are skipped, since the network itself gives finite codes (of a
    # plain image of the mean colour); a network that does not raises (the NaN checkpoint).
    result = extract_codes(
        bright, spec, "penultimate", cache_dir=tmp_path / "c2", num_workers=0, on_error="skip"
    )
    assert len(result.skipped) == 3 and next(iter(result.codes.values())).shape[0] == 0


def test_the_read_through_cache_never_commits_non_finite_codes(tmp_path):
    from cnncodes.readthrough import CodeCache

    cache = CodeCache(tmp_path, {"avgpool": {"model": "demo"}})

    def compute(missing, deliver):
        deliver(missing, {"avgpool": np.full((len(missing), 3), np.nan, np.float32)})

    with pytest.raises(UsageError, match="non-finite codes"):
        cache.cached(["ab" * 32], compute, {"avgpool": 3})
    assert cache.missing(["ab" * 32]) == ["ab" * 32] and _stored(tmp_path) == 0
