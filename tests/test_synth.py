"""The synthetic set: deterministic clips of a filmed scene whose content is predictable from context."""
import numpy as np
import pytest

from shard_tools import synth

T, W, H = 24, 160, 128   # fewer frames than the default 64 keep the tests quick


@pytest.fixture(scope="module")
def scenes():
    return [synth.render_scene(3, i, T, W, H) for i in range(8)]


def test_clip_is_a_pure_function_of_seed_index_size_and_frames(scenes):
    label, frames = synth.render_clip(3, 5, T, W, H)
    assert label == scenes[5]["labels"]["motion"]
    assert frames.dtype == np.uint8 and frames.shape == (T, H, W, 3)
    assert frames.tobytes() == scenes[5]["frames"].tobytes()
    assert synth.render_clip(3, 4, T, W, H)[1].tobytes() != frames.tobytes()
    assert synth.render_clip(4, 5, T, W, H)[1].tobytes() != frames.tobytes()


def test_labels_motion_by_index_and_shape_of_the_main_object(scenes):
    for index, scene in enumerate(scenes):
        labels = synth.clip_labels(3, index)
        assert scene["labels"] == labels
        assert labels["motion"] == index % len(synth.CLASSES)
        assert synth.SHAPES[labels["shape"]] == scene["shapes"][-1]        # the main shape is drawn last
    shapes = [synth.clip_labels(0, i)["shape"] for i in range(64)]
    assert set(shapes) == set(range(len(synth.SHAPES)))
    by_class = [{shapes[i] for i in range(c, 64, len(synth.CLASSES))} for c in range(len(synth.CLASSES))]
    assert sum(len(kinds) > 1 for kinds in by_class) >= 6              # a motion class does not fix the shape


def test_several_objects_and_occlusions(scenes):
    for scene in scenes:
        layers, num_shapes = scene["layers"], len(scene["shapes"])
        assert 2 <= num_shapes <= synth.NUM_OTHERS[1] + 1
        assert np.isin(num_shapes, layers)                                   # the main shape is in view
        visible = [len(np.unique(frame)) - 1 for frame in layers]          # shapes in view, per frame
        assert max(visible) >= 2
    # The main shape (radius >= 0.2 of the short side) covers a sizeable share of a frame.
    main_share = [np.mean(s["layers"] == len(s["shapes"])) for s in scenes]
    assert np.median(main_share) > 0.05
    # Shapes pass in front of each other in some clips.
    assert sum(np.any(s["overlap_px"] > 0) for s in scenes) >= 2


def _high_pass(image):
    """Mean |discrete Laplacian| per pixel of an (h, w, 3) patch, in grey levels."""
    x = image.astype(np.float64)
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return np.abs(lap).mean()


def test_background_has_no_pixel_grain(scenes):
    grain_rng = np.random.default_rng(0)
    smooth, grainy = [], []
    for scene in scenes:
        frame, layers = scene["frames"][0], scene["layers"][0]
        for y in range(0, H - 16, 16):
            for x in range(0, W - 16, 16):
                if np.any(layers[y:y + 16, x:x + 16]):
                    continue                                                 # only pure background patches
                patch = frame[y:y + 16, x:x + 16]
                smooth.append(_high_pass(patch))
                # The first set's grain: per-pixel normal noise of std 0.04, the reference level.
                noisy = np.clip(patch + grain_rng.normal(0, 0.04 * 255, (16, 16, 1)), 0, 255).round()
                grainy.append(_high_pass(noisy))
    assert len(smooth) > 50
    assert np.median(grainy) > 20                                            # the measure sees grain
    assert np.percentile(smooth, 90) < 0.05 * np.median(grainy)


def test_most_patches_hold_structure(scenes):
    """Per-patch normalisation (spec §4) turns flat patches into noise; nearly every patch has a gradient."""
    stds = [frame[y:y + 16, x:x + 16].std(axis=(0, 1)).max()
            for scene in scenes for frame in scene["frames"][::8]
            for y in range(0, H, 16) for x in range(0, W, 16)]
    assert np.mean(np.array(stds) < 2.0) < 0.05


