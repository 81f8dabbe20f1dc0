import math

import numpy as np
import pytest
import torch

import vmae2
from dali_pipes.masking import dual_masks
from vmae2.model import Attention, sinusoid_table
from vmae2.overrides import ConfigError


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


# Spec §2, written out: patch, depth, width D, MLP hidden, decoder depth, width Dd, decoder MLP hidden.
SPEC_SIZES = {"vit_s": (16, 12, 384, 1536, 4, 192, 768), "vit_b": (16, 12, 768, 3072, 4, 384, 1536),
              "vit_l": (16, 24, 1024, 4096, 4, 512, 2048), "vit_h": (16, 32, 1280, 5120, 4, 512, 2048),
              "vit_g": (14, 40, 1408, 6144, 4, 512, 2234)}


def block_shapes(prefix: str, dim: int, hidden: int) -> dict:
    """Spec §6: one transformer block's keys and shapes."""
    shapes = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.qkv.weight": (3 * dim, dim),
              "attn.q_bias": (dim,), "attn.v_bias": (dim,), "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
              "norm2.weight": (dim,), "norm2.bias": (dim,), "mlp.fc1.weight": (hidden, dim), "mlp.fc1.bias": (hidden,),
              "mlp.fc2.weight": (dim, hidden), "mlp.fc2.bias": (dim,)}
    return {f"{prefix}{k}": v for k, v in shapes.items()}


def published_shapes(preset: str, num_classes: int | None = None) -> dict:
    """The full published state dict (key -> shape) of a pre-training model, or of a classifier."""
    p, depth, dim, hidden, dec_depth, dec_dim, dec_hidden = SPEC_SIZES[preset]
    if num_classes is not None:
        shapes = {"patch_embed.proj.weight": (dim, 3, 2, p, p), "patch_embed.proj.bias": (dim,),
                  "fc_norm.weight": (dim,), "fc_norm.bias": (dim,), "head.weight": (num_classes, dim),
                  "head.bias": (num_classes,)}
        for i in range(depth):
            shapes |= block_shapes(f"blocks.{i}.", dim, hidden)
        return shapes
    shapes = {"encoder.patch_embed.proj.weight": (dim, 3, 2, p, p), "encoder.patch_embed.proj.bias": (dim,),
              "encoder.norm.weight": (dim,), "encoder.norm.bias": (dim,), "encoder_to_decoder.weight": (dec_dim, dim),
              "mask_token": (1, 1, dec_dim), "decoder.norm.weight": (dec_dim,), "decoder.norm.bias": (dec_dim,),
              "decoder.head.weight": (2 * p * p * 3, dec_dim), "decoder.head.bias": (2 * p * p * 3,)}
    for i in range(depth):
        shapes |= block_shapes(f"encoder.blocks.{i}.", dim, hidden)
    for j in range(dec_depth):
        shapes |= block_shapes(f"decoder.blocks.{j}.", dec_dim, dec_hidden)
    return shapes


@pytest.mark.parametrize("preset", sorted(SPEC_SIZES))
def test_state_dicts_are_the_published_layout(preset):
    """Every key and every shape of both models of every preset, against the spec's table (§2, §6)."""
    with torch.device("meta"):
        model = vmae2.build_pretrain_model(preset)
        classifier = vmae2.build_classifier(preset, 710)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == published_shapes(preset)
    assert {k: tuple(v.shape) for k, v in classifier.state_dict().items()} == published_shapes(preset, 710)


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


