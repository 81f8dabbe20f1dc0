"""Weights in and out, from wherever users keep them, always in the published layout (spec §6).

Sources that `read_weights` and `load_weights` take:

    published .pth / .pt       pre-training or fine-tuned state dicts, plain or under `model` / `module`
    our runs                   a run folder, a checkpoint folder (DCP) or a final .pt of `vmae2-train`
    .safetensors               flat files, e.g. written by `vmae2-train export`
    transformers VideoMAE      a folder with config.json + model.safetensors / pytorch_model.bin, or its
                               state dict: converted (query/key/value -> qkv, q/v biases, renamed norms)
    hf://OWNER/REPO[/FILE]     the same, fetched through huggingface_hub (its cache, token, HF_HUB_OFFLINE)

The transformers conversion lives in vmae2.weights_transformers, the hub look-up in vmae2.weights_hub.
Not to be confused with vmae2.checkpoint, which holds the resumable training state of a run.
Torch files are read with `torch.load(weights_only=True)`: tensors and plain containers only, never
arbitrary pickled objects. Every refusal names the source, what was found in it and what to do.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from shard_tools.files import open_atomic, write_bytes_atomic

from . import checkpoint, distributed
from .optim import clean_name
from .weights_hub import HUB_PREFIX, WEIGHT_SUFFIXES, hub_path, pick_weights_file
from .weights_transformers import config_from_transformers, from_transformers

FINAL_WEIGHTS = "pretrain_final.pt"   # a pre-training run's weights, beside its checkpoints
FINAL_NAMES = (FINAL_WEIGHTS, "finetune_final.pt", "distill_final.pt")   # a run's final weights, by task
WRAPPER_KEYS = ("model", "module", "state_dict", "model_state")


@dataclass
class LoadReport:
    """What a load did: keys taken, keys dropped on purpose, parameters left at their init."""

    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # conversions that are exact only up to a detail

    def __str__(self) -> str:
        def short(keys: list[str]) -> str:
            groups = sorted({k.split(".")[0] if not k.startswith("encoder.norm") else "encoder.norm" for k in keys})
            return ", ".join(groups) or "none"
        text = (f"loaded {len(self.loaded)} tensors; dropped {len(self.dropped)} ({short(self.dropped)}); "
                f"left at init {len(self.initialised)} ({short(self.initialised)})")
        return "; ".join([text, *self.notes])


def _torch_load(name: str):
    if not os.path.isfile(name):
        raise FileNotFoundError(f"checkpoint {name} does not exist")
    try:
        return torch.load(name, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... by cause
        raise ValueError(
            f"{name} is not a loadable weights file ({type(err).__name__}: {str(err).splitlines()[0]}); "
            f"vmae2 loads tensors only (weights_only=True), so a file holding other pickled objects must "
            f"be re-saved as a plain state dict"
        ) from None


def read_state_dict(source, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A flat state dict from a path or a loaded object, unwrapped and with compile/DDP prefixes removed."""
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        source = _torch_load(name)
    state = source
    while isinstance(state, dict) and not _is_flat(state):
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"{name}: no state dict found; expected tensors at the top level or under one of "
                             f"{', '.join(repr(k) for k in WRAPPER_KEYS)}, got keys {sorted(state)[:8]}")
        state = inner
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{name}: expected a non-empty dict of tensors, got {type(state).__name__}")
    return {clean_name(k): v for k, v in state.items()}


def _is_flat(state: dict) -> bool:
    return any(isinstance(v, torch.Tensor) for v in state.values())


def check_shapes(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f"{name}: shape mismatch at {key}: checkpoint {tuple(value.shape)} vs model "
                             f"{tuple(own[key].shape)}; build the model with the checkpoint's preset and sizes")


def load_pretrain(model: nn.Module, source, name: str = "checkpoint") -> LoadReport:
    """Load a pre-training checkpoint strictly into a VideoMAEv2 model."""
    state = read_state_dict(source, name)
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else name
    check_shapes(model, state, name)
    _load_exact(model, state, name)
    return LoadReport(loaded=sorted(state))


def _load_exact(model: nn.Module, state: dict, name: str) -> None:
    own = set(model.state_dict())
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        more_missing, more_unexpected = "..." if len(missing) > 6 else "", "..." if len(unexpected) > 6 else ""
        raise ValueError(f"{name}: keys do not match the model: missing {missing[:6]}{more_missing}, "
                         f"unexpected {unexpected[:6]}{more_unexpected}; is it a checkpoint of "
                         f"the other kind (pre-training vs fine-tuned) or another preset?")
    model.load_state_dict(state, strict=True)