def _warp(frame, camera_from, camera_to):
    """`frame`, filmed with camera_from (x, y, scale), as camera_to would film it (nearest pixel), and
    where that lands inside the frame."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    world_x = camera_to[0] + camera_to[2] * (xs - W / 2)
    world_y = camera_to[1] + camera_to[2] * (ys - H / 2)
    src_x = np.rint((world_x - camera_from[0]) / camera_from[2] + W / 2).astype(int)
    src_y = np.rint((world_y - camera_from[1]) / camera_from[2] + H / 2).astype(int)
    inside = (src_x >= 0) & (src_x < W) & (src_y >= 0) & (src_y < H)
    return frame[src_y.clip(0, H - 1), src_x.clip(0, W - 1)], inside


def test_camera_pans_and_zooms(scenes):
    """The background moves between frames as the camera says: warping frame 0 by the camera's pan
    and zoom predicts frame 16's background far better than frame 0 itself does."""
    zooms, warped_errors, still_errors = [], [], []
    gap = 16
    for scene in scenes:
        frames, background, camera = scene["frames"].astype(np.float64), scene["layers"] == 0, scene["camera"]
        zooms.append(scene["zoom"])
        moved = np.hypot(*(camera[gap, :2] - camera[0, :2])) / camera[0, 2]
        assert moved > 1.5                                                   # every clip pans
        warped, inside = _warp(frames[0], camera[0], camera[gap])
        background_in_both = inside & background[gap] & _warp(background[0], camera[0], camera[gap])[0]
        still = background[gap] & background[0]
        warped_errors.append(np.abs(warped - frames[gap])[background_in_both].mean())
        still_errors.append(np.abs(frames[0] - frames[gap])[still].mean())
    assert np.mean(warped_errors) < 0.5 and np.mean(still_errors) > 2.0
    assert min(zooms) < 0.97 and max(zooms) > 1.03                            # zooming in and out
    assert all(1 / 1.21 < z < 1.21 for z in zooms)


def _main_shape_in_world(scene, frame):
    """Centroid (x, y) and area of the main shape in frame `frame`, in world units (the camera undone)."""
    mask = scene["layers"][frame] == len(scene["shapes"])
    ys, xs = np.nonzero(mask)
    centre_x, centre_y, scale = scene["camera"][frame]
    world_x, world_y = centre_x + scale * (xs - W / 2), centre_y + scale * (ys - H / 2)
    return np.array([world_x.mean(), world_y.mean()]), mask.sum() * scale ** 2


@pytest.mark.parametrize("index", range(len(synth.CLASSES)))
def test_main_shape_moves_by_its_label(scenes, index):
    """The label is the main shape's motion in the scene; the camera's own motion is taken out."""
    scene = scenes[index]
    name = synth.CLASSES[scene["labels"]["motion"]]
    (first, first_area), (last, last_area) = (_main_shape_in_world(scene, t) for t in (0, T - 1))
    moved = last - first
    if name.startswith("translate"):
        expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[name[len("translate_"):]]
        along = np.dot(moved, expected)
        assert along > 8 and abs(moved[0] * expected[1] - moved[1] * expected[0]) < 0.25 * along, moved
    elif name in ("grow", "shrink"):
        ratio = last_area / first_area
        assert ratio > 1.1 if name == "grow" else ratio < 1 / 1.1
        assert np.hypot(*moved) < 4
    else:  # rotation: the shape stays put and keeps its size while its pixels change
        assert np.hypot(*moved) < 3 and 0.9 < last_area / first_area < 1.1
        layers = scene["layers"]
        assert np.any((layers[0] == len(scene["shapes"])) != (layers[T - 1] == len(scene["shapes"])))
