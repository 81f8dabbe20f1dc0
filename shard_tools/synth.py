"""The built-in synthetic dataset: textured shapes whose MOTION is the label.

Each clip shows one textured shape (ellipse, box, triangle or star, with stripes, checks or
rings in random colours) over a random smooth textured background. The class is only the motion:
translate left/right/up/down, rotate clockwise/anticlockwise (in image coordinates, y down), grow
or shrink. Shape, textures, colours, mid-clip position, angle, size and speed are drawn
independently of the class, so a single frame does not reveal it; a model has to learn motion,
as on Something-Something. Clip i of seed s is a pure function of (s, i, size, frames).

`make_synthetic` renders the clips with numpy, encodes them (VP9 by default) into
OUT/.staging/synth-src/{class}/, and packs that folder with `--codec copy`.
"""

import json
import os
from pathlib import Path

import numpy as np

from shard_tools.format import MANIFEST_NAME, STAGING_DIR
from shard_tools.pack import DEFAULT_SHARD_SIZE, PackError, pack
from shard_tools.pool import run_pool, worker_pool
from shard_tools.transcode import ENCODERS, StreamWriter, check_encoder

CLASSES = ("translate_left", "translate_right", "translate_up", "translate_down",
           "rotate_cw", "rotate_ccw", "grow", "shrink")
SHAPES = ("ellipse", "box", "triangle", "star")
SIZE_RANGE = (0.12, 0.22)  # shape radius as a share of the short side


def _smooth_noise(rng, height, width, cells):
    """Bilinearly upsampled random grid in [0, 1]: a cheap smooth texture."""
    grid = rng.random((cells + 1, cells + 1))
    ys, xs = np.linspace(0, cells, height), np.linspace(0, cells, width)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    g = grid
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bottom = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng, height, width):
    colours = rng.random((2, 3))
    mix = _smooth_noise(rng, height, width, int(rng.integers(3, 9)))[..., None]
    image = colours[0] * (1 - mix) + colours[1] * mix
    image += rng.normal(0, 0.04, (height, width, 1))  # fine grain, so the background has texture
    return image


def _shape_mask(shape, u, v):
    """Inside-test of a unit-size shape in its own (rotated, scaled) coordinates."""
    if shape == "ellipse":
        return u * u + (v / 0.7) ** 2 <= 1
    if shape == "box":
        return (np.abs(u) <= 1) & (np.abs(v) <= 0.75)
    radius, angle = np.hypot(u, v), np.arctan2(v, u)
    if shape == "triangle":
        sector = 2 * np.pi / 3
        return radius * np.cos((angle % sector) - sector / 2) <= 0.55
    return radius <= 0.55 + 0.45 * np.cos(5 * angle) ** 2  # star


def _shape_texture(rng):
    kind, freq = rng.integers(3), rng.uniform(2.5, 5.0)
    colours = rng.random((2, 3))

    def texture(u, v):
        if kind == 0:
            mix = (np.sin(freq * np.pi * u) > 0)
        elif kind == 1:
            mix = (np.floor(freq * u) + np.floor(freq * v)) % 2 == 0
        else:
            mix = (np.hypot(u, v + 0.3) * freq * 2).astype(int) % 2 == 0
        return np.where(mix[..., None], colours[0], colours[1])
    return texture


def _scene(seed, index, width, height):
    """The clip's generator after its appearance draws: (rng, background, shape name, texture)."""
    rng = np.random.default_rng([seed, index])
    background = _background(rng, height, width)
    shape, texture = SHAPES[rng.integers(len(SHAPES))], _shape_texture(rng)
    return rng, background, shape, texture


def clip_shape(seed, index, width=160, height=128):
    """The shape kind (an index into SHAPES) of synthetic clip `index`: an appearance label.

    bench/budget.py uses it to check that a classifier can learn what a single frame shows.
    """
    return SHAPES.index(_scene(seed, index, width, height)[2])