def test_the_3d_table_is_a_time_part_then_a_row_part_then_a_column_part():
    import dataclasses

    from vmae2.config import PRESETS
    from vmae2.model import factorised_sinusoid_table, position_table

    assert PRESETS["vit_b"].model.pos_embed == "1d"                  # the published table: over the flat index
    tiny = PRESETS["tiny"].model                                     # 8 frames × 48², patch 8 → grid (4, 6, 6)
    assert tiny.pos_embed == "3d" and tiny.grid == (4, 6, 6)
    assert torch.equal(position_table(dataclasses.replace(tiny, pos_embed="1d"), 96), sinusoid_table(144, 96))
    table = position_table(tiny, 96)[0].view(4, 6, 6, 96)
    assert torch.equal(table, factorised_sinusoid_table((4, 6, 6), 96)[0].view(4, 6, 6, 96))
    # widths: rows and columns 2 * (96 // 6) = 32 each, time the other 32
    assert torch.equal(table[3, 2, 5, :32], sinusoid_table(4, 32)[0, 3])
    assert torch.equal(table[3, 2, 5, 32:64], sinusoid_table(6, 32)[0, 2])
    assert torch.equal(table[3, 2, 5, 64:], sinusoid_table(6, 32)[0, 5])
    # a token's spatial part is the same at every time step; its time part the same at every place
    assert torch.equal(table[:, 3, 4, 32:], table[0, 3, 4, 32:].expand(4, -1))
    assert torch.equal(table[1, :, :, :32], table[1, 0, 0, :32].expand(6, 6, -1))
    wide = factorised_sinusoid_table((2, 3, 4), 1408)                # ViT-g's width: time 472, rows and columns 468
    assert wide.shape == (1, 24, 1408) and torch.equal(wide[0, 0, 472:940], sinusoid_table(3, 468)[0, 0])
    model = vmae2.build_pretrain_model("tiny")
    rows = model.encoder.pos_embed[0].view(4, 6, 6, 192)[:, 1, 1, 64:128]
    assert torch.equal(rows, sinusoid_table(6, 64)[0, 1].expand(4, -1))
    with pytest.raises(ConfigError, match=r"model.pos_embed='2d': choose 1d \(the published table\) or 3d"):
        dataclasses.replace(tiny, pos_embed="2d")


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
    def heads(t):
        return t.reshape(2, 10, 4, 8).transpose(1, 2)
    w = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) * 8 ** -0.5, dim=-1)
    ref = (w @ heads(v)).transpose(1, 2).reshape(2, 10, 32) @ attn.proj.weight.T + attn.proj.bias
    assert torch.allclose(attn(x), ref, atol=1e-10)


def tiny_batch(batch=2, seed=0, ratio=0.5, **overrides):
    model = vmae2.build_pretrain_model("tiny", decoder_mask_ratio=ratio, **overrides)
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg                                                  # tiny: 8 frames × 48², patch 8
    video = torch.randint(0, 256, (batch, cfg.num_frames, cfg.img_size, cfg.img_size, 3), dtype=torch.uint8,
                          generator=g)
    masks = dual_masks(np.random.default_rng(seed), batch, model.cfg.grid, 0.9, ratio)
    masks = {k: torch.from_numpy(v) for k, v in masks.items()}
    return model, video, masks


def reference_loss(video, pred, masks, p, tubelet=2, normalize=True, eps=1e-6):
    """The spec §4 loss in float64, token by token (normalize False: against the pixels in [0, 1])."""
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
            target = ((pixels - mean) / (std + eps) if normalize else pixels).reshape(-1)  # channel fastest
            total += ((pred[b, pos].double() - target) ** 2).mean().item()
            count += 1
    return total / count


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("ratio", [0.5, 0.0])
def test_loss_matches_float64_reference(ratio, normalize):
    model, video, masks = tiny_batch(ratio=ratio, normalize_target=normalize)
    with torch.no_grad():
        loss, pred = model(video, masks)
    assert model.cfg.patch_size == 8
    assert pred.shape == (2, masks["query_idx"].shape[1], 2 * 8 * 8 * 3)
    assert loss.item() == pytest.approx(reference_loss(video, pred, masks, 8, normalize=normalize), rel=1e-5)


def test_target_eps_is_added_to_each_tokens_std():
    """model.target_eps replaces the published 1e-6 in the normalised target; on a flat clip with faint noise
    a large eps keeps the target near 0 where 1e-6 blows the noise up to unit scale."""
    model, video, masks = tiny_batch(normalize_target=True, target_eps=0.05)
    with torch.no_grad():
        loss, pred = model(video, masks)
    assert loss.item() == pytest.approx(reference_loss(video, pred, masks, 8, eps=0.05), rel=1e-5)
    g = torch.Generator().manual_seed(1)
    flat = (128 + torch.randint(-1, 2, video.shape, generator=g)).to(torch.uint8)   # noise of ±1/255
    zero = torch.zeros_like(pred)
    published = vmae2.build_pretrain_model("tiny", decoder_mask_ratio=0.5, normalize_target=True)
    near_zero = model.forward_loss(vmae2.model.normalize_video(flat)[0], zero, masks["query_idx"], masks["loss_idx"])
    unit = published.forward_loss(vmae2.model.normalize_video(flat)[0], zero, masks["query_idx"], masks["loss_idx"])
    assert near_zero.item() < 0.01 and unit.item() > 0.9
    with pytest.raises(ConfigError, match="target_eps"):
        vmae2.build_pretrain_model("tiny", target_eps=0.0)


