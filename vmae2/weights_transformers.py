"""transformers VideoMAE -> the published layout (spec §6): state dicts and config.json.

VideoMAEForPreTraining, VideoMAEForVideoClassification and a bare VideoMAEModel convert to our keys:
query/key/value -> qkv with learnable q and v biases (our k bias is fixed at zero), renamed norms, no
position keys (the same fixed 1-D sinusoid table). Variants vmae2 cannot represent are refused by name.
vmae2.weights recognises the layout and calls these; they read nothing from disk.
"""
from __future__ import annotations

import re

import torch

# transformers VideoMAELayer names -> ours, within one block
_HF_BLOCK = {"attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
             "layernorm_before": "norm1", "layernorm_after": "norm2"}
_HF_BIAS = {"query.bias": "q_bias", "q_bias": "q_bias", "value.bias": "v_bias", "v_bias": "v_bias"}


def config_from_transformers(config: dict, names: set[str]) -> dict:
    """A transformers VideoMAE config.json -> {"model": {ModelConfig fields in `names`}, "transformers": config}."""
    hidden = config.get("hidden_size", 768)
    sides = {}
    for key, default in (("patch_size", 16), ("image_size", 224)):
        value = config.get(key, default)
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise ValueError(f"transformers config.json: {key}={value} is not square; vmae2 takes square "
                                 f"patches and crops")
            value = value[0]
        sides[key] = value
    model = dict(patch_size=sides["patch_size"], depth=config.get("num_hidden_layers", 12),
                 embed_dim=hidden, num_heads=config.get("num_attention_heads", 12),
                 mlp_hidden_dim=config.get("intermediate_size", 3072),
                 decoder_depth=config.get("decoder_num_hidden_layers", 4),
                 decoder_embed_dim=config.get("decoder_hidden_size", 384),
                 decoder_num_heads=config.get("decoder_num_attention_heads", 6),
                 tubelet_size=config.get("tubelet_size", 2), num_frames=config.get("num_frames", 16),
                 img_size=sides["image_size"])
    return {"model": {k: v for k, v in model.items() if k in names}, "transformers": config}


