"""Pure DALI graph functions of the data engine (no @pipeline_def here; pipeline.py holds those).

The engine is two DALI pipelines and a numpy sampler between them (loader.py):

    reader pipeline   shards → (encoded video, json) per sample, sharded and shuffled       CPU, checkpointed
    sampler           json of a batch → clip starts, crops, masks, labels (numpy, per batch)  producer thread
    clip pipeline     encoded video + the sampler's arrays → decode → crops → device         the heavy part

They are split because DALI 2.4 cannot checkpoint fn.decoders.video ("Checkpointing is not
implemented for this operator"), while the reader, which holds the read position of an epoch, can:
the reader pipeline is checkpointed, the sampler is seeded by the batch's number, and the clip
pipeline is stateless.
"""
from __future__ import annotations

from nvidia.dali import fn, types

READER_NAME = "Reader"


def read_samples(tar_paths, index_paths, video_exts, *, shard_id, num_shards, shuffle, initial_fill, seed):
    """(encoded video, json bytes) per sample from the shards, sharded by rank and shuffled in a buffer.

    pad_last_batch makes every rank run the same number of batches per epoch: a rank whose shard
    is shorter repeats its last sample, and an epoch always starts on a batch boundary.
    """
    video, meta = fn.readers.webdataset(
        paths=tar_paths, index_paths=index_paths, ext=[";".join(video_exts), "json"],
        missing_component_behavior="error", shard_id=shard_id, num_shards=num_shards,
        random_shuffle=shuffle, initial_fill=initial_fill, seed=seed, pad_last_batch=True,
        stick_to_shard=False, name=READER_NAME)
    return video, meta


def decode_clip(encoded, start, *, num_frames, stored_stride, device):
    """(T, H, W, 3) uint8 frames start + i·stride; past the end the last frame repeats (never black)."""
    return fn.decoders.video(encoded, device=device, start_frame=start, sequence_length=num_frames,
                             stride=stored_stride, pad_mode="edge")


def multiscale_crops(frames, roi_start, roi_end, *, num_sample, img_size):
    """(N, T, S, S, 3): N crops of the same frames, each one box on all frames, resized to S×S.

    One decode feeds all N crops (repeated augmentation); resize with an ROI crops and scales in
    one pass (linear, antialiased like the reference's PIL bilinear).
    """
    crops = [fn.resize(frames, size=[img_size, img_size], roi_start=roi_start[i], roi_end=roi_end[i],
                       interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.UINT8)
             for i in range(num_sample)]
    return fn.stack(*crops) if num_sample > 1 else fn.expand_dims(crops[0], axes=[0])
