"""Pure DALI graph functions of fine-tuning and test (no @pipeline_def here; classify.py holds those).

Every random choice is drawn in numpy by the sampling pipeline (views.py) and arrives here as data,
so the clip pipeline is a deterministic function of its inputs and a resumed loader gives the same
batches (DALI cannot checkpoint the video decoder, so nothing random may live next to it). That is
why DALI's own random operators are not used although they handle sequences (one draw per FHWC
sample): fn.random_resized_crop and fn.flip become fn.resize with a drawn ROI (a mirrored ROI
flips), auto_aug.rand_augment becomes auto_aug.core.select over the same DALI operator bodies with
drawn ops and parameters, and fn.erase takes a drawn box.

How the train graph differs from the published PIL/torch implementation (dataset/datasets.py), and
by how much:

- Order: the published code runs RandAugment on the full decoded frames, then the random-resized
  crop, flip and erasing. Here RandAugment runs on the 224×224 crop (4× to 20× fewer pixels):
  rotations and shears turn about the crop's centre instead of the frame's, translations are
  0.45 of the crop's side instead of the frame's, and their fill (grey 128) lands inside the crop.
  Colour ops are per pixel or per frame statistics; contrast and auto-contrast take those over the
  crop instead of the whole frame.
- RandAugment ops: DALI operators (the bodies of nvidia.dali.auto_aug's ops) with timm's exact
  level-to-parameter rules, computed in numpy (views.rand_augment_params), each checked against
  PIL on the same image (tests/test_dali_augment.py): invert, posterize, solarize, solarize-add and
  whole-pixel translations are exact; auto-contrast, colour, contrast and brightness within 1 grey
  level; sharpness within 1 inside, but DALI also filters the 1-pixel border that PIL keeps; rotate
  and shear are bilinear against PIL's bilinear (the published setting asks PIL for bicubic), mean
  difference under 1 grey level, larger only along the edge of the fill; equalize follows OpenCV's
  lookup table, not PIL's: about 7 grey levels apart on average, up to about 30.
- The crop is resized bilinearly without antialiasing, as torch.nn.functional.interpolate in the
  published `random_resized_crop`; test views resize bilinearly without antialiasing, as its cv2.
- Random erasing fills the box with one noise image for all frames (published: fresh per frame),
  clipped to uint8 (the published values live in the normalised space): see views.erase_fill.
"""
from __future__ import annotations

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.auto_aug import augmentations as aug
from nvidia.dali.auto_aug.core import select

from .views import RAND_OPS


def decode_frames(encoded, frames, *, device: str):
    """(F, H, W, 3) uint8: the stored frames listed in `frames` (any order, repeats allowed)."""
    return fn.decoders.video(encoded, device=device, frames=frames, pad_mode="edge")


def crop_resize(frames, roi_start, roi_end, *, size: int):
    """(F, S, S, 3): one box, [y, x] roi_start to roi_end in source pixels, on every frame, resized.

    A box whose x end lies left of its start comes out mirrored: that is the horizontal flip.
    """
    return fn.resize(frames, size=[size, size], roi_start=roi_start, roi_end=roi_end,
                     interp_type=types.INTERP_LINEAR, antialias=False, dtype=types.UINT8)


def _on_device_of(param, data):
    """A CPU per-sample parameter moved next to `data` for arithmetic with it (DALI does not mix devices)."""
    return param.gpu() if data.device == "gpu" else param


def _zero_like(param):
    return param * 0.0


def _posterize(data, mask):
    return data & fn.cast(_on_device_of(mask, data), dtype=types.UINT8)


def _solarize_add(data, shift):
    return aug.solarize_add.op(data, fn.cast(_on_device_of(shift, data), dtype=types.UINT8))


def _contrast(data, factor):
    return aug.contrast.op(data, _on_device_of(factor, data))


_BLUR = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13   # PIL's SMOOTH filter
_IDENT = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)