def test_pred_follows_query_order():
    """Row i of pred is the reconstruction of token query_idx[i]: permuting the queries permutes the rows."""
    model, video, masks = tiny_batch(batch=2)
    model.eval()
    perm = torch.randperm(masks["query_idx"].shape[1], generator=torch.Generator().manual_seed(1))
    # loss_idx indexes into query_idx, so it follows the permutation too (its loss is then unchanged).
    inverse = torch.argsort(perm)
    permuted = {"visible_idx": masks["visible_idx"], "query_idx": masks["query_idx"][:, perm],
                "loss_idx": inverse[masks["loss_idx"]]}
    with torch.no_grad():
        loss, pred = model(video, masks)
        loss_p, pred_p = model(video, permuted)
    assert torch.allclose(pred_p, pred[:, perm], atol=1e-5)
    assert loss_p.item() == pytest.approx(loss.item(), rel=1e-6)
    assert not torch.allclose(pred_p, pred, atol=1e-3)          # the rows did move


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
    with pytest.raises(ValueError, match="multiple of 8"):
        vmae2.build_pretrain_model("tiny", img_size=100)
    with pytest.raises(ValueError, match="unknown model option"):
        vmae2.build_pretrain_model("tiny", depht=3)
    with pytest.raises(ValueError, match="unknown preset"):
        vmae2.build_pretrain_model("vit_x")


def test_classifier_forward_and_head_init():
    from vmae2.config import finetune_config

    # drop path defaults to the preset's first fine-tuning recipe: tiny's synth recipe has none, ViT-S's 0.1
    assert finetune_config("tiny").drop_path == 0.0 and finetune_config("vit_s").drop_path == 0.1
    assert all(isinstance(block.drop_path, torch.nn.Identity) for block in vmae2.build_classifier("tiny", 10).blocks)
    with torch.device("meta"):
        vit_s = vmae2.build_classifier("vit_s", 10)
    assert vit_s.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    torch.manual_seed(0)
    model = vmae2.build_classifier("tiny", 10, drop_path=0.1)
    assert 0 < model.head.weight.abs().max() <= 2 * 0.001 and (model.head.bias == 0).all()
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)
    video = torch.randint(0, 256, (2, 8, 48, 48, 3), dtype=torch.uint8)   # tiny: 8 frames × 48²
    assert model(video).shape == (2, 10)


# A standard normal's mass beyond ±1 and ±3 std.
BEYOND_1_STD, BEYOND_3_STD = math.erfc(1 / math.sqrt(2)), math.erfc(3 / math.sqrt(2))


def test_classifier_linears_init_like_the_published_finetuning_model():
    """modeling_finetune._init_weights: timm trunc_normal_(std=.02) with bounds ±2 absolute (100 std, so
    practically untruncated) on every Linear, biases 0; then head weight and bias × init_scale 0.001."""
    torch.manual_seed(0)
    model = vmae2.build_classifier("tiny", 2000)                       # a 2000 × 192 head: 384,000 draws
    head = model.head.weight.detach() / 0.001
    fc1 = model.blocks[0].mlp.fc1.weight.detach()                      # 768 × 192
    for weight in (head, fc1):
        std = weight.std().item()
        assert std == pytest.approx(0.02, rel=0.01)                    # a ±1 std cut would give 0.0108
        assert (weight.abs() > 0.02).float().mean().item() == pytest.approx(BEYOND_1_STD, abs=0.005)
        assert (weight.abs() > 0.06).float().mean().item() == pytest.approx(BEYOND_3_STD, abs=0.001)
        assert weight.abs().max() <= 2.0
    assert (head.abs() > 0.07).any()                                    # tails well past 3 std are there
    assert all((m.bias == 0).all() for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)


def test_head_dropout_of_the_preset_drops_the_features_before_the_head():
    from conftest import SMALL_MODEL

    from vmae2.config import finetune_config
    from vmae2.tasks import Classification

    # drop path off, so that the features are the same in train and eval mode
    cfg = finetune_config("vit_h", "k400", {**SMALL_MODEL, "model.grad_checkpointing": False, "drop_path": 0.0})
    model = Classification(cfg, num_classes=4).build_model()
    assert cfg.head_dropout == 0.5 and model.head_dropout.p == 0.5
    head_inputs = []
    model.head.register_forward_pre_hook(lambda module, args: head_inputs.append(args[0].detach()))
    video = torch.randint(0, 256, (4, 16, 32, 32, 3), dtype=torch.uint8)
    torch.manual_seed(0)
    with torch.no_grad():
        features = model.forward_features(video)                       # (4, 48)
        model.eval()
        model(video)
        model.train()
        model(video)
    evaluated, trained = head_inputs
    assert torch.equal(evaluated, features)                            # eval: the head sees the features
    dropped = trained == 0
    assert 0.3 < dropped.float().mean().item() < 0.7                  # train: about half of them zeroed ...
    assert torch.allclose(trained[~dropped], 2 * features[~dropped])   # ... and the rest scaled by 1 / (1 − 0.5)


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
