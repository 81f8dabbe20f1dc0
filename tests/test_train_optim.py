"""Optimizer parameter groups (with and without torch.compile) and the lr schedule."""
from __future__ import annotations

import math

import pytest
import torch

from vmae2 import build_classifier, build_pretrain_model
from vmae2.distributed import compile_blocks
from vmae2.optim import build_optimizer, clean_name, layer_decay_param_groups, lr_at, pretrain_param_groups

SMALL = dict(depth=2, embed_dim=48, num_heads=2, mlp_hidden_dim=96, decoder_depth=1,
             decoder_embed_dim=32, decoder_num_heads=2)


def decay_split(model):
    names = {id(p): clean_name(n) for n, p in model.named_parameters()}
    groups = pretrain_param_groups(model, 0.05)
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert len(groups) == 2 and not decay & no_decay
    assert decay | no_decay == set(names.values())
    return decay, no_decay


def expected_no_decay(name: str) -> bool:
    return (name.endswith(".bias") or name.endswith(("q_bias", "v_bias")) or name == "mask_token"
            or ".norm" in name or name.startswith(("encoder.norm", "decoder.norm")))


@pytest.mark.parametrize("wrap", ["plain", "torch.compile", "compile_blocks"])
def test_weight_decay_skips_biases_norms_qv_biases_and_mask_token(wrap):
    model = build_pretrain_model("tiny", **SMALL)
    reference = {n for n, _ in model.named_parameters()}
    if wrap == "torch.compile":
        model = torch.compile(model)
    elif wrap == "compile_blocks":
        compile_blocks(model)
    decay, no_decay = decay_split(model)
    assert decay | no_decay == reference
    assert no_decay == {n for n in reference if expected_no_decay(n)}
    assert {"mask_token", "encoder.blocks.0.attn.q_bias", "encoder.blocks.1.attn.v_bias",
            "decoder.norm.weight", "encoder.patch_embed.proj.bias"} <= no_decay
    assert {"encoder.blocks.0.attn.qkv.weight", "encoder.patch_embed.proj.weight", "encoder_to_decoder.weight",
            "decoder.head.weight", "decoder.blocks.0.mlp.fc1.weight"} <= decay


def test_layer_decay_scales_follow_the_spec():
    model = build_classifier("tiny", num_classes=8, **SMALL)       # depth 2: layers 0..3
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in layer_decay_param_groups(model, 0.05, 0.5) for p in g["params"]}
    assert scale["patch_embed.proj.weight"] == 0.5 ** 3
    assert scale["blocks.0.attn.qkv.weight"] == 0.5 ** 2
    assert scale["blocks.1.mlp.fc2.bias"] == 0.5 ** 1
    assert scale["fc_norm.weight"] == scale["head.weight"] == 1.0
    assert set(scale) == {n for n, _ in model.named_parameters()}


def test_lr_schedule_at_known_steps():
    kw = dict(peak_lr=1.0, min_lr=0.01, warmup_steps=10, total_steps=110)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(0.5)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_at(85, **kw) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_at(110, **kw) == pytest.approx(0.01)
    lrs = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))    # monotone after warmup


def test_found_inf_skips_the_whole_adamw_update():
    """The trainer's device-side non-finite skip: NaN gradients change no weight and no moment."""
    weight = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([{"params": [weight], "weight_decay": 0.05}], kind="adamw", lr=0.1,
                          betas=(0.9, 0.95), eps=1e-8, device=torch.device("cpu"))
    weight.grad = torch.ones(3)
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    after_one = (weight.detach().clone(), opt.state[weight]["exp_avg"].clone(), opt.state[weight]["step"].clone())
    weight.grad = torch.full((3,), math.nan)
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert not torch.equal(after_one[0], torch.ones(3))
    assert torch.equal(weight.detach(), after_one[0])
    assert torch.equal(opt.state[weight]["exp_avg"], after_one[1])
    assert opt.state[weight]["step"].item() == after_one[2].item() == 1
