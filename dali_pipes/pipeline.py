"""The two @pipeline_defs of the engine: the reader (checkpointed) and the clips (stateless).

The clip pipeline's inputs are external sources fed, batch by batch, with the reader's encoded
videos and the sampler's arrays (loader.py does the feeding); its graph comes from a recipe
(pretrain.py for pre-training), so fine-tuning and test loaders reuse both pipelines. See graph.py
for why the engine is split.
"""
from __future__ import annotations

from nvidia.dali import fn, pipeline_def

from . import graph
from .shards import ShardSet


@pipeline_def(enable_checkpointing=True)
def reader_pipeline(shards: ShardSet, shard_id: int, num_shards: int, shuffle: bool = True,
                    initial_fill: int = 1024, reader_seed: int = 0):
    """(encoded video, json member) per sample; DALI checkpoints its read position and shuffle buffer."""
    return graph.read_samples(shards.tar_paths, shards.index_paths, shards.video_exts, shard_id=shard_id,
                              num_shards=num_shards, shuffle=shuffle, initial_fill=initial_fill, seed=reader_seed)


@pipeline_def
def clip_pipeline(recipe, device: str, source):
    """The recipe's clip graph over external sources ("encoded", *recipe.input_names), outputs on `device`.

    `source()` returns the next batch of those inputs (a tuple of batches). device "gpu": NVDEC decode
    (mixed) and the outputs moved to the GPU; "cpu": FFmpeg decode. The graph is the same, so the CPU
    tests exercise the GPU path's graph.
    """
    names = ("encoded", *recipe.input_names)
    # no_copy: DALI reads the drawn arrays in place; the loader keeps them unchanged until the
    # iteration that reads them has returned its outputs (only then may a recipe reuse them).
    inputs = dict(zip(names, fn.external_source(source=source, num_outputs=len(names), batch=True, no_copy=True)))
    outputs = recipe.clip_graph(inputs, decode_device="mixed" if device == "gpu" else "cpu")
    if device == "gpu":
        outputs = tuple(x if x.device == "gpu" else x.gpu() for x in outputs)
    return tuple(outputs)
