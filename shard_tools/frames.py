"""Frame folders (`img_00001.jpg`, ...): which files hold a video's frames, and reading them.

The published frame-folder lists name a folder per video, either with its frame count
(`path total_frames label`) or with its first index and count (`path start total`); a folder
listed without a count holds as many frames as it has files named by the template. Frames are
read with PIL as RGB; a missing frame skips the video (`missing-frames`), an undecodable one or
one whose size differs from the first (`unreadable-frames`).
"""

import os
import re
import string

import numpy as np
from PIL import Image

from shard_tools.probe import SkipInput

DEFAULT_FRAME_TEMPLATE = "img_{:05d}.jpg"
DEFAULT_FIRST_FRAME = 1
# Frame rate given to a stream encoded from frames when the list does not say (it never does):
# 30 fps, what AVA's and most frame-extraction scripts keep; SSv2's frames are 12 fps (--fps 12).
DEFAULT_FRAMES_FPS = 30.0


def check_template(template):
    """The template's regular expression; ValueError naming the fix unless it has exactly one
    integer field (e.g. `img_{:05d}.jpg`)."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    try:
        template.format(1)
    except (ValueError, IndexError, KeyError) as err:
        raise ValueError(f"--frame-template {template!r} does not format an integer ({err}); "
                         f"write it like img_{{:05d}}.jpg") from err
    if len(fields) != 1 or fields[0] not in ("", "0"):
        raise ValueError(f"--frame-template {template!r} must hold exactly one positional field "
                         f"for the frame index, like img_{{:05d}}.jpg")
    literal, _, _, _ = next(iter(string.Formatter().parse(template)))
    suffix = template[template.index("}") + 1:]
    return re.compile(re.escape(literal) + r"(\d+)" + re.escape(suffix))


def frame_paths(folder, template, first_frame, start=None, total=None):
    """Paths of the frames of `folder`, in order; raises SkipInput when one is missing.

    `start` (from a `path start total` list) overrides `first_frame`; `total` None counts the
    files the template matches and expects them to be numbered without gaps.
    """
    first = first_frame if start is None else start
    try:
        names = set(os.listdir(folder))
    except OSError as err:
        raise SkipInput("unreadable", f"{folder}: {err}") from err
    if total is None:
        pattern = check_template(template)
        total = sum(1 for name in names if pattern.fullmatch(name))
        if total == 0:
            raise SkipInput("missing-frames", f"{folder}: no frame named like "
                                              f"{template.format(first)}; set --frame-template "
                                              f"and --first-frame to the folder's naming")
    expected = [template.format(i) for i in range(first, first + total)]
    missing = [name for name in expected if name not in names]
    if missing:
        raise SkipInput("missing-frames", f"{folder}: {len(missing)} of {total} frames "
                                          f"{expected[0]}..{expected[-1]} missing, first "
                                          f"{missing[0]}")
    return [os.path.join(folder, name) for name in expected]


def read_frame(path, size=None):
    """HxWx3 uint8 RGB of one frame file; SkipInput if it does not decode or its (width, height)
    differs from `size`."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for a bad or cut image
        raise SkipInput("unreadable-frames", f"{path}: not a readable image ({err})") from err
    if size is not None and (rgb.shape[1], rgb.shape[0]) != size:
        raise SkipInput("unreadable-frames", f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, the "
                                             f"folder's first frame is {size[0]}x{size[1]}")
    return rgb
