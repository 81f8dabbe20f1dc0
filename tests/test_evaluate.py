"""The test protocol end to end: DALI test views against an independent decode, every video once over ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL_KWARGS
from PIL import Image
from test_dali_clips import pyav_frames

from dali_pipes.classify import TestConfig, test_loader
from dali_pipes.shards import open_shards
from dali_pipes.views import resized_size, test_views
from shard_tools.samples import iter_samples
from vmae2 import distributed
from vmae2.config import model_config
from vmae2.evaluate import metrics, video_probabilities
from vmae2.model import VideoClassifier

VIEWS = dict(num_frames=16, stride=2, num_clips=2, num_crops=3, short_side=32)
SMALL_EVAL = [f"model.{k}={v}" for k, v in SMALL_MODEL_KWARGS.items()]


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory):
    from shard_tools.synth import make_synthetic

    out = tmp_path_factory.mktemp("eval") / "val"
    make_synthetic(out, 5, codec="vp9", seed=3, num_frames=36, width=64, height=48, progress=False)
    return out


def sensitive_classifier(seed: int = 0) -> VideoClassifier:
    """A small classifier whose head is not the near-zero published init, so inputs move its softmax."""
    torch.manual_seed(seed)
    model = VideoClassifier(model_config("tiny", **SMALL_MODEL_KWARGS), 8, drop_path=0.0)
    torch.nn.init.normal_(model.head.weight, std=2.0)
    return model.eval()


def reference_views(data) -> dict[tuple[str, int, int], np.ndarray]:
    """{(key, clip, crop): (T, S, S, 3)}: each video decoded whole by PyAV, each view resized (PIL bilinear)
    and cropped as test_views says."""
    shards = open_shards(data)
    out = {}
    for tar, idx in zip(shards.tar_paths, shards.index_paths):
        for key, _, encoded, meta in iter_samples(tar, idx):
            frames = pyav_frames(encoded)
            size = resized_size(meta["width"], meta["height"], VIEWS["short_side"])
            for view in test_views(len(frames), meta["width"], meta["height"], **VIEWS):
                x0, y0, w, h = view["box"]
                out[key, view["clip"], view["crop"]] = np.stack(
                    [np.asarray(Image.fromarray(frames[i]).resize(size, Image.BILINEAR))[y0:y0 + h, x0:x0 + w]
                     for i in view["frames"]])
    return out


def test_test_views_through_dali_equal_a_direct_forward_pass(val_shards):
    """Every view the test loader decodes is the published view of an independent decode, and the eval's
    per-video probabilities are the softmax of a direct forward pass averaged over exactly those views."""
    model = sensitive_classifier()
    reference = reference_views(val_shards)
    num_views = VIEWS["num_clips"] * VIEWS["num_crops"]
    direct, seen = {}, set()
    for batch in test_loader(val_shards, 2, TestConfig(**VIEWS), device="cpu", num_threads=1):
        video = batch["video"].reshape(len(batch["keys"]), num_views, *batch["video"].shape[1:])
        views = batch["view"].reshape(len(batch["keys"]), num_views, 2).tolist()
        for b, key in enumerate(batch["keys"]):
            if not batch["valid"][b]:
                continue
            seen.add(key)
            for v, (clip, crop) in enumerate(views[b]):
                ours = video[b, v].numpy().astype(int)
                # DALI's resize and YUV conversion differ from PIL's and PyAV's by about two grey levels
                # on average; the neighbouring views (crops 5 px apart, other frames) differ by far more.
                errors = {other: np.abs(reference[(key, *other)].astype(int) - ours).mean()
                          for other in [(c, j) for c in range(VIEWS["num_clips"]) for j in range(VIEWS["num_crops"])]}
                assert errors[clip, crop] < 3 and min(errors, key=errors.get) == (clip, crop), (key, errors)
            with torch.no_grad():
                direct[key] = model(video[b]).softmax(-1).mean(0).numpy()
    assert seen == {key for key, _, _ in reference} and len(seen) == 5
    loader = test_loader(val_shards, 2, TestConfig(**VIEWS), device="cpu", num_threads=1)
    ours = video_probabilities(model, loader, distributed.autocast("fp32", torch.device("cpu")))
    assert set(ours) == seen
    for key, (_, probs) in ours.items():
        assert np.allclose(probs, direct[key], atol=1e-6), key


def test_metrics_on_known_probabilities():
    videos = {"a": (0, np.array([0.6, 0.3, 0.1])), "b": (1, np.array([0.5, 0.4, 0.1])),
              "c": (2, np.array([0.2, 0.3, 0.5])), "d": (2, np.array([0.1, 0.6, 0.3]))}
    result = metrics(videos)
    assert result["top1"] == 50.0 and result["num_videos"] == 4
    assert result["top5"] == 100.0                                    # 3 classes: always in the top 5
    assert result["mean_class_accuracy"] == pytest.approx(100 * (1 + 0 + 0.5) / 3)


def test_two_gloo_ranks_count_every_video_once(val_shards, tmp_path):
    weights = tmp_path / "classifier.pt"
    torch.save(sensitive_classifier().state_dict(), weights)
    common = ["eval", "--weights", str(weights), "--data", str(val_shards), "--preset", "tiny", "--views", "2x3",
              "--device", "cpu", *[a for s in (*SMALL_EVAL, "frame_stride=2", "loader_threads=1",
                                               "batch_videos_per_gpu=2") for a in ("--set", s)]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "vmae2.cli", *common, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "vmae2.cli", *common, "--out", str(tmp_path / "two")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert one["num_videos"] == two["num_videos"] == 5                 # 5 videos on 2 ranks: one is padding
    assert two["top1"] == one["top1"] and two["top5"] == one["top5"]
    keys = [json.loads(line)["key"] for line in (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 5
