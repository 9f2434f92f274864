"""Weights files: torchvision's and timm's named weights, read offline, and checkpoint files
(torch only).

Nothing here downloads at import or resolution time. Torchvision weights are read from
``$TORCH_HOME/hub/checkpoints`` (checked against the hash in their published file name and loaded
with ``weights_only=True``, unlike torchvision's own loader). Nothing is fetched from the internet
unless ``CNNCODES_DOWNLOAD=1`` is set (then a missing file is downloaded the way torchvision does
it); otherwise :class:`WeightsUnavailableError` says where to put the file, its URL, and how to
pass a local checkpoint instead. timm's pretrained weights are looked up the same way, where timm
itself keeps them: the Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``), or, for
weights published by URL, ``$TORCH_HOME/hub/checkpoints``.

A checkpoint file holds a state_dict, or a dict holding one under ``state_dict``,
``model_state_dict``, ``model``, ``net`` or ``module``; ``module.`` (DataParallel) and
``_orig_mod.`` (``torch.compile``) prefixes are stripped; it is loaded on the CPU with
``weights_only=True``; the file's identity is its SHA-256. Such a dict may also carry the
preprocessing the weights were trained with under ``preprocessing`` (see
:func:`cnncodes.models.resolve_spec`). This module is the one place that reads checkpoint
files, so that whatever writes one for cnncodes is read back by the same code.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import urllib.error
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import UsageError
from ..spec import ModelError, WeightsError, file_sha256
from ..utils.files import atomic_path, display
from ..utils.memo import memoize
from .architectures import _is_callable_name, _timm
from .preprocessing import checked_preprocessing, resolve_preprocessing

__all__ = [
    "WeightsUnavailableError",
    "WEIGHTS_KWARGS",
    "check_weights_file",
    "checkpoint_preprocessing",
    "fetch_named_weights",
    "fetch_timm_weights",
    "load_state",
    "load_timm_pretrained",
    "read_checkpoint",
    "refuse_weights_kwargs",
    "set_checkpoint_preprocessing",
    "state_fingerprint",
]

_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_PREFIXES = ("module.", "_orig_mod.")


class WeightsUnavailableError(WeightsError):
    """Named torchvision or timm weights that are neither on disk nor downloadable (offline)."""


def _hub_checkpoint_path(url):
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _downloads_allowed():
    return os.environ.get("CNNCODES_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def fetch_named_weights(enum_member):
    """Path to the verified local file of torchvision weights.

    Nothing is fetched from the internet unless ``CNNCODES_DOWNLOAD=1`` is set: a missing file
    is a :class:`WeightsUnavailableError` that names the file, where it goes and its URL.
    """
    name = f"{type(enum_member).__name__}.{enum_member.name}"
    return _torch_hub_file(enum_member.url, name, "torchvision")


def _download_url(url, path, name, where):
    """Download ``url`` to ``path`` if ``CNNCODES_DOWNLOAD=1``, else say ``where`` it goes."""
    if not _downloads_allowed():
        raise WeightsUnavailableError(
            f"weights {name} are not on this machine.\n{where}, or set CNNCODES_DOWNLOAD=1 "
            "to let cnncodes download them."
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, path, hash_prefix=_hash_prefix(path), progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise WeightsUnavailableError(
            f"weights {name} are not on this machine and could not be downloaded ({exc}).\n{where}."
        ) from None


def _hash_prefix(path):
    """The SHA-256 prefix a published file name carries (``resnet18-f37072fd.pth``), or None."""
    match = re.search(r"-([a-f0-9]+)\.", os.path.basename(path))
    return match.group(1) if match else None


def _check_published_hash(path, name):
    """``path`` if its SHA-256 matches the one its name publishes: a hash prefix in the file
    name, or, in the Hugging Face cache, the blob's own name (the full SHA-256 of its bytes)."""
    blob = os.path.basename(os.path.realpath(path))
    prefix = blob if re.fullmatch(r"[a-f0-9]{64}", blob) else _hash_prefix(path)
    if prefix and not file_sha256(path).startswith(prefix):
        raise WeightsError(
            f"{path} does not match the SHA-256 {'prefix ' if len(prefix) < 64 else ''}"
            f"{prefix!r} published for {name}: the file was altered or is incomplete; delete it "
            "and supply the original"
        )
    return path


