"""transformers VideoMAE weights converted to vmae2 compute the same function (CPU, small random models)."""
import pytest
import torch

from vmae2.config import ModelConfig
from vmae2.model import VideoClassifier, VideoMAEv2, normalize_video
from vmae2.weights import load_weights, read_weights

transformers = pytest.importorskip("transformers", reason="transformers is a test extra")

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
             patch_size=8, num_frames=4, tubelet_size=2, decoder_hidden_size=32, decoder_num_hidden_layers=1,
             decoder_num_attention_heads=2, decoder_intermediate_size=64)
OURS = ModelConfig(patch_size=8, depth=2, embed_dim=64, num_heads=4, mlp_hidden_dim=128, decoder_depth=1,
                   decoder_embed_dim=32, decoder_num_heads=2, num_frames=4, img_size=32)


def randomised(model):
    """Every parameter random (biases and LayerNorm affines too), so a mixed-up key cannot go unnoticed."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def clips(batch=2):
    video = torch.randint(0, 256, (batch, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    pixels, x = normalize_video(video)                          # (B, 3, T, H, W), ImageNet-normalised
    return video, pixels, x, x.permute(0, 2, 1, 3, 4)          # transformers takes (B, T, 3, H, W)


def relative_error(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def test_classifier_logits_match_transformers(tmp_path):
    hf = randomised(transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(**SMALL, num_labels=5)))
    hf.save_pretrained(tmp_path / "cls")
    state, config = read_weights(tmp_path / "cls")
    assert config["model"] == {k: getattr(OURS, k) for k in config["model"]}
    assert state["blocks.1.attn.qkv.weight"].shape == (192, 64) and "head.weight" in state
    ours = VideoClassifier(ModelConfig(**config["model"]), 5, drop_path=0.0).eval()
    report = load_weights(ours, tmp_path / "cls")
    assert len(report.loaded) == len(ours.state_dict()) and not report.initialised
    assert "LayerNorm eps" in str(report)
    video, _, _, hf_input = clips()
    with torch.no_grad():
        expected = hf(pixel_values=hf_input).logits
        got = ours(video)
    assert relative_error(expected, got) < 1e-4
    with torch.no_grad():   # and the encoder alone, before pooling
        tokens = hf.videomae(pixel_values=hf_input).last_hidden_state
        x = ours.patch_embed(normalize_video(video)[1]) + ours.pos_embed
        for blk in ours.blocks:
            x = blk(x)
    assert relative_error(tokens, x) < 1e-4


def test_pretraining_encoder_decoder_and_loss_match_transformers(tmp_path):
    hf = randomised(transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(**SMALL, use_mean_pooling=False)))
    ours = VideoMAEv2(OURS).eval()
    report = load_weights(ours, hf.state_dict())
    assert len(report.loaded) == len(ours.state_dict())
    _, pixels, x, hf_input = clips()
    num_tokens, num_masked = 32, 24
    g = torch.Generator().manual_seed(2)
    query_idx = torch.stack([torch.randperm(num_tokens, generator=g)[:num_masked].sort().values for _ in range(2)])
    bool_masked_pos = torch.zeros(2, num_tokens, dtype=torch.bool).scatter_(1, query_idx, True)
    visible_idx = torch.stack([torch.nonzero(~row).squeeze(1) for row in bool_masked_pos])
    with torch.no_grad():
        out = hf(pixel_values=hf_input, bool_masked_pos=bool_masked_pos)
        latent = ours.forward_encoder(x, visible_idx)
        hf_latent = hf.videomae(pixel_values=hf_input, bool_masked_pos=bool_masked_pos).last_hidden_state
        pred = ours.forward_decoder(latent, visible_idx, query_idx)
        loss = ours.forward_loss(pixels, pred, query_idx, torch.arange(num_masked).expand(2, -1))
    assert relative_error(hf_latent, latent) < 1e-4
    assert relative_error(out.logits, pred) < 1e-4
    assert loss.item() == pytest.approx(out.loss.item(), rel=1e-4)


def test_bare_model_and_older_bias_names_load_into_a_classifier():
    hf = randomised(transformers.VideoMAEModel(transformers.VideoMAEConfig(**SMALL, use_mean_pooling=False)))
    state = {k.replace("attention.attention.query.bias", "attention.attention.q_bias")
              .replace("attention.attention.value.bias", "attention.attention.v_bias"): v
             for k, v in hf.state_dict().items()}   # the names older transformers releases saved
    ours = VideoClassifier(OURS, 3, drop_path=0.0)
    report = load_weights(ours, state)
    assert set(report.initialised) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert report.dropped == ["encoder.norm.bias", "encoder.norm.weight"]
    layer = hf.encoder.layer[1].attention.attention
    assert torch.equal(ours.blocks[1].attn.q_bias, layer.query.bias)
    assert torch.equal(ours.blocks[1].attn.v_bias, layer.value.bias)
    assert torch.equal(ours.blocks[1].attn.qkv.weight,
                       torch.cat([layer.query.weight, layer.key.weight, layer.value.weight]))


def test_key_bias_zero_is_accepted_non_zero_is_refused():
    hf = randomised(transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(**SMALL, num_labels=5)))
    state = dict(hf.state_dict())
    key = "videomae.encoder.layer.1.attention.attention.key.bias"
    state[key] = torch.zeros(64)
    load_weights(VideoClassifier(OURS, 5, drop_path=0.0), state)
    state[key] = torch.full((64,), 0.5)
    with pytest.raises(ValueError, match=r"blocks\.1\.attn has a non-zero key bias .*fixes the k bias at zero"):
        read_weights(state)


def test_first_token_classifier_is_refused(tmp_path):
    config = transformers.VideoMAEConfig(**SMALL, num_labels=5, use_mean_pooling=False)
    transformers.VideoMAEForVideoClassification(config).save_pretrained(tmp_path / "cls")
    with pytest.raises(ValueError, match="use_mean_pooling=False classifies the first token"):
        read_weights(tmp_path / "cls")


def test_other_activation_is_refused(tmp_path):
    config = transformers.VideoMAEConfig(**SMALL, hidden_act="relu")
    transformers.VideoMAEForPreTraining(config).save_pretrained(tmp_path / "pre")
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        read_weights(tmp_path / "pre")


def test_decoder_mlp_of_another_ratio_is_refused(tmp_path):
    config = transformers.VideoMAEConfig(**dict(SMALL, decoder_intermediate_size=96))
    transformers.VideoMAEForPreTraining(config).save_pretrained(tmp_path / "pre")
    with pytest.raises(ValueError, match="decoder_intermediate_size=96; vmae2 sizes the decoder MLP"):
        read_weights(tmp_path / "pre")
    transformers.VideoMAEModel(config).save_pretrained(tmp_path / "bare")   # no decoder: loads
    assert read_weights(tmp_path / "bare")[0]["encoder.blocks.0.attn.qkv.weight"].shape == (192, 64)
