"""The built-in synthetic dataset: a filmed scene of textured shapes whose MOTION is the label.

Each clip films a scene the way a camera films the world, so that, as in natural video, a masked
patch can be predicted from its context:

- light from above: every surface is brighter towards the top of the scene, so every patch holds a
  clear ramp (which per-patch normalisation, spec §4, keeps) and none is flat or grainy;
- a smooth background: a random colour bent by low-frequency waves (a smooth noise field);
- several textured shapes (ellipse, box, triangle or star, with wide stripes, checks or rings, so
  their edges and textures fall at the scale of a patch); the main shape, the largest, moves by
  the clip's class, the others drift and spin at random and pass behind it and each other
  (occlusions);
- a camera that pans and zooms slowly over the whole scene (global motion between frames).

The class is the main shape's motion: translate left/right/up/down, rotate clockwise/anticlockwise
(in scene coordinates, y down), grow or shrink. Its shape kind is an appearance label
(`clip_labels`). Shapes, textures, colours, positions, speeds and the camera are drawn
independently of the class, so a single frame does not reveal it. Clip i of seed s is a pure
function of (s, i, size, frames).

`make_synthetic` renders the clips with numpy, encodes them (VP9 by default, at a mild CRF) into
OUT/.staging/synth-src/{class}/, and packs that folder with `--codec copy`.
"""

import json
import os
from pathlib import Path

import numpy as np

from shard_tools.files import write_bytes_atomic
from shard_tools.format import MANIFEST_NAME, STAGING_DIR
from shard_tools.glyphs import FLIP_PAIRS, GLYPHS, MOTIONS, glyph_labels, render_glyph_scene
from shard_tools.glyphs import STYLES as GLYPH_STYLES
from shard_tools.pack import DEFAULT_SHARD_SIZE, PackError, pack
from shard_tools.pool import run_pool, worker_pool
from shard_tools.transcode import ENCODERS, StreamWriter, check_encoder

CLASSES = ("translate_left", "translate_right", "translate_up", "translate_down",
           "rotate_cw", "rotate_ccw", "grow", "shrink")
SHAPES = ("ellipse", "box", "triangle", "star")
SIZE_RANGE = (0.2, 0.3)        # main shape radius as a share of the short side
OTHER_SIZE_RANGE = (0.12, 0.2)  # radius of the other shapes
NUM_OTHERS = (1, 3)             # how many other shapes, inclusive
# Light from above: every surface, background and shapes, is brighter by up to LIGHT_SPAN (of the
# 0-1 range) towards the top of the scene, as in most natural scenes. Per-patch normalisation
# (spec §4) keeps a patch's shape of light, not its level, so this ramp is a regularity that holds
# in every patch of every clip, and the first one the model learns.
LIGHT_SPAN = 0.7
# Background: a random colour (per channel up to 1 - LIGHT_SPAN - 2 * its wave amplitude) bent by
# low-frequency waves of another random colour direction (a smooth noise field).
WAVE_AMPLITUDE = (0.02, 0.05)   # per channel, of each of NUM_WAVES waves summed and halved
WAVELENGTH_PX = (60, 160)
NUM_WAVES = 2
# Encoder quality (CRF) per codec: milder than the packer's defaults, so that compression noise
# stays small against the patch-scale structure that per-patch normalisation (spec §4) magnifies.
QUALITY = {"vp9": 20, "h264": 18, "hevc": 20, "mjpeg": 2}


def clip_labels(seed, index):
    """{"motion": index into CLASSES, "shape": index into SHAPES} of synthetic clip `index` of `seed`.

    The motion class is the manifest's label; the main shape's kind is an appearance label that one
    frame shows. Both are cheap: nothing is rendered.
    """
    rng = np.random.default_rng([seed, index])
    return {"motion": index % len(CLASSES), "shape": int(rng.integers(len(SHAPES)))}


def _light(world_y, canvas_h):
    """The light from above at world rows `world_y`: LIGHT_SPAN at the top of the scene, 0 at its bottom."""
    return LIGHT_SPAN * (1 - world_y / canvas_h)