def pretrain_to_classifier(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Encoder weights under classifier names; the decoder and the final encoder norm are dropped."""
    kept, dropped = {}, []
    for key, value in state.items():
        if key.startswith("encoder.") and not key.startswith("encoder.norm."):
            kept[key[len("encoder."):]] = value
        else:
            dropped.append(key)
    return kept, sorted(dropped)


def _head_rows_and_places(path) -> tuple[list[int], list[str]]:
    """Row indices of a head-rows file and where each stands ("entry i" of a JSON list, "line n" of text)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):                    # the published label_710to400.json and kin
        try:
            rows = [int(v) for v in json.loads(text)]
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: expected a JSON list of integer row indices ({err})") from None
        places = [f"entry {i}" for i in range(len(rows))]
    else:
        rows, places = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(int(line.split()[0]))
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: expected an integer row index, got {line.strip()!r}") from None
                places.append(f"line {lineno}")
    if not rows:
        raise ValueError(f"{path}: no row indices found")
    return rows, places


def read_head_rows(path) -> torch.Tensor:
    """Row indices that map a 710-class head onto a subset of classes: a JSON list, or one integer per line."""
    return torch.tensor(_head_rows_and_places(path)[0], dtype=torch.long)


def check_head_rows(head_rows, num_rows: int, num_classes: int, name: str) -> torch.Tensor:
    """The rows as a tensor, checked against the checkpoint's head and the model's classes; errors name the place."""
    if isinstance(head_rows, (str, os.PathLike)):
        rows, places = _head_rows_and_places(head_rows)
        where = [f"{head_rows}: {place}" for place in places]
    else:
        rows = [int(r) for r in torch.as_tensor(head_rows).tolist()]
        where = [f"head_rows[{i}]" for i in range(len(rows))]
    first = {}
    for row, place in zip(rows, where):
        if not 0 <= row < num_rows:
            raise ValueError(f"{place}: row {row} is outside the {num_rows}-row head of {name}")
        if row in first:
            raise ValueError(f"{place}: row {row} repeats {first[row]}; each class takes its own head row")
        first[row] = place
    if len(rows) != num_classes:
        raise ValueError(f"{where[0].split(':')[0]} maps {len(rows)} classes but the model has {num_classes}; give one "
                         f"row per class of the data, in the data's class order")
    return torch.tensor(rows, dtype=torch.long)


def load_classifier(model: nn.Module, source, head_rows=None, name: str = "checkpoint") -> LoadReport:
    """Load a fine-tuned checkpoint strictly, or the encoder of a pre-training checkpoint.

    head_rows: a path or 1-D index tensor selecting rows of the checkpoint's head (e.g. K710 -> K400).
    An encoder with fc_norm but no head (a feature extractor, e.g. the distilled models) leaves the head at init.
    """
    state = read_state_dict(source, name)
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else name
    if any(k.startswith("encoder.") for k in state):
        state, dropped = pretrain_to_classifier(state)
        check_shapes(model, state, name)
        missing = sorted(set(model.state_dict()) - set(state))
        if any(not k.startswith(("fc_norm.", "head.")) for k in missing):
            raise ValueError(f"{name}: the pre-training checkpoint lacks encoder weights {missing[:6]}")
        model.load_state_dict(state, strict=False)
        return LoadReport(loaded=sorted(state), dropped=dropped, initialised=missing)
    if "head.weight" not in state and "fc_norm.weight" in state:
        if head_rows is not None:
            raise ValueError(f"{name}: head rows given, but the weights have no head (a feature extractor)")
        check_shapes(model, state, name)
        missing = sorted(set(model.state_dict()) - set(state))
        unexpected = sorted(set(state) - set(model.state_dict()))
        if unexpected or any(not k.startswith("head.") for k in missing):
            _load_exact(model, state, name)   # raises with the key lists
        model.load_state_dict(state, strict=False)
        return LoadReport(loaded=sorted(state), initialised=missing)
    num_rows, num_classes = state["head.weight"].shape[0], model.state_dict()["head.weight"].shape[0]
    if head_rows is not None:
        rows = check_head_rows(head_rows, num_rows, num_classes, name)
        state = dict(state, **{k: state[k][rows] for k in ("head.weight", "head.bias") if k in state})
    elif num_rows != num_classes:
        raise ValueError(f"{name}: its head has {num_rows} classes but the data has {num_classes}; map the head's rows "
                         f"onto the data's classes with --set head_rows=FILE (eval: --head-rows FILE; the published "
                         f"label_710to400.json maps a K710 head onto K400), or start from the encoder only")
    check_shapes(model, state, name)
    _load_exact(model, state, name)
    return LoadReport(loaded=sorted(state))


