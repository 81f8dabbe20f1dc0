"""End to end on real synthetic shards (VP9, DALI's CPU decoder): CLI, SIGKILL + resume, PNG, finetune."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vmae2 import checkpoint
from vmae2.cli import main

SMALL_SETS = ["model.img_size=32", "model.patch_size=8", "model.depth=2", "model.embed_dim=48",
              "model.num_heads=2", "model.mlp_hidden_dim=96", "model.decoder_depth=1",
              "model.decoder_embed_dim=32", "model.decoder_num_heads=2", "batch_videos_per_gpu=2",
              "num_sample=2", "frame_stride=2", "device=cpu", "log_every=1", "progress=false",
              "loader_threads=1"]


def set_args(*extra):
    return [a for s in (*SMALL_SETS, *extra) for a in ("--set", s)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from shard_tools.synth import make_synthetic

    out = tmp_path_factory.mktemp("shards") / "train"
    make_synthetic(out, 8, codec="vp9", seed=0, num_frames=40, width=64, height=48, progress=False)
    return out


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory):
    from shard_tools.synth import make_synthetic

    out = tmp_path_factory.mktemp("shards") / "val"
    make_synthetic(out, 7, codec="vp9", seed=1, num_frames=40, width=64, height=48, progress=False)
    return out


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def invoke(args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    return result


def test_cli_pretrain_then_visualize_then_finetune(tmp_path, shards, val_shards):
    run = tmp_path / "run"
    result = invoke(["pretrain", "--preset", "tiny", "--data", shards, "--out", run, "--steps", 4,
                     *set_args("save_every=2", "warmup_fraction=0.25")])
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4]
    assert json.loads((run / "config.json").read_text())["data"] == str(shards)
    assert (run / "tensorboard").is_dir() and any((run / "tensorboard").iterdir())
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [2, 4]

    png = tmp_path / "recon.png"
    result = invoke(["visualize", "--ckpt", run, "--data", shards, "--out", png, "--num-clips", 2])
    assert result.exit_code == 0, result.output
    from PIL import Image

    width, height = Image.open(png).size
    assert height >= 2 * 3 * 32 * 2 and width > 4 * 32 * 2     # 2 clips x 3 rows, 4 frames, scale 2

    ft = tmp_path / "ft"
    result = invoke(["finetune", "--preset", "tiny", "--data", shards, "--val-data", val_shards, "--out", ft,
                     "--init", run, "--steps", 2, *set_args("test_num_clips=2", "test_num_crops=2")])
    assert result.exit_code == 0, result.output
    res = json.loads((ft / "result.json").read_text())
    assert res["num_videos"] == 7 and res["views"] == "2x2"
    assert 0 <= res["top1"] <= res["top5"] <= 100 and 0 <= res["mean_class_accuracy"] <= 100
    assert json.loads((ft / "config.json").read_text())["init"] == str(run)

    ev = tmp_path / "eval"
    result = invoke(["eval", "--weights", ft, "--data", val_shards, "--out", ev, "--views", "2x1",
                     "--set", "loader_threads=1", "--set", "frame_stride=2"])
    assert result.exit_code == 0, result.output
    res = json.loads((ev / "result.json").read_text())
    assert res["num_videos"] == 7 and res["views"] == "2x1" and res["preset"] == "tiny"
    predictions = [json.loads(line) for line in (ev / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 7 and len({p["key"] for p in predictions}) == 7
    top1 = 100 * sum(p["top5"][0] == p["label"] for p in predictions) / 7
    assert res["top1"] == pytest.approx(top1)


def test_cli_errors_are_clear(tmp_path, shards):
    result = invoke(["pretrain", "--preset", "tiny", "--data", shards, "--out", tmp_path / "r",
                     "--set", "warmup_fraction_=0.1"])
    assert result.exit_code == 1
    assert "Error: unknown config key 'warmup_fraction_'; did you mean 'warmup_fraction'" in result.output
    assert "Traceback" not in result.output
    result = invoke(["pretrain", "--preset", "tiny", "--data", tmp_path / "missing", "--out", tmp_path / "r"])
    assert result.exit_code == 1 and "vmae2-shard" in result.output
    result = invoke(["pretrain", "--preset", "tiny", "--data", shards, "--out", tmp_path / "r", "--resume"])
    assert result.exit_code == 1 and "holds no complete checkpoint" in result.output
    result = invoke(["finetune", "--preset", "tiny", "--data", shards, "--val-data", shards,
                     "--out", tmp_path / "ft", "--init", tmp_path / "nothing.pt"])
    assert result.exit_code == 1 and "nothing.pt does not exist" in result.output


@pytest.mark.parametrize("task,steps", [("pretrain", 24), ("finetune", 12)])
def test_sigkill_then_same_command_reproduces_the_straight_run(tmp_path, shards, task, steps):
    """Kill -9 a real run between checkpoints; the same command again gives the straight run's losses.

    Fine-tuning adds the DALI fine-tuning loader's state and the mixup draws (numpy's RNG) to what resumes.
    """
    def command(out):
        return [sys.executable, "-m", "vmae2.cli", task, "--preset", "tiny", "--data", str(shards),
                "--out", str(out), "--steps", str(steps), *set_args("save_every=4", "warmup_fraction=0.1",
                                                                     "tensorboard=false")]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(command(tmp_path / "straight"), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # Kill after step 5 is logged: one step past the step-4 checkpoint.
        if (killed / "metrics.jsonl").is_file() and (killed / "metrics.jsonl").read_text().count("\n") >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert max(s for s, _ in checkpoint.list_checkpoints(killed)) < steps
    subprocess.run(command(killed), check=True, env=env, capture_output=True)

    straight, resumed = rows(tmp_path / "straight"), rows(killed)
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    a = torch.load(tmp_path / "straight" / f"{task}_final.pt", weights_only=True)
    b = torch.load(killed / f"{task}_final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
