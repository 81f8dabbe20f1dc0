"""The engine's loader: epochs of ready batches on the device, with exact mid-epoch resume.

`ClipLoader` is the two-pipeline machinery, the same for every recipe (pre-training: pretrain.py;
fine-tuning and test loaders plug in their own):

    sampler thread     reader pipeline → json → recipe.sample(metas, rng)       (SamplingStage.draw)
    collector thread   clip pipeline: external sources ← drawn batches; recipe.clip_graph decodes and
                       crops (DALI's threads) → recipe.batch(outputs, keys)
    training thread    takes a finished batch from a queue: nothing else

A recipe is any object with:

    input_names            names of the arrays sample() returns that feed the clip pipeline, in order
                           (the pipeline's first input is always "encoded", the reader's video)
    sample(metas, rng)     {name: array with the batch first} for a batch's parsed json members, drawn
                           from the numpy Generator (vectorised over the batch)
    clip_graph(inputs, decode_device)   pure DALI graph: {name: DataNode} → tuple of outputs
    batch(outputs, keys)   the dict handed to the training loop, from the outputs as torch tensors
                           (batch first, on the device) and the batch's sample keys
    release(arrays)        optional: a batch's sample() arrays once the clip pipeline has consumed
                           them, so the recipe may reuse their memory
    pipeline_kwargs        optional dict: more @pipeline_def arguments of the clip pipeline
                           (e.g. enable_conditionals for RandAugment)

Sharding across ranks: DALI's reader gives rank r the r-th contiguous range of samples (the ranges
rotate by one each epoch) and pads every range to ceil(num_samples / world_size) by repeating its
last sample, then to whole batches; so every rank runs len(loader) = ceil(ceil(num_samples /
world_size) / batch_size) batches per epoch, all samples are seen every epoch, and at most
world_size·batch_size duplicates fill the gaps. Nothing is dropped.

Running ahead: the sampler keeps prefetch + 1 drawn batches, the clip pipeline decodes `prefetch`
batches ahead (prefetch_queue_depth), and the collector keeps one finished batch ready.

Resume: batch k's random choices come from numpy's Generator seeded with (seed, rank, k), and the
read position lives in the reader pipeline, which DALI checkpoints. Each batch carries the reader's
checkpoint taken right after it was read; state_dict() holds the one of the last batch handed out,
so a loader restored from it continues with exactly the batches the uninterrupted one would give.
"""
from __future__ import annotations

import math
import os
import queue
import threading
from collections import deque

import numpy as np
import torch

from shard_tools.format import CPU_DECODABLE_CODECS

from .pipeline import clip_pipeline, reader_pipeline
from .sampling import parse_metas
from .shards import ShardSet


def resolve_device(device) -> tuple[str, int | None, torch.device]:
    """(DALI backend "gpu"/"cpu", CUDA device id, torch device) for None / "cpu" / "cuda[:k]" / k."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    if device.type == "cpu":
        return "cpu", None, device
    if device.type != "cuda":
        raise ValueError(f"device must be None, 'cpu' or a CUDA device, got {device}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device={device} asked for, but torch sees no CUDA GPU; pass device='cpu' "
                           f"(VP8/VP9/MJPEG shards only) or run on a GPU machine")
    index = torch.cuda.current_device() if device.index is None else device.index
    return "gpu", index, torch.device("cuda", index)


def sample_key(source_info: str) -> tuple[str, str]:
    """(sample key, shard path) from the reader's source info "shard.tar:offset:key.json"."""
    shard, _, member = source_info.rsplit(":", 2)
    return member.split(".", 1)[0], shard


class SamplingStage:
    """The reader pipeline and the recipe's sampler: one batch of clip-pipeline inputs per `draw()`.

    Everything a batch needs apart from decoding, on the calling thread: the reader's outputs, the
    json members parsed, the recipe's random choices from Generator((seed, rank, batch number)), and
    the reader's checkpoint right after the batch.
    """

    def __init__(self, shards: ShardSet, batch_size: int, recipe, *, rank: int, world_size: int, seed: int,
                 shuffle: bool, initial_fill: int, checkpoint=None, first_batch: int = 0):
        self.root, self.recipe, self.seed, self.rank = shards.root, recipe, seed, rank
        self.next_batch = first_batch
        self.pipe = reader_pipeline(shards, rank, world_size, shuffle=shuffle, initial_fill=initial_fill,
                                    reader_seed=seed, batch_size=batch_size, num_threads=1, device_id=None,
                                    seed=seed * 7919 + rank + 1, prefetch_queue_depth=2, exec_dynamic=True,
                                    checkpoint=checkpoint)
        self.pipe.build()

    def draw(self) -> dict:
        """{"encoded": TensorList, "arrays": {name: array}, "sources": [...], "checkpoint": str} of the next batch."""
        try:
            encoded, meta = self.pipe.run()
            checkpoint = self.pipe.checkpoint()
            sources = [meta[i].source_info() for i in range(len(meta))]
            metas = parse_metas([np.asarray(meta[i]).tobytes() for i in range(len(meta))], sources)
        except Exception as err:  # the reader or the json (its message names the source or file)
            raise RuntimeError(f"reading samples from {self.root} failed: {err}") from err
        rng = np.random.default_rng([self.seed, self.rank, self.next_batch])
        arrays = self.recipe.sample(metas, rng)
        self.next_batch += 1
        return {"encoded": encoded, "arrays": arrays, "sources": sources, "checkpoint": checkpoint}


