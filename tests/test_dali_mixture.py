"""Mixtures of shard sets: source shares, per-source strides, exact mid-epoch resume, one label space."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import take
from test_dali_clips import frame_numbers, make_shards

import dali_pipes
from dali_pipes.mixture import MixtureLoader, mixture_loader
from dali_pipes.sampling import SamplingConfig
from dali_pipes.shards import DatasetError

CFG = SamplingConfig(num_frames=8, img_size=32, stride=2, patch_size=8, num_sample=1)


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    make_shards(root / "a", [33] * 6)
    make_shards(root / "b", [33] * 6)
    path = root / "mix.json"
    path.write_text(json.dumps([{"path": "a", "weight": 3, "stride": 2}, {"path": "b", "weight": 1, "stride": 4}]))
    return path


def build(path, seed=0, **kw):
    def one(data, stride, source_seed):
        return dali_pipes.pretrain_loader(data, 2, replace(CFG, stride=stride or CFG.stride), device="cpu",
                                          seed=source_seed, num_threads=1)
    return mixture_loader(path, one, seed=seed, **kw)


def test_sources_follow_the_weights_and_keep_their_strides(mixture):
    loader = build(mixture)
    assert len(loader) == 3 + 3                       # the datasets' epochs together (6 videos / 2 each)
    batches = take(loader, 160)
    picks = np.array([b["source"] for b in batches])
    # 160 draws at p = 0.75: mean 120, standard deviation 5.5
    assert abs((picks == 0).sum() - 120) < 3 * 5.5
    for batch in batches[:40]:
        stride = 2 if batch["source"] == 0 else 4
        for clip in batch["video"].numpy():
            assert (np.diff(frame_numbers(clip)) == stride).all()
    counts = loader.source_counts()
    assert counts == {"a": 2 * int((picks == 0).sum()), "b": 2 * int((picks == 1).sum())}


def test_resume_mid_epoch_gives_the_same_batches(mixture):
    straight = take(build(mixture, seed=5), 9)
    first = build(mixture, seed=5)
    take(first, 4)
    state = first.state_dict()
    first.close()
    resumed = build(mixture, seed=5)
    resumed.load_state_dict(state)
    rest = take(resumed, 5)
    for a, b in zip(straight[4:], rest):
        assert a["source"] == b["source"] and a["keys"] == b["keys"]
        assert torch.equal(a["video"], b["video"])


def test_labels_map_into_one_label_space(mixture, tmp_path):
    from test_dali_clips import shard_metadata

    label_map = tmp_path / "labels.txt"
    label_map.write_text("other\nclass2\nclass1\nclass0\n")            # another order, one extra class
    index = {"other": 0, "class2": 1, "class1": 2, "class0": 3}
    names = {k: m["label_name"] for d in ("a", "b") for k, m in shard_metadata(mixture.parent / d).items()}
    loader = build(mixture, label_map=label_map)
    seen = set()
    for batch in take(loader, 8):
        for key, label in zip(batch["keys"], batch["label"].tolist()):
            assert label == index[names[key]], (key, names[key], label)
            seen.add(label)
    assert seen == {1, 2, 3}
    label_map.write_text("class0\nclass1\n")
    with pytest.raises(DatasetError, match=r"classes \['class2'\] are not in the label map"):
        build(mixture, label_map=label_map)


def test_pretrain_loader_takes_a_mixture_list(mixture, monkeypatch):
    monkeypatch.chdir(mixture.parent)
    entries = [{"path": "a", "weight": 1, "stride": 4}, {"path": "b", "weight": 1}]
    loader = dali_pipes.pretrain_loader(entries, 2, CFG, device="cpu", num_threads=1)
    assert isinstance(loader, MixtureLoader) and len(loader) == 6
    for batch in take(loader, 6):
        assert set(batch["masks"]) == {"visible_idx", "query_idx", "loss_idx"}
        for clip in batch["video"].numpy():              # a: its own stride 4; b: the run's stride 2
            assert (np.diff(frame_numbers(clip)) == (4 if batch["source"] == 0 else 2)).all()


def test_mixture_needs_a_loader_per_dataset():
    with pytest.raises(ValueError, match="one loader per dataset"):
        MixtureLoader([], [])
