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

Bad samples (bad_samples.py): the sampler checks each video's bytes against its json's checksum;
the collector, when the clip pipeline raises, decodes each sample of that batch alone. A bad sample
takes the data of a good sample of its batch, a batch with no good sample is dropped (the next one
takes its place), and each is recorded: batch["bad_samples"] lists those met since the previous
batch, bad_samples() and samples_read() the tally so far (kept in state_dict()).

Resume: the draws for the k-th batch the reader gives come from numpy's Generator seeded with
(seed, rank, k) (k counts reader batches, so also any dropped for having no good sample), and the
read position lives in the reader pipeline, which DALI checkpoints. Each batch carries the reader's
checkpoint taken right after it was read; state_dict() holds the one of the last batch handed out,
so a loader restored from it continues with exactly the batches the uninterrupted one would give.
"""
from __future__ import annotations

import itertools
import math
import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from shard_tools.format import CPU_DECODABLE_CODECS

from .bad_samples import (
    BadSampleTally,
    bad_record,
    checksum_failures,
    no_good_sample_error,
    replacement_rows,
    sample_key,
)
from .pipeline import clip_pipeline, reader_pipeline
from .sampling import parse_metas
from .shards import ShardSet
from .windows import dali_reason

# Threads that CRC a batch's videos for the sampler: 32 videos of 1.5 MB took one core of an H200 host
# 22 ms (median), most of a batch's time at the loader's target rate; 4 threads took 4 ms.
CHECKSUM_THREADS = 4


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


def replace_rows(drawn: dict, bad_rows) -> None:
    """Give each bad row of a drawn batch the encoded video, source and drawn arrays of a good row."""
    rows = replacement_rows(len(drawn["sources"]), bad_rows)
    encoded = drawn["encoded"]
    drawn["encoded"] = [np.array(encoded[row]) for row in rows]  # copies: only a batch with a bad sample pays
    drawn["sources"] = [drawn["sources"][row] for row in rows]
    for array in drawn["arrays"].values():
        array[:] = array[rows]  # in place: the recipe may own these buffers and reuse them


def add_counts(drawn: dict, dropped: dict) -> None:
    """A dropped batch's samples read and bad samples, counted with the batch handed out in its place."""
    drawn["read"] += dropped["read"]
    drawn["bad"] = dropped["bad"] + drawn["bad"]


