"""vmae2.weights sources: safetensors, export, run folders, the hub cache offline, wrong-preset messages."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp

import vmae2
from vmae2.weights import FINAL_WEIGHTS, export_file, load_weights, read_source, read_weights

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
# a vmae2 run's saved model config of tiny (8 frames × 48², patch 8, the 3d position table)
TINY_MODEL = {"patch_size": 8, "depth": 4, "embed_dim": 192, "num_heads": 3, "mlp_hidden_dim": 768,
              "decoder_depth": 2, "decoder_embed_dim": 96, "decoder_num_heads": 3, "num_frames": 8, "img_size": 48,
              "pos_embed": "3d"}


def tiny_pretrain(seed):
    torch.manual_seed(seed)
    return vmae2.build_pretrain_model("tiny")


def published_tiny(seed):
    """tiny's sizes with the published code's 1d position table: weights saved without a config are taken for it."""
    torch.manual_seed(seed)
    return vmae2.build_pretrain_model("tiny", pos_embed="1d")


def assert_same(state_a, state_b):
    assert set(state_a) == set(state_b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_export_round_trip_keeps_weights_and_config(tmp_path, fmt):
    source = tiny_pretrain(0)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(source.state_dict(), run / FINAL_WEIGHTS)
    (run / "config.json").write_text(json.dumps({"model": TINY_MODEL, "frame_stride": 2}))
    out = tmp_path / f"tiny.{fmt}"
    summary = export_file(run, out)
    assert summary["format"] == fmt and summary["layout"] == "pre-training"
    assert summary["tensors"] == len(source.state_dict())
    assert summary["architecture"] == {"embed_dim": 192, "tubelet_size": 2, "patch_size": 8, "depth": 4,
                                       "mlp_hidden_dim": 768, "decoder_embed_dim": 96, "decoder_depth": 2}
    assert not (tmp_path / f"tiny.{fmt}.tmp").exists()
    state, config = read_weights(out)
    assert config == {"model": TINY_MODEL, "frame_stride": 2}
    assert_same(state, source.state_dict())
    target = tiny_pretrain(1)
    load_weights(target, out)
    assert_same(target.state_dict(), source.state_dict())
    classifier = vmae2.build_classifier("tiny", 4)
    report = load_weights(classifier, out)
    assert torch.equal(classifier.blocks[3].attn.qkv.weight, source.encoder.blocks[3].attn.qkv.weight)
    assert "decoder.head.weight" in report.dropped and "head.weight" in report.initialised


def test_export_format_flag_overrides_suffix(tmp_path):
    torch.save({"model": tiny_pretrain(0).state_dict()}, tmp_path / "w.pth")
    export_file(tmp_path / "w.pth", tmp_path / "w.bin", fmt="safetensors")
    from safetensors.torch import load_file

    assert "encoder.patch_embed.proj.weight" in load_file(tmp_path / "w.bin")
    with pytest.raises(ValueError, match="choose safetensors or pt"):
        export_file(tmp_path / "w.pth", tmp_path / "w.x", fmt="onnx")


def test_published_layout_loads_strictly_with_wrappers(tmp_path):
    source = published_tiny(0)
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in source.state_dict().items()}, "epoch": 3},
               tmp_path / "published.pth")
    target = published_tiny(1)
    report = load_weights(target, tmp_path / "published.pth")
    assert len(report.loaded) == len(source.state_dict())
    assert_same(target.state_dict(), source.state_dict())
    partial = {k: v for k, v in source.state_dict().items() if k != "decoder.norm.bias"}
    with pytest.raises(ValueError, match=r"missing \['decoder.norm.bias'\][\s\S]*found pre-training weights"):
        load_weights(target, partial)


def test_checkpoint_folder_and_run_folder_load(tmp_path):
    source = tiny_pretrain(0)
    run = tmp_path / "run"
    ckpt = run / "ckpt-00000010"
    dcp.save({"model": source.state_dict()}, checkpoint_id=str(ckpt), no_dist=True)
    (ckpt / "config.json").write_text(json.dumps({"model": TINY_MODEL}))
    (ckpt / "meta.json").write_text(json.dumps({"step": 10, "world_size": 1}))
    for where in (run, ckpt):
        target = tiny_pretrain(1)
        load_weights(target, where)
        assert_same(target.state_dict(), source.state_dict())
        assert read_weights(where)[1] == {"model": TINY_MODEL}
    assert "checkpoint folder" in read_source(run).kind
    # a finished run's final weights (e.g. the EMA of a fine-tuning run) win over its last checkpoint ...
    final = tiny_pretrain(2)
    torch.save(final.state_dict(), run / "finetune_final.pt")
    (run / "config.json").write_text(json.dumps({"model": TINY_MODEL, "ema_decay": 0.999}))
    assert_same(read_weights(run)[0], final.state_dict())
    assert read_weights(run)[1]["ema_decay"] == 0.999
    # ... unless a resumed run wrote a newer checkpoint since
    os.utime(run / "finetune_final.pt", (0, 0))
    assert_same(read_weights(run)[0], source.state_dict())


def test_classifier_feature_extractor_leaves_head_at_init(tmp_path):
    """The published code's hub repos: classifier layout under `model.`, fc_norm but no head, model_config."""
    torch.manual_seed(0)
    source = vmae2.build_classifier("tiny", 10, pos_embed="1d")           # the published code's table
    state = {f"model.{k}": v for k, v in source.state_dict().items() if not k.startswith("head.")}
    from safetensors.torch import save_file

    save_file(state, tmp_path / "model.safetensors")
    model_config = {"img_size": 48, "patch_size": 8, "embed_dim": 192, "depth": 4, "num_heads": 3,
                    "mlp_ratio": 4, "tubelet_size": 2, "num_frames": 8, "use_mean_pooling": True}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "VideoMAEv2_Base", "model_config": model_config}))
    state, config = read_weights(tmp_path)
    assert config == {"model": {"patch_size": 8, "depth": 4, "embed_dim": 192, "num_heads": 3, "tubelet_size": 2,
                                "num_frames": 8, "img_size": 48, "mlp_hidden_dim": 768}}
    target = vmae2.build_classifier("tiny", 7, pos_embed="1d")
    head = target.head.weight.clone()
    report = load_weights(target, tmp_path)
    assert report.initialised == ["head.bias", "head.weight"]
    assert torch.equal(target.head.weight, head)
    assert torch.equal(target.fc_norm.weight, source.fc_norm.weight)


