"""Where and how exactly the network runs: device, precision, TF32 off for exact fp32, workers."""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import UsageError
from ..params import PRECISIONS, check_choice

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision):
    """The ``torch.autocast`` dtype of a resolved ``precision`` (``"bf16"``, ``"fp16"``), or None
    for ``"fp32"`` (no autocast)."""
    return _DTYPES.get(precision)


def resolve_device(device="auto"):
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device={device!r} but CUDA is not available; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device={device!r}: only {torch.cuda.device_count()} GPU(s) present")
    elif dev.type != "cpu":
        raise UsageError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return dev


def resolve_precision(precision, device):
    """``"auto"`` -> ``"fp32"`` on the CPU and ``"bf16"`` on a GPU."""
    check_choice(precision, "precision", PRECISIONS)
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


# Where the PyTorch version has them (2.9+), the per-operation float32 precision switches that
# CUDA kernels read: cuBLAS matrix products and cuDNN convolutions ("tf32" lets them round inputs
# to TF32; cuDNN convolutions default to it). Older versions have the legacy ``allow_tf32`` flags.
_FP32_SWITCHES = {"cuda": (("cuda", "matmul"), ("cudnn", "conv"))}
_FP32_LEGACY = {"cuda": (("cuda", "matmul"), ("cudnn",))}


def _backend(path):
    module = torch.backends
    for part in path:
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _fp32_switches(device_type):
    """``[(object, attribute, exact value)]``: the switches that keep float32 work exact."""
    switches = []
    for path in _FP32_SWITCHES.get(device_type, ()):
        module = _backend(path)
        try:
            _ = module.fp32_precision
        except (AttributeError, RuntimeError):
            break  # a PyTorch without the new API: use the legacy flags below
        switches.append((module, "fp32_precision", "ieee"))
    else:
        return switches
    return [
        (module, "allow_tf32", False)
        for module in map(_backend, _FP32_LEGACY.get(device_type, ()))
        if module is not None
    ]


@contextlib.contextmanager
def exact_fp32(device_type):
    """Full IEEE float32 matrix products and convolutions on ``device_type`` while the block runs.

    On CUDA, PyTorch lets cuDNN convolutions use TF32 by default, and cuBLAS matrix products when
    the user asked for it (``torch.backends.cuda.matmul``, ``torch.set_float32_matmul_precision``).
    TF32 keeps 10 mantissa bits, so "fp32" codes made that way differ from CPU fp32 codes by about
    1e-3 while being stored under the same cache key. This turns TF32 off for the duration (the
    per-operation ``fp32_precision = "ieee"``, or ``allow_tf32 = False`` on PyTorch < 2.9) and
    restores the previous settings on exit, even when the block raises. A no-op on the CPU.

    Examples
    --------
    >>> with exact_fp32("cuda"):
    ...     torch.backends.cudnn.conv.fp32_precision
    'ieee'
    """
    saved = []
    try:
        for module, attribute, exact in _fp32_switches(device_type):
            saved.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, exact)
        yield
    finally:
        for module, attribute, value in reversed(saved):
            setattr(module, attribute, value)


def default_workers(device, cores=None):
    """Decoding processes when ``num_workers`` is not given.

    On the CPU the network already keeps every core busy (intra-op threads), so on a small machine
    decoding workers only take cores from it: measured on 2 cores, 0 workers beat 1 and 2 (see
    bench/RESULTS.md); a larger CPU machine gets up to 4. A GPU needs the CPU only to decode: every
    core but one (for this process), up to 16. Pillow decodes about 190 JPEGs of 500x375 per
    second per core (measured on an H100 machine with 1 / 4 / 15 workers: 191 / 612 / 1,180
    images/s, against 6,220 images/s for a ResNet-50 forward pass in fp32), far below what the
    GPU takes.
    """
    cores = cores or os.cpu_count() or 1
    if device.type == "cpu":
        return 0 if cores <= 4 else 4
    return min(16, max(1, cores - 1))


_default_workers = default_workers  # its name before it was public
