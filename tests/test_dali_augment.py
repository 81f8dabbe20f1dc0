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


def test_each_rand_augment_op_acts_once_per_clip():
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
    assert (got["identity"] == video).all()


def pil_reference(image: np.ndarray, name: str, param: float) -> np.ndarray:
    """timm's PIL implementation of one RandAugment op at `param` (rand_augment.py, bilinear warps)."""
    from PIL import Image, ImageEnhance, ImageOps

    pil, fill, bilinear = Image.fromarray(image), (128, 128, 128), Image.BILINEAR
    affine = {"shear_x": (1, param, 0, 0, 1, 0), "shear_y": (1, 0, 0, param, 1, 0),
              "translate_x": (1, 0, param, 0, 1, 0), "translate_y": (1, 0, 0, 0, 1, param)}
    if name in affine:
        out = pil.transform(pil.size, Image.AFFINE, affine[name], bilinear, fillcolor=fill)
    elif name == "rotate":
        out = pil.rotate(param, resample=bilinear, fillcolor=fill)
    elif name in ("color", "contrast", "brightness", "sharpness"):
        out = getattr(ImageEnhance, name.capitalize())(pil).enhance(param)
    elif name == "posterize":
        out = ImageOps.posterize(pil, int(param))
    elif name == "solarize":
        out = ImageOps.solarize(pil, param)
    elif name == "solarize_add":
        out = pil.point([min(255, i + int(param)) if i < 128 else i for i in range(256)] * 3)
    else:
        out = {"auto_contrast": ImageOps.autocontrast, "equalize": ImageOps.equalize,
               "invert": ImageOps.invert}[name](pil)
    return np.asarray(out).astype(int)


def test_rand_augment_ops_match_pil_at_timm_parameters():
    """Each op against timm's PIL op on a textured 48×48 image, with the differences augment.py states."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:48]
    image = np.stack([40 + 3 * x, 200 - 2 * y, 90 + 60 * np.sin(x / 5.0) * np.cos(y / 7.0)], -1)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    image[10:20, 25:40] = [250, 30, 30]
    # name: (timm parameter, PIL parameter when it differs in form: posterize takes bits, not a mask)
    cases = {"auto_contrast": 0, "equalize": 0, "invert": 0, "rotate": 20.0, "posterize": (192, 2),
             "solarize": 128, "solarize_add": 55, "color": 1.6, "contrast": 0.4, "brightness": 1.5,
             "sharpness": 1.9, "shear_x": 0.2, "shear_y": -0.2, "translate_x": 5.0, "translate_y": -3.0}
    names = list(cases)
    op = [np.array([RAND_OPS.index(n)], np.int32) for n in names]
    param = [np.array([np.atleast_1d(cases[n])[0]], np.float32) for n in names]
    (out,) = run_graph(rand_augment_graph, {"video": [image[None]] * len(names), "op": op, "param": param},
                       conditionals=True)
    diff = {n: np.abs(o[0].astype(int) - pil_reference(image, n, np.atleast_1d(cases[n])[-1]))
            for n, o in zip(names, out)}
    for name in ("invert", "posterize", "solarize", "solarize_add", "translate_x", "translate_y"):
        assert diff[name].max() == 0, name
    for name in ("auto_contrast", "color", "contrast", "brightness"):
        assert diff[name].max() <= 1, name
    assert diff["sharpness"][1:-1, 1:-1].max() <= 1
    for name in ("rotate", "shear_x", "shear_y"):
        assert diff[name].mean() < 1.0 and (diff[name] > 1).mean() < 0.05, name
    assert 3 < diff["equalize"].mean() < 12                # OpenCV's equalize, not PIL's (stated)


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


def torch_bilinear(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """The published resize: torch bilinear, align_corners=False, no antialiasing, rounded to uint8."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    out = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).permute(0, 2, 3, 1).numpy().astype(int)


def test_crop_resize_matches_the_published_crop_then_interpolate():
    """Train: crop the integer box, then interpolate to S×S. Test: resize the frame, then crop S×S."""
    rng = np.random.default_rng(2)
    video = np.clip(clip_frames(3).astype(float) + rng.normal(0, 20, (3, HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
    x0, y0, w, h = 7, 5, 50, 41
    train_ref = torch_bilinear(video[:, y0:y0 + h, x0:x0 + w], SIZE, SIZE)
    # Test view: 80×64 resized to short side 32 → 40×32, crop x 8…40 ↔ source x 16…80.
    test_ref = torch_bilinear(video, 32, 40)[:, :, 8:40]
    starts = [np.array([y0, x0], np.float32), np.array([0, 16], np.float32)]
    ends = [np.array([y0 + h, x0 + w], np.float32), np.array([64, 80], np.float32)]
    (out,) = run_graph(lambda video, start, end: [augment.crop_resize(video, start, end, size=SIZE)],
                       {"video": [video] * 2, "start": starts, "end": ends})
    assert np.abs(out[0].astype(int) - train_ref).max() <= 1
    assert np.abs(out[1].astype(int) - test_ref).max() <= 1