class SamplingStage:
    """The reader pipeline and the recipe's sampler: one batch of clip-pipeline inputs per `draw()`.

    Everything a batch needs apart from decoding, on the calling thread: the reader's outputs, the
    json members parsed, each video checked against its checksum, the recipe's random choices from
    Generator((seed, rank, reader batch number)), and the reader's checkpoint right after the batch.
    max_fruitless: reader batches in a row with no good sample before draw() gives up (0: never).
    """

    def __init__(self, shards: ShardSet, batch_size: int, recipe, *, rank: int, world_size: int, seed: int,
                 shuffle: bool, initial_fill: int, checkpoint=None, first_batch: int = 0, max_fruitless: int = 0):
        self.root, self.recipe, self.seed, self.rank = shards.root, recipe, seed, rank
        self.next_batch, self.max_fruitless = first_batch, max_fruitless
        self.pipe = reader_pipeline(shards, rank, world_size, shuffle=shuffle, initial_fill=initial_fill,
                                    reader_seed=seed, batch_size=batch_size, num_threads=1, device_id=None,
                                    seed=seed * 7919 + rank + 1, prefetch_queue_depth=2, exec_dynamic=True,
                                    checkpoint=checkpoint)
        self.pipe.build()
        self.hashers = ThreadPoolExecutor(max_workers=min(CHECKSUM_THREADS, os.cpu_count() or 1),
                                          thread_name_prefix="dali_pipes-checksum")

    def _read(self) -> tuple:
        """(encoded videos, parsed json, source infos, reader checkpoint) of the reader's next batch."""
        try:
            encoded, meta = self.pipe.run()
            checkpoint = self.pipe.checkpoint()
            sources = [meta[i].source_info() for i in range(len(meta))]
            metas = parse_metas([np.asarray(meta[i]).tobytes() for i in range(len(meta))], sources)
        except Exception as err:  # the reader or the json (its message names the source or file)
            raise RuntimeError(f"reading samples from {self.root} failed: {err}") from err
        return encoded, metas, sources, checkpoint

    def draw(self) -> dict:
        """The next batch with a good sample, as a dict:

            encoded, arrays, sources   the reader's videos (TensorList, or arrays where a row was replaced),
                                       recipe.sample's {name: array}, the reader's source infos
            checkpoint                 the reader's state right after this batch
            index                      the reader batch's number (its draws' seed)
            read, bad                  samples read for it and bad_samples records of the bad ones, with those
                                       of the batches before it that had no good sample (dropped)
        """
        read, bad = 0, []
        for fruitless in itertools.count():
            if self.max_fruitless and fruitless == self.max_fruitless:
                raise no_good_sample_error(bad, fruitless)
            encoded, metas, sources, checkpoint = self._read()
            index, self.next_batch = self.next_batch, self.next_batch + 1
            read += len(sources)
            failures = checksum_failures(encoded, metas, self.hashers.map)
            bad += [bad_record(sources[row], "checksum", why) for row, why in failures.items()]
            if len(failures) < len(sources):
                break
        rng = np.random.default_rng([self.seed, self.rank, index])
        drawn = {"encoded": encoded, "arrays": self.recipe.sample(metas, rng), "sources": sources,
                 "checkpoint": checkpoint, "index": index, "read": read, "bad": bad}
        if failures:
            replace_rows(drawn, failures)
        return drawn

    def close(self) -> None:
        """Stop the checksum threads (the reader pipeline goes with the last reference to the stage)."""
        self.hashers.shutdown(wait=True)


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
                       → one finished (batch, its reader checkpoint and counts) ready for the training thread

    When the clip pipeline raises on a batch, the collector finds the samples that fail alone, replaces
    them (or drops the batch) and builds a fresh clip pipeline, fed again with the batches the old one
    had taken; max_fruitless batches dropped in a row stop the loader.
    """

    def __init__(self, stage: SamplingStage, recipe, pipeline_options: dict, backend: str, prefetch: int,
                 max_fruitless: int = 0):
        self.recipe, self.stage, self.pending, self.closing = recipe, stage, deque(), threading.Event()
        self.options, self.backend, self.prefetch = pipeline_options, backend, prefetch
        self.refeed = deque()    # drawn batches to feed again, before new ones, after a rebuild
        self.carry = None        # counts of a dropped batch, for the batch that takes its place
        self.fruitless, self.max_fruitless = 0, max_fruitless
        self.drawn = _Ahead(stage.draw, depth=prefetch + 1, name="dali_pipes-sampler")
        self.clips = self._clip_pipeline()
        self.collected = _Ahead(self._collect, depth=1, name="dali_pipes-collector")

    def _clip_pipeline(self):
        clips = clip_pipeline(self.recipe, self.backend, self._take, prefetch_queue_depth=self.prefetch,
                              exec_dynamic=True, **self.options)
        clips.build()
        return clips

    def _take(self):
        """External-source callback of the clip pipeline (collector thread): the next drawn batch."""
        drawn = self.refeed.popleft() if self.refeed else self.drawn.get(until=self.closing)
        if self.carry is not None:
            add_counts(drawn, self.carry)
            self.carry = None
        self.pending.append(drawn)
        return (drawn["encoded"], *(drawn["arrays"][name] for name in self.recipe.input_names))

    def _collect(self) -> tuple[dict, dict]:
        while True:
            try:
                outputs = self.clips.run()
                break
            except Exception as err:
                if self.closing.is_set():
                    raise _Closing() from None
                if self.drawn.failure is not None:  # reading failed: its message says where
                    raise self.drawn.failure from None
                self._drop_undecodable(err)
        drawn = self.pending.popleft()
        self.fruitless = 0
        if hasattr(self.recipe, "release"):  # its arrays were consumed and the iteration is done
            self.recipe.release(drawn["arrays"])
        keys = [sample_key(s)[0] for s in drawn["sources"]]
        # DLPack shares DALI's buffers (no copy); with exec_dynamic DALI never reuses a returned buffer.
        batch = self.recipe.batch(tuple(torch.from_dlpack(out.as_tensor()) for out in outputs), keys)
        return batch, {name: drawn[name] for name in ("checkpoint", "index", "read", "bad")}

    def _drop_undecodable(self, err: Exception) -> None:
        """The clip pipeline raised on the batch at the head of `pending`: record the samples that fail
        alone, give their rows a good sample's data (or drop the batch when none is good), and feed a
        fresh pipeline that batch first, then the batches the old one had taken."""
        failed, in_flight = self.pending.popleft(), list(self.pending)
        self.pending.clear()
        self.clips = None  # after a decoder error the pipeline's state is not to be trusted (NVDEC's least)
        reasons = {}
        for row in range(len(failed["sources"])):
            why = self._fails_alone(failed, row)
            if why is not None:
                reasons[row] = why
        if not reasons:
            named = ", ".join(f"{key} (in {shard})" for key, shard in map(sample_key, failed["sources"]))
            raise RuntimeError(f"decoding failed in a batch holding {named}, yet each of them decodes alone; "
                               f"DALI said: {dali_reason(err)}") from err
        recorded = set()
        for row, why in reasons.items():
            key = sample_key(failed["sources"][row])[0]
            if key not in recorded:  # a row that took a good row's data names that sample again
                recorded.add(key)
                failed["bad"].append(bad_record(failed["sources"][row], "decode", why))
        if len(reasons) < len(failed["sources"]):
            replace_rows(failed, reasons)
            self.refeed = deque([failed, *in_flight, *self.refeed])
        else:
            self.fruitless += 1
            if self.fruitless == self.max_fruitless:
                raise no_good_sample_error(failed["bad"], self.fruitless)
            if hasattr(self.recipe, "release"):
                self.recipe.release(failed["arrays"])
            if in_flight:
                add_counts(in_flight[0], failed)
            elif self.carry is not None:
                add_counts(self.carry, failed)
            else:
                self.carry = {"read": failed["read"], "bad": failed["bad"]}
            self.refeed = deque([*in_flight, *self.refeed])
        self.clips = self._clip_pipeline()

    def _fails_alone(self, drawn: dict, row: int) -> str | None:
        """Why sample `row` of a drawn batch fails in a clip pipeline of its own, or None when it decodes."""
        one = ([np.array(drawn["encoded"][row])], *(drawn["arrays"][name][row:row + 1] for name in
                                                    self.recipe.input_names))
        options = {**self.options, "batch_size": 1, "num_threads": 1}
        try:
            pipe = clip_pipeline(self.recipe, self.backend, lambda: one, prefetch_queue_depth=1, exec_dynamic=True,
                                 **options)
            pipe.build()
            pipe.run()
        except Exception as err:
            return dali_reason(err)
        return None

    def close(self) -> None:
        """Stop both threads, then drop both pipelines (DALI frees a pipeline with its last reference)."""
        self.closing.set()
        self.collected.close()  # a collector waiting for a drawn batch gives up (_Closing)
        self.drawn.close()
        self.stage.close()
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
        self._tally = BadSampleTally()
        self._build(checkpoint=None, batches_done=0, batches_drawn=0)

    def sampling_stage(self, checkpoint=None, first_batch: int = 0) -> SamplingStage:
        """A fresh sampling stage of this loader (the sampler thread's; also what bench.loader times alone)."""
        return SamplingStage(self.shards, self.batch_size, self.recipe, rank=self.rank, world_size=self.world_size,
                             seed=self.seed, shuffle=self.shuffle, initial_fill=self.initial_fill,
                             checkpoint=checkpoint, first_batch=first_batch, max_fruitless=self.batches_per_epoch)

    def _build(self, checkpoint, batches_done: int, batches_drawn: int) -> None:
        self.close()
        self._batches_done = batches_done      # batches handed out, over all epochs
        self._batches_drawn = batches_drawn    # reader batches up to and with the last one handed out
        self._last_checkpoint = checkpoint     # reader state right after that batch
        options = dict(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                       seed=self.seed, **getattr(self.recipe, "pipeline_kwargs", {}))  # e.g. enable_conditionals
        self._engine = _Engine(self.sampling_stage(checkpoint, batches_drawn), self.recipe, options, self.backend,
                               self.prefetch, max_fruitless=self.batches_per_epoch)

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
        batch, done = self._engine.collected.get()
        self._batches_done += 1
        self._batches_drawn = done["index"] + 1
        self._last_checkpoint = done["checkpoint"]
        self._tally.add(done["read"], done["bad"])
        batch["bad_samples"] = done["bad"]
        return batch

    def bad_samples(self) -> list[dict]:
        """Each bad sample met so far in the batches handed out: {key, shard, reason, detail, count}."""
        return self._tally.bad_samples()

    def samples_read(self) -> int:
        """Samples read for the batches handed out so far, bad ones and those of dropped batches included."""
        return self._tally.samples_read

    # ---- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue right after the last batch handed out."""
        return {"checkpoint": self._last_checkpoint, "batches_done": self._batches_done,
                "batches_drawn": self._batches_drawn, **self._tally.state_dict(),
                "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "batch_size": self.batch_size, "num_samples": self.shards.num_samples}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (from state_dict() of a loader built with the same arguments)."""
        for name in ("seed", "rank", "world_size", "batch_size", "num_samples"):
            mine = self.shards.num_samples if name == "num_samples" else getattr(self, name)
            if state[name] != mine:
                raise ValueError(f"loader state was saved with {name}={state[name]} but this loader has "
                                 f"{name}={mine}; build the loader with the arguments of the saved run")
        # A state saved before batches could be dropped: every reader batch was handed out.
        batches_drawn = state.get("batches_drawn", state["batches_done"])
        self._build(checkpoint=state["checkpoint"], batches_done=state["batches_done"], batches_drawn=batches_drawn)
        self._tally.load_state_dict(state)
