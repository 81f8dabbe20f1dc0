"""Fine-tuning through the one training loop: mixup/cutmix on the device, exact resume, init from pre-training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL, Interrupting, fake_loader, read_metrics, small_config

from vmae2.config import finetune_config
from vmae2.tasks import Classification, mix_clips
from vmae2.train import train


def small_finetune_config(out_dir, **overrides):
    sets = {**SMALL_MODEL, "out_dir": str(out_dir), "data": "", "total_steps": 8, "warmup_fraction": 0.25,
            "batch_videos_per_gpu": 2, "num_sample": 2, "log_every": 1, "save_every": 4, "progress": False,
            "tensorboard": False, "device": "cpu", "eval_every_epochs": 0, **overrides}
    return finetune_config("tiny", "synth", sets)


def final_weights(run_dir):
    return torch.load(run_dir / "finetune_final.pt", weights_only=True)


def test_mixup_and_cutmix_mix_labels_and_share_the_box_over_frames():
    from timm.data import Mixup

    torch.manual_seed(0)
    np.random.seed(0)
    video = torch.randint(0, 256, (4, 6, 16, 16, 3), dtype=torch.uint8)
    label = torch.tensor([0, 1, 2, 3])
    for switch_prob, kind in ((1.0, "cutmix"), (0.0, "mixup")):
        mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=switch_prob, label_smoothing=0.1, num_classes=5)
        mixed, target = mix_clips(mixup, video, label)
        assert mixed.shape == video.shape and target.shape == (4, 5)
        assert torch.allclose(target.sum(dim=1), torch.ones(4))                  # soft targets sum to 1
        flipped = video.flip(0).float()
        # each sample mixes only itself and its batch mirror, with the lam its target says
        lam = (target[0, 0] - 0.1 / 5) / (1 - 0.1)
        assert target[0, 3] > 0 and target[0, 4] == pytest.approx(0.1 / 5)
        if kind == "cutmix":
            took_other = (mixed == flipped) & (mixed != video.float())             # pixels replaced by the mirror's
            box = took_other.any(dim=-1)                                           # (B, T, H, W)
            assert box[0].any() and all(torch.equal(box[0, t], box[0, 0]) for t in range(6))  # same box every frame
            area = 1 - box[0, 0].float().mean()
            assert lam.item() == pytest.approx(area.item(), abs=0.05)
        else:
            assert torch.allclose(mixed, lam * video.float() + (1 - lam) * flipped, atol=1e-3)


def test_finetune_resume_reproduces_the_straight_run(tmp_path):
    """Mixup draws from numpy's global RNG and drop path from torch's: both are restored on resume."""
    cfg = small_finetune_config(tmp_path / "straight")
    train(cfg, loader=fake_loader(cfg), task=Classification(cfg, num_classes=4))

    cfg2 = small_finetune_config(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train(cfg2, loader=Interrupting(fake_loader(cfg2), after_batches=6), task=Classification(cfg2, num_classes=4))
    train(cfg2, loader=fake_loader(cfg2), task=Classification(cfg2, num_classes=4))
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight] and len(straight) == 8
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_starts_from_a_pretraining_run_and_uses_layer_decay(tmp_path):
    pre = small_config(tmp_path / "pre", total_steps=2, save_every=2)
    train(pre, loader=fake_loader(pre))
    pretrained = torch.load(tmp_path / "pre" / "pretrain_final.pt", weights_only=True)
    cfg = small_finetune_config(tmp_path / "ft", init=str(tmp_path / "pre"), total_steps=1, layer_decay=0.5)
    task = Classification(cfg, num_classes=4)
    model = task.build_model()
    for key, value in model.state_dict().items():
        if key.startswith("blocks.") or key.startswith("patch_embed."):
            assert torch.equal(value, pretrained[f"encoder.{key}"]), key
    scales = {g["layer_id"]: g["lr_scale"] for g in task.param_groups(model)}
    assert scales == {0: 0.5 ** 3, 1: 0.5 ** 2, 2: 0.5, 3: 1.0}                 # depth 2: embed, 2 blocks, head


def test_ema_of_the_weights_is_exported(tmp_path):
    cfg = small_finetune_config(tmp_path / "ema", ema_decay=0.5, total_steps=3, save_every=100)
    train(cfg, loader=fake_loader(cfg), task=Classification(cfg, num_classes=4))
    ema = final_weights(tmp_path / "ema")
    cfg2 = small_finetune_config(tmp_path / "plain", total_steps=3, save_every=100)
    train(cfg2, loader=fake_loader(cfg2), task=Classification(cfg2, num_classes=4))
    plain = final_weights(tmp_path / "plain")
    assert ema.keys() == plain.keys()
    assert any(not torch.allclose(ema[k], plain[k]) for k in ema)                 # the average, not the last step