def _background(rng, height, width):
    """The scene's background canvas (height, width, 3) in [0, 1]: a colour, waves and the light."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    waves = np.zeros((height, width))
    for _ in range(NUM_WAVES):
        angle, wavelength = rng.uniform(0, 2 * np.pi), rng.uniform(*WAVELENGTH_PX)
        waves += np.sin(2 * np.pi * (np.cos(angle) * xs + np.sin(angle) * ys) / wavelength
                        + rng.uniform(0, 2 * np.pi)) / NUM_WAVES
    bends = rng.uniform(*WAVE_AMPLITUDE, 3) * rng.choice([-1, 1], 3)
    colour = np.abs(bends) + rng.random(3) * (1 - LIGHT_SPAN - 2 * np.abs(bends))
    return colour + bends * waves[..., None] + _light(ys, height)[..., None]


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
    return radius <= 0.55 + 0.45 * np.cos(2.5 * angle) ** 2  # five-pointed star


def _shape_texture(rng):
    """A texture (u, v) -> colours before the light, in the shape's own coordinates: 1-3 wide bands
    of two colours that differ in every channel."""
    kind, freq = rng.integers(3), rng.uniform(1.0, 2.0)
    first = rng.random(3) * (1 - LIGHT_SPAN)
    step = rng.uniform(0.2, 0.4, 3) * (1 - LIGHT_SPAN) * 2
    second = np.where(first < (1 - LIGHT_SPAN) / 2, np.minimum(first + step, 1 - LIGHT_SPAN),
                      np.maximum(first - step, 0))

    def texture(u, v):
        if kind == 0:
            mix = np.sin(freq * np.pi * u) > 0
        elif kind == 1:
            mix = (np.floor(freq * u) + np.floor(freq * v)) % 2 == 0
        else:
            mix = (np.hypot(u, v + 0.3) * freq * 1.5).astype(int) % 2 == 0
        return np.where(mix[..., None], first, second)
    return texture


def _motion_track(rng, t, num_frames, size, start, motion):
    """Centres (T, 2), angles (T,) and sizes (T,) of a shape moving by `motion` (a CLASSES name or
    "drift": a random direction and spin)."""
    speed = rng.uniform(0.5, 1.0)  # px per frame
    if motion == "drift":
        heading = rng.uniform(0, 2 * np.pi)
        direction = (np.cos(heading) * rng.uniform(0.3, 0.8), np.sin(heading) * rng.uniform(0.3, 0.8))
        spin = rng.uniform(-0.03, 0.03)
        growth = 0.0
    else:
        direction = {"translate_left": (-1, 0), "translate_right": (1, 0),
                     "translate_up": (0, -1), "translate_down": (0, 1)}.get(motion, (0, 0))
        spin = rng.uniform(0.04, 0.08) * {"rotate_cw": 1, "rotate_ccw": -1}.get(motion, 0)
        growth = np.log(rng.uniform(1.6, 2.4)) / num_frames * {"grow": 1, "shrink": -1}.get(motion, 0)
    centres = start[None, :] + np.outer(t * speed, direction)
    angles = rng.uniform(0, 2 * np.pi) + spin * t
    sizes = size * np.exp(growth * t)
    return centres, angles, sizes


def render_clip(seed, index, num_frames=64, width=160, height=128):
    """(label, frames uint8 (T, H, W, 3)) of synthetic clip `index` for `seed`; label is the motion class."""
    scene = render_scene(seed, index, num_frames, width, height)
    return scene["labels"]["motion"], scene["frames"]


def render_scene(seed, index, num_frames=64, width=160, height=128):
    """Synthetic clip `index` for `seed` with what made it: a dict of

    frames  uint8 (T, H, W, 3)
    layers  uint8 (T, H, W): 0 where the background shows, k where the k-th shape (back to front) does;
            the main shape is the last one, number len(shapes)
    labels  clip_labels(seed, index)
    overlap_px  int (T,): pixels per frame where a shape hides another (occlusions)
    shapes  the shape kinds, back to front
    camera  float (T, 3): per frame the world point (x, y) at the frame centre and world units per pixel
    background_shift_px  (x, y) pixels the background moves in the frame over the clip (camera pan)
    zoom    how much larger the scene looks in the last frame than in the first (camera zoom)

    The scene lives in world coordinates on a canvas 1.3x the frame; the camera maps each frame's
    pixels to world points (pan: a moving centre; zoom: a changing scale), where the background and
    every shape are sampled.
    """
    labels = clip_labels(seed, index)
    rng = np.random.default_rng([seed, index])
    rng.integers(len(SHAPES))                     # the main shape's kind, drawn by clip_labels
    short = min(width, height)
    canvas_h, canvas_w = int(height * 1.3), int(width * 1.3)
    background = _background(rng, canvas_h, canvas_w).astype(np.float32)
    t = np.arange(num_frames) - (num_frames - 1) / 2  # time relative to mid-clip

    # Camera: the world point seen at the frame centre, and world units per pixel.
    pan_angle = rng.uniform(0, 2 * np.pi)
    pan = np.outer(t * rng.uniform(0.15, 0.4), (np.cos(pan_angle), np.sin(pan_angle)))
    cam_centre = np.array([canvas_w / 2, canvas_h / 2]) + pan
    scale = np.exp(rng.uniform(-1, 1) * np.log(1.2) / num_frames * t)  # at most 1.2x zoom over the clip
    # The camera neither rotates nor shears, so world x depends on (t, x) only and y on (t, y).
    col_x = (cam_centre[:, 0, None] + scale[:, None] * (np.arange(width) - width / 2)).astype(np.float32)
    row_y = (cam_centre[:, 1, None] + scale[:, None] * (np.arange(height) - height / 2)).astype(np.float32)
    image = _sample_separable(background, row_y, col_x)                                  # (T, H, W, 3)
    world_x, world_y = col_x[:, None, :], row_y[:, :, None]                              # broadcast to (T, H, W)
    layers = np.zeros((num_frames, height, width), np.uint8)
    overlap_px = np.zeros(num_frames, np.int64)

    # Shapes, back to front: the others, then the main one, which moves by the class.
    num_others = int(rng.integers(NUM_OTHERS[0], NUM_OTHERS[1] + 1))
    shapes = [SHAPES[rng.integers(len(SHAPES))] for _ in range(num_others)] + [SHAPES[labels["shape"]]]
    motions = ["drift"] * num_others + [CLASSES[labels["motion"]]]
    for k, (shape, motion) in enumerate(zip(shapes, motions)):
        size_range = SIZE_RANGE if k == num_others else OTHER_SIZE_RANGE
        size = rng.uniform(*size_range) * short
        start = np.array([canvas_w / 2 + rng.uniform(-0.3, 0.3) * width,
                          canvas_h / 2 + rng.uniform(-0.3, 0.3) * height])
        texture = _shape_texture(rng)
        centres, angles, sizes = _motion_track(rng, t, num_frames, size, start, motion)
        dx = world_x - centres[:, 0, None, None].astype(np.float32)
        dy = world_y - centres[:, 1, None, None].astype(np.float32)
        cos, sin = (np.cos(angles)[:, None, None].astype(np.float32),
                    np.sin(angles)[:, None, None].astype(np.float32))
        inv = (1 / sizes)[:, None, None].astype(np.float32)
        u, v = (cos * dx + sin * dy) * inv, (-sin * dx + cos * dy) * inv
        mask = _shape_mask(shape, u, v)
        image[mask] = texture(u[mask], v[mask]) + _light(np.broadcast_to(world_y, mask.shape)[mask], canvas_h)[:, None]
        overlap_px += np.count_nonzero(mask & (layers > 0), axis=(1, 2))
        layers[mask] = k + 1
    frames = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return {"frames": frames, "layers": layers, "overlap_px": overlap_px, "labels": labels, "shapes": shapes,
            "camera": np.column_stack([cam_centre, scale]),
            "background_shift_px": tuple(float(d) for d in (pan[0] - pan[-1]) / scale.mean()),
            "zoom": float(scale[0] / scale[-1])}


def _sample_separable(canvas, row_y, col_x):
    """canvas (Hc, Wc, C) sampled at rows row_y (T, H) and columns col_x (T, W), bilinear: (T, H, W, C).

    Interpolating rows first and then columns is exact bilinear sampling and, with one gather per
    axis, several times faster than gathering the four corners of every pixel.
    """
    h, w = canvas.shape[:2]
    y, x = np.clip(row_y, 0, h - 1.001), np.clip(col_x, 0, w - 1.001)
    y0, x0 = y.astype(np.int32), x.astype(np.int32)
    fy, fx = (y - y0)[..., None, None], (x - x0)[..., None, None]
    rows = (canvas[y0] * (1 - fy) + canvas[y0 + 1] * fy).transpose(0, 2, 1, 3)  # (T, Wc, H, C)
    t = np.arange(len(col_x))[:, None]
    image = rows[t, x0] * (1 - fx) + rows[t, x0 + 1] * fx                   # (T, W, H, C)
    return image.transpose(0, 2, 1, 3)


def write_clip(path, seed, index, codec, num_frames, width, height, fps, gop, kind="scenes", style="varied"):
    """Render and encode one clip of `kind` (scenes, glyphs; `style` for glyphs) to `path` (written atomically);
    skip when it exists."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    if kind == "glyphs":
        frames = render_glyph_scene(seed, index, num_frames, width, height, style=style)["frames"]
    else:
        frames = render_clip(seed, index, num_frames, width, height)[1]
    writer = StreamWriter(codec, fps, width, height, gop, quality=QUALITY.get(codec))
    for frame in frames:
        writer.write(frame)
    data = writer.close()
    write_bytes_atomic(path, data)
    return len(data)


