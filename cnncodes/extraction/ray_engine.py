"""Extraction on a Ray cluster: hashing in Ray tasks, decoding in CPU tasks, the network in actors.

:func:`cnncodes.extract.extract_codes` with ``engine="ray"`` comes here for the images its cache
lacks. They become a Ray Dataset of ``(digest, path)`` rows; CPU tasks decode them under the
same Pillow policy as the local engine (:class:`~cnncodes.extraction.decode._Decode`), and a pool
of actors (one GPU each where the cluster has GPUs) pushes the pixels through the same
:class:`~cnncodes.extraction.loop.Forward` step, so the codes are the same. Each actor commits
its codes to the cache folder itself, one immutable shard per block
(:meth:`cnncodes.cache.CodeStore.write`), and returns only an acknowledgement: the folder must be
one that every node sees (a shared filesystem). The caller then serves every code from the
cache as usual, so a killed job leaves its committed shards behind and a rerun computes the rest.

Ray is imported here, lazily: ``import cnncodes`` does not import it, and the local engine does
not need it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile

import numpy as np
import torch

from ..errors import UsageError
from ..images.load import file_digests
from ..params import ENGINES
from ..store.cache import CodeStore
from ..utils.progress import Progress
from .decode import _Decode, _stack_ready, _TorchDecode
from .loop import FiniteCheck, Forward
from .runtime import exact_fp32

__all__ = ["ENGINES", "cluster_device", "joblib_on_ray", "ray_session", "require_ray", "run_on_ray"]


#: Images per Ray block: decoded by one task, computed by one actor call, committed as one shard.
BLOCK_ROWS = 256

#: Files hashed by one Ray task (fewer files are hashed by the driver itself).
HASH_CHUNK = 2048


def require_ray():
    """The ``ray`` module (with Ray Data), or an ImportError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the engine needs Ray Data, not only Ray Core
    except ImportError:
        raise ImportError(
            "engine='ray' needs Ray with Ray Data, which is not installed: "
            "pip install -e '.[ray]' (or pip install 'ray[data]')"
        ) from None
    return ray