def test_wrong_preset_names_the_preset_that_fits(tmp_path):
    torch.manual_seed(0)
    vit_s = vmae2.build_classifier("vit_s", 10, num_frames=2, img_size=32)
    torch.save({"module": vit_s.state_dict()}, tmp_path / "vit_s_k400.pth")
    with pytest.raises(ValueError) as err:
        load_weights(vmae2.build_classifier("tiny", 10), tmp_path / "vit_s_k400.pth")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'vit_s_k400.pth'}: weights of another model size")
    assert "looks like vit_s (width 384, depth 12, patch 16); pass --preset vit_s" in message
    assert "found classifier weights in a torch file (vit_s_k400.pth)" in message
    assert "blocks.0.attn.qkv.weight (1152, 384)" in message

    odd = vmae2.build_classifier("tiny", 10, embed_dim=96)
    with pytest.raises(ValueError, match=r"no preset has width 96, depth 4, patch 8; build the model with "
                                         r"--set model.embed_dim=96"):
        load_weights(vmae2.build_classifier("tiny", 10), odd.state_dict())


def test_folder_errors_name_what_was_found(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x")
    (tmp_path / "b.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"several weights files \['a.safetensors', 'b.safetensors'\]"):
        read_weights(tmp_path)
    (tmp_path / "b.safetensors").unlink()
    with pytest.raises(ValueError, match="a.safetensors is not a readable .safetensors file"):
        read_weights(tmp_path)
    (tmp_path / "a.safetensors").unlink()
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"no weights file .* found \['notes.txt'\]"):
        read_weights(tmp_path)


def fake_hub_cache(home, repo, files: dict):
    """A cache laid out as huggingface_hub writes it: models--OWNER--REPO/{refs/main, snapshots/<commit>/}."""
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(HUB_COMMIT)
    snapshot = folder / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True)
    for name, write in files.items():
        write(snapshot / name)
    return snapshot


def run_offline(home, code):
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)


