"""The preset table, `--set` / `--config` overrides and the saved config."""
from __future__ import annotations

import pytest

from vmae2.config import (
    PRESETS,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    finetune_config,
    load_config,
    pretrain_config,
    save_config,
)
from vmae2.overrides import ConfigError, parse_set_args, read_config_file


def test_presets_carry_the_spec_pretraining_recipe():
    for preset in ("vit_s", "vit_b", "vit_l", "vit_h", "vit_g"):
        cfg = pretrain_config(preset)
        assert (cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps) == (0.9, 0.95, 1e-8)
        assert cfg.weight_decay == 0.05 and cfg.num_sample == 4 and cfg.batch_videos_per_gpu == 32
        assert cfg.min_lr_base == 1e-5 and cfg.frame_stride == 4 and cfg.warmup_fraction == 0.1
        big = preset in ("vit_h", "vit_g")
        assert cfg.model.grad_checkpointing == big and (cfg.parallel == "fsdp") == big
        assert cfg.base_lr == (6e-4 if preset == "vit_g" else 1e-3)
        assert cfg.clip_grad_norm == (0.02 if preset == "vit_g" else 0.0)
        assert cfg.steps(100) == (23_440, 2_344)          # warmup: 10 % of the schedule


# (preset, dataset): batch, lr, epochs, warmup epochs, layer decay, drop path, wd, clip, stride or tsn, views
PUBLISHED_SCRIPTS = {
    ("vit_b", "k400"): (16, 7e-4, 90, 5, 0.75, 0.1, 0.05, 0.0, 4, (5, 3)),
    ("vit_b", "k710"): (16, 7e-4, 90, 5, 0.75, 0.1, 0.05, 0.0, 4, (5, 3)),
    ("vit_b", "ssv2"): (16, 2e-3, 25, 5, 0.65, 0.1, 0.05, 0.0, "tsn", (2, 3)),
    ("vit_l", "k400"): (6, 2e-3, 35, 5, 0.75, 0.2, 0.05, 0.0, 4, (5, 3)),
    ("vit_l", "ssv2"): (6, 5e-4, 20, 5, 0.75, 0.2, 0.05, 0.0, "tsn", (2, 3)),
    ("vit_h", "k400"): (4, 1e-3, 40, 5, 0.8, 0.2, 0.05, 0.0, 4, (5, 3)),
    ("vit_h", "k600"): (4, 1e-3, 40, 5, 0.8, 0.2, 0.05, 0.0, 4, (5, 3)),
    ("vit_h", "k710"): (4, 1e-3, 40, 5, 0.8, 0.2, 0.05, 0.0, 4, (5, 3)),
    ("vit_h", "ssv2"): (4, 5e-4, 20, 5, 0.8, 0.2, 0.05, 0.0, "tsn", (2, 3)),
    ("vit_g", "k400"): (3, 1e-3, 30, 5, 0.9, 0.2, 0.1, 0.0, 4, (5, 3)),
    ("vit_g", "k710"): (3, 1e-3, 35, 5, 0.9, 0.3, 0.1, 5.0, 4, (5, 3)),
    ("vit_g", "k710_to_k400"): (3, 1e-5, 3, 1, 0.9, 0.25, 0.1, 0.0, 4, (5, 3)),
    ("vit_g", "k710_to_ucf101"): (3, 1e-3, 50, 5, 0.9, 0.35, 0.05, 0.0, 4, (5, 3)),
    ("vit_g", "k710_to_hmdb51"): (3, 5e-4, 15, 5, 0.9, 0.35, 0.05, 0.0, 2, (5, 3)),
    ("vit_g", "ssv2"): (3, 3e-4, 20, 5, 0.9, 0.25, 0.05, 0.0, "tsn", (2, 3)),
}


@pytest.mark.parametrize("key", sorted(PUBLISHED_SCRIPTS))
def test_finetune_recipes_are_the_published_scripts(key):
    batch, lr, epochs, warmup, layer_decay, drop_path, wd, clip, stride, views = PUBLISHED_SCRIPTS[key]
    cfg = finetune_config(*key)
    assert (cfg.batch_videos_per_gpu, cfg.base_lr, cfg.epochs, cfg.total_steps) == (batch, lr, epochs, 0)
    assert (cfg.layer_decay, cfg.drop_path, cfg.weight_decay, cfg.clip_grad_norm) == (layer_decay, drop_path, wd, clip)
    assert cfg.warmup_fraction * epochs == pytest.approx(warmup)
    assert (cfg.num_sample, cfg.min_lr_base, cfg.adam_beta2, cfg.label_smoothing) == (2, 1e-6, 0.999, 0.1)
    assert (cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mixup_switch_prob, cfg.random_erase_prob) == (0.8, 1.0, 0.5, 0.25)
    assert cfg.rand_augment == "rand-m7-n4-mstd0.5-inc1"
    if stride == "tsn":
        assert cfg.sampling == "tsn" and cfg.flip is False
    else:
        assert cfg.sampling == "dense" and cfg.frame_stride == stride and cfg.flip is True
    assert (cfg.test_num_clips, cfg.test_num_crops) == views
    # 1000 batches per epoch: total steps from the epochs, warmup from its epochs
    total, warmup_steps = cfg.steps(1000)
    assert total == epochs * 1000 and warmup_steps == pytest.approx(warmup * 1000, abs=1)