class _Failed:
    """An exception raised on a worker thread, handed to the consumer in its turn."""

    def __init__(self, error: BaseException):
        self.error = error


class _Closing(Exception):
    """The loader is closing: a worker waiting for input stops."""


class _Ahead:
    """A daemon thread that calls `step()` over and over, keeping up to `depth` results ready.

    An exception ends the thread and is raised by `get()` in its turn (and by every later get).
    """

    def __init__(self, step, depth: int, name: str):
        self.step, self.failure = step, None
        self.ready = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                item = self.step()
            except BaseException as err:  # handed to the consumer, which raises it
                self.failure = err
                item = _Failed(err)
            while not self.stop.is_set():
                try:
                    self.ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failed):
                return

    def get(self, until: threading.Event | None = None):
        """The next result; raises the worker's exception, or _Closing once `until` is set."""
        while True:
            try:
                item = self.ready.get(timeout=0.1)
                break
            except queue.Empty:
                if until is not None and until.is_set():
                    raise _Closing() from None
                if not self.thread.is_alive() and self.ready.empty():
                    raise RuntimeError(f"{self.thread.name} stopped") from None
        if isinstance(item, _Failed):
            self.ready.put(item)  # every later get fails the same way
            raise item.error
        return item

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():
            try:  # unblock a worker waiting on a full queue
                self.ready.get_nowait()
            except queue.Empty:
                pass
            self.thread.join(timeout=0.05)
        self.step = None


class _Engine:
    """The running part of a ClipLoader, off the training thread, with no reference back to it:

    sampler thread     SamplingStage.draw() → up to prefetch + 1 drawn batches
    collector thread   clip_pipeline.run() (its external source takes drawn batches) → recipe.batch
                       → one finished (batch, reader checkpoint) ready for the training thread
    """

    def __init__(self, stage: SamplingStage, recipe, pipeline_options: dict, backend: str, prefetch: int):
        self.recipe, self.stage, self.pending, self.closing = recipe, stage, deque(), threading.Event()
        self.drawn = _Ahead(stage.draw, depth=prefetch + 1, name="dali_pipes-sampler")
        self.clips = clip_pipeline(recipe, backend, self._take, prefetch_queue_depth=prefetch, exec_dynamic=True,
                                   **pipeline_options)
        self.clips.build()
        self.collected = _Ahead(self._collect, depth=1, name="dali_pipes-collector")

    def _take(self):
        """External-source callback of the clip pipeline (collector thread): the next drawn batch."""
        drawn = self.drawn.get(until=self.closing)
        self.pending.append(drawn)
        return (drawn["encoded"], *(drawn["arrays"][name] for name in self.recipe.input_names))

    def _collect(self) -> tuple[dict, str]:
        try:
            outputs = self.clips.run()
        except Exception as err:
            if self.closing.is_set():
                raise _Closing() from None
            if self.drawn.failure is not None:  # reading failed: its message says where
                raise self.drawn.failure from None
            raise self._decode_error(err) from err
        drawn = self.pending.popleft()
        if hasattr(self.recipe, "release"):  # its arrays were consumed and the iteration is done
            self.recipe.release(drawn["arrays"])
        keys = [sample_key(s)[0] for s in drawn["sources"]]
        # DLPack shares DALI's buffers (no copy); with exec_dynamic DALI never reuses a returned buffer.
        batch = self.recipe.batch(tuple(torch.from_dlpack(out.as_tensor()) for out in outputs), keys)
        return batch, drawn["checkpoint"]

    def _decode_error(self, err: Exception) -> Exception:
        """A decode failure, reported by the keys of the samples that fail PyAV's decoder too."""
        if not self.pending:
            return err
        drawn = self.pending[0]
        bad = []
        for i, source in enumerate(drawn["sources"]):
            key, shard = sample_key(source)
            if not _decodable(np.asarray(drawn["encoded"][i]).tobytes()):
                bad.append(f"{key} (in {shard})")
        named = bad or [f"{sample_key(s)[0]} (in {sample_key(s)[1]})" for s in drawn["sources"]]
        what = "corrupt samples" if bad else "decoding failed in a batch holding"
        return RuntimeError(f"{what}: {', '.join(named)}; remove them from the source and repack "
                            f"(vmae2-shard skips undecodable inputs). DALI said: {str(err).splitlines()[0]}")

    def close(self) -> None:
        """Stop both threads, then drop both pipelines (DALI frees a pipeline with its last reference)."""
        self.closing.set()
        self.collected.close()  # a collector waiting for a drawn batch gives up (_Closing)
        self.drawn.close()
        self.clips = self.stage = self.drawn = self.collected = None
        self.pending.clear()