def test_hub_uri_resolves_offline_from_the_cache(tmp_path):
    """hf://OWNER/REPO and hf://OWNER/REPO/FILE through huggingface_hub's cache with HF_HUB_OFFLINE=1."""
    source = published_tiny(0)                                          # published weights: the 1d table
    torch.save({"model": source.state_dict()}, tmp_path / "expected.pt")
    home = tmp_path / "hf"
    fake_hub_cache(home, "OpenGVLab/VideoMAEv2-Tiny", {
        "vit_tiny_pt.pth": lambda p: torch.save({"model": source.state_dict()}, p),
        "README.md": lambda p: p.write_text("weights"),
    })
    fake_hub_cache(home, "someone/two-files", {
        "a.pth": lambda p: torch.save(source.state_dict(), p), "b.pth": lambda p: torch.save(source.state_dict(), p)})
    code = f"""
import torch, vmae2
from vmae2.weights import export_file, load_weights, read_weights
expected = torch.load({str(tmp_path / 'expected.pt')!r})["model"]
for uri in ("hf://OpenGVLab/VideoMAEv2-Tiny", "hf://OpenGVLab/VideoMAEv2-Tiny/vit_tiny_pt.pth"):
    model = vmae2.build_pretrain_model("tiny", pos_embed="1d")
    load_weights(model, uri)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items()), uri
print(export_file("hf://OpenGVLab/VideoMAEv2-Tiny", {str(tmp_path / 'out.safetensors')!r})["tensors"])
for uri in ("hf://someone/two-files", "hf://OpenGVLab/VideoMAEv2-Tiny/missing.pth", "hf://nobody/nothing"):
    try:
        read_weights(uri)
    except (ValueError, FileNotFoundError) as err:
        print("ERROR", err)
"""
    result = run_offline(home, code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(len(source.state_dict()))
    assert "several weights files ['a.pth', 'b.pth']; pass one of them as hf://OWNER/REPO/FILE" in lines[1]
    assert "missing.pth is not in the cached snapshot" in lines[2] and "vit_tiny_pt.pth" in lines[2]
    assert "hf://nobody/nothing: it is not in the local cache" in lines[3] and "HF_HUB_OFFLINE" in lines[3]
    state, _ = read_weights(tmp_path / "out.safetensors")
    assert_same(state, source.state_dict())


def test_hub_transformers_repo_offline(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is a test extra")
    config = transformers.VideoMAEConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, image_size=32, patch_size=8, num_frames=4,
                                         decoder_hidden_size=32, decoder_num_hidden_layers=1,
                                         decoder_num_attention_heads=2, decoder_intermediate_size=64,
                                         use_mean_pooling=False)
    hf = transformers.VideoMAEForPreTraining(config)
    hf.save_pretrained(tmp_path / "saved")
    home = tmp_path / "hf"
    fake_hub_cache(home, "MCG-NJU/videomae-mini", {
        name: (lambda p, name=name: p.write_bytes((tmp_path / "saved" / name).read_bytes()))
        for name in ("config.json", "model.safetensors")})
    result = run_offline(home, """
import json
from vmae2.weights import read_source
w = read_source("hf://MCG-NJU/videomae-mini")
print(json.dumps({"kind": w.kind, "config": w.config, "qkv": list(w.state["encoder.blocks.1.attn.qkv.weight"].shape)}))
""")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["kind"] == "transformers VideoMAEForPreTraining in safetensors (model.safetensors)"
    assert found["config"]["model"]["num_heads"] == 4 and found["config"]["model"]["decoder_embed_dim"] == 32
    assert found["qkv"] == [192, 64]


def test_bad_hub_uri():
    with pytest.raises(ValueError, match=r"hf://OpenGVLab: expected hf://OWNER/REPO"):
        read_weights("hf://OpenGVLab")


def test_head_count_checked_against_the_saved_config(tmp_path):
    source = tiny_pretrain(0)
    torch.save({"model": source.state_dict(), "config": {"model": dict(TINY_MODEL, num_heads=6)}}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"config has num_heads 6, the model num_heads 3; build the model with "
                                         r"--set model.num_heads=6"):
        load_weights(tiny_pretrain(1), tmp_path / "w.pt")


def test_the_position_table_is_checked_against_the_saved_config(tmp_path):
    source = tiny_pretrain(0)
    assert source.cfg.pos_embed == TINY_MODEL["pos_embed"] == "3d"
    torch.save({"model": source.state_dict(), "config": {"model": TINY_MODEL}}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"trained with the 3d position table, the model has 1d; build the model "
                                         r"with --set model.pos_embed=3d"):
        load_weights(published_tiny(1), tmp_path / "w.pt")
    load_weights(tiny_pretrain(1), tmp_path / "w.pt")
    torch.save({"model": published_tiny(0).state_dict()}, tmp_path / "published.pth")  # no config: the 1d table
    with pytest.raises(ValueError, match=r"trained with the 1d position table, the model has 3d"):
        load_weights(vmae2.build_classifier("tiny", 10), tmp_path / "published.pth")


def test_export_command(tmp_path):
    from click.testing import CliRunner

    from vmae2.cli import main

    torch.save({"model": tiny_pretrain(0).state_dict()}, tmp_path / "w.pth")
    result = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "w.pth"),
                                       "--out", str(tmp_path / "w.safetensors")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["format"] == "safetensors"
    assert_same(read_weights(tmp_path / "w.safetensors")[0], read_weights(tmp_path / "w.pth")[0])
    result = CliRunner().invoke(main, ["export", "--weights", str(tmp_path / "none.pth"), "--out", "x.pt"])
    assert result.exit_code == 1 and "none.pth does not exist" in result.output