def _hf_hub_cache():
    """Where the Hugging Face hub keeps its files, read at each call (not at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return constants.HF_HUB_CACHE


def fetch_timm_weights(name):
    """Path to the local file of timm's pretrained weights ``name`` (``"resnet10t.c3_in1k"``).

    Looked up where timm itself keeps them (the Hugging Face hub cache, or
    ``$TORCH_HOME/hub/checkpoints`` for weights published by URL); nothing is fetched unless
    ``CNNCODES_DOWNLOAD=1``: a missing file is a :class:`WeightsUnavailableError` naming where
    it goes.
    """
    cfg = _timm().models.get_pretrained_cfg(name)
    label = f"timm:{name}"
    if cfg.file:
        if not os.path.isfile(cfg.file):
            raise WeightsUnavailableError(f"weights {label}: file not found: {cfg.file}")
        return cfg.file
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        files += [f for f in ("model.safetensors", "pytorch_model.bin") if f not in files]
        cache = _hf_hub_cache()
        for filename in files:
            path = try_to_load_from_cache(
                repo, filename, cache_dir=cache, revision=revision or None
            )
            if isinstance(path, str) and os.path.isfile(path):
                return _check_published_hash(path, label)
        if not _downloads_allowed():
            snapshot = os.path.join(cache, f"models--{repo.replace('/', '--')}", "snapshots")
            raise WeightsUnavailableError(
                f"weights {label} are not on this machine.\ntimm looks for them in the Hugging "
                f"Face hub cache, {cache} (set HF_HUB_CACHE or HF_HOME to change it): the file "
                f"{files[0]} of the repository {repo}, under {snapshot}/<revision>/ (as "
                f"`huggingface-cli download {repo} {files[0]}` puts it). Or pass a local "
                "checkpoint instead: weights='/path/to/model.safetensors' (--weights PATH), "
                "or set CNNCODES_DOWNLOAD=1 to let cnncodes download them."
            )
        return _download_timm_hub_file(repo, files, revision or None, cache, label)
    return _torch_hub_file(cfg.url, label, "timm")


def _torch_hub_file(url, label, library):
    """The published file at ``url`` from torch hub's checkpoint folder, its hash checked; never
    fetched unless downloads are allowed (the error says where to put it)."""
    path = _hub_checkpoint_path(url)
    if not os.path.exists(path):
        where = (
            f"{library} looks for them at {path} (set TORCH_HOME to change "
            f"{torch.hub.get_dir()}). Either copy the file {os.path.basename(path)} there (it is "
            f"published at {url}), or pass a local checkpoint instead: "
            "weights='/path/to/checkpoint.pth' (--weights /path/to/checkpoint.pth)"
        )
        _download_url(url, path, label, where)
    return _check_published_hash(path, label)


def _download_timm_hub_file(repo, files, revision, cache, label):
    """The first of ``files`` the hub repository has, downloaded into the hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    problem = None
    for filename in files:
        try:
            return hf_hub_download(repo, filename, revision=revision, cache_dir=cache)
        except EntryNotFoundError as exc:
            problem = exc
        except Exception as exc:  # network and hub errors come in many types
            problem = exc
            break
    raise WeightsUnavailableError(
        f"weights {label} are not on this machine and could not be downloaded from the Hugging "
        f"Face hub repository {repo} ({problem}). Pass a local checkpoint instead: "
        "weights='/path/to/model.safetensors' (--weights PATH)"
    )


