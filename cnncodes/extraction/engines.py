"""Extraction engines: where the network runs for the images the cache lacks.

An engine is chosen once by name (:data:`~cnncodes.params.ENGINES`, :func:`engine_for`) and
:func:`cnncodes.extract.extract_codes` talks to it through one small interface:

``engine.connect(device, cache_dir)``
    A context manager yielding ``(device, cache_dir)`` for the run: the extraction device and
    the cache folder the codes go through (the Ray engine connects to its cluster here, and
    needs a folder every worker sees).
``engine.file_digests(paths)``
    The content digest (or the :class:`~cnncodes.images.ImageLoadError`) of every file.
``engine.serve(job, cache, keys)``
    The codes of ``keys`` through the read-through :class:`~cnncodes.readthrough.CodeCache`:
    a :class:`~cnncodes.readthrough.CachedCodes` whose ``computed`` counts what this engine
    pushed through the network for this call; unreadable files are recorded in
    ``job.failed`` (or raised, with ``on_error="raise"``).

:class:`LocalEngine` runs the network in this process (:class:`~.loop.ForwardLoop`, decoding
workers). :class:`RayEngine` hands the missing images to a Ray cluster
(:mod:`cnncodes.extraction.ray_engine`, imported only when it is used, so ``import cnncodes``
does not import Ray), whose actors commit their codes to the cache; the cache then serves them.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import UsageError
from ..images.load import ImageLoadError, file_digests
from ..params import ENGINES, is_int
from ..store.cache import resolve_cache_dir
from ..store.readthrough import CachedCodes
from .loop import NON_FINITE, ForwardLoop, nonfinite_error, sharing_networks
from .runtime import exact_fp32, resolve_device, resolve_precision

__all__ = ["ENGINES", "Engine", "ExtractionJob", "LocalEngine", "RayEngine", "engine_for"]


@dataclass
class ExtractionJob:
    """What one extraction computes, and how: everything an engine needs besides the cache."""

    spec: object
    layers: list
    pooling: object  # a str, or a list of poolings (see loop.code_outputs)
    device: object  # torch.device
    precision: str
    configs: dict  # per code name (a layer, or (layer, pooling)), the cache configuration
    widths: dict  # per code name, the code width
    batch_size: int = 32
    num_workers: int = 0
    on_error: str = "raise"
    progress: object = None
    commit_rows: int = 512
    commit_seconds: float = 5.0
    #: digest -> the first input path with that content
    first: dict = field(default_factory=dict)
    #: Filled by the engine: digest -> why its file could not be read (``on_error="skip"``).
    failed: dict = field(default_factory=dict)

    def exact(self):
        """fp32 codes on a GPU must be the CPU's fp32 codes (same cache key): no TF32 while
        they are made."""
        if self.precision == "fp32":
            return exact_fp32(self.device.type)
        return contextlib.nullcontext()


class Engine(Protocol):
    """The interface every engine has (see the module's docstring)."""

    name: str

    def connect(self, device, cache_dir):
        """Context manager: ``(torch.device, cache folder or None)`` for one extraction."""

    def session(self):
        """Context manager: one session shared by the extractions inside it (the views)."""

    def file_digests(self, paths):
        """Per path, its content digest or the :class:`ImageLoadError` saying why not."""

    def serve(self, job, cache, keys):
        """The :class:`CachedCodes` of ``keys`` through ``cache``, computing what it lacks."""


class LocalEngine:
    """This process: decoding workers (or a thread) and the network here."""

    name = "local"

    @contextlib.contextmanager
    def connect(self, device, cache_dir):
        yield resolve_device(device), cache_dir

    @contextlib.contextmanager
    def session(self):
        """For several extractions in a row (the views): one network built for all."""
        with sharing_networks():
            yield

    def file_digests(self, paths):
        return file_digests(paths)

    def serve(self, job, cache, keys):
        return cache.cached(
            keys,
            functools.partial(self.compute, job),
            job.widths,
            commit_rows=job.commit_rows,
            commit_seconds=job.commit_seconds,
        )

    def compute(self, job, missing, deliver):
        """The ``compute`` of :meth:`CodeCache.cached`: ``missing`` through the network."""
        if not missing:
            return
        loop = ForwardLoop(
            spec=job.spec,
            layers=job.layers,
            pooling=job.pooling,
            device=job.device,
            precision=job.precision,
            batch_size=job.batch_size,
            num_workers=job.num_workers,
            on_error=job.on_error,
            progress=job.progress,
            items=[(d, job.first[d]) for d in missing],
            deliver=deliver,
            failed=job.failed,
        )
        with job.exact():
            loop.run()


class RayEngine:
    """A Ray cluster (:mod:`cnncodes.extraction.ray_engine`): hashing in tasks, decoding in CPU
    tasks, the network in actors that commit their codes to the cache folder themselves.

    ``address``: the cluster (None: the running session, else a local Ray for the call);
    ``actors``: actors running the network (None: one per GPU, else one per CPU).
    """

    name = "ray"

    def __init__(self, address=None, actors=None):
        self.address = address
        self.actors = actors
        self._ray = None

    @staticmethod
    def _module():
        from . import ray_engine  # lazily: Ray is optional

        return ray_engine

    @contextlib.contextmanager
    def session(self):
        """One Ray session for the block (several extractions share it)."""
        with self._module().ray_session(self.address):
            yield

    @contextlib.contextmanager
    def connect(self, device, cache_dir):
        ray_engine = self._module()
        with ray_engine.ray_session(self.address) as ray:
            dev = ray_engine.cluster_device(ray, device)
            root = resolve_cache_dir(cache_dir)
            with ray_engine.cache_root_for_run(ray, root) as root:
                self._ray = ray
                try:
                    yield dev, root
                finally:
                    self._ray = None

    def file_digests(self, paths):
        return self._module().ray_file_digests(self._ray, paths)

    def serve(self, job, cache, keys):
        stored, failed = self._run(job, cache, keys)
        compute = functools.partial(self._deliver, job, cache, stored, failed)
        served = cache.cached(
            keys,
            compute,
            job.widths,
            commit_rows=job.commit_rows,
            commit_seconds=job.commit_seconds,
        )
        # Served as hits, but computed by this call's actors (a rewritten file's were delivered).
        on_ray = sum(1 for digest, actual in stored.items() if actual == digest)
        return CachedCodes(served.codes, served.hits - on_ray, served.computed + on_ray)

    def _run(self, job, cache, keys):
        """The actors commit the codes of what the cache lacks: ``(stored, failed)`` as
        :func:`~cnncodes.extraction.ray_engine.run_on_ray`'s."""
        todo = cache.missing(keys)
        if not todo:
            return {}, {}
        for store in cache.stores.values():
            store.ensure_writable()
        stored, failed = self._module().run_on_ray(
            self._ray,
            [(d, job.first[d]) for d in todo],
            job.spec,
            job.layers,
            job.pooling,
            job.precision,
            job.device,
            cache.root,
            job.configs,
            batch_size=job.batch_size,
            actors=self.actors,
            progress=job.progress,
        )
        lost = cache.missing(list(dict.fromkeys(stored.values())))
        if lost:
            raise OSError(
                f"the Ray workers committed the codes of {len(lost)} image(s) to "
                f"{cache.root}, which this process does not find there: the cache folder "
                "must be on a filesystem every node sees, at the same path"
            )
        return stored, failed

    def _deliver(self, job, cache, stored, failed, missing, deliver):
        """The ``compute`` of :meth:`CodeCache.cached` after the actors ran: their failures,
        the codes of files rewritten since hashed (stored under their new content), and, for
        anything else still missing (removed meanwhile), the local engine."""
        rest = []
        for digest in missing:
            if digest in failed:  # unreadable when an engine task decoded it
                if job.on_error == "raise" and failed[digest].startswith(NON_FINITE):
                    raise nonfinite_error(failed[digest], job.first[digest], False)
                if job.on_error == "raise":
                    raise ImageLoadError(job.first[digest], failed[digest])
                job.failed[digest] = failed[digest]
            elif digest in stored:
                actual = [stored[digest]]
                codes = {layer: store.read(actual) for layer, store in cache.stores.items()}
                deliver([digest], codes, stored_as=actual)
            else:
                rest.append(digest)
        LocalEngine().compute(job, rest, deliver)


def engine_for(name, ray_address=None, ray_actors=None, *, precision="auto"):
    """The engine called ``name`` (one of :data:`~cnncodes.params.ENGINES`), its options
    checked (``precision`` too, so that a bad value is refused before Ray starts)."""
    if name not in ENGINES:
        raise UsageError(f"engine={name!r}: choose one of {', '.join(map(repr, ENGINES))}")
    if ray_actors is not None and (not is_int(ray_actors) or ray_actors < 1):
        raise UsageError(f"ray_actors={ray_actors!r}: expected an int >= 1, or None")
    if name == "local":
        return LocalEngine()
    resolve_precision(precision, "cpu")
    return RayEngine(ray_address, None if ray_actors is None else int(ray_actors))
