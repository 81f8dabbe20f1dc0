"""Two gloo processes under torchrun on the CPU: disjoint data per rank, identical weights.

This file is also the torchrun worker: `torchrun --nproc_per_node 2 tests/test_train_distributed.py
DATA OUT` pre-trains on real synthetic shards and writes each rank's summary next to OUT;
`... test_train_distributed.py fsdp-nan OUT` runs FSDP2 on made-up clips with a NaN on rank 0;
`... test_train_distributed.py finetune DATA VAL OUT` fine-tunes and evaluates on real shards.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SETS = ["model.img_size=32", "model.patch_size=8", "model.depth=2", "model.embed_dim=48",
        "model.num_heads=2", "model.mlp_hidden_dim=96", "model.decoder_depth=1",
        "model.decoder_embed_dim=32", "model.decoder_num_heads=2", "batch_videos_per_gpu=2",
        "num_sample=2", "frame_stride=2", "device=cpu", "log_every=2", "save_every=3", "warmup_fraction=0.2",
        "progress=false", "tensorboard=false", "log_keys=true", "loader_threads=1"]


def worker(data: str, out: str) -> None:
    from vmae2.train import run_pretrain

    summary = run_pretrain("tiny", data, out, steps=5, sets=SETS)
    rank = int(os.environ["RANK"])
    Path(f"{out}-summary-rank{rank}.json").write_text(json.dumps(summary))


def finetune_worker(data: str, val: str, out: str) -> None:
    from vmae2.train import run_finetune

    summary = run_finetune("tiny", data, out, val_data=val, steps=4,
                           sets=[*SETS, "test_num_clips=1", "test_num_crops=2", "eval_every_epochs=0"])
    Path(f"{out}-summary-rank{os.environ['RANK']}.json").write_text(json.dumps(summary))


def fsdp_nan_worker(out: str) -> None:
    """FSDP2 with a NaN batch on rank 0 only: both ranks must skip that same step on the device."""
    from conftest import FakeLoader, small_config

    from vmae2.train import train

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cfg = small_config(out, parallel="fsdp", max_nonfinite_skips=1, total_steps=6, log_every=2, save_every=3)
    loader = FakeLoader(cfg.batch_videos_per_gpu, num_sample=cfg.num_sample, img_size=32, rank=rank,
                        world_size=world_size, nan_at_batch=2 if rank == 0 else None)  # step 2
    summary = train(cfg, loader=loader)
    Path(f"{out}-summary-rank{rank}.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from shard_tools.synth import make_synthetic

    out = tmp_path_factory.mktemp("dist") / "shards"
    make_synthetic(out, 8, codec="vp9", seed=0, num_frames=40, width=64, height=48, progress=False)
    return out


def test_two_gloo_ranks_read_disjoint_data_and_keep_identical_weights(tmp_path, shards):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(shards), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    summaries = [json.loads((tmp_path / f"run-summary-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["world_size"] == 2 and s["steps"] == 5 for s in summaries)
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"] is not None

    # 8 videos, 2 ranks, 2 videos per batch: 2 batches per rank per epoch. Within an epoch the two
    # ranks' videos are disjoint and together cover the dataset.
    keys = {}
    for r in (0, 1):
        for line in (out / f"keys-rank{r}.jsonl").read_text().splitlines():
            row = json.loads(line)
            keys[(r, row["step"])] = set(row["keys"])
    per_epoch = defaultdict(lambda: defaultdict(set))
    for (r, step), ks in keys.items():
        per_epoch[step // 2][r] |= ks
    for epoch in (0, 1):
        ranks = per_epoch[epoch]
        assert not ranks[0] & ranks[1], f"epoch {epoch}: ranks share samples {ranks[0] & ranks[1]}"
        assert len(ranks[0] | ranks[1]) == 8
    # The peak lr (step index 1, right after the 1-step warmup) is scaled by the videos of both ranks.
    cfg = json.loads((out / "config.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4, 5]
    assert metrics[0]["lr"] == pytest.approx(cfg["base_lr"] * (2 * 2) / 256)


def test_two_gloo_ranks_finetune_on_disjoint_data_and_evaluate_every_video_once(tmp_path, shards):
    from shard_tools.synth import make_synthetic

    val = tmp_path / "val"
    make_synthetic(val, 5, codec="vp9", seed=4, num_frames=40, width=64, height=48, progress=False)
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, "finetune", str(shards), str(val), str(out)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summaries = [json.loads((tmp_path / f"ft-summary-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["world_size"] == 2 and s["steps"] == 4 for s in summaries)
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"] is not None
    keys = defaultdict(set)                       # 8 videos, 2 ranks x 2 per batch: steps 0-1 are epoch 0
    for r in (0, 1):
        for line in (out / f"keys-rank{r}.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["step"] < 2:
                keys[r] |= set(row["keys"])
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 8
    result = json.loads((out / "result.json").read_text())
    assert result["num_videos"] == 5 and result["views"] == "1x2"       # 5 videos on 2 ranks, each once
    assert summaries[0]["result"]["num_videos"] == summaries[1]["result"]["num_videos"] == 5


def test_fsdp2_ranks_skip_the_same_nonfinite_step(tmp_path):
    out = tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, "fsdp-nan", str(out)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "non-finite loss at step 2: loss nan" in proc.stdout
    summaries = [json.loads((tmp_path / f"fsdp-summary-rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["skipped_steps"] for s in summaries] == [1, 1]
    assert all(s["steps"] == 6 and s["world_size"] == 2 for s in summaries)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert (out / "ckpt-00000006").is_dir() and (out / "pretrain_final.pt").is_file()


if __name__ == "__main__":
    if sys.argv[1] == "fsdp-nan":
        fsdp_nan_worker(sys.argv[2])
    elif sys.argv[1] == "finetune":
        finetune_worker(*sys.argv[2:5])
    else:
        worker(sys.argv[1], sys.argv[2])


def test_cpu_processes_flush_subnormals_to_zero():
    """x86 arithmetic on subnormal floats is slow; pre-trained weights produce them (half-speed fine-tuning)."""
    subprocess_code = ("import torch; from vmae2 import distributed; "
                       "before = torch.tensor([1e-40]).item(); distributed.init('cpu'); "
                       "print(before > 0, torch.tensor([1e-40]).item() == 0.0)")
    out = subprocess.run([sys.executable, "-c", subprocess_code], capture_output=True, text=True, check=True,
                         env={**os.environ, "WORLD_SIZE": "1"})
    assert out.stdout.split() == ["True", "True"]