def test_saved_fixed_position_table_is_dropped_a_learned_one_refused():
    from vmae2.model import sinusoid_table

    torch.manual_seed(0)
    source = vmae2.build_classifier("tiny", 10, pos_embed="1d")           # a published export: the 1d table
    assert source.cfg.num_patches == 144
    state = dict(source.state_dict(), pos_embed=sinusoid_table(144, 192))
    target = vmae2.build_classifier("tiny", 10, pos_embed="1d")
    report = load_weights(target, state)
    assert "pos_embed: the fixed sinusoid table" in str(report)
    assert_same(target.state_dict(), source.state_dict())
    state["pos_embed"] = sinusoid_table(144, 192) + 0.01
    with pytest.raises(ValueError, match=r"pos_embed \(1, 144, 192\) is not the fixed 1-D sinusoid table"):
        load_weights(target, state)


def test_head_rows_from_a_json_list(tmp_path):
    torch.manual_seed(0)
    big = vmae2.build_classifier("tiny", 710, pos_embed="1d")           # published K710 weights: the 1d table
    (tmp_path / "label_710to400.json").write_text(json.dumps([7, 3, 700]))
    small = vmae2.build_classifier("tiny", 3, pos_embed="1d")
    load_weights(small, {"model": big.state_dict()}, head_rows=tmp_path / "label_710to400.json")
    assert torch.equal(small.head.weight, big.head.weight[[7, 3, 700]])
    (tmp_path / "bad.json").write_text('["a"]')
    with pytest.raises(ValueError, match="bad.json: expected a JSON list of integer row indices"):
        load_weights(small, big.state_dict(), head_rows=tmp_path / "bad.json")


def test_hub_online_picks_one_file_and_fetches_config_and_shards(tmp_path, monkeypatch):
    """The online path with the hub client replaced by a local repository (no network here)."""
    import huggingface_hub
    from huggingface_hub import constants
    from safetensors.torch import save_file

    source = tiny_pretrain(0).state_dict()
    repo = tmp_path / "repo"
    repo.mkdir()
    keys = sorted(source)
    save_file({k: source[k] for k in keys[:10]}, repo / "model-00001-of-00002.safetensors")
    save_file({k: source[k] for k in keys[10:]}, repo / "model-00002-of-00002.safetensors")
    weight_map = {k: f"model-0000{1 + (i >= 10)}-of-00002.safetensors" for i, k in enumerate(keys)}
    (repo / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (repo / "config.json").write_text(json.dumps({"model": TINY_MODEL}))
    torch.save(source, repo / "pytorch_model.bin")
    fetched = []

    def download(repo_id, filename, revision=None):
        fetched.append(filename)
        target = tmp_path / "snapshot" / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((repo / filename).read_bytes())
        return str(target)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: sorted(
        p.name for p in repo.iterdir()))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    weights = read_source("hf://owner/sharded")
    assert fetched == ["model.safetensors.index.json", "model-00001-of-00002.safetensors",
                       "model-00002-of-00002.safetensors", "config.json"]
    assert_same(weights.state, source)
    assert weights.config == {"model": TINY_MODEL}
    (repo / "model.safetensors.index.json").unlink()
    with pytest.raises(ValueError, match=r"several weights files \['model-00001-of-00002.safetensors', "
                                         r"'model-00002-of-00002.safetensors'\]; pick one with hf://owner/x/FILE"):
        read_source("hf://owner/x")
    fetched.clear()
    assert_same(read_source("hf://owner/x/pytorch_model.bin").state, source)
    assert fetched == ["pytorch_model.bin", "config.json"]