def from_transformers(state: dict[str, torch.Tensor], hf_config: dict, name: str
                      ) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """A transformers VideoMAE state dict -> (published layout, the class it came from, notes).

    VideoMAEForPreTraining -> the pre-training layout (encoder.*, decoder.*); VideoMAEForVideoClassification
    -> the classifier layout (blocks.*, fc_norm, head); a bare VideoMAEModel -> encoder.* only.
    transformers uses the same fixed 1-D sinusoid table and the same cube order, so no position keys are
    needed; its query/key/value become our qkv with learnable q and v biases (our k bias is fixed at zero).
    """
    if "encoder_to_decoder.weight" in state or any(k.startswith("decoder.decoder_layers.") for k in state):
        kind, enc = "transformers VideoMAEForPreTraining", "encoder."
    elif "classifier.weight" in state or "fc_norm.weight" in state:
        kind, enc = "transformers VideoMAEForVideoClassification", ""
    else:
        kind, enc = "transformers VideoMAEModel", "encoder."
    if hf_config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{name}: {kind} uses hidden_act={hf_config['hidden_act']!r}; vmae2 blocks use exact GELU "
                         f"(hidden_act='gelu'), so these weights would compute something else")
    ratio_hidden = hf_config.get("decoder_hidden_size", 384) * hf_config.get("intermediate_size", 3072) \
        // hf_config.get("hidden_size", 768)
    if kind.endswith("ForPreTraining") and hf_config.get("decoder_intermediate_size", ratio_hidden) != ratio_hidden:
        raise ValueError(f"{name}: {kind} has decoder_intermediate_size={hf_config['decoder_intermediate_size']}; "
                         f"vmae2 sizes the decoder MLP with the encoder's ratio (decoder_hidden_size × "
                         f"intermediate_size / hidden_size), as the published model does")
    if hf_config.get("num_channels", 3) != 3:
        raise ValueError(f"{name}: {kind} takes num_channels={hf_config['num_channels']}; vmae2 takes RGB (3)")
    if enc == "" and ("videomae.layernorm.weight" in state or "fc_norm.weight" not in state
                      or hf_config.get("use_mean_pooling") is False):
        raise ValueError(f"{name}: {kind} with use_mean_pooling=False classifies the first token after a final "
                         f"LayerNorm; vmae2's classifier mean-pools all tokens into fc_norm (use_mean_pooling=True), "
                         f"so its head would see other features; use the encoder only (load its pre-training "
                         f"weights) and fine-tune a new head")
    out, blocks, rest = {}, {}, {}
    for key, value in state.items():
        m = re.fullmatch(r"videomae\.encoder\.layer\.(\d+)\.(.+)", key) or \
            re.fullmatch(r"decoder\.decoder_layers\.(\d+)\.(.+)", key)
        if m:
            prefix = f"{enc}blocks.{m[1]}." if key.startswith("videomae.") else f"decoder.blocks.{m[1]}."
            blocks.setdefault(prefix, {})[m[2]] = value
        else:
            rest[key] = value
    for prefix, block in blocks.items():
        out.update(_convert_block(block, prefix, name))
    renames = {"videomae.embeddings.patch_embeddings.projection.": f"{enc}patch_embed.proj.",
               "videomae.layernorm.": "encoder.norm.", "fc_norm.": "fc_norm.", "classifier.": "head.",
               "encoder_to_decoder.": "encoder_to_decoder.", "mask_token": "mask_token",
               "decoder.norm.": "decoder.norm.", "decoder.head.": "decoder.head."}
    for key, value in rest.items():
        if key.endswith("position_embeddings"):
            continue                       # the fixed sinusoid table, recomputed by the model
        old = next((o for o in renames if key.startswith(o)), None)
        if old is None:
            raise ValueError(f"{name}: unknown key {key} {tuple(value.shape)} in {kind}; vmae2 converts the "
                             f"VideoMAE classes of transformers only")
        out[renames[old] + key[len(old):]] = value
    eps = hf_config.get("layer_norm_eps", 1e-12)
    notes = [f"converted from {kind}: LayerNorm eps {eps:g} there (1e-5 in fc_norm and the decoder's norm), "
             f"1e-6 in vmae2"]
    if hf_config.get("norm_pix_loss") is False:
        notes.append("the transformers model was set to norm_pix_loss=False; vmae2 always normalises target pixels")
    return out, kind, notes


def _convert_block(block: dict[str, torch.Tensor], prefix: str, name: str) -> dict[str, torch.Tensor]:
    """One transformers VideoMAELayer -> our Block keys under `prefix`."""
    out, attn = {}, "attention.attention."
    key_bias = block.pop(attn + "key.bias", None)
    if key_bias is not None and key_bias.abs().max() > 0:
        raise ValueError(f"{name}: {prefix}attn has a non-zero key bias (max |b| {key_bias.abs().max():.3g}); "
                         f"vmae2's attention fixes the k bias at zero as the published model does, so these "
                         f"weights cannot be represented; they come from another VideoMAE variant")
    try:
        weights = [block.pop(attn + f"{part}.weight") for part in ("query", "key", "value")]
    except KeyError as err:
        raise ValueError(f"{name}: {prefix}attn lacks {err.args[0]}; not a complete VideoMAE layer") from None
    out[prefix + "attn.qkv.weight"] = torch.cat(weights, dim=0)                 # (3D, D)
    dim = weights[0].shape[0]
    for ours in ("q_bias", "v_bias"):
        theirs = [k for k in block if k.startswith(attn) and _HF_BIAS.get(k[len(attn):]) == ours]
        out[prefix + f"attn.{ours}"] = block.pop(theirs[0]) if theirs else torch.zeros(dim)  # qv_bias=False
    for key, value in block.items():
        module, _, param = key.rpartition(".")
        if module not in _HF_BLOCK:
            raise ValueError(f"{name}: unknown key {key} {tuple(value.shape)} in a VideoMAE layer ({prefix})")
        out[f"{prefix}{_HF_BLOCK[module]}.{param}"] = value
    return out