@contextlib.contextmanager
def ray_session(address=None):
    """Ray, connected for the block: the running session if there is one, else ``address``
    (``"auto"`` or ``HOST:PORT``), else a local Ray started here and shut down after."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def joblib_on_ray():
    """joblib's Ray backend for the block (``ray.util.joblib``): a search's fits as Ray tasks.

    With a warm cache (:func:`cnncodes.search.warm_cache`) each task reads its codes from the
    cache folder; none runs the network.
    """
    require_ray()
    import joblib
    from ray.util.joblib import register_ray

    register_ray()
    with joblib.parallel_backend("ray"):
        yield


def cluster_device(ray, device):
    """The device type of the actors: CUDA where the cluster has GPUs (``device="auto"``)."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if device == "auto":
        return torch.device("cuda" if gpus else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device={device!r}: engine='ray' takes 'auto', 'cpu' or 'cuda'")
    if dev.type == "cuda" and not gpus:
        raise UsageError(
            f"device={device!r}: the Ray cluster has no GPU; use device='cpu' or 'auto'"
        )
    return torch.device(dev.type)  # each actor sees its own GPU as cuda:0


def alive_nodes(ray):
    """The number of live nodes of the cluster."""
    return sum(1 for node in ray.nodes() if node.get("Alive"))


@contextlib.contextmanager
def cache_root_for_run(ray, root):
    """``root``, or with no cache (None) a temporary folder for the run on a one-node cluster.

    The actors hand codes over through the cache folder; a temporary folder of the driver is
    only seen by the workers of its own machine, so a multi-node cluster needs a real one.
    """
    if root is not None:
        yield root
        return
    nodes = alive_nodes(ray)
    if nodes > 1:
        raise UsageError(
            f"cache_dir=None with engine='ray' on a cluster of {nodes} nodes: the workers hand "
            "their codes over through the cache folder; give cache_dir= a folder that every "
            "node can write (a shared filesystem)"
        )
    with tempfile.TemporaryDirectory(prefix="cnncodes-ray-") as folder:
        yield folder


def ray_file_digests(ray, paths):
    """:func:`cnncodes.images.file_digests` of ``paths``, in Ray tasks of :data:`HASH_CHUNK`."""
    if len(paths) <= HASH_CHUNK:
        return file_digests(paths)
    task = ray.remote(num_cpus=1)(file_digests)
    refs = [task.remote(paths[i : i + HASH_CHUNK]) for i in range(0, len(paths), HASH_CHUNK)]
    out = []
    for ref in refs:
        out.extend(ray.get(ref))
    return out


def _decode_block(batch, preprocessing):
    """Ray Data task: decode a block of ``(digest, path)`` rows with the local engine's policy.

    Unreadable files keep zero pixels and say why in ``reason`` ("" for the others).
    """
    decode = _Decode(list(zip(batch["digest"], batch["path"])), preprocessing)
    h, w = preprocessing.input_size
    pixels = np.zeros((len(decode), h, w, 3), np.uint8)
    actual, reasons = [], []
    for i in range(len(decode)):
        _, stored_as, hwc, reason = decode[i]
        if reason is None:
            pixels[i] = hwc
        actual.append(stored_as or "")
        reasons.append(reason or "")
    return {
        "digest": batch["digest"],
        "path": batch["path"],
        "actual": np.array(actual, dtype=object),
        "reason": np.array(reasons, dtype=object),
        "pixels": pixels,
    }


class CodeWriter:
    """Ray Data actor: pixels -> codes (:class:`Forward`), committed as shards to the cache.

    Returns per row the digest, ``actual`` (the digest of the content the codes were made of and
    stored under) and ``reason`` ("" or why the file could not be read): codes never travel
    back to the driver.
    """

    def __init__(self, spec, layers, pooling, precision, batch_size, device_type, root, configs):
        # Per code name (a layer, or a (layer, pooling) for several poolings): its store.
        self.stores = {name: CodeStore(root, config) for name, config in configs.items()}
        for store in self.stores.values():
            try:
                store.ensure_writable()
            except OSError as exc:
                raise OSError(
                    exc.errno, f"Ray worker on {socket.gethostname()}: {exc.strerror}"
                ) from None
        self.device = torch.device(device_type)
        self.forward = Forward(spec, layers, pooling, self.device, precision, batch_size)
        self.fp32 = precision == "fp32"
        self.nonfinite = {}
        self.finite = FiniteCheck(spec, layers, "skip", self.nonfinite, self.forward.probe)
        # impl="torch" decodes on the extraction device, here, as the local engine does.
        self.preprocessing = spec.preprocessing if spec.preprocessing.impl == "torch" else None

    def __call__(self, batch):
        if self.preprocessing is not None:
            batch = self._decode_here(batch)
        reasons = batch["reason"]
        good = np.array([not r for r in reasons], dtype=bool)
        if good.any():
            exact = exact_fp32(self.device.type) if self.fp32 else contextlib.nullcontext()
            with exact:
                if "pixels" in batch:
                    codes = self.forward(
                        torch.from_numpy(batch["pixels"][good]).permute(0, 3, 1, 2)
                    )
                else:
                    tensors = [t for t, ok in zip(batch.pop("tensors"), good) if ok]
                    codes = self.forward(_stack_ready(tensors, None, self.device))
            keys = [a for a, ok in zip(batch["actual"], good) if ok]
            reasons = self._screen(codes, keys, reasons, good)
            keep = [r for r, key in enumerate(keys) if key not in self.nonfinite]
            for name, store in self.stores.items():
                if keep:
                    store.write([keys[r] for r in keep], codes[name][keep])
        return {"digest": batch["digest"], "actual": batch["actual"], "reason": reasons}

    def _screen(self, codes, keys, reasons, good):
        """The reasons of the batch with those of non-finite codes added (never stored: the
        driver raises or skips them as ``on_error`` says; a network at fault raises here)."""
        self.nonfinite.clear()
        self.finite(keys, codes, dict(zip(keys, keys)))
        if not self.nonfinite:
            return reasons
        reasons = np.array(reasons, dtype=object)
        good_rows = np.flatnonzero(good)
        for r, key in enumerate(keys):
            if key in self.nonfinite:
                reasons[good_rows[r]] = self.nonfinite[key]
        return reasons

    def _decode_here(self, batch):
        items = list(zip(batch["digest"], batch["path"]))
        decoded = _TorchDecode(items, self.preprocessing, self.device).batch(items)
        return {
            "digest": batch["digest"],
            "actual": np.array([a or "" for _, a, _, _ in decoded], dtype=object),
            "reason": np.array([r or "" for _, _, _, r in decoded], dtype=object),
            "tensors": [t for _, _, t, _ in decoded],
        }


def run_on_ray(
    ray,
    items,
    spec,
    layers,
    pooling,
    precision,
    device,
    root,
    configs,
    *,
    batch_size,
    actors,
    progress,
):
    """Compute the codes of ``items`` (``(digest, path)`` pairs) on the cluster into ``root``.

    Returns ``(stored, failed)``: digest -> the digest its codes were stored under, and
    digest -> why its file could not be read.
    """
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # one bar over all nodes: ours, counted on acks
    ds = _pipeline(
        ray,
        items,
        spec,
        layers,
        pooling,
        precision,
        device,
        root,
        configs,
        batch_size=batch_size,
        actors=actors,
    )
    return _collect(ds, len(items), progress)


def _pipeline(
    ray, items, spec, layers, pooling, precision, device, root, configs, *, batch_size, actors
):
    """The Ray Dataset of ``items``: decoded by CPU tasks (Pillow) and committed by a pool of
    :class:`CodeWriter` actors; its rows are their acknowledgements."""
    from ray.data import ActorPoolStrategy

    gpu = device.type == "cuda"
    cpus = ray.cluster_resources().get("CPU", 1)
    if actors is None:
        actors = int(ray.cluster_resources().get("GPU", 0)) if gpu else max(1, int(cpus))
    # Blocks of up to BLOCK_ROWS, at least a few per actor, so that the pool shares the work out.
    block = max(1, min(BLOCK_ROWS, -(-len(items) // (4 * actors))))
    blocks = max(1, -(-len(items) // block))
    actors = min(actors, blocks)  # an actor without a block would only be started and idle
    rows = [{"digest": d, "path": p} for d, p in items]
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    if spec.preprocessing.impl != "torch":
        # CPU tasks; Ray Data fuses them into CPU actors (same resources: the pixels then stay
        # in the actor's process), not into GPU actors, whose decoding runs on other cores.
        ds = ds.map_batches(
            _decode_block,
            fn_kwargs={"preprocessing": spec.preprocessing},
            batch_size=block,
            batch_format="numpy",
            num_cpus=1,
        )
    return ds.map_batches(
        CodeWriter,
        fn_constructor_kwargs={
            "spec": spec,
            "layers": list(layers),
            "pooling": pooling,
            "precision": precision,
            "batch_size": batch_size,
            "device_type": device.type,
            "root": root,
            "configs": configs,
        },
        batch_size=block,
        batch_format="numpy",
        # Ray Data restarts a dead actor and retries the block it held (its default
        # max_restarts=-1, max_task_retries=-1); a Python exception is not retried.
        compute=ActorPoolStrategy(size=actors),
        num_gpus=1 if gpu else 0,
        num_cpus=0 if gpu else 1,
    )


def _collect(ds, total, progress):
    """Run ``ds``, counting its acknowledgements on one progress bar: ``(stored, failed)``."""
    stored, failed = {}, {}
    bar = Progress(total, "extracting on Ray", "images", "img", progress)
    # Ray Data logs each execution's plan at INFO; our bar says what the user needs.
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for digest, actual, reason in zip(out["digest"], out["actual"], out["reason"]):
                if reason:
                    failed[digest] = reason
                else:
                    stored[digest] = actual
            bar.update(len(out["digest"]))
    finally:
        logger.setLevel(level)
        bar.close()
    return stored, failed
