"""A process pool with a progress bar (items/s and MB/s), used by pack and synth.

Workers are spawned, not forked, so a parent that has started threads (DALI, torch) is safe.
One pool serves every stage of a run (spawning costs a fraction of a second per worker). With
workers=1 everything runs in this process, which keeps tracebacks simple and lets tests patch
functions.
"""

import contextlib
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from tqdm import tqdm


def quiet_ffmpeg():
    """FFmpeg's own log lines would interleave with the progress bar; our errors say enough."""
    import av.logging

    av.logging.set_level(av.logging.PANIC)


@contextlib.contextmanager
def worker_pool(workers):
    """A spawn-based ProcessPoolExecutor, or None for workers <= 1 (run in this process)."""
    quiet_ffmpeg()
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=quiet_ffmpeg) as pool:
        yield pool


def run_pool(fn, tasks, pool, progress, desc, unit, bytes_of):
    """fn(*task) for every task, in `pool` (None: in this process), with a progress bar showing
    items/s and MB/s. Results come back in task order."""
    results = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc=desc, unit=unit, disable=not progress or not tasks,
               dynamic_ncols=True)
    start, done_bytes = time.perf_counter(), 0

    def record(i, result):
        nonlocal done_bytes
        results[i] = result
        done_bytes += bytes_of(result)
        rate = done_bytes / 1e6 / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix_str(f"{rate:.1f} MB/s", refresh=False)
        bar.update(1)

    try:
        if pool is None:
            for i, task in enumerate(tasks):
                record(i, fn(*task))
        else:
            futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                record(futures[future], future.result())
    finally:
        bar.close()
    return results
