"""Fine-tuning and test loaders (dali_pipes.classify) on the CPU, read back through self-describing clips.

Tiny setting: 80×64 (landscape) and 48×64 (portrait) clips of 9–33 frames, 4 frames per clip at
stride 2 (a window of 8 frames), crops of 32.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_dali_clips import clip_frames, crop_box, encode_clip, frame_numbers, shard_metadata

from dali_pipes import classify
from dali_pipes.shards import DatasetError
from dali_pipes.views import resized_size, test_views

T, STRIDE, SIZE = 4, 2, 32
SPAN = T * STRIDE
# (frames, width, height): short (≤ 8 frames), long, portrait, square
CLIPS = [(30, 80, 64), (6, 80, 64), (33, 48, 64), (17, 64, 64), (9, 80, 64), (24, 48, 64), (12, 80, 64)]
PLAIN = classify.FinetuneConfig(num_frames=T, stride=STRIDE, img_size=SIZE, num_sample=2, rand_augment=None,
                                erase=None)
OPTS = dict(device="cpu", num_threads=2)


def make_set(out, clips, unlabeled=()):
    """A packed dataset of self-describing VP9 clips in class folders c0/c1 (indices in `unlabeled`: at the root)."""
    from shard_tools.pack import pack

    src = out.parent / f"{out.name}-src"
    for i, (n, width, height) in enumerate(clips):
        folder = src if i in unlabeled else src / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        encode_clip(folder / f"v{i:02d}.webm", clip_frames(n, height, width))
    pack(src, out, codec="copy", shard_size=20_000, progress=False)
    return shard_metadata(out)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "ds"
    return out, make_set(out, CLIPS)


def published_dense_train(n, start):
    """VideoClsDataset train load_video, one segment: the rule written out per video."""
    if n <= SPAN:
        index = np.concatenate([np.linspace(0, n, num=n // STRIDE), np.ones(T - n // STRIDE) * n])
        return np.clip(index, 0, n - 1).astype(np.int64)
    return np.clip(np.linspace(start, start + SPAN, num=T), start, start + SPAN - 1).astype(np.int64)


def test_finetune_clips_follow_the_published_dense_rule_and_share_one_decode(dataset):
    out, metas = dataset
    loader = classify.finetune_loader(out, 3, PLAIN, seed=1, **OPTS)
    starts, flips, seen = {}, 0, set()
    for _ in range(3):
        for batch in loader:
            video = batch["video"].numpy()
            assert video.shape == (6, T, SIZE, SIZE, 3) and video.dtype == np.uint8
            assert batch["label"].dtype == torch.int64
            for b in range(3):
                key = batch["keys"][2 * b]
                assert batch["keys"][2 * b + 1] == key
                meta = metas[key]
                assert batch["label"][2 * b] == batch["label"][2 * b + 1] == meta["label"]
                views = [frame_numbers(video[2 * b + j]) for j in range(2)]
                assert (views[0] == views[1]).all()          # one decode feeds both views
                n = meta["num_frames"]
                assert (views[0] == published_dense_train(n, views[0][0])).all(), (key, n, views[0])
                if n > SPAN:
                    assert 0 <= views[0][0] <= n - SPAN - 1
                    starts.setdefault(key, set()).add(int(views[0][0]))
                seen.add(key)
                for j in range(2):
                    x0, y0, w, h = np.array([crop_box(video[2 * b + j][f:f + 1]) for f in range(T)]).T
                    assert max(np.ptp(x0), np.ptp(y0), np.ptp(w), np.ptp(h)) < 1.0   # one box (codec noise)
                    width, height = meta["width"], meta["height"]
                    left, right = sorted([x0[0], x0[0] + w[0]])
                    assert -1 < left and right < width + 1 and -1 < y0[0] and y0[0] + h[0] < height + 1
                    area = abs(w[0]) * h[0] / (width * height)
                    assert 0.06 < area < 1.05 and 0.7 < abs(w[0]) / h[0] < 1.4
                    flips += w[0] < 0
    assert seen == set(metas)
    assert any(len(s) > 1 for s in starts.values()), "clip starts never vary"
    assert 0.25 < flips / (3 * 2 * len(metas)) < 0.75


def test_tsn_sampling_takes_one_frame_per_segment_and_no_flip(dataset):
    out, metas = dataset
    cfg = classify.FinetuneConfig(num_frames=T, sampling="tsn", img_size=SIZE, num_sample=1, flip_prob=0.0,
                                  rand_augment=None, erase=None)
    for batch in classify.finetune_loader(out, 2, cfg, seed=2, **OPTS):
        for clip, key in zip(batch["video"].numpy(), batch["keys"]):
            n, got = metas[key]["num_frames"], frame_numbers(clip)
            duration = n // T
            low = np.arange(T) * duration
            assert ((got >= low) & (got < low + duration)).all(), (key, n, got)
            assert crop_box(clip)[2] > 0                       # never mirrored


def batches_of(loader, count):
    it = iter(loader)
    return [next(it) for _ in range(count)]


def test_finetune_resume_gives_identical_batches(dataset):
    """The full recipe (RandAugment, erasing, flips): stop after 3 batches, restore, same batches."""
    out, _ = dataset
    cfg = classify.FinetuneConfig(num_frames=T, stride=STRIDE, img_size=SIZE, num_sample=2)
    loader = classify.finetune_loader(out, 2, cfg, seed=7, **OPTS)
    per_epoch = len(loader)
    assert per_epoch == 4
    reference = [b for _ in range(2) for b in loader]        # two epochs, uninterrupted
    loader = classify.finetune_loader(out, 2, cfg, seed=7, **OPTS)
    batches_of(loader, 3)
    state = loader.state_dict()
    restored = classify.finetune_loader(out, 2, cfg, seed=7, **OPTS)
    restored.load_state_dict(state)
    resumed = list(restored) + list(restored)                 # rest of epoch 0, then epoch 1
    assert len(resumed) == 2 * per_epoch - 3
    for want, got in zip(reference[3:], resumed):
        assert want["keys"] == got["keys"]
        assert torch.equal(want["label"], got["label"])
        assert torch.equal(want["video"], got["video"])
    assert not torch.equal(reference[0]["video"][0], reference[0]["video"][1])   # augmentation differs per view


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_test_loader_yields_every_view_of_every_video_once(dataset, world_size):
    out, metas = dataset
    cfg = classify.TestConfig(num_frames=T, stride=STRIDE, num_clips=3, num_crops=2, short_side=SIZE)
    counted = {}
    for rank in range(world_size):
        with classify.test_loader(out, 2, cfg, rank=rank, world_size=world_size, **OPTS) as loader:
            for batch in loader:
                video, view, valid = batch["video"].numpy(), batch["view"].numpy(), batch["valid"].numpy()
                assert video.shape == (len(batch["keys"]) * 6, T, SIZE, SIZE, 3)
                for b, key in enumerate(batch["keys"]):
                    assert batch["label"][b] == metas[key]["label"]
                    if not valid[b]:
                        assert key in counted                  # padding repeats a video already counted
                        continue
                    assert key not in counted
                    counted[key] = [(tuple(view[6 * b + v]), video[6 * b + v]) for v in range(6)]
    assert set(counted) == set(metas)
    for key, views in counted.items():
        meta = metas[key]
        n, width, height = meta["num_frames"], meta["width"], meta["height"]
        expected = test_views(n, width, height, num_frames=T, stride=STRIDE, num_clips=3, num_crops=2,
                              short_side=SIZE)
        assert [v for v, _ in views] == [(e["clip"], e["crop"]) for e in expected]
        res_w, res_h = resized_size(width, height, SIZE)
        for (_, clip), e in zip(views, expected):
            assert (frame_numbers(clip) == e["frames"]).all(), (key, e)
            x0, y0, w, h = e["box"]
            source = np.array([x0 * width / res_w, y0 * height / res_h, w * width / res_w, h * height / res_h])
            assert np.abs(np.array(crop_box(clip)) - source).max() < 1.0, (key, e["box"], crop_box(clip))


def test_test_loader_tsn_views(dataset):
    out, metas = dataset
    cfg = classify.TestConfig(num_frames=T, sampling="tsn", num_clips=2, num_crops=3, short_side=SIZE)
    with classify.test_loader(out, 4, cfg, **OPTS) as loader:
        batch = next(iter(loader))
    for b, key in enumerate(batch["keys"]):
        meta = metas[key]
        expected = test_views(meta["num_frames"], meta["width"], meta["height"], num_frames=T, num_clips=2,
                              num_crops=3, short_side=SIZE, sampling="tsn")
        for v, e in enumerate(expected):
            assert (frame_numbers(batch["video"][6 * b + v].numpy()) == e["frames"]).all()


def test_unlabeled_samples_are_an_error_naming_their_keys(tmp_path):
    out = tmp_path / "mixed"
    metas = make_set(out, CLIPS[:4], unlabeled=(1, 3))
    unlabeled = sorted(k for k, m in metas.items() if m["label"] is None)
    assert len(unlabeled) == 2
    for make in (lambda: classify.finetune_loader(out, 2, PLAIN, **OPTS),
                 lambda: classify.test_loader(out, 2, **OPTS)):
        with pytest.raises(DatasetError, match="2 of 4 samples have no label") as err:
            make()
        assert all(key in str(err.value) for key in unlabeled)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC decode, GPU augmentation)")
def test_gpu_loaders_give_the_published_views_and_resume(dataset):
    """The same graphs on the GPU: test views read back right, the full fine-tuning recipe resumes exactly."""
    out, metas = dataset
    cfg = classify.TestConfig(num_frames=T, stride=STRIDE, num_clips=3, num_crops=2, short_side=SIZE)
    with classify.test_loader(out, 2, cfg, device="cuda", num_threads=2) as loader:
        batch = next(iter(loader))
    assert batch["video"].is_cuda and batch["valid"].is_cuda
    for b, key in enumerate(batch["keys"]):
        meta = metas[key]
        expected = test_views(meta["num_frames"], meta["width"], meta["height"], num_frames=T, stride=STRIDE,
                              num_clips=3, num_crops=2, short_side=SIZE)
        for v, e in enumerate(expected):
            assert (frame_numbers(batch["video"][6 * b + v].cpu().numpy()) == e["frames"]).all()
    full = classify.FinetuneConfig(num_frames=T, stride=STRIDE, img_size=SIZE, num_sample=2)
    loader = classify.finetune_loader(out, 2, full, seed=3, device="cuda", num_threads=2)
    reference = list(loader)
    loader = classify.finetune_loader(out, 2, full, seed=3, device="cuda", num_threads=2)
    batches_of(loader, 2)
    restored = classify.finetune_loader(out, 2, full, seed=3, device="cuda", num_threads=2)
    restored.load_state_dict(loader.state_dict())
    for want, got in zip(reference[2:], restored):
        assert want["video"].is_cuda and want["keys"] == got["keys"]
        assert torch.equal(want["video"], got["video"]) and torch.equal(want["label"], got["label"])


def test_recolouring_reorders_or_inverts_each_views_channels_and_keeps_its_label(dataset):
    from dataclasses import replace
    from itertools import permutations

    out, _ = dataset
    recoloured = replace(PLAIN, colour_permute_prob=1.0, invert_prob=0.5)
    plain = next(iter(classify.finetune_loader(out, 4, PLAIN, seed=3, **OPTS)))
    batch = next(iter(classify.finetune_loader(out, 4, recoloured, seed=3, **OPTS)))
    assert batch["keys"] == plain["keys"] and torch.equal(batch["label"], plain["label"])
    seen, inverted = set(), 0
    for before, after in zip(plain["video"].numpy().astype(int), batch["video"].numpy().astype(int)):
        matches = [(perm, inv) for perm in permutations(range(3)) for inv in (False, True)
                   if np.abs((255 - before[..., perm] if inv else before[..., perm]) - after).max() <= 1]
        assert matches, "a view is not its plain twin with its channels reordered and perhaps inverted"
        seen.add(matches[0][0])
        inverted += matches[0][1]
    assert len(seen) > 1 and 0 < inverted < len(plain["keys"])
