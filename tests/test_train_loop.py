"""The training loop on a small model and a loader with the dali_pipes contract (conftest.FakeLoader)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import Interrupting, fake_loader, read_metrics, small_config

from vmae2 import checkpoint, weights
from vmae2.config import FinetuneConfig
from vmae2.model import VideoMAEv2
from vmae2.overrides import config_text
from vmae2.train import NonFiniteLoss, check_resume_config, train


def final_weights(run_dir):
    return torch.load(Path(run_dir) / weights.FINAL_WEIGHTS, weights_only=True)


def test_straight_run_writes_config_metrics_checkpoints(tmp_path):
    cfg = small_config(tmp_path / "run", keep_last=1)
    summary = train(cfg, loader=fake_loader(cfg))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) and r["clips_per_s"] > 0 and 0 <= r["data_wait_frac"] <= 1 for r in rows)
    assert rows[0]["lr"] == 0.0 and rows[2]["lr"] == pytest.approx(cfg.base_lr * 2 / 256)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["img_size"] == 32 and saved["total_steps"] == 8
    # keep_last=1: only the final checkpoint is left; no temporary folders.
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "run")] == [8]
    assert not list((tmp_path / "run").glob("*.tmp"))
    assert summary["steps"] == 8 and summary["last_checkpoint"].endswith("ckpt-00000008")


def test_resume_reproduces_the_straight_run(tmp_path):
    """A run stopped after its step-4 checkpoint and started again gives the same losses and weights."""
    cfg = small_config(tmp_path / "straight")
    train(cfg, loader=fake_loader(cfg))

    cfg2 = small_config(tmp_path / "resumed")
    loader = fake_loader(cfg2)
    with pytest.raises(KeyboardInterrupt):
        # Stop inside step 6, after the step-4 checkpoint: as a kill would, mid-way between checkpoints.
        train(cfg2, loader=Interrupting(loader, after_batches=5))
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "resumed")] == [4]
    train(cfg2, loader=fake_loader(cfg2))       # the same command again: resumes from step 4
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _FixedBatches:
    """The same 4 clips every step, as one batch of 4 or as two micro-batches of 2."""

    def __init__(self, split: bool):
        from conftest import FakeLoader

        self.whole = FakeLoader(4, num_sample=1, img_size=32).make_batch(0, 0)
        self.split = split

    def __len__(self):
        return 1

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __iter__(self):
        if not self.split:
            yield self.whole
            return
        for half in (slice(0, 2), slice(2, 4)):
            yield {"video": self.whole["video"][half], "keys": self.whole["keys"][half],
                   "masks": {k: v[half] for k, v in self.whole["masks"].items()}}


def test_grad_accumulation_equals_the_large_batch_step(tmp_path):
    """2 micro-steps of 2 clips give the gradient (hence the AdamW update) of one step of 4 clips.

    Every sample has the same number of loss tokens, so the mean of the two micro-batch losses is the
    loss of the whole batch. The lr scales with the 4 videos of the optimizer step in both runs.
    """
    common = dict(total_steps=2, warmup_fraction=0.0, num_sample=1, save_every=100, seed=3)
    accum = small_config(tmp_path / "accum", grad_accum_steps=2, batch_videos_per_gpu=2, **common)
    large = small_config(tmp_path / "large", grad_accum_steps=1, batch_videos_per_gpu=4, **common)
    train(accum, loader=_FixedBatches(split=True))
    train(large, loader=_FixedBatches(split=False))
    a, b = final_weights(tmp_path / "accum"), final_weights(tmp_path / "large")
    torch.manual_seed(accum.seed)
    init = VideoMAEv2(accum.model).state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    assert sum(not torch.allclose(a[k], init[k]) for k in a) > len(a) // 2   # the steps did move the weights
    rows_a, rows_b = read_metrics(tmp_path / "accum"), read_metrics(tmp_path / "large")
    assert rows_a[0]["lr"] == rows_b[0]["lr"] == pytest.approx(accum.base_lr * 4 / 256)
    assert [r["loss"] for r in rows_a] == pytest.approx([r["loss"] for r in rows_b], rel=1e-5)


def test_nonfinite_guard_stops_and_names_step_and_checkpoint(tmp_path):
    cfg = small_config(tmp_path / "nan")
    with pytest.raises(NonFiniteLoss, match=r"step 5: loss nan.*last checkpoint: .*ckpt-00000004"):
        train(cfg, loader=fake_loader(cfg, nan_at_batch=5))


def test_nonfinite_guard_skips_up_to_the_configured_count(tmp_path):
    cfg = small_config(tmp_path / "skip", max_nonfinite_skips=1)
    summary = train(cfg, loader=fake_loader(cfg, nan_at_batch=5))
    assert summary["skipped_steps"] == 1 and summary["steps"] == 8
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "skip"))


def test_resume_refuses_a_changed_config(tmp_path):
    cfg = small_config(tmp_path / "run", total_steps=4)
    train(cfg, loader=fake_loader(cfg))
    changed = small_config(tmp_path / "run", total_steps=4, base_lr=0.5)
    with pytest.raises(ValueError, match=r"base_lr"):
        train(changed, loader=fake_loader(changed))


def test_resume_fills_model_keys_added_since_the_checkpoint_with_their_defaults(tmp_path):
    """A checkpoint written before a model key existed (here target_eps) resumes; a changed value does not."""
    current = json.loads(config_text(small_config(tmp_path / "run", total_steps=4)))
    older = {**current, "model": {k: v for k, v in current["model"].items() if k != "target_eps"}}
    check_resume_config(older, current, "ckpt")
    changed = {**current, "model": {**current["model"], "target_eps": 0.05}}
    with pytest.raises(ValueError, match="target_eps"):
        check_resume_config(changed, current, "ckpt")


def test_resume_fills_run_keys_added_since_the_checkpoint_with_their_defaults(tmp_path):
    """A fine-tuning checkpoint written before colour_permute_prob existed resumes at its default; not when
    the run now sets it."""
    cfg = FinetuneConfig(preset="tiny", data="d", out_dir=str(tmp_path / "run"))
    current = json.loads(config_text(cfg))
    older = {k: v for k, v in current.items() if k != "colour_permute_prob"}
    check_resume_config(older, current, "ckpt", FinetuneConfig)
    with pytest.raises(ValueError, match="colour_permute_prob"):
        check_resume_config(older, current, "ckpt")                       # no class: a missing key differs
    with pytest.raises(ValueError, match="colour_permute_prob"):
        check_resume_config(older, {**current, "colour_permute_prob": 1.0}, "ckpt", FinetuneConfig)


def test_missing_data_is_a_clear_error(tmp_path):
    cfg = small_config(tmp_path / "run", data=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*vmae2-shard"):
        train(cfg)
