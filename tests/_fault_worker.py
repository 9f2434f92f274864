"""Jobs that tests/test_faults.py runs in child processes (and kills with SIGKILL).

The module imports cnncodes at import time so that a forkserver can preload it once; each job then
starts in milliseconds instead of re-importing torch.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import torch
from cnncodes.cache import CodeStore
from cnncodes.extract import extract_codes
from cnncodes.models import resolve_spec
from tqdm.auto import tqdm

MODEL = "tests.tiny_nets:tiny_cnn"
LAYER = "flatten"

# tqdm's default lock is a multiprocessing semaphore, which a SIGKILL leaves behind for the
# resource tracker to complain about; these jobs never draw a bar.
tqdm.set_lock(threading.RLock())


def spec():
    """The tiny network the fault tests extract with."""
    return resolve_spec(MODEL, resize=40, crop=32)


def extract_job(paths, cache_dir, out_path, commit_rows):
    """Extract ``paths`` into ``cache_dir`` (None: no cache); save codes, counts and time."""
    started = time.monotonic()
    torch.set_num_threads(1)  # several of these share two cores
    result = extract_codes(
        paths,
        spec(),
        LAYER,
        cache_dir=cache_dir,
        batch_size=4,
        num_workers=0,
        progress=False,
        commit_rows=commit_rows,
        commit_seconds=60.0,
    )
    np.save(f"{out_path}.npy", result.codes[LAYER])
    with open(f"{out_path}.json", "w") as f:
        counts = {"computed": result.computed, "cached": result.cached}
        json.dump({**counts, "seconds": time.monotonic() - started}, f)


def compact_job(cache_dir, config, stop_file):
    """Compact one configuration's shards over and over until ``stop_file`` exists."""
    store = CodeStore(cache_dir, config)
    merged = 0
    while not os.path.exists(stop_file):
        merged += store.compact(min_shards=2, blocking=True)
        time.sleep(0.01)
    with open(f"{stop_file}.merged", "w") as f:
        f.write(str(merged))
