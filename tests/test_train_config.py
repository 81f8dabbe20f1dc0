"""Training presets, `--set` overrides and the saved config."""
from __future__ import annotations

import pytest

from vmae2.train_config import (
    ConfigError,
    FinetuneConfig,
    PretrainConfig,
    finetune_config,
    load_config,
    parse_set_args,
    pretrain_config,
    save_config,
)


def test_presets_carry_the_spec_recipe():
    for preset in ("vit_s", "vit_b", "vit_l", "vit_h", "vit_g"):
        cfg = pretrain_config(preset)
        assert (cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps) == (0.9, 0.95, 1e-8)
        assert cfg.weight_decay == 0.05 and cfg.num_sample == 4 and cfg.batch_videos_per_gpu == 32
        assert cfg.min_lr_base == 1e-5 and cfg.frame_stride == 4
        big = preset in ("vit_h", "vit_g")
        assert cfg.model.grad_checkpointing == big and (cfg.parallel == "fsdp") == big
        assert cfg.base_lr == (6e-4 if preset == "vit_g" else 1e-3)
        assert cfg.clip_grad_norm == (0.02 if preset == "vit_g" else 0.0)
    assert finetune_config("vit_g").layer_decay == 0.9 and finetune_config("vit_h").layer_decay == 0.8
    assert finetune_config("vit_b").layer_decay == 0.75 and finetune_config("vit_b").adam_beta2 == 0.999


def test_overrides_are_parsed_against_the_field_type():
    cfg = pretrain_config("tiny", parse_set_args(["total_steps=1_000", "base_lr=0.3", "compile=true",
                                                  "model.img_size=56", "model.decoder_mask_ratio=0"]))
    assert cfg.total_steps == 1000 and cfg.base_lr == 0.3 and cfg.compile is True
    assert cfg.model.img_size == 56 and cfg.model.decoder_mask_ratio == 0.0
    with pytest.raises(ConfigError, match=r"total_steps='many': expected an integer"):
        pretrain_config("tiny", {"total_steps": "many"})
    with pytest.raises(ConfigError, match=r"compile='maybe': expected a boolean"):
        pretrain_config("tiny", {"compile": "maybe"})
    with pytest.raises(ConfigError, match=r"expected key=value"):
        parse_set_args(["total_steps"])


def test_unknown_keys_name_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'base_lrr'; did you mean 'base_lr'"):
        pretrain_config("tiny", {"base_lrr": "1"})
    with pytest.raises(ConfigError, match=r"did you mean 'model.img_size'"):
        pretrain_config("tiny", {"model.img_sise": "64"})
    with pytest.raises(ConfigError, match=r"did you mean 'save_every'"):
        pretrain_config("tiny", {"save_evry": "5"})
    with pytest.raises(ConfigError, match=r"did you mean 'base_lr'"):
        pretrain_config("tiny", {"lr_base": "1e-3"})
    with pytest.raises(ConfigError, match=r"unknown preset 'vit_x'; choose one of tiny, vit_s"):
        pretrain_config("vit_x")


def test_bad_values_are_clear_errors():
    with pytest.raises(ConfigError, match=r"device='tpu': choose one of auto, cuda, cpu"):
        pretrain_config("tiny", {"device": "tpu"})
    with pytest.raises(ConfigError, match=r"warmup_steps=300: must lie in \[0, total_steps=300\)"):
        pretrain_config("tiny", {"warmup_steps": "300"})
    with pytest.raises(ConfigError, match=r"model: a 16x100x100 clip does not tile"):
        pretrain_config("tiny", {"model.img_size": "100"})
    with pytest.raises(ConfigError, match=r"decoder_mask_ratio must be one of"):
        pretrain_config("tiny", {"model.decoder_mask_ratio": "0.3"})
    with pytest.raises(ConfigError, match=r"save_every=0: must be at least 1"):
        pretrain_config("tiny", {"save_every": "0"})


def test_config_round_trips_through_json(tmp_path):
    cfg = pretrain_config("vit_g", {"total_steps": "10", "warmup_steps": "1", "model.img_size": "112"})
    save_config(cfg, tmp_path / "config.json")
    assert load_config(PretrainConfig, tmp_path / "config.json") == cfg
    ft = finetune_config("tiny", {"init": "run/", "layer_decay": "0.5"})
    save_config(ft, tmp_path / "ft.json")
    assert load_config(FinetuneConfig, tmp_path / "ft.json") == ft
