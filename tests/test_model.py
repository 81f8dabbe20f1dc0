import math

import numpy as np
import pytest
import torch

import vmae2
from dali_pipes.masking import dual_masks
from vmae2.model import Attention, sinusoid_table


def encoder_params(preset):
    with torch.device("meta"):
        model = vmae2.build_pretrain_model(preset)
    return sum(v.numel() for k, v in model.state_dict().items() if k.startswith("encoder."))


@pytest.mark.parametrize("preset,millions", [
    ("vit_s", 21.88), ("vit_b", 86.23), ("vit_l", 303.86), ("vit_h", 631.61), ("vit_g", 1011.61)])
def test_encoder_parameter_counts(preset, millions):
    assert abs(encoder_params(preset) - millions * 1e6) <= 5_000


def test_vit_b_classifier_parameter_count():
    with torch.device("meta"):
        model = vmae2.build_classifier("vit_b", 400)
    assert sum(p.numel() for p in model.parameters()) == 86_534_800


def published_pretrain_keys(depth, decoder_depth):
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
             "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
             "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = {"encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias",
            "encoder.norm.weight", "encoder.norm.bias", "encoder_to_decoder.weight", "mask_token",
            "decoder.norm.weight", "decoder.norm.bias", "decoder.head.weight", "decoder.head.bias"}
    keys |= {f"encoder.blocks.{i}.{k}" for i in range(depth) for k in block}
    keys |= {f"decoder.blocks.{j}.{k}" for j in range(decoder_depth) for k in block}
    return keys, block


def test_state_dict_keys_are_the_published_layout():
    with torch.device("meta"):
        model = vmae2.build_pretrain_model("vit_b")
        classifier = vmae2.build_classifier("vit_b", 710)
    keys, block = published_pretrain_keys(12, 4)
    assert set(model.state_dict()) == keys
    sd = model.state_dict()
    assert sd["encoder.patch_embed.proj.weight"].shape == (768, 3, 2, 16, 16)
    assert sd["encoder.blocks.0.attn.qkv.weight"].shape == (3 * 768, 768)
    assert sd["mask_token"].shape == (1, 1, 384)
    assert sd["decoder.head.weight"].shape == (1536, 384)
    cls_keys = {"patch_embed.proj.weight", "patch_embed.proj.bias", "fc_norm.weight", "fc_norm.bias",
                "head.weight", "head.bias"} | {f"blocks.{i}.{k}" for i in range(12) for k in block}
    assert set(classifier.state_dict()) == cls_keys


def test_vit_g_head_width():
    with torch.device("meta"):
        model = vmae2.build_pretrain_model("vit_g")
    assert model.decoder.head.out_features == 1176
    assert model.cfg.num_patches == 2048


def test_sinusoid_table_formula():
    table = sinusoid_table(50, 16)[0].double().numpy()
    for pos in (0, 7, 49):
        for j in range(16):
            angle = pos / 10000 ** (2 * (j // 2) / 16)
            assert table[pos, j] == pytest.approx(math.sin(angle) if j % 2 == 0 else math.cos(angle), abs=1e-6)


def test_attention_matches_explicit_formula():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    torch.nn.init.normal_(attn.q_bias)
    torch.nn.init.normal_(attn.v_bias)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    attn = attn.double()
    q = x @ attn.qkv.weight[:32].T + attn.q_bias
    k = x @ attn.qkv.weight[32:64].T                       # no k bias
    v = x @ attn.qkv.weight[64:].T + attn.v_bias
    heads = lambda t: t.reshape(2, 10, 4, 8).transpose(1, 2)
    w = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) * 8 ** -0.5, dim=-1)
    ref = (w @ heads(v)).transpose(1, 2).reshape(2, 10, 32) @ attn.proj.weight.T + attn.proj.bias
    assert torch.allclose(attn(x), ref, atol=1e-10)


def tiny_batch(batch=2, seed=0, ratio=0.5):
    model = vmae2.build_pretrain_model("tiny", decoder_mask_ratio=ratio)
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (batch, 16, 112, 112, 3), dtype=torch.uint8, generator=g)
    masks = {k: torch.from_numpy(v) for k, v in dual_masks(np.random.default_rng(seed), batch, model.cfg.grid, 0.9, ratio).items()}
    return model, video, masks


