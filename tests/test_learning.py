"""The trainer learns: a small classifier overfits a few dozen labelled glyph clips through the DALI
fine-tuning loader and the one training loop, scored per clip key against the generator's own labels.

The label is the glyph's motion (left, right, up, down) and the loader flips, so a mirrored clip must
come with the swapped label (left <-> right). The score reads every training clip back by its key, plain
and mirrored, and compares the model's prediction with the label the generator drew for that key; so it
fails if labels reach the model shuffled or misaligned with their clips, if a flip keeps the label, or if
the optimizer does not step.
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_MODEL

from dali_pipes.shards import open_shards
from shard_tools.flipmap import flip_permutation
from shard_tools.glyphs import FLIP_PAIRS, MOTIONS
from shard_tools.index import parse_index
from shard_tools.synth import make_synthetic, synth_index, synth_labels
from vmae2.config import finetune_config
from vmae2.tasks import classify_config
from vmae2.train import train

NUM_CLIPS, SEED = 32, 5
# Everything that is not the point is off: RandAugment, erasing, mixup/cutmix, smoothing, crops, drop path,
# and the colour permutation and inversion of tiny's synth recipe.
OVERFIT = {**SMALL_MODEL, "model.num_frames": 8, "total_steps": 1500, "warmup_fraction": 0.05, "base_lr": 0.256,
           "min_lr_base": 0.0256, "layer_decay": 1.0, "drop_path": 0.0, "weight_decay": 0.0,
           "batch_videos_per_gpu": 4, "num_sample": 2, "frame_stride": 2, "rand_augment": "",
           "random_erase_prob": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "label_smoothing": 0.0,
           "colour_permute_prob": 0.0, "invert_prob": 0.0,
           "crop_scale_min": 1.0, "crop_ratio_min": 1.0, "crop_ratio_max": 1.0, "flip": True,
           "loader_threads": 1, "log_every": 20, "save_every": 1000, "progress": False, "tensorboard": False,
           "device": "cpu", "eval_every_epochs": 0}


@pytest.fixture(scope="module")
def motion_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("glyph-motion")
    make_synthetic(root, NUM_CLIPS, kind="glyphs", label="motion", seed=SEED, num_frames=16, width=48, height=48,
                   progress=False)
    return root


def scored_clips(data, cfg, mirrored: bool) -> list[tuple[str, torch.Tensor, int]]:
    """(key, clip, label) of every training video once, read by the fine-tuning loader as it trained but
    mirrored or not; the label is the one the generator drew for the key (swapped when mirrored)."""
    from dali_pipes.classify import finetune_loader

    view = dataclasses.replace(classify_config(cfg), num_sample=1, flip_prob=1.0 if mirrored else 0.0)
    sources = {}
    shards = open_shards(data)
    for tar_path, index_path in zip(shards.tar_paths, shards.index_paths):
        with open(index_path) as f, open(tar_path, "rb") as tar:
            for members in parse_index(f.read()):
                for ext, offset, size, name in members:
                    if ext == "json":
                        tar.seek(offset)
                        sources[name.split(".", 1)[0]] = json.loads(tar.read(size))["source"]
    mirror = flip_permutation(FLIP_PAIRS, list(MOTIONS))
    out = []
    with finetune_loader(data, 4, view, device="cpu", num_threads=1, shuffle=False) as loader:
        for batch in loader:
            for key, clip in zip(batch["keys"], batch["video"]):
                label = synth_labels("glyphs", SEED, synth_index(sources[key]))["motion"]
                out.append((key, clip, mirror[label] if mirrored else label))
    return out


def score(weights_path, cfg, clips) -> dict:
    """top-1 and mean cross-entropy of the final weights on the scored clips."""
    from vmae2.model import VideoClassifier

    model = VideoClassifier(cfg.model, len(MOTIONS), drop_path=0.0)
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    model.eval()
    video = torch.stack([clip for _, clip, _ in clips])
    target = torch.tensor([label for _, _, label in clips])
    with torch.no_grad():
        logits = model(video)
    return {"top1": float((logits.argmax(1) == target).float().mean()),
            "loss": float(F.cross_entropy(logits, target)), "clips": len(target)}


def test_a_small_classifier_overfits_labelled_clips_through_the_dali_loader(motion_set, tmp_path):
    cfg = finetune_config("tiny", "synth", {**OVERFIT, "data": str(motion_set), "out_dir": str(tmp_path / "run")})
    summary = train(cfg)
    clips = scored_clips(motion_set, cfg, mirrored=False) + scored_clips(motion_set, cfg, mirrored=True)
    assert len({key for key, _, _ in clips}) == NUM_CLIPS and len(clips) == 2 * NUM_CLIPS
    assert sorted(np.bincount([label for _, _, label in clips]).tolist()) == [16, 16, 16, 16]
    result = score(tmp_path / "run" / "finetune_final.pt", cfg, clips)
    assert summary["steps"] == OVERFIT["total_steps"]
    assert result["top1"] >= 0.9, result
    assert result["loss"] <= 0.3 * math.log(len(MOTIONS)), result