def render_clip(seed, index, num_frames=64, width=160, height=128):
    """(label, frames uint8 (T, H, W, 3)) of synthetic clip `index` for `seed`."""
    label = index % len(CLASSES)
    motion = CLASSES[label]
    rng, background, shape, texture = _scene(seed, index, width, height)
    size = rng.uniform(*SIZE_RANGE) * min(width, height)
    mid = np.array([rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height])
    angle0 = rng.uniform(0, 2 * np.pi)
    t = np.arange(num_frames) - (num_frames - 1) / 2  # time relative to mid-clip
    speed = rng.uniform(0.5, 1.0)  # px per frame
    direction = {"translate_left": (-1, 0), "translate_right": (1, 0),
                 "translate_up": (0, -1), "translate_down": (0, 1)}.get(motion, (0, 0))
    centres = mid[None, :] + np.outer(t * speed, direction)
    spin = rng.uniform(0.04, 0.08) * {"rotate_cw": 1, "rotate_ccw": -1}.get(motion, 0)
    angles = angle0 + spin * t
    growth = np.log(rng.uniform(1.6, 2.4)) / num_frames * {"grow": 1, "shrink": -1}.get(motion, 0)
    sizes = size * np.exp(growth * t)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        dx, dy = xs - centres[i, 0], ys - centres[i, 1]
        cos, sin = np.cos(angles[i]), np.sin(angles[i])
        u, v = (cos * dx + sin * dy) / sizes[i], (-sin * dx + cos * dy) / sizes[i]
        mask = _shape_mask(shape, u, v)[..., None]
        image = np.where(mask, texture(u, v), background)
        frames[i] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return label, frames


def write_clip(path, seed, index, codec, num_frames, width, height, fps, gop):
    """Render and encode one clip to `path` (temp name + rename); skip when it exists."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    _, frames = render_clip(seed, index, num_frames, width, height)
    writer = StreamWriter(codec, fps, width, height, gop)
    for frame in frames:
        writer.write(frame)
    data = writer.close()
    with open(f"{path}.tmp", "wb") as f:
        f.write(data)
    os.replace(f"{path}.tmp", path)
    return len(data)


def make_synthetic(out, num_videos, codec="vp9", seed=0, num_frames=64, width=160, height=128,
                   fps=25, gop=16, shard_size=DEFAULT_SHARD_SIZE, prefix="train", workers=1,
                   progress=True):
    """Generate `num_videos` clips and pack them into OUT; returns pack's summary dict.

    The manifest's labels are CLASSES in order; clip i has label i % 8 before the shuffle.
    """
    check_encoder(codec)
    provenance = {"synth": {"num_videos": num_videos, "codec": codec, "num_frames": num_frames,
                            "width": width, "height": height, "fps": fps, "gop": gop}}
    manifest_path = Path(out) / MANIFEST_NAME
    if manifest_path.is_file():  # fail before generating anything when OUT is another set
        recorded = json.loads(manifest_path.read_text(encoding="utf-8"))["args"].get("provenance")
        if recorded != provenance:
            raise PackError(f"OUT {out} holds a dataset made with {recorded}, not {provenance}; "
                            f"choose a new OUT")
    src = Path(out) / STAGING_DIR / "synth-src"
    if not manifest_path.is_file():
        for name in CLASSES:
            (src / name).mkdir(parents=True, exist_ok=True)
        ext = ENCODERS[codec].ext
        tasks = [(str(src / CLASSES[i % len(CLASSES)] / f"synth-{i:06d}.{ext}"), seed, i, codec,
                  num_frames, width, height, fps, gop) for i in range(num_videos)]
        with worker_pool(workers) as pool:
            run_pool(write_clip, tasks, pool, progress, "synthesise", unit="video",
                     bytes_of=lambda size: size)
    return pack(src, out, codec="copy", seed=seed, shard_size=shard_size, prefix=prefix,
                labels=list(CLASSES), workers=workers, progress=progress, provenance=provenance)
