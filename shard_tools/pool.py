"""One way to run per-item work in parallel, with a progress bar (items/s and MB/s): a process
pool on this machine, or Ray tasks on a cluster. Used by pack and synth.

`worker_pool(workers, ray_address)` yields an executor whose `submit(fn, *args)` returns a
`concurrent.futures.Future`, or None for workers <= 1 (run in this process, which keeps
tracebacks simple and lets tests patch functions):

- process pool: workers are spawned, not forked, so a parent that has started threads (DALI,
  torch) is safe; one pool serves every stage of a run (spawning costs a fraction of a second
  per worker);
- Ray (`ray_address` "auto", "ray://host:port", or "local" to start a Ray instance with
  `workers` CPUs for this call): each call is a Ray task taking one CPU; its arguments and
  result travel by value, so the work itself must read and write by path on storage every node
  sees.

`run_pool` keeps a bounded number of tasks in flight and hands results back in task order.
"""

import contextlib
import logging
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context

from tqdm import tqdm

RAY_MISSING = 'packing on a Ray cluster needs Ray: pip install "vmae2[ray]"'
# Tasks submitted ahead of the results: every worker stays busy, while a list of millions of
# entries does not become millions of pending futures at once.
MAX_IN_FLIGHT = 4096


class PoolError(RuntimeError):
    """Ray is missing, or its cluster cannot be reached."""


def quiet_ffmpeg():
    """FFmpeg's own log lines would interleave with the progress bar; our errors say enough."""
    import av.logging

    av.logging.set_level(av.logging.PANIC)


def _call_quietly(fn, *args):
    quiet_ffmpeg()
    return fn(*args)


class RayExecutor:
    """`submit(fn, *args)` as a Ray task (one CPU), returning a concurrent.futures.Future."""

    def __init__(self, ray):
        self.remote_call = ray.remote(num_cpus=1)(_call_quietly)

    def submit(self, fn, *args):
        return self.remote_call.remote(fn, *args).future()


@contextlib.contextmanager
def ray_executor(address, workers):
    """Connect to the Ray cluster at `address` ("local": start one with `workers` CPUs) for
    the duration of the block."""
    try:
        import ray
    except ImportError as err:
        raise PoolError(RAY_MISSING) from err
    try:
        if address == "local":
            ray.init(address="local", num_cpus=max(1, workers), include_dashboard=False,
                     logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise PoolError(f"--ray {address}: cannot reach a Ray cluster there ({err}); start one "
                        f"(`ray start --head`, then `ray start --address HEAD:PORT` on the other "
                        f"nodes) and give its HEAD:PORT, or use --ray local") from err
    try:
        yield RayExecutor(ray)
    finally:
        ray.shutdown()


@contextlib.contextmanager
def worker_pool(workers, ray_address=None):
    """A spawn-based ProcessPoolExecutor, a RayExecutor (ray_address given), or None for
    workers <= 1 without Ray (run in this process)."""
    quiet_ffmpeg()
    if ray_address is not None:
        with ray_executor(ray_address, workers) as pool:
            yield pool
        return
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
            return results
        waiting, in_flight = iter(enumerate(tasks)), {}
        while True:
            for i, task in waiting:
                in_flight[pool.submit(fn, *task)] = i
                if len(in_flight) >= MAX_IN_FLIGHT:
                    break
            if not in_flight:
                return results
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                record(in_flight.pop(future), future.result())
    finally:
        bar.close()