KINDS = ("scenes", "glyphs")
SYNTH_SIZES = {"scenes": (64, 160, 128), "glyphs": (48, 128, 128)}   # default (frames, width, height)
# the label kinds of each synthetic set, and the flip pairs of its directional one
LABEL_SETS = {"scenes": {"motion": CLASSES, "shape": SHAPES}, "glyphs": {"glyph": GLYPHS, "motion": MOTIONS}}
FLIPS = {("scenes", "motion"): (("translate_left", "translate_right"), ("rotate_cw", "rotate_ccw")),
         ("glyphs", "motion"): FLIP_PAIRS}


def synth_labels(kind, seed, index):
    """All labels of synthetic clip `index` of `seed`: {"motion", "shape"} (scenes) or {"glyph", "motion"}."""
    return glyph_labels(seed, index) if kind == "glyphs" else clip_labels(seed, index)


def synth_index(source):
    """The clip number of a synthetic sample from its json's `source` (".../synth-000012.webm" -> 12)."""
    stem = Path(source).name.split(".", 1)[0]
    return int(stem.rsplit("-", 1)[1])


def make_synthetic(out, num_videos, codec="vp9", seed=0, num_frames=64, width=160, height=128,
                   fps=25, gop=16, shard_size=DEFAULT_SHARD_SIZE, prefix="train", workers=1,
                   progress=True, kind="scenes", label=None, style="varied"):
    """Generate `num_videos` clips of `kind` and pack them into OUT; returns pack's summary dict.

    scenes (the default, this module): the manifest's labels are CLASSES (motion) in order; clip i has label
    i % 8 before the shuffle. glyphs (shard_tools.glyphs): `label` "glyph" (GLYPHS, the default) or "motion"
    (MOTIONS), `style` how the digits are drawn (GLYPH_STYLES: "varied", the default, or "plain", upright in one
    weight). Clip i's file is synth-{i:06d} (`synth_index`), `synth_labels(kind, seed, i)` gives all its
    labels. A directional label set records its flip pairs in the manifest.
    """
    if kind not in KINDS:
        raise PackError(f"synthetic kind {kind!r}: choose one of {', '.join(KINDS)}")
    label = label or next(iter(LABEL_SETS[kind]))
    if kind == "scenes" and label != "motion":
        raise PackError(f"the scenes set is labelled by motion only (its shape kind is in synth_labels), not {label!r}")
    if label not in LABEL_SETS[kind]:
        raise PackError(f"label {label!r}: the {kind} set has labels {', '.join(LABEL_SETS[kind])}")
    if style not in GLYPH_STYLES:
        raise PackError(f"glyph style {style!r}: choose one of {', '.join(GLYPH_STYLES)}")
    if kind != "glyphs" and style != "varied":
        raise PackError(f"style {style!r} is a glyph style; the {kind} set has none (use --kind glyphs)")
    classes = LABEL_SETS[kind][label]
    check_encoder(codec)
    provenance = {"synth": {"version": 2, "num_videos": num_videos, "codec": codec, "num_frames": num_frames,
                            "width": width, "height": height, "fps": fps, "gop": gop}}
    if kind != "scenes":
        provenance["synth"].update(kind=kind, label=label)
    if style != "varied":  # the varied sets' provenance stays as it was, so existing OUT folders still match
        provenance["synth"]["style"] = style
    manifest_path = Path(out) / MANIFEST_NAME
    if manifest_path.is_file():  # fail before generating anything when OUT is another set
        recorded = json.loads(manifest_path.read_text(encoding="utf-8"))["args"].get("provenance")
        if recorded != provenance:
            raise PackError(f"OUT {out} holds a dataset made with {recorded}, not {provenance}; "
                            f"choose a new OUT")
    src = Path(out) / STAGING_DIR / "synth-src"
    if not manifest_path.is_file():
        for name in classes:
            (src / name).mkdir(parents=True, exist_ok=True)
        ext = ENCODERS[codec].ext
        tasks = [(str(src / classes[synth_labels(kind, seed, i)[label]] / f"synth-{i:06d}.{ext}"), seed, i, codec,
                  num_frames, width, height, fps, gop, kind, style) for i in range(num_videos)]
        with worker_pool(workers) as pool:
            run_pool(write_clip, tasks, pool, progress, "synthesise", unit="video",
                     bytes_of=lambda size: size)
    return pack(src, out, codec="copy", seed=seed, shard_size=shard_size, prefix=prefix,
                labels=list(classes), workers=workers, progress=progress, provenance=provenance,
                flip_map=FLIPS.get((kind, label)), direction_sensitive=(kind, label) in FLIPS)
