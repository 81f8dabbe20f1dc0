"""Direction-aware flipping: a mirrored clip of a directional class carries its mirror class's label.

The flip pairs come from the manifest (pack --flip-map, synth's directional labels) or a flip-map file
(--set label_flip_map=FILE); a direction-sensitive set without pairs is not flipped, and says so.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dali_pipes.classify import FinetuneConfig, finetune_loader
from dali_pipes.shards import DatasetError
from shard_tools.flipmap import FlipMapError, flip_permutation, read_flip_map
from shard_tools.glyphs import MOTIONS
from shard_tools.pack import PackError, pack
from shard_tools.synth import make_synthetic

FULL_FRAME = dict(num_frames=8, stride=2, img_size=32, num_sample=2, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                  rand_augment=None, erase=None)


@pytest.fixture(scope="module")
def motion_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("glyph-motion")
    make_synthetic(root, 8, kind="glyphs", label="motion", seed=3, num_frames=16, width=32, height=32, progress=False)
    return root


def first_batch(data, flip_prob, **kwargs):
    cfg = FinetuneConfig(**FULL_FRAME, flip_prob=flip_prob)
    with finetune_loader(data, 4, cfg, device="cpu", num_threads=1, shuffle=False, **kwargs) as loader:
        return next(iter(loader))


def test_synthetic_directional_labels_declare_their_flip_pairs(motion_set, tmp_path):
    manifest = json.loads((motion_set / "manifest.json").read_text())
    assert manifest["labels"] == list(MOTIONS)
    assert manifest["flip_pairs"] == [["left", "right"]] and manifest["direction_sensitive"] is True
    glyphs = tmp_path / "glyphs"
    make_synthetic(glyphs, 4, kind="glyphs", label="glyph", seed=3, num_frames=16, width=32, height=32,
                   progress=False)
    manifest = json.loads((glyphs / "manifest.json").read_text())
    assert manifest["flip_pairs"] == [] and manifest["direction_sensitive"] is False


def test_a_mirrored_clip_swaps_left_and_right_and_keeps_up_and_down(motion_set):
    plain, mirrored = first_batch(motion_set, 0.0), first_batch(motion_set, 1.0)
    assert plain["keys"] == mirrored["keys"]
    assert torch.equal(mirrored["video"], plain["video"].flip(3))             # (B, T, H, W, 3): W mirrored
    swap = {MOTIONS.index("left"): MOTIONS.index("right"), MOTIONS.index("right"): MOTIONS.index("left")}
    expected = [swap.get(label, label) for label in plain["label"].tolist()]
    assert mirrored["label"].tolist() == expected
    assert set(plain["label"].tolist()) & set(swap)                            # the batch holds a left or right clip


def test_labels_follow_each_views_own_flip(motion_set):
    """With p = 0.5 the two views of a video flip independently; each view's label follows its own pixels."""
    batch, plain = first_batch(motion_set, 0.5), first_batch(motion_set, 0.0)
    perm = flip_permutation([["left", "right"]], list(MOTIONS))
    for clip, label, ref, ref_label in zip(batch["video"], batch["label"].tolist(), plain["video"],
                                          plain["label"].tolist()):
        if torch.equal(clip, ref):
            assert label == ref_label
        else:
            assert torch.equal(clip, ref.flip(2)) and label == perm[ref_label]


def test_a_flip_map_file_overrides_the_manifest(motion_set, tmp_path):
    none = tmp_path / "none.txt"
    none.write_text("# this set's labels do not change under a flip\n")
    plain, mirrored = first_batch(motion_set, 0.0), first_batch(motion_set, 1.0, flip_map=str(none))
    assert mirrored["label"].tolist() == plain["label"].tolist()
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"up": "down"}))
    mirrored = first_batch(motion_set, 1.0, flip_map=str(both))
    perm = flip_permutation([["up", "down"]], list(MOTIONS))
    assert mirrored["label"].tolist() == [perm[label] for label in plain["label"].tolist()]
    bad = tmp_path / "bad.txt"
    bad.write_text("left sideways\n")
    with pytest.raises(DatasetError, match="'sideways' is not in the label set"):
        first_batch(motion_set, 1.0, flip_map=str(bad))


def test_a_direction_sensitive_set_without_pairs_is_not_flipped(motion_set, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(motion_set, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["flip_pairs"] = []
    (copy / "manifest.json").write_text(json.dumps(manifest))
    batch, plain = first_batch(copy, 1.0), first_batch(copy, 0.0)
    assert torch.equal(batch["video"], plain["video"]) and batch["label"].tolist() == plain["label"].tolist()
    notice = capsys.readouterr().out
    assert "direction-sensitive labels and no flip map" in notice and "horizontal flip is off" in notice
    assert notice.count("\n") == 1


def test_flip_map_files_and_their_errors(tmp_path):
    text = tmp_path / "pairs.txt"
    text.write_text("push_left, push_right  # the mirror of pushing left\nturn_cw turn_ccw\npush_right push_left\n")
    assert read_flip_map(text) == [["push_left", "push_right"], ["turn_cw", "turn_ccw"]]
    labels = ["push_left", "push_right", "turn_cw", "turn_ccw", "hold"]
    assert flip_permutation(read_flip_map(text), labels) == [1, 0, 3, 2, 4]
    assert flip_permutation([["0", "4"]], labels) == [4, 1, 2, 3, 0]                 # indices work too
    with pytest.raises(FlipMapError, match="line 1: 'a b c' has 3 fields"):
        (tmp_path / "three.txt").write_text("a b c\n")
        read_flip_map(tmp_path / "three.txt")
    with pytest.raises(FlipMapError, match="in two pairs"):
        flip_permutation([["push_left", "push_right"], ["push_left", "hold"]], labels)
    with pytest.raises(FlipMapError, match="names one class twice"):
        flip_permutation([["hold", "hold"]], labels)
    with pytest.raises(FlipMapError, match="no such file"):
        read_flip_map(tmp_path / "missing.txt")


def test_pack_checks_a_flip_map_against_the_labels(tmp_path):
    from shard_tools.synth import write_clip

    src = tmp_path / "src"
    for name in ("push_left", "push_right"):
        (src / name).mkdir(parents=True)
        write_clip(str(src / name / f"{name}.webm"), 0, 0, "vp9", 8, 32, 32, 25, 8, "glyphs")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("push_left push_sideways\n")
    with pytest.raises(PackError, match="'push_sideways' is not in the label set"):
        pack(src, tmp_path / "bad", flip_map=str(pairs), progress=False)
    pairs.write_text("push_left push_right\n")
    pack(src, tmp_path / "ok", flip_map=str(pairs), progress=False)
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert manifest["flip_pairs"] == [["push_left", "push_right"]] and manifest["direction_sensitive"] is True
    pack(src, tmp_path / "marked", direction_sensitive=True, progress=False)
    manifest = json.loads((tmp_path / "marked" / "manifest.json").read_text())
    assert manifest["flip_pairs"] == [] and manifest["direction_sensitive"] is True
    assert np.array_equal(flip_permutation([], manifest["labels"]), [0, 1])
