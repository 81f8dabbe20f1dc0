import pickle

import pytest
import torch

import vmae2
from vmae2.weights import load_classifier, load_pretrain, read_state_dict


def tiny_models(seed=0):
    torch.manual_seed(seed)
    return vmae2.build_pretrain_model("tiny"), vmae2.build_classifier("tiny", 10)


def assert_same(state_a, state_b):
    assert set(state_a) == set(state_b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.parametrize("wrap", ["plain", "model", "module", "compiled", "ddp"])
def test_pretrain_round_trip_with_published_wrappings(tmp_path, wrap):
    source, _ = tiny_models(0)
    target, _ = tiny_models(1)
    state = source.state_dict()
    if wrap == "compiled":
        state = {"model": {f"_orig_mod.{k}": v for k, v in state.items()}}
    elif wrap == "ddp":
        state = {"model": {f"module.{k}": v for k, v in state.items()}}
    elif wrap != "plain":
        state = {wrap: state, "epoch": 3}
    torch.save(state, tmp_path / "ckpt.pth")
    report = load_pretrain(target, tmp_path / "ckpt.pth")
    assert_same(target.state_dict(), source.state_dict())
    assert len(report.loaded) == len(source.state_dict())


def test_classifier_from_pretrain_drops_decoder_and_final_norm(tmp_path):
    pretrain, classifier = tiny_models(0)
    torch.save({"model": pretrain.state_dict()}, tmp_path / "pre.pth")
    head_before = classifier.head.weight.clone()
    report = load_classifier(classifier, tmp_path / "pre.pth")
    assert "encoder.norm.weight" in report.dropped and "mask_token" in report.dropped
    assert any(k.startswith("decoder.") for k in report.dropped)
    assert set(report.initialised) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert torch.equal(classifier.blocks[1].mlp.fc2.weight, pretrain.encoder.blocks[1].mlp.fc2.weight)
    assert torch.equal(classifier.head.weight, head_before)
    assert "dropped" in str(report)


def test_finetuned_checkpoint_loads_strictly_and_maps_head_rows(tmp_path):
    torch.manual_seed(0)
    big = vmae2.build_classifier("tiny", 710)
    torch.save({"module": big.state_dict()}, tmp_path / "k710.pth")
    rows = [5, 0, 709, 42]
    (tmp_path / "rows.txt").write_text("\n".join(map(str, rows)) + "\n")
    small = vmae2.build_classifier("tiny", 4)
    load_classifier(small, tmp_path / "k710.pth", head_rows=tmp_path / "rows.txt")
    assert torch.equal(small.head.weight, big.head.weight[rows])
    assert torch.equal(small.head.bias, big.head.bias[rows])
    assert torch.equal(small.blocks[0].attn.qkv.weight, big.blocks[0].attn.qkv.weight)
    same = vmae2.build_classifier("tiny", 710)
    load_classifier(same, tmp_path / "k710.pth")
    assert_same(same.state_dict(), big.state_dict())


def test_error_paths(tmp_path):
    pretrain, classifier = tiny_models()
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrain(pretrain, tmp_path / "nope.pth")

    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth is not a loadable weights file"):
        load_pretrain(pretrain, tmp_path / "garbage.pth")

    # arbitrary pickled objects are refused, never executed
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": Exploit(str(tmp_path / "pwned"))}, f)
    with pytest.raises(ValueError, match="weights_only"):
        load_pretrain(pretrain, tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()

    torch.save({"epoch": 1, "args": "x"}, tmp_path / "nostate.pth")
    with pytest.raises(ValueError, match="no state dict found"):
        load_pretrain(pretrain, tmp_path / "nostate.pth")

    bigger = vmae2.build_pretrain_model("tiny", embed_dim=96, num_heads=3)
    torch.save(bigger.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"shape mismatch at encoder\.patch_embed\.proj\.weight: "
                                         r"checkpoint \(96, 3, 2, 8, 8\) vs model \(192, 3, 2, 8, 8\)"):
        load_pretrain(pretrain, tmp_path / "other.pth")

    partial = {k: v for k, v in pretrain.state_dict().items() if not k.startswith("decoder.head")}
    with pytest.raises(ValueError, match="missing .*decoder.head"):
        load_pretrain(pretrain, partial)

    torch.save(classifier.state_dict(), tmp_path / "cls.pth")
    with pytest.raises(ValueError, match="other kind"):
        load_pretrain(pretrain, tmp_path / "cls.pth")

    (tmp_path / "rows.txt").write_text("1\nx\n")
    with pytest.raises(ValueError, match="rows.txt:2"):
        load_classifier(classifier, tmp_path / "cls.pth", head_rows=tmp_path / "rows.txt")
    with pytest.raises(ValueError, match=r"head_rows\[1\]: row 10 is outside the 10-row head"):
        load_classifier(classifier, tmp_path / "cls.pth", head_rows=torch.tensor([3, 10]))
    with pytest.raises(ValueError, match=r"its head has 10 classes but the data has 7; map .*head_rows"):
        load_classifier(vmae2.build_classifier("tiny", 7), tmp_path / "cls.pth")
    small = vmae2.build_classifier("tiny", 3)
    (tmp_path / "rows.txt").write_text("1\n\n4\n12\n")
    with pytest.raises(ValueError, match=r"rows.txt: line 4: row 12 is outside the 10-row head"):
        load_classifier(small, tmp_path / "cls.pth", head_rows=tmp_path / "rows.txt")
    (tmp_path / "rows.json").write_text("[1, 4, 1]")
    with pytest.raises(ValueError, match=r"rows.json: entry 2: row 1 repeats .*rows.json: entry 0"):
        load_classifier(small, tmp_path / "cls.pth", head_rows=tmp_path / "rows.json")
    (tmp_path / "rows.json").write_text("[1, 4]")
    with pytest.raises(ValueError, match=r"rows.json maps 2 classes but the model has 3"):
        load_classifier(small, tmp_path / "cls.pth", head_rows=tmp_path / "rows.json")


def test_read_state_dict_strips_prefixes():
    state = read_state_dict({"model": {"_orig_mod.a": torch.ones(1), "module.b": torch.zeros(1)}})
    assert set(state) == {"a", "b"}


class Exploit:
    """Unpickling this would create a file: proof that a loader executed pickled code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
