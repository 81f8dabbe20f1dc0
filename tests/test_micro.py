"""bench.experiments.micro: its reconstruction baselines, its weight transfer and its fine-tuning loop."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bench.experiments import micro
from bench.experiments.ceiling import render

PERMUTATIONS = list(itertools.permutations(range(3)))


@pytest.fixture(scope="module")
def clips():
    return render(micro.SPLITS["labelled"][0], 20, micro.SIZE, micro.FRAMES, "plain")


def test_the_per_position_baseline_is_the_training_clips_mean_patch(clips):
    torch.manual_seed(0)
    model, losses = micro.pretrain(clips[0], steps=2, lr=1e-3, batch=4)
    assert len(losses) == 2
    scores = micro.recon_losses(model, clips[0], clips[0])
    # on the clips it was taken from, the mean patch per position beats one mean patch for every position
    assert scores["per_position"] < scores["constant"]
    # and a clip's own patches (a per-position mean over that clip alone) score 0
    assert micro.recon_losses(model, clips[0][:1], clips[0][:1])["per_position"] < 1e-10


def test_the_classifier_takes_the_pretrained_encoder_but_its_norm(clips):
    model, _ = micro.pretrain(clips[0], steps=1, lr=1e-3, batch=2)
    state = model.state_dict()
    net = micro.classifier(state)
    assert torch.equal(net.blocks[0].attn.qkv.weight, state["encoder.blocks.0.attn.qkv.weight"])
    assert torch.equal(net.patch_embed.proj.weight, state["encoder.patch_embed.proj.weight"])
    assert not torch.equal(micro.classifier(None).blocks[0].attn.qkv.weight, net.blocks[0].attn.qkv.weight)
    with pytest.raises(RuntimeError, match="do not fit"):
        micro.classifier({**state, "encoder.extra.weight": torch.zeros(1)})


def test_fine_tuning_fits_its_labelled_clips(clips):
    fitted = micro.finetune(micro.classifier(None), clips, clips, steps=60, lr=3e-3, layer_decay=1.0, batch=20, shift=0)
    assert fitted["train_top1"] >= 90 and fitted["top1"] == fitted["train_top1"]


def test_recoloured_clips_keep_their_pixels_up_to_channel_order_and_inversion():
    rng = np.random.default_rng(0)
    videos = torch.randint(0, 256, (16, 2, 4, 4, 3), dtype=torch.uint8)
    out = micro.recoloured(videos, rng)
    inverted = 0
    for before, after in zip(videos, out):
        flipped = (255 - after) if not any(torch.equal(after, before[..., list(p)]) for p in PERMUTATIONS) else after
        inverted += flipped is not after
        assert any(torch.equal(flipped, before[..., list(p)]) for p in PERMUTATIONS)
    assert 0 < inverted < 16 and not torch.equal(out, videos)