def load_timm_pretrained(model_name, path, seed, kwargs=()):
    """timm's network ``model_name`` with the pretrained weights in file ``path``, never
    fetching. The file is read here (safetensors, or ``torch.load`` with ``weights_only=True``
    whatever timm's version defaults to); timm applies its own checkpoint filters to the state."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state = load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise WeightsError(f"{path}: cannot be read as safetensors ({exc})") from None
    else:
        state = read_checkpoint(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _timm().create_model(
            model_name,
            pretrained=True,
            pretrained_cfg_overlay={"state_dict": state},
            **dict(kwargs),
        )
    return net.eval()


def _unwrap_state_dict(obj, path):
    """Find the state_dict inside a checkpoint and strip wrapper prefixes."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _CHECKPOINT_KEYS:
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
        else:
            raise WeightsError(
                f"{path}: no state_dict found; expected a dict of tensors, or one under "
                f"{', '.join(map(repr, _CHECKPOINT_KEYS))} (top-level keys: "
                f"{', '.join(map(repr, list(obj)[:8]))})"
            )
    out = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


#: Builder arguments that choose, fetch or load weights (torchvision's builders, timm's
#: ``create_model``): refused in ``model_kwargs``, since weights are chosen by ``weights=``
#: (``--weights``), identified in the cache key, and fetched only with ``CNNCODES_DOWNLOAD=1``.
WEIGHTS_KWARGS = (
    "weights",
    "weights_backbone",
    "pretrained",
    "pretrained_backbone",
    "progress",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "pretrained_strict",
    "checkpoint_path",
    "cache_dir",
)


def refuse_weights_kwargs(model_kwargs, model):
    """Refuse the builder arguments (``(key, value)`` pairs) that choose weights, for
    torchvision and timm models; a user's callable takes what it defines."""
    if _is_callable_name(model):
        return
    chosen = [(key, value) for key, value in model_kwargs if key in WEIGHTS_KWARGS]
    if chosen:
        key, value = chosen[0]
        raise ModelError(
            f"model_kwargs of model={model!r}: {key}={value!r} chooses weights (or fetches "
            "them), which model arguments may not: give weights= (--weights) a weights name, "
            "a checkpoint file or 'none'; downloads happen only with CNNCODES_DOWNLOAD=1"
        )