# The scripts that pass --head_drop_rate 0.5 (models/modeling_finetune.py: dropout before the head);
# every other script keeps run_class_finetuning.py's default 0.0.
HEAD_DROP_HALF = {("vit_h", "k400"), ("vit_h", "k600"), ("vit_h", "k710"), ("vit_g", "k710_to_ucf101"),
                  ("vit_g", "k710_to_hmdb51")}


def test_head_dropout_is_half_exactly_where_the_published_scripts_set_it():
    rows = [(preset, dataset) for preset, p in PRESETS.items() for dataset in p.finetune]
    assert HEAD_DROP_HALF <= set(rows) and len(rows) > len(HEAD_DROP_HALF)
    for preset, dataset in rows:
        expected = 0.5 if (preset, dataset) in HEAD_DROP_HALF else 0.0
        assert finetune_config(preset, dataset).head_dropout == expected, (preset, dataset)


def test_vit_g_decoder_takes_the_encoder_mlp_ratio():
    assert PRESETS["vit_g"].model.decoder_mlp_hidden_dim == 2234         # int(512 · 48/11)
    assert all(PRESETS[p].model.decoder_mlp_hidden_dim == 4 * PRESETS[p].model.decoder_embed_dim
               for p in ("vit_s", "vit_b", "vit_l", "vit_h"))


def test_short_runs_of_a_preset_work():
    """Warmup is a fraction, so `--steps 30` on any preset makes a valid schedule."""
    for preset in PRESETS:
        cfg = pretrain_config(preset, {"total_steps": "30"})
        assert cfg.steps(5) == (30, 3)


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
    with pytest.raises(ConfigError, match=r"did you mean 'warmup_fraction'"):
        pretrain_config("tiny", {"warmup_fractoin": "0.1"})
    with pytest.raises(ConfigError, match=r"unknown preset 'vit_x'; choose one of tiny, vit_s"):
        pretrain_config("vit_x")
    with pytest.raises(ConfigError, match=r"no fine-tuning recipe 'k999'; choose one of k400, k710, ssv2"):
        finetune_config("vit_b", "k999")


def test_bad_values_fail_when_set_naming_the_key():
    with pytest.raises(ConfigError, match=r"device='tpu': choose one of auto, cuda, cpu"):
        pretrain_config("tiny", {"device": "tpu"})
    with pytest.raises(ConfigError, match=r"warmup_fraction=1.5: must lie in \[0, 1\)"):
        pretrain_config("tiny", {"warmup_fraction": "1.5"})
    with pytest.raises(ConfigError, match=r"model: a 8x100x100 clip does not tile"):
        pretrain_config("tiny", {"model.img_size": "100"})
    with pytest.raises(ConfigError, match=r"decoder_mask_ratio must be one of"):
        pretrain_config("tiny", {"model.decoder_mask_ratio": "0.3"})
    with pytest.raises(ConfigError, match=r"save_every=0: must be at least 1"):
        pretrain_config("tiny", {"save_every": "0"})
    with pytest.raises(ConfigError, match=r"sampling='sparse': choose one of dense, tsn"):
        finetune_config("vit_b", "k400", {"sampling": "sparse"})
    with pytest.raises(ConfigError, match=r"embed_dim=50 is not divisible by model.num_heads=3"):
        ModelConfig(patch_size=14, depth=1, embed_dim=50, num_heads=3, mlp_hidden_dim=8)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_files_and_saved_configs_round_trip(tmp_path, suffix):
    cfg = pretrain_config("vit_g", {"total_steps": "10", "model.img_size": "112"})
    save_config(cfg, tmp_path / f"config{suffix}")
    assert load_config(PretrainConfig, tmp_path / f"config{suffix}") == cfg
    ft = finetune_config("tiny", None, {"init": "run/", "layer_decay": "0.65"})
    save_config(ft, tmp_path / f"ft{suffix}")
    assert load_config(FinetuneConfig, tmp_path / f"ft{suffix}") == ft
    # a config file as overrides: nested model keys, applied like --set
    values = read_config_file(tmp_path / f"config{suffix}")
    assert pretrain_config("tiny", values) == cfg          # a saved config reproduces its run


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        read_config_file(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"list.json: expected a mapping"):
        read_config_file(listed)