def export_weights(model: nn.Module, path, env: distributed.DistEnv) -> None:
    """The full model state dict as one plain .pt file (rank 0), loadable by load_pretrain."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if env.is_main:
        with open_atomic(path) as f:
            torch.save({clean_name(k): v for k, v in state.items()}, f)
    distributed.barrier()


def resolve_weights(source) -> Path:
    """A checkpoint folder or .pt file from a run folder, a checkpoint folder or a .pt file.

    In a run folder the run's final weights (`pretrain_final.pt`, `finetune_final.pt`, `distill_final.pt`: the
    EMA weights where the run kept an EMA) win over its newest checkpoint unless that checkpoint is newer (a
    resumed run).
    """
    path = Path(source)
    if path.is_file():
        return path
    if (path / "meta.json").is_file():
        return path
    if path.is_dir():
        latest = checkpoint.latest_checkpoint(path)
        final = next((path / n for n in FINAL_NAMES if (path / n).is_file()), None)
        if final is not None and (latest is None or final.stat().st_mtime >= (latest / "meta.json").stat().st_mtime):
            return final
        if latest is not None:
            return latest
        raise FileNotFoundError(f"{path}: no checkpoint (ckpt-*/ with meta.json) and no {' or '.join(FINAL_NAMES)}; "
                                f"pass a run folder of `vmae2-train pretrain` or `finetune`, a checkpoint folder or "
                                f"a weights file")
    raise FileNotFoundError(f"{path} does not exist")


def read_model_state(source) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict in the published layout, run config dict or None): read_weights, under its older name."""
    return read_weights(source)