def _sharpness(data, factor):
    """PIL's Sharpness: blend of the SMOOTH-filtered frame and the frame, as one 3×3 kernel."""
    kernel = types.Constant(_BLUR) * (1.0 - factor) + types.Constant(_IDENT) * factor
    return fn.filter(data, _on_device_of(kernel, data))


def _warp(data, matrix):
    return fn.warp_affine(data, matrix=matrix, fill_value=128, interp_type=types.INTERP_LINEAR, inverse_map=False)


def _op_graphs() -> list:
    """(data, param) → data for each of views.RAND_OPS, then identity; `param` is a per-sample float32."""
    by_name = {
        "auto_contrast": lambda data, _: aug.auto_contrast.op(data, None),
        "equalize": lambda data, _: fn.equalize(data),
        "invert": lambda data, _: aug.invert.op(data, None),
        "rotate": lambda data, angle: fn.rotate(data, angle=angle, fill_value=128, keep_size=True,
                                                interp_type=types.INTERP_LINEAR),
        "posterize": _posterize,
        "solarize": lambda data, threshold: aug.solarize.op(data, _on_device_of(threshold, data)),
        "solarize_add": _solarize_add,
        "color": lambda data, factor: fn.saturation(data, saturation=factor),
        "contrast": _contrast,
        "brightness": lambda data, factor: fn.brightness(data, brightness=factor),
        "sharpness": _sharpness,
        # PIL's affine maps output to input pixels, DALI's (inverse_map=False) input to output: negated.
        "shear_x": lambda data, shear: _warp(data, fn.transforms.shear(shear=fn.stack(-shear, _zero_like(shear)))),
        "shear_y": lambda data, shear: _warp(data, fn.transforms.shear(shear=fn.stack(_zero_like(shear), -shear))),
        "translate_x": lambda data, px: _warp(data, fn.transforms.translation(offset=fn.stack(-px, _zero_like(px)))),
        "translate_y": lambda data, px: _warp(data, fn.transforms.translation(offset=fn.stack(_zero_like(px), -px))),
    }
    return [by_name[name] for name in RAND_OPS] + [lambda data, _: data]


def rand_augment(video, op, param, *, num_ops: int):
    """RandAugment with ops and parameters drawn outside (views.rand_augment_draws), one draw per clip.

    `op` (num_ops,) int32 and `param` (num_ops,) float32 per sample; each op acts on every frame of
    its clip. Needs a pipeline built with enable_conditionals=True: DALI's select splits the batch
    by op, so each sample runs only its own ops.
    """
    graphs = _op_graphs()
    for layer in range(num_ops):
        video = select(graphs, op[layer], video, param[layer])
    return video


def erase(video, anchor, shape, fill):
    """Random erasing, one box on every frame: anchor [y0, x0], shape [h, w] float32 (0 × 0: none).

    `fill` (S, S, 3) uint8 is the noise inside the box and 0 outside it (views.erase_fill), so
    clearing the box and adding `fill` writes the noise there and leaves the rest.
    """
    cleared = fn.erase(video, anchor=anchor, shape=shape, axis_names="HW", fill_value=0)
    return cleared + fill


def recolour(video, mix, bias):
    """(F, S, S, 3) uint8, each output channel c = Σ_k mix[c, k]·x_k + bias[c]: with a permutation matrix the
    channels come out reordered, with its negative and bias 255 also inverted (views.colour_mixes)."""
    x = fn.cast(video, dtype=types.FLOAT)
    mix, bias = _on_device_of(mix, x), _on_device_of(bias, x)
    channels = [x[:, :, :, k] for k in range(3)]
    out = [mix[c, 0] * channels[0] + mix[c, 1] * channels[1] + mix[c, 2] * channels[2] + bias[c] for c in range(3)]
    return fn.cast(fn.stack(*out, axis=3), dtype=types.UINT8)