def check_weights_file(weights):
    """The absolute path of the checkpoint file ``weights``, or a :class:`WeightsError` saying
    what it is instead: missing, a directory, not a regular file (a FIFO is never opened, so
    never waited on), or empty."""
    path = os.path.abspath(weights)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {weights}") from None
    except OSError as exc:
        raise WeightsError(f"weights file {weights}: cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise WeightsError(f"weights {weights}: is a directory, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise WeightsError(
            f"weights {weights}: not a regular file (a FIFO, socket or device); give a "
            "checkpoint file"
        )
    if st.st_size == 0:
        raise WeightsError(f"weights file {weights} is empty: not a checkpoint")
    return path


def _load_checkpoint(path, mmap=False):
    """What a checkpoint file holds, loaded on the CPU with ``weights_only=True``."""
    try:
        if mmap:
            try:  # tensors stay on disk: only the plain entries are wanted
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                pass  # a legacy (pre-zip) file cannot be memory-mapped; load it whole
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except Exception as exc:  # unpickling raises many types; all mean "not a safe checkpoint"
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise WeightsError(f"weights file {path} is empty: not a checkpoint") from None
        detail = str(exc).strip() or type(exc).__name__
        raise WeightsError(
            f"{path}: cannot be read as a checkpoint with weights_only=True ({detail}). "
            "cnncodes never loads checkpoints that need arbitrary code; save a plain "
            "state_dict with torch.save"
        ) from None


def read_checkpoint(path):
    return _unwrap_state_dict(_load_checkpoint(path), path)


@memoize(16)
def checkpoint_preprocessing(path, weights_id):
    """The ``preprocessing`` entry of a checkpoint dict, or None; memoised on the file's SHA-256
    (``weights_id``), so a grid search reads each file once."""
    obj = _load_checkpoint(path, mmap=True)
    if isinstance(obj, Mapping) and "preprocessing" in obj:
        return obj["preprocessing"]
    return None


def set_checkpoint_preprocessing(path, out, *, in_place=False, **values):
    """Write the checkpoint ``path`` to ``out`` with ``values`` (any of resize, crop, mean, std,
    interpolation, in :func:`~cnncodes.models.resolve_preprocessing`'s argument forms; None: not
    given) as its ``preprocessing`` entry, the form :func:`checkpoint_preprocessing` reads.

    The file is loaded with ``weights_only=True``; its state_dict and any other keys are kept
    (a bare state_dict goes under ``state_dict``), keys of an existing entry that are not given
    are kept, given ones replaced; ``out`` is written atomically. ``out`` may be ``path`` only
    with ``in_place=True``. Returns the SHA-256 of ``out``: the file's identity, so codes cached
    for the old file are not reused for the new one.

    Examples
    --------
    >>> set_checkpoint_preprocessing("in.pth", "out.pth", mean=0.5, std=0.5)  # doctest: +SKIP
    '3f1c...'
    """
    given = checked_preprocessing(values)
    if not given:
        raise UsageError(
            "nothing to set: give at least one of resize, crop, mean, std, interpolation"
        )
    src = check_weights_file(path)
    dst = os.path.abspath(out)
    same = dst == src or (os.path.exists(dst) and os.path.samefile(dst, src))
    if same and not in_place:
        raise WeightsError(
            f"{display(out)} is the checkpoint being read: write a new file, or rewrite it "
            "in-place (--in-place, in_place=True); either way its SHA-256 changes"
        )
    obj = _load_checkpoint(src)
    _unwrap_state_dict(obj, src)  # refuses a file that holds no state_dict
    is_state = isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())
    saved = {"state_dict": obj} if is_state else dict(obj)
    old = saved.get("preprocessing")
    merged = {**(old if isinstance(old, Mapping) else {}), **given}
    # The whole entry must resolve (a crop larger than a kept resize, ...), as it will be read.
    resolve_preprocessing(checkpoint=merged, checkpoint_path=display(out))
    saved["preprocessing"] = merged
    with atomic_path(dst) as tmp:
        torch.save(saved, tmp)
    return file_sha256(dst)


def load_state(net, state, source, model=None):
    own = net.state_dict()
    # Checkpoints saved before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked; the modules
    # fill it in themselves and it never changes an eval-mode output.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(
                f"missing keys: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        if unexpected:
            parts.append(
                f"unexpected keys: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
            )
        if wrong:
            parts.append(f"shape mismatches: {'; '.join(wrong[:5])}")
        raise WeightsError(
            f"{source} does not fit this architecture: {'; '.join(parts)}"
            + _head_hint(net, state, missing + unexpected + [w.split()[0] for w in wrong], model)
        )
    net.load_state_dict(state, strict=True)


def _head_hint(net, state, problems, model=None):
    """Advice when only the classifier head differs (a checkpoint fine-tuned on other classes)."""
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears or not problems:
        return ""
    head = linears[-1][0]
    if not all(key.rsplit(".", 1)[0] == head for key in problems):
        return ""
    weight = state.get(f"{head}.weight")
    n = weight.shape[0] if weight is not None and weight.ndim == 2 else "N"
    own = isinstance(model, str) and _is_callable_name(model)
    return (
        f". Only the classifier head {head!r} differs (a checkpoint fine-tuned on other classes?): "
        f"build the network with that head, --model-arg num_classes={n} (model_kwargs="
        f"{{'num_classes': {n}}})" + (", if your callable takes that argument" if own else "")
    )


def state_fingerprint(net):
    digest = hashlib.sha256()
    for name, t in net.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
