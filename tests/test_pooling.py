"""Tests for cnncodes.pooling: shapes and values of every pooling on hand-made tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cnncodes.pooling import MAX_FLATTEN_FEATURES, POOLINGS, check_pooling, code_size, pool


def _maps():
    """Two samples, two channels, 4x4 maps with known values."""
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4)
    x[1, 1] = -x[1, 1]  # a channel whose maximum is not its last value
    return x


def test_avg_and_max_on_spatial_maps():
    x = _maps()
    np.testing.assert_allclose(pool(x, "avg").numpy(), [[7.5, 23.5], [39.5, -55.5]])
    np.testing.assert_allclose(pool(x, "max").numpy(), [[15, 31], [47, -48]])


def test_avgmax_concatenates_average_then_maximum():
    x = _maps()
    out = pool(x, "avgmax").numpy()
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out, [[7.5, 23.5, 15, 31], [39.5, -55.5, 47, -48]])


def test_pyramid_is_global_average_then_2x2_quadrants_per_channel():
    x = _maps()
    out = pool(x, "pyramid").numpy()
    assert out.shape == (2, 10)
    a = x.numpy()
    expected = []
    for n in range(2):
        row = [a[n, c].mean() for c in range(2)]
        for c in range(2):
            m = a[n, c]
            row += [m[:2, :2].mean(), m[:2, 2:].mean(), m[2:, :2].mean(), m[2:, 2:].mean()]
        expected.append(row)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_pyramid_on_odd_maps_uses_overlapping_adaptive_bins():
    # adaptive pooling of 3 rows into 2 bins takes rows [0, 1] and [1, 2]
    x = torch.tensor([[[[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]]])
    out = pool(x, "pyramid").numpy()[0]
    np.testing.assert_allclose(out, [5, 3, 4, 6, 7])


def test_flatten_keeps_every_value_in_channel_major_order():
    x = _maps()
    out = pool(x, "flatten")
    assert out.shape == (2, 32)
    np.testing.assert_array_equal(out.numpy(), x.reshape(2, -1).numpy())


@pytest.mark.parametrize(
    "pooling, expected",
    [
        ("avg", [[2.0, 3.0]]),
        ("max", [[4.0, 5.0]]),
        ("avgmax", [[2.0, 3.0, 4.0, 5.0]]),
        ("flatten", [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]),
    ],
)
def test_tokens_are_pooled_over_the_token_axis(pooling, expected):
    tokens = torch.arange(6, dtype=torch.float32).reshape(1, 3, 2)  # (N, L, D)
    np.testing.assert_allclose(pool(tokens, pooling).numpy(), expected)


def test_pyramid_refuses_tokens():
    with pytest.raises(ValueError, match="pooling='pyramid' needs a spatial"):
        pool(torch.zeros(1, 3, 2), "pyramid")


@pytest.mark.parametrize("pooling", POOLINGS)
def test_flat_outputs_pass_through_whatever_the_pooling(pooling):
    x = torch.tensor([[1.5, -2.0, 3.0]], dtype=torch.float64)
    out = pool(x, pooling)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), [[1.5, -2.0, 3.0]])
    assert code_size((3,), pooling) == 3


@pytest.mark.parametrize(
    "pooling, shape",
    [
        (p, s)
        for p in POOLINGS
        for s in [(6, 5, 7), (4, 1, 1), (9, 12)]
        if not (p == "pyramid" and len(s) == 2)  # refused, tested above
    ],
)
def test_code_size_matches_pooled_width(pooling, shape):
    out = pool(torch.randn(3, *shape), pooling)
    assert out.shape == (3, code_size(shape, pooling))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_codes_are_float32(dtype):
    assert pool(torch.ones(2, 3, 2, 2, dtype=dtype), "avgmax").dtype == torch.float32


def test_flatten_limit():
    assert code_size((1, 256, 256), "flatten") == MAX_FLATTEN_FEATURES
    with pytest.raises(ValueError, match=r"would make 65,792 features .*\(limit 65,536\)"):
        code_size((1, 257, 256), "flatten")
    with pytest.raises(ValueError, match="pooling='flatten' would make"):
        pool(torch.zeros(1, 64, 33, 33), "flatten")


def test_unknown_pooling_and_bad_shapes():
    with pytest.raises(ValueError, match="pooling='mean' is not supported; choose one of avg"):
        check_pooling("mean")
    with pytest.raises(ValueError, match="pooling='mean'"):
        pool(torch.zeros(1, 2, 2, 2), "mean")
    with pytest.raises(ValueError, match=r"cannot pool an output of shape \(1, 2, 3, 4\)"):
        code_size((1, 2, 3, 4), "avg")
