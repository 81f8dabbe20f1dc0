"""The fine-tuning augmentation graph (dali_pipes.augment) on self-describing frames, on the CPU.

Frames come straight from tests/test_dali_clips.clip_frames (no codec in the way), so a crop's box
and a flip read back to a fraction of a pixel from the G and B ramps of every single frame.
"""
from __future__ import annotations

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def
from test_dali_clips import HEIGHT, WIDTH, clip_frames, crop_box, frame_numbers

from dali_pipes import augment
from dali_pipes.views import (
    IDENTITY,
    RAND_OPS,
    EraseConfig,
    erase_boxes,
    erase_fill,
    random_resized_boxes,
)

SIZE, T = 32, 6


def feeder(values):
    batch = [np.ascontiguousarray(x) for x in values]
    return lambda: batch


def run_graph(graph, inputs: dict, conditionals: bool = False):
    """Outputs of graph(**DataNodes) for one batch of per-sample arrays `inputs` (lists of equal length)."""
    batch = len(next(iter(inputs.values())))

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, enable_conditionals=conditionals)
    def pipe():
        nodes = {name: fn.external_source(source=feeder(values), batch=True,
                                          layout="FHWC" if name == "video" else None)
                 for name, values in inputs.items()}
        return tuple(graph(**nodes))

    p = pipe()
    p.build()
    out = p.run()
    return [[np.asarray(o.at(i)) for i in range(batch)] for o in out]


def per_frame_boxes(clip):
    return np.array([crop_box(clip[f:f + 1]) for f in range(len(clip))])


def test_crop_and_flip_use_one_box_on_every_frame():
    rng = np.random.default_rng(0)
    video = clip_frames(T)
    boxes = random_resized_boxes(rng, [WIDTH] * 8, [HEIGHT] * 8)
    flip = np.arange(8) % 2 == 1
    x0, y0, w, h = boxes.T.astype(np.float32)
    roi_start = np.stack([y0, np.where(flip, x0 + w, x0)], 1)
    roi_end = np.stack([y0 + h, np.where(flip, x0, x0 + w)], 1)
    (out,) = run_graph(lambda video, start, end: [augment.crop_resize(video, start, end, size=SIZE)],
                       {"video": [video] * 8, "start": list(roi_start), "end": list(roi_end)})
    for clip, box, flipped in zip(out, boxes, flip):
        assert clip.shape == (T, SIZE, SIZE, 3)
        assert (frame_numbers(clip) == np.arange(T)).all()
        found = per_frame_boxes(clip)                       # (T, 4): x0, y0, w, h read from each frame
        expected = np.array([box[0] + box[2], box[1], -box[2], box[3]] if flipped else box, dtype=float)
        assert np.abs(found - expected).max() < 1.0, (box, flipped, found)
        assert np.ptp(found, axis=0).max() < 0.2             # the same box on every frame


def test_erasing_writes_the_fill_in_one_box_on_every_frame():
    rng = np.random.default_rng(1)
    boxes = erase_boxes(rng, 6, SIZE, EraseConfig(prob=1.0))
    boxes[5] = 0                                             # a view that is not erased
    fill = erase_fill(rng, boxes, SIZE)
    video = clip_frames(T, SIZE, SIZE)
    anchor = boxes[:, [1, 0]].astype(np.float32)
    shape = boxes[:, [3, 2]].astype(np.float32)
    (out,) = run_graph(lambda video, anchor, shape, fill: [augment.erase(video, anchor, shape, fill)],
                       {"video": [video] * 6, "anchor": list(anchor), "shape": list(shape), "fill": list(fill)})
    for clip, (x0, y0, w, h), noise in zip(out, boxes, fill):
        inside = np.zeros((SIZE, SIZE), bool)
        inside[y0:y0 + h, x0:x0 + w] = True
        assert (clip[:, ~inside] == video[:, ~inside]).all()
        assert (clip[:, inside] == noise[inside]).all()       # same noise on every frame
    assert (out[5] == video).all()


def rand_augment_graph(video, op, param):
    return [augment.rand_augment(video, op, param, num_ops=1)]


def test_each_rand_augment_op_acts_once_per_clip_and_matches_its_rule():
    """One sample per op: every frame of a clip of identical frames gets the same op (one draw per clip)."""
    frame = clip_frames(1, SIZE, SIZE)[0]
    video = np.stack([frame] * 4)
    params = {"rotate": 20.0, "posterize": 192.0, "solarize": 60.0, "solarize_add": 55.0, "color": 1.6,
              "contrast": 0.4, "brightness": 1.5, "sharpness": 1.9, "shear_x": 0.2, "shear_y": -0.2,
              "translate_x": 5.0, "translate_y": -3.0}
    ops = list(range(len(RAND_OPS))) + [IDENTITY]
    op = [np.array([k], np.int32) for k in ops]
    param = [np.array([params.get((RAND_OPS + ("identity",))[k], 0.0)], np.float32) for k in ops]
    (out,) = run_graph(rand_augment_graph, {"video": [video] * len(ops), "op": op, "param": param}, conditionals=True)
    got = dict(zip(RAND_OPS + ("identity",), out))
    for name, clip in got.items():
        assert (clip == clip[0]).all(), f"{name} differs between frames of one clip"
        if name != "identity":
            assert (clip != video).any(), f"{name} left the clip unchanged"
    x = video.astype(int)
    assert (got["identity"] == video).all()
    assert (got["invert"] == 255 - video).all()
    assert (got["posterize"] == (video & 192)).all()
    assert (got["solarize"] == np.where(x < 60, x, 255 - x)).all()
    assert (got["solarize_add"] == np.where(x < 128, np.minimum(x + 55, 255), x)).all()
    assert np.abs(got["brightness"].astype(int) - np.clip(np.round(x * 1.5), 0, 255)).max() <= 1
    shifted = np.full_like(x, 128)                           # translation by whole pixels: an exact shift
    shifted[:, :, 5:] = x[:, :, :-5]
    assert (got["translate_x"][:, 1:-1, 1:-1] == shifted[:, 1:-1, 1:-1]).all()
    shifted = np.full_like(x, 128)
    shifted[:, :-3] = x[:, 3:]
    assert (got["translate_y"][:, 1:-1, 1:-1] == shifted[:, 1:-1, 1:-1]).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_rand_augment_with_drawn_ops_keeps_frames_consistent(seed):
    """Drawn op sequences (4 layers) on clips of identical frames: frames stay identical, views differ."""
    from dali_pipes.views import RandAugmentConfig, rand_augment_draws

    rng = np.random.default_rng(seed)
    draws = rand_augment_draws(rng, 12, RandAugmentConfig(op_prob=1.0), SIZE)
    video = np.stack([clip_frames(1, SIZE, SIZE)[0]] * 3)
    (out,) = run_graph(lambda video, op, param: [augment.rand_augment(video, op, param, num_ops=4)],
                       {"video": [video] * 12, "op": list(draws["op"]), "param": list(draws["param"])},
                       conditionals=True)
    assert all((clip == clip[0]).all() for clip in out)
    assert len({clip.tobytes() for clip in out}) == 12
