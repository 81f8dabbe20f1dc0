"""A process pool with a progress bar (items/s and MB/s), used by pack and synth.

Workers are spawned, not forked, so a parent that has started threads (DALI, torch) is safe.
With workers=1 everything runs in this process, which keeps tracebacks simple and lets tests
patch functions.
"""

import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from tqdm import tqdm


def _quiet_worker():
    import av.logging
    av.logging.set_level(av.logging.PANIC)


def run_pool(fn, tasks, workers, progress, desc, unit, bytes_of):
    """fn(*task) for every task, in a spawn pool (or in-process for workers=1), with a progress
    bar showing items/s and MB/s. Results come back in task order."""
    results = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc=desc, unit=unit, disable=not progress or not tasks,
               dynamic_ncols=True)
    start, done_bytes = time.perf_counter(), 0

    def record(i, result):
        nonlocal done_bytes
        results[i] = result
        done_bytes += bytes_of(result)
        bar.set_postfix_str(f"{done_bytes / 1e6 / max(time.perf_counter() - start, 1e-9):.1f} MB/s",
                            refresh=False)
        bar.update(1)

    try:
        if workers <= 1:
            _quiet_worker()
            for i, task in enumerate(tasks):
                record(i, fn(*task))
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                     initializer=_quiet_worker) as pool:
                futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
                for future in as_completed(futures):
                    record(futures[future], future.result())
    finally:
        bar.close()
    return results
