"""A learnable synthetic set: one glyph (a digit) moving over a plain background, with two labels.

What a label depends on is plainly in the pixels, so a model that learns shows it:

- `glyph` (appearance): which digit, 0-9, drawn large (about 60 % of the frame height) with Pillow's own
  font in one of many styles: stroke weight, slant, width, a small rotation, solid or outlined (style
  "varied", the packed sets'); style "plain" draws every digit upright in one weight;
- `motion`: where it goes, one of left, right, up, down, at a steady speed that carries it about
  half the frame over the clip. A horizontal flip swaps left and right (FLIP_PAIRS); up and down
  stay.

The background is one colour with a gentle linear light gradient in a random direction, so that no
patch is flat: per-patch normalisation (spec §4) then keeps a ramp a model can predict from its
neighbours, not compression noise. No camera motion, no distractors. Glyph, colours, style, speed
and start are drawn independently of the two labels, which are balanced over each run of 40 clips:
clip i shows digit (i // 4) % 10 moving MOTIONS[i % 4]. Clip i of seed s is a pure function of
(s, i, size, frames).
"""
from __future__ import annotations

import numpy as np

GLYPHS = tuple("0123456789")
MOTIONS = ("left", "right", "up", "down")
FLIP_PAIRS = (("left", "right"),)          # motion classes a horizontal flip swaps
LABEL_KINDS = ("glyph", "motion")
GLYPH_HEIGHT = (0.5, 0.7)                   # glyph height as a share of the frame height
TRAVEL = (0.4, 0.6)                         # distance covered over the clip, as a share of the frame side
GRADIENT = (0.15, 0.3)                      # background light change across the frame, of the 0-1 range
MIN_CONTRAST = 0.35                         # least mean channel difference between glyph and background
STYLES = ("varied", "plain")                # glyph drawing: random weight, slant, width, rotation, outline | upright


def glyph_labels(seed: int, index: int) -> dict:
    """{"glyph": index into GLYPHS, "motion": index into MOTIONS} of clip `index` (nothing is rendered)."""
    del seed  # balanced by construction: the labels do not depend on the seed
    return {"glyph": (index // len(MOTIONS)) % len(GLYPHS), "motion": index % len(MOTIONS)}


def _font(size_px: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size_px)   # Aileron, shipped inside Pillow (FreeType)


def glyph_mask(rng: np.random.Generator, char: str, height_px: int, style: str = "varied") -> np.ndarray:
    """float32 (h, w) coverage in [0, 1] of `char` drawn `height_px` tall.

    style "varied": a random stroke weight, slant (shear), width (x scale), rotation, and sometimes only
    the outline. "plain": upright, one weight; it draws nothing from rng.
    """
    from PIL import Image, ImageDraw

    if style not in STYLES:
        raise ValueError(f"glyph style {style!r}: choose one of {', '.join(STYLES)}")
    plain = style == "plain"
    size = max(8, int(height_px * 1.3))                     # font size whose digits are about height_px tall
    font = _font(size)
    stroke = (1 if plain else int(rng.integers(0, 4))) * max(1, size // 32)
    pad = size
    canvas = Image.new("L", (3 * size, 3 * size), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), char, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    if not plain and rng.random() < 0.25 and stroke:         # outlined: the stroke ring without the fill
        draw.text((pad, pad), char, fill=0, font=font)
    shear, widen = (0.0, 1.0) if plain else (rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.25))
    angle = 0.0 if plain else np.deg2rad(rng.uniform(-15, 15))
    cos, sin = np.cos(angle), np.sin(angle)
    # inverse affine (output -> input) about the canvas centre: rotate · shear · widen
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1, shear], [0, 1]]) @ np.diag([widen, 1])
    inverse = np.linalg.inv(forward)
    centre = np.array([1.5 * size, 1.5 * size])
    offset = centre - inverse @ centre
    canvas = canvas.transform(canvas.size, Image.AFFINE, (*inverse[0], offset[0], *inverse[1], offset[1]),
                              resample=Image.BILINEAR)
    mask = np.asarray(canvas, np.float32) / 255
    rows, cols = np.nonzero(mask > 0.02)
    mask = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    # scale the drawn glyph to exactly height_px tall, keeping its aspect
    out_h = height_px
    out_w = max(1, int(round(mask.shape[1] * height_px / mask.shape[0])))
    return np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize((out_w, out_h), Image.BILINEAR),
                      np.float32) / 255