def _read_dcp(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return checkpoint.read_model_state(path), json.loads((path / "config.json").read_text())


# ---------------------------------------------------------------------------------------------------
# Any source -> published layout


@dataclass
class Weights:
    """A read source: its state dict in the published layout, a config dict, and where it came from."""

    state: dict[str, torch.Tensor]
    config: dict | None        # {"model": ModelConfig fields, ...} (a run's whole config) or None
    name: str                  # the source as the user gave it
    kind: str                  # what was found, e.g. "transformers VideoMAEForPreTraining (model.safetensors)"
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        keys = sorted(self.state)
        telling = [k for k in keys if k.endswith(("patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
                                                  "encoder_to_decoder.weight", "head.weight"))]
        sample = telling or keys[:3]
        shapes = ", ".join(f"{k} {tuple(self.state[k].shape)}" for k in dict.fromkeys(sample))
        return f"found {self.kind}: {len(keys)} tensors, e.g. {shapes}"


def read_weights(source) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(flat state dict in the vmae2 / published layout, config dict or None) from any accepted source.

    The config is a run's config, or {"model": {ModelConfig fields}} derived from a transformers or
    hub config.json; None where the source says nothing about the architecture.
    """
    weights = read_source(source)
    return weights.state, weights.config


def read_source(source) -> Weights:
    """Like read_weights, keeping what was found (for messages) and the conversion notes.

    A Weights passes through, so a caller that read the source once (for its config) loads without reading again.
    """
    if isinstance(source, Weights):
        return source
    if isinstance(source, dict):
        state, config = read_state_dict(source, "state dict"), None
        return _to_published(state, config, "state dict", "a state dict")
    name = os.fspath(source)
    if name.startswith(HUB_PREFIX):
        path = hub_path(name)
    else:
        path = Path(name)
    if path.is_dir() and not (path / "meta.json").is_file() and checkpoint.latest_checkpoint(path) is None \
            and not any((path / n).is_file() for n in FINAL_NAMES):
        path = _pick_weights_file(path, name)
    path = resolve_weights(path)
    if path.is_dir():
        state, config = _read_dcp(path)
        return Weights(state, config, name, f"a vmae2 checkpoint folder ({path.name})")
    if path.suffix == ".safetensors" or path.name.endswith(".safetensors.index.json"):
        state, config = _read_safetensors(path)
        kind = f"safetensors ({path.name})"
    else:
        loaded = _torch_load(str(path))
        state = read_state_dict(loaded, name)
        config = loaded.get("config") if isinstance(loaded, dict) and isinstance(loaded.get("config"), dict) else None
        kind = f"a torch file ({path.name})"
    if config is None and (path.parent / "config.json").is_file():
        try:
            config = json.loads((path.parent / "config.json").read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{name}: {path.parent / 'config.json'} beside the weights is not valid JSON ({err}); "
                             f"fix or remove it") from None
    return _to_published(state, config, name, kind)


def _pick_weights_file(folder: Path, name: str) -> Path:
    """The single weights file of a folder (a transformers or hub snapshot folder), safetensors first."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    hint = " as hf://OWNER/REPO/FILE" if name.startswith(HUB_PREFIX) else " by its path"
    try:
        picked = pick_weights_file(files)
    except ValueError as err:
        raise ValueError(f"{name}: {err}; pass one of them{hint}") from None
    if picked is None:
        raise FileNotFoundError(f"{name}: no weights file ({', '.join(WEIGHT_SUFFIXES)}) and no vmae2 checkpoint in "
                                f"{folder}; found {files[:8]}")
    return folder / picked


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    files = [path]
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        files = [path.parent / f for f in dict.fromkeys(weight_map.values())]
    state, config = {}, None
    for file in files:
        try:
            state.update(load_file(file))
            with safe_open(file, "pt") as f:
                metadata = f.metadata() or {}
        except Exception as err:  # safetensors raises its own SafetensorError on a torn or foreign file
            raise ValueError(f"{file} is not a readable .safetensors file ({type(err).__name__}: {err}); "
                             f"download or export it again") from None
        if "vmae2_config" in metadata:
            config = json.loads(metadata["vmae2_config"])
    return state, config


def _to_published(state: dict, config: dict | None, name: str, kind: str) -> Weights:
    """Recognise the layout of `state` and convert it; `config` as found beside the weights."""
    if all(k.startswith("model.") for k in state):   # hub repos of the published code wrap it in `model`
        state = {k[len("model."):]: v for k, v in state.items()}
    if "embeddings.patch_embeddings.projection.weight" in state:    # a bare transformers VideoMAEModel
        state = {f"videomae.{k}": v for k, v in state.items()}
    config = _model_config_dict(config)
    notes = _drop_fixed_position_table(state, name)
    if any(k.startswith("videomae.") for k in state):
        hf_config = config.pop("transformers", {}) if config else {}
        converted, kind_hf, hf_notes = from_transformers(state, hf_config, name)
        return Weights(converted, config, name, f"{kind_hf} in {kind}", notes + hf_notes)
    if config:
        config.pop("transformers", None)
    return Weights(state, config, name, f"{_layout(state)} weights in {kind}", notes)


def _drop_fixed_position_table(state: dict[str, torch.Tensor], name: str) -> list[str]:
    """Remove a saved copy of the fixed sinusoid table (some exports keep it); refuse a learned one."""
    from .model import sinusoid_table

    notes = []
    for key in [k for k in state if k in ("pos_embed", "encoder.pos_embed", "decoder.pos_embed")]:
        table = state[key]
        fixed = sinusoid_table(table.shape[-2], table.shape[-1]) if table.dim() >= 2 else None
        if fixed is None or table.numel() != fixed.numel() or \
                not torch.allclose(table.reshape(fixed.shape).float(), fixed, atol=1e-4):
            raise ValueError(f"{name}: {key} {tuple(table.shape)} is not the fixed 1-D sinusoid table; vmae2 "
                             f"models use the fixed table (use_learnable_pos_emb=False in the published code), "
                             f"so learned position embeddings cannot be loaded")
        del state[key]
        notes.append(f"{key}: the fixed sinusoid table, recomputed by the model")
    return notes


def _layout(state: dict) -> str:
    return "pre-training" if any(k.startswith("encoder.") for k in state) else "classifier"


def _model_config_dict(config: dict | None) -> dict | None:
    """A config.json of ours, of transformers or of the published code's hub repos -> {"model": {...}}."""
    if not isinstance(config, dict):
        return None
    if isinstance(config.get("model"), dict):
        return config                                                   # a vmae2 run config
    from .config import ModelConfig

    names = {f.name for f in dataclasses.fields(ModelConfig)}
    if config.get("model_type") == "videomae":
        return config_from_transformers(config, names)
    if isinstance(config.get("model_config"), dict):                    # OpenGVLab/VideoMAEv2-* hub repos
        mc = config["model_config"]
        model = dict(patch_size=mc.get("patch_size"), depth=mc.get("depth"), embed_dim=mc.get("embed_dim"),
                     num_heads=mc.get("num_heads"), tubelet_size=mc.get("tubelet_size"),
                     num_frames=mc.get("num_frames"), img_size=mc.get("img_size"))
        if mc.get("embed_dim") and mc.get("mlp_ratio"):
            model["mlp_hidden_dim"] = int(mc["embed_dim"] * mc["mlp_ratio"])
        return {"model": {k: v for k, v in model.items() if k in names and v is not None}}
    return None


# ---------------------------------------------------------------------------------------------------
# Loading into a model


def architecture(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Sizes readable from a published-layout state dict: width, depth, patch, tubelet, MLP, decoder."""
    enc = "encoder." if "encoder.patch_embed.proj.weight" in state else ""
    arch = {}
    embed = state.get(f"{enc}patch_embed.proj.weight")
    if embed is not None and embed.dim() == 5:
        arch.update(embed_dim=embed.shape[0], tubelet_size=embed.shape[2], patch_size=embed.shape[3])
    blocks = {int(m[1]) for k in state if (m := re.match(rf"{re.escape(enc)}blocks\.(\d+)\.", k))}
    if blocks:
        arch["depth"] = max(blocks) + 1
    if f"{enc}blocks.0.mlp.fc1.weight" in state:
        arch["mlp_hidden_dim"] = state[f"{enc}blocks.0.mlp.fc1.weight"].shape[0]
    if "encoder_to_decoder.weight" in state:
        arch["decoder_embed_dim"] = state["encoder_to_decoder.weight"].shape[0]
        arch["decoder_depth"] = 1 + max((int(m[1]) for k in state if (m := re.match(r"decoder\.blocks\.(\d+)\.", k))),
                                        default=-1)
    return arch


def matching_preset(arch: dict[str, int]) -> str | None:
    """The preset with the width, depth and patch size of `arch` (and its MLP and decoder, where known)."""
    from .config import PRESETS

    for preset, entry in PRESETS.items():
        cfg = getattr(entry, "model", entry)
        if all(getattr(cfg, k) == v for k, v in arch.items() if k != "decoder_depth" or v > 0):
            return preset
    for preset, entry in PRESETS.items():
        cfg = getattr(entry, "model", entry)
        if all(getattr(cfg, k) == arch.get(k) for k in ("embed_dim", "depth", "patch_size")):
            return preset
    return None


def check_architecture(model: nn.Module, state: dict[str, torch.Tensor], name: str, config: dict | None = None) -> None:
    """Refuse weights of another model size, naming the preset they fit.

    Head counts leave no trace in the shapes; they are checked against the config found with the weights.
    """
    cfg = model.cfg
    arch = architecture(state)
    if not hasattr(model, "decoder"):
        arch = {k: v for k, v in arch.items() if not k.startswith("decoder_")}
    differ = {k: v for k, v in arch.items() if getattr(cfg, k) != v}
    if not differ:
        saved = (config or {}).get("model", {})
        heads = [k for k in ("num_heads", "decoder_num_heads") if k in saved and getattr(cfg, k) != saved[k]
                 and (k == "num_heads" or hasattr(model, "decoder"))]
        if heads:
            raise ValueError(f"{name}: the weights' config has " + ", ".join(f"{k} {saved[k]}" for k in heads)
                             + ", the model " + ", ".join(f"{k} {getattr(cfg, k)}" for k in heads)
                             + "; build the model with " + " ".join(f"--set model.{k}={saved[k]}" for k in heads))
        # Position tables leave no trace either; weights without a config (published, transformers) used 1d.
        table = saved.get("pos_embed", "1d")
        if table != cfg.pos_embed:
            raise ValueError(f"{name}: the weights were trained with the {table} position table, the model has "
                             f"{cfg.pos_embed}; build the model with --set model.pos_embed={table}")
        return
    found = ", ".join(f"{k} {v}" for k, v in arch.items())
    ours = ", ".join(f"{k} {getattr(cfg, k)}" for k in arch)
    preset = matching_preset(arch)
    short = f"width {arch.get('embed_dim')}, depth {arch.get('depth')}, patch {arch.get('patch_size')}"
    if preset is None:
        fix = (f"no preset has {short}; build the model with "
               + " ".join(f"--set model.{k}={v}" for k, v in differ.items()) + " and the matching model.num_heads")
    else:
        from .config import PRESETS

        preset_cfg = getattr(PRESETS[preset], "model", PRESETS[preset])
        extra = " ".join(f"--set model.{k}={v}" for k, v in arch.items() if getattr(preset_cfg, k) != v)
        fix = f"looks like {preset} ({short}); pass --preset {preset}" + (f" {extra}" if extra else "")
    raise ValueError(f"{name}: weights of another model size ({found}) than the model ({ours}); {fix}")


def load_weights(model: nn.Module, source, *, head_rows=None) -> LoadReport:
    """Load any accepted source into a VideoMAEv2 (pre-training) or a VideoClassifier.

    A classifier takes the encoder of pre-training weights (decoder and final encoder norm dropped, head
    left at init) or a whole fine-tuned classifier (head_rows: a file or index tensor selecting head rows).
    On failure one ValueError names the source, what was found in it and the fix.
    """
    from .model import VideoClassifier, VideoMAEv2

    weights = read_source(source)
    try:
        check_architecture(model, weights.state, weights.name, weights.config)
        if isinstance(model, VideoMAEv2):
            if _layout(weights.state) != "pre-training":
                raise ValueError(f"{weights.name}: classifier weights (no decoder) cannot initialise a pre-training "
                                 f"model; load them into a VideoClassifier (finetune --init)")
            if weights.kind.startswith("transformers") and "encoder.norm.weight" not in weights.state:
                raise ValueError(f"{weights.name}: the transformers model was built with use_mean_pooling=True, so "
                                 f"its encoder has no final LayerNorm before encoder_to_decoder, which vmae2's "
                                 f"pre-training model has; load its encoder into a classifier (finetune --init)")
            if head_rows is not None:
                raise ValueError(f"{weights.name}: head_rows applies to a classifier, not a pre-training model")
            report = load_pretrain(model, weights.state, name=weights.name)
        elif isinstance(model, VideoClassifier):
            report = load_classifier(model, weights.state, head_rows=head_rows, name=weights.name)
        else:
            raise TypeError(f"load_weights loads into VideoMAEv2 or VideoClassifier, got {type(model).__name__}")
    except ValueError as err:
        raise ValueError(f"{err}\n  {weights.describe()}") from None
    report.notes.extend(weights.notes)
    return report


# ---------------------------------------------------------------------------------------------------
# Export


def export_file(source, out, fmt: str | None = None) -> dict:
    """`vmae2-train export`: any accepted source -> one .safetensors or .pt file in the published layout.

    The config (a run's, or derived from a transformers config.json) travels inside: safetensors metadata
    `vmae2_config`, or the key `config` beside `model` in a .pt. Written atomically.
    """
    fmt = fmt or ("safetensors" if str(out).endswith(".safetensors") else "pt")
    if fmt not in ("safetensors", "pt"):
        raise ValueError(f"format {fmt!r}: choose safetensors or pt")
    weights = read_source(source)
    state = _unshared({k: v.detach().cpu() for k, v in weights.state.items()})
    if fmt == "safetensors":
        from safetensors.torch import save

        metadata = {"format": "pt"}
        if weights.config is not None:
            metadata["vmae2_config"] = json.dumps(weights.config)
        data = save(state, metadata=metadata)
    else:
        buffer = io.BytesIO()
        torch.save({"model": state, **({"config": weights.config} if weights.config else {})}, buffer)
        data = buffer.getvalue()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, data)
    return {"out": str(out), "format": fmt, "source": weights.name, "found": weights.kind,
            "layout": _layout(state), "tensors": len(state), "parameters": sum(v.numel() for v in state.values()),
            "architecture": {k: int(v) for k, v in architecture(state).items()}, "notes": weights.notes}


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors that share no storage (safetensors refuses shared or strided ones)."""
    seen, out = set(), {}
    for key, value in state.items():
        value = value.contiguous()
        ptr = value.untyped_storage().data_ptr()
        out[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    return out