def reference_loss(video, pred, masks, p, tubelet=2):
    """The spec §4 loss in float64, token by token."""
    video = video.double() / 255.0                                # (B, T, H, W, 3)
    B, T, H, W, _ = video.shape
    hp, wp = H // p, W // p
    total, count = 0.0, 0
    for b in range(B):
        for pos in masks["loss_idx"][b].tolist():
            token = int(masks["query_idx"][b, pos])
            t, rem = divmod(token, hp * wp)
            h, w = divmod(rem, wp)
            cube = video[b, t * tubelet:(t + 1) * tubelet, h * p:(h + 1) * p, w * p:(w + 1) * p, :]
            pixels = cube.reshape(-1, 3)                          # ((t·p + i)·p + j, c)
            mean = pixels.mean(dim=0)
            std = pixels.var(dim=0, unbiased=True).sqrt()
            target = ((pixels - mean) / (std + 1e-6)).reshape(-1)  # channel fastest
            total += ((pred[b, pos].double() - target) ** 2).mean().item()
            count += 1
    return total / count


@pytest.mark.parametrize("ratio", [0.5, 0.0])
def test_loss_matches_float64_reference(ratio):
    model, video, masks = tiny_batch(ratio=ratio)
    with torch.no_grad():
        loss, pred = model(video, masks)
    assert pred.shape == (2, masks["query_idx"].shape[1], 2 * 14 * 14 * 3)
    assert loss.item() == pytest.approx(reference_loss(video, pred, masks, 14), rel=1e-5)


def test_pred_follows_query_order():
    """Decoding the same sample with one mask and its reversed-batch twin gives consistent rows."""
    model, video, masks = tiny_batch(batch=2)
    model.eval()
    with torch.no_grad():
        _, pred = model(video, masks)
        swapped = {k: v.flip(0) for k, v in masks.items()}
        _, pred_swapped = model(video.flip(0), swapped)
    assert torch.allclose(pred, pred_swapped.flip(0), atol=1e-5)


def test_backward_reaches_every_parameter():
    model, video, masks = tiny_batch()
    loss, _ = model(video, masks)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_accepts_numpy_masks_and_bad_shapes_fail_clearly():
    model, video, masks = tiny_batch()
    with torch.no_grad():
        loss_t, _ = model(video, masks)
        loss_n, _ = model(video, {k: v.numpy() for k, v in masks.items()})
    assert loss_t.item() == loss_n.item()
    with pytest.raises(ValueError, match="multiple of 14"):
        vmae2.build_pretrain_model("tiny", img_size=100)
    with pytest.raises(ValueError, match="unknown model option"):
        vmae2.build_pretrain_model("tiny", depht=3)
    with pytest.raises(ValueError, match="unknown preset"):
        vmae2.build_pretrain_model("vit_x")


def test_classifier_forward_and_head_init():
    torch.manual_seed(0)
    model = vmae2.build_classifier("tiny", 10)
    assert model.head.weight.abs().max() <= 0.02 * 0.001 + 1e-12
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)
    video = torch.randint(0, 256, (2, 16, 112, 112, 3), dtype=torch.uint8)
    assert model(video).shape == (2, 10)


def test_pretrain_init_follows_spec():
    torch.manual_seed(0)
    model = vmae2.build_pretrain_model("tiny")
    assert model.mask_token.abs().max() <= 0.02
    fc1 = model.encoder.blocks[0].mlp.fc1
    bound = math.sqrt(6 / (fc1.in_features + fc1.out_features))   # xavier uniform
    assert fc1.weight.abs().max() <= bound and fc1.weight.abs().max() > 0.9 * bound
    assert (fc1.bias == 0).all()
    # the encoder->decoder projection keeps PyTorch's default (kaiming-uniform, a=√5) bound 1/√fan_in
    e2d = model.encoder_to_decoder.weight
    assert e2d.abs().max() <= 1 / math.sqrt(e2d.shape[1]) + 1e-7


def test_compiled_matches_eager():
    model, video, masks = tiny_batch()
    torch.manual_seed(0)
    eager_loss, eager_pred = model(video, masks)
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    loss, pred = compiled(video, masks)
    loss.backward()
    assert torch.allclose(loss, eager_loss, rtol=1e-4, atol=1e-5)
    assert torch.allclose(pred, eager_pred, rtol=1e-3, atol=1e-4)
    for g_compiled, g_eager in zip((p.grad for p in model.parameters()), eager_grads):
        assert torch.allclose(g_compiled, g_eager, rtol=1e-3, atol=1e-5)


def test_truncated_normal_init_statistics():
    from vmae2.model import trunc_normal_one_std_

    x = trunc_normal_one_std_(torch.empty(200_000), std=0.02)
    assert x.abs().max() <= 0.02
    # a standard normal truncated at ±1 has std sqrt(1 - 2φ(1)/(2Φ(1) - 1)) ≈ 0.5377
    assert x.std().item() == pytest.approx(0.02 * 0.5377, rel=0.01)
    assert abs(x.mean().item()) < 1e-4