def _shift(mask: np.ndarray, height: int, width: int, x0: float, y0: float) -> np.ndarray:
    """The mask placed with its top-left corner at (x0, y0) on a (height, width) frame, bilinear in the
    fractional part, clipped at the frame's edges."""
    ix, iy = int(np.floor(x0)), int(np.floor(y0))
    fx, fy = x0 - ix, y0 - iy
    h, w = mask.shape
    padded = np.zeros((h + 1, w + 1), np.float32)
    padded[:h, :w] += (1 - fx) * (1 - fy) * mask
    padded[:h, 1:] += fx * (1 - fy) * mask
    padded[1:, :w] += (1 - fx) * fy * mask
    padded[1:, 1:] += fx * fy * mask
    frame = np.zeros((height, width), np.float32)
    top, left = max(iy, 0), max(ix, 0)
    bottom, right = min(iy + h + 1, height), min(ix + w + 1, width)
    if bottom > top and right > left:
        frame[top:bottom, left:right] = padded[top - iy:bottom - iy, left - ix:right - ix]
    return frame


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and glyph colours in [0, 1] that differ by at least MIN_CONTRAST on average."""
    background = rng.uniform(0.1, 0.9, 3)
    while True:
        glyph = rng.uniform(0.0, 1.0, 3)
        if np.abs(glyph - background).mean() >= MIN_CONTRAST:
            return background, glyph


def render_glyph_scene(seed: int, index: int, num_frames: int = 48, width: int = 128, height: int = 128,
                       noise: float = 0.0, style: str = "varied") -> dict:
    """Glyph clip `index` of `seed`: {"frames": uint8 (T, H, W, 3), "coverage": float32 (T, H, W) of the
    glyph, "labels": glyph_labels(...), "centres": (T, 2) glyph centre (x, y) in pixels}.

    noise: std of per-pixel Gaussian noise in grey levels (0 for the packed sets; a test of robustness).
    style: how the digit is drawn (STYLES; glyph_mask).
    """
    labels = glyph_labels(seed, index)
    rng = np.random.default_rng([seed, index, 0x61F])
    background, colour = _colours(rng)
    mask = glyph_mask(rng, GLYPHS[labels["glyph"]], int(rng.uniform(*GLYPH_HEIGHT) * height), style)
    h, w = mask.shape
    # light: a linear ramp of random direction whose change across the frame is GRADIENT
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (np.cos(angle) * (xs / width - 0.5) + np.sin(angle) * (ys / height - 0.5)) * rng.uniform(*GRADIENT)
    # motion: a steady speed along the class's axis, the path centred on a random point that keeps the
    # glyph inside the frame from start to end where the frame allows
    direction = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[MOTIONS[labels["motion"]]]
    travel = rng.uniform(*TRAVEL) * (width if direction[0] else height)
    t = np.linspace(-0.5, 0.5, num_frames)
    span_x = abs(direction[0]) * travel + w
    span_y = abs(direction[1]) * travel + h
    mid_x = rng.uniform(min(span_x, width) / 2, width - min(span_x, width) / 2)
    mid_y = rng.uniform(min(span_y, height) / 2, height - min(span_y, height) / 2)
    centres = np.stack([mid_x + direction[0] * travel * t, mid_y + direction[1] * travel * t], axis=1)
    base = np.clip(background + ramp[..., None], 0, 1)
    ink = np.clip(colour + ramp[..., None], 0, 1)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    coverage = np.empty((num_frames, height, width), np.float32)
    for k, (cx, cy) in enumerate(centres):
        cover = _shift(mask, height, width, cx - w / 2, cy - h / 2)
        image = base + (ink - base) * cover[..., None]
        if noise:
            image = image + rng.normal(0, noise / 255, image.shape)
        frames[k] = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
        coverage[k] = cover
    return {"frames": frames, "coverage": coverage, "labels": labels, "centres": centres}