class ClipLoader:
    """Iterable over one epoch at a time (len = batches per epoch) of `recipe.batch(...)` dicts."""

    def __init__(self, shards: ShardSet, batch_size: int, recipe, *, device=None, rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_threads: int | None = None, shuffle: bool = True,
                 initial_fill: int = 256, prefetch: int = 2):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batch_size < 1 or prefetch < 1:
            raise ValueError(f"batch_size and prefetch must be positive, got {batch_size} and {prefetch}")
        self.shards, self.recipe = shards, recipe
        self.backend, self.device_id, self.device = resolve_device(device)
        if self.backend == "cpu" and set(shards.codecs) - set(CPU_DECODABLE_CODECS):
            raise ValueError(f"{shards.root}: codecs {sorted(shards.codecs)} need the GPU decoder; DALI's CPU "
                             f"decoder reads only VP8, VP9 and MJPEG: repack with --codec vp9 or use a GPU")
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.num_threads = num_threads or max(1, (os.cpu_count() or 2))
        self.shuffle, self.initial_fill, self.prefetch = shuffle, initial_fill, prefetch
        self.batches_per_epoch = math.ceil(math.ceil(shards.num_samples / world_size) / batch_size)
        self._engine = None
        self._build(checkpoint=None, batches_done=0)

    def sampling_stage(self, checkpoint=None, first_batch: int = 0) -> SamplingStage:
        """A fresh sampling stage of this loader (the sampler thread's; also what bench.loader times alone)."""
        return SamplingStage(self.shards, self.batch_size, self.recipe, rank=self.rank, world_size=self.world_size,
                             seed=self.seed, shuffle=self.shuffle, initial_fill=self.initial_fill,
                             checkpoint=checkpoint, first_batch=first_batch)

    def _build(self, checkpoint, batches_done: int) -> None:
        self.close()
        self._batches_done = batches_done      # batches handed out, over all epochs
        self._last_checkpoint = checkpoint     # reader state right after that batch
        options = dict(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                       seed=self.seed, **getattr(self.recipe, "pipeline_kwargs", {}))  # e.g. enable_conditionals
        self._engine = _Engine(self.sampling_stage(checkpoint, batches_done), self.recipe, options, self.backend,
                               self.prefetch)

    def close(self) -> None:
        """Stop the worker threads and release both pipelines."""
        if self._engine is not None:
            self._engine.close()
        self._engine = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- iteration -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def epoch(self) -> int:
        """Epoch of the next batch (0-based)."""
        return self._batches_done // self.batches_per_epoch

    def __iter__(self):
        """The rest of the current epoch (a whole epoch unless resumed mid-epoch)."""
        if self._engine is None:
            raise RuntimeError("this loader was closed; build a new one")
        remaining = self.batches_per_epoch - self._batches_done % self.batches_per_epoch
        for _ in range(remaining):
            yield self._next_batch()

    def _next_batch(self) -> dict:
        """The training thread's whole share of the work: take a finished batch."""
        batch, checkpoint = self._engine.collected.get()
        self._batches_done += 1
        self._last_checkpoint = checkpoint
        return batch

    # ---- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue right after the last batch handed out."""
        return {"checkpoint": self._last_checkpoint, "batches_done": self._batches_done,
                "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "batch_size": self.batch_size, "num_samples": self.shards.num_samples}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (from state_dict() of a loader built with the same arguments)."""
        for name in ("seed", "rank", "world_size", "batch_size", "num_samples"):
            mine = self.shards.num_samples if name == "num_samples" else getattr(self, name)
            if state[name] != mine:
                raise ValueError(f"loader state was saved with {name}={state[name]} but this loader has "
                                 f"{name}={mine}; build the loader with the arguments of the saved run")
        self._build(checkpoint=state["checkpoint"], batches_done=state["batches_done"])


def _decodable(encoded: bytes) -> bool:
    import io

    import av

    try:
        with av.open(io.BytesIO(encoded)) as container:
            for _ in container.decode(video=0):
                pass
        return True
    except Exception:
        return False
