"""The two @pipeline_defs of the engine: sampling (reader + parameters) and clips (decode + crops).

The clip pipeline's inputs are external sources fed, batch by batch, with the sampling pipeline's
outputs (loader.py does the feeding); see graph.py for why the engine is split in two.
"""
from __future__ import annotations

from nvidia.dali import fn, pipeline_def

from . import graph
from .manifest import ShardSet
from .sampling import SamplingConfig

# Names of the clip pipeline's external sources, in the order the sampling pipeline emits them.
CLIP_INPUTS = ("encoded", "start", "roi_start", "roi_end", "visible_idx", "query_idx", "loss_idx", "label")
CLIP_OUTPUTS = ("video", "visible_idx", "query_idx", "loss_idx", "label")


@pipeline_def(enable_checkpointing=True)
def sampling_pipeline(shards: ShardSet, cfg: SamplingConfig, shard_id: int, num_shards: int,
                      shuffle: bool = True, initial_fill: int = 1024, reader_seed: int = 0):
    """Encoded videos and json members from the reader, plus everything random about each sample."""
    encoded, meta = graph.read_samples(shards.tar_paths, shards.index_paths, shards.video_exts,
                                       shard_id=shard_id, num_shards=num_shards, shuffle=shuffle,
                                       initial_fill=initial_fill, seed=reader_seed)
    params = graph.sample_parameters(meta, cfg)
    return (encoded, *params, meta)


@pipeline_def
def clip_pipeline(cfg: SamplingConfig, device: str, source):
    """Decoded, cropped, resized clips (B, N, T, S, S, 3) uint8 and the masks, on `device`.

    `source()` returns the next batch of CLIP_INPUTS (a tuple of batches). device "gpu": NVDEC decode (mixed) and GPU resize; "cpu": FFmpeg decode and CPU resize. The graph
    is the same, so the CPU tests exercise the GPU path's graph.
    """
    inputs = dict(zip(CLIP_INPUTS, fn.external_source(source=source, num_outputs=len(CLIP_INPUTS),
                                                       batch=True, no_copy=False)))
    decode_device = "mixed" if device == "gpu" else "cpu"
    frames = graph.decode_clip(inputs["encoded"], inputs["start"], num_frames=cfg.num_frames,
                               stored_stride=cfg.stored_stride, device=decode_device)
    video = graph.multiscale_crops(frames, inputs["roi_start"], inputs["roi_end"],
                                   num_sample=cfg.num_sample, img_size=cfg.img_size)
    extras = [inputs[k] for k in CLIP_OUTPUTS[1:]]
    if device == "gpu":
        extras = [x.gpu() for x in extras]
    return (video, *extras)

