"""Distillation, the third task of the one training loop: the loss, a frozen teacher that sees the student's
pixels, exact resume, two ranks under torchrun, the label-space checks, the published students' layout, and a
student that learns its teacher's function on held-out clips without labels.

This file is also a torchrun worker: `torchrun --nproc_per_node 2 tests/test_distill.py TEACHER OUT` distils
on made-up clips with a DDP student and an FSDP2-sharded teacher, and writes each rank's summary beside OUT.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL, Interrupting, fake_loader, read_metrics

import vmae2
from vmae2.config import distill_config, finetune_config
from vmae2.distill import distillation_loss
from vmae2.distributed import DistEnv
from vmae2.overrides import ConfigError
from vmae2.tasks import Distillation
from vmae2.train import train

CPU = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def small_distill_config(out_dir, teacher, **overrides):
    sets = {**SMALL_MODEL, "out_dir": str(out_dir), "data": "", "teacher": str(teacher), "total_steps": 8,
            "warmup_fraction": 0.25, "batch_videos_per_gpu": 2, "num_sample": 2, "log_every": 1, "save_every": 4,
            "progress": False, "tensorboard": False, "device": "cpu", "eval_every_epochs": 0, **overrides}
    return distill_config("tiny", "synth_distill", sets)


def save_teacher(path, num_classes: int = 4, seed: int = 0):
    """A small classifier saved as `vmae2-train export` writes one (the tensors under `model`, the run config
    beside them), its head scaled up so that its softmax is far from uniform; returns its state dict."""
    torch.manual_seed(seed)
    model_cfg = finetune_config("tiny", "synth", SMALL_MODEL).model
    model = vmae2.VideoClassifier(model_cfg, num_classes, drop_path=0.0)
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"model": state, "config": {"model": dataclasses.asdict(model_cfg)}}, path)
    return state


def test_distillation_loss_is_t_squared_kl_of_the_teachers_softmax_from_the_students():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    for temperature in (1.0, 2.0, 4.0):
        p = (teacher / temperature).softmax(-1)
        q = (student / temperature).softmax(-1)
        reference = (p * (p.log() - q.log())).sum(-1).mean() * temperature ** 2
        got = distillation_loss(student.to(torch.bfloat16), teacher.to(torch.bfloat16), temperature)
        assert got.dtype == torch.float32                                     # computed in fp32 whatever comes in
        assert got.item() == pytest.approx(reference.item(), rel=0.05)
        assert distillation_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-6)
    # its gradient is the softmax difference, (q - p) · T / batch: zero where the student matches
    student.requires_grad_(True)
    distillation_loss(student, teacher, 2.0).backward()
    expected = ((student / 2).softmax(-1) - (teacher / 2).softmax(-1)) * 2 / 5
    assert torch.allclose(student.grad.double(), expected.detach(), atol=1e-6)


def test_distillation_recipes_and_their_checks():
    b = distill_config("vit_b")
    k710 = finetune_config("vit_b", "k710")
    assert (b.dataset, b.temperature, b.alpha) == ("k710", 1.0, 0.0)             # the recipe is k710_distill
    for key in ("batch_videos_per_gpu", "num_sample", "base_lr", "epochs", "layer_decay", "drop_path", "mixup_alpha",
                "cutmix_alpha", "rand_augment", "random_erase_prob", "adam_beta2", "min_lr_base"):
        assert getattr(b, key) == getattr(k710, key), key                           # the B K710 row
    assert distill_config("vit_s", "k710_distill").epochs == 90
    assert distill_config("tiny").dataset == "synth" and distill_config("vit_l").dataset == "k400"
    assert distill_config("vit_b", "ssv2").sampling == "tsn"                        # a fine-tuning row, named
    with pytest.raises(ConfigError, match="no distillation or fine-tuning recipe 'k999'.*k710_distill"):
        distill_config("vit_b", "k999")
    with pytest.raises(ConfigError, match="temperature=0.0: must be positive"):
        distill_config("vit_b", None, {"temperature": 0})
    with pytest.raises(ConfigError, match="alpha=-1.0: must not be negative"):
        distill_config("vit_b", None, {"alpha": -1})
    with pytest.raises(ConfigError, match="teacher_fsdp='sometimes': choose one of auto, on, off"):
        distill_config("vit_b", None, {"teacher_fsdp": "sometimes"})


def test_teacher_and_student_see_the_same_mixed_pixels(tmp_path):
    save_teacher(tmp_path / "teacher.pt")
    cfg = small_distill_config(tmp_path / "run", tmp_path / "teacher.pt", mixup_alpha=0.8, cutmix_alpha=1.0,
                               drop_path=0.0)
    task = Distillation(cfg)
    teacher = task.load_teacher(CPU)
    student = task.build_model()
    seen = {}

    def keep_input(name):
        def hook(module, args):
            seen[name] = args[0].clone()   # a copy as the model received it; the input itself is not replaced
        return hook

    teacher.register_forward_pre_hook(keep_input("teacher"))
    student.register_forward_pre_hook(keep_input("student"))
    batch = fake_loader(cfg).make_batch(0, 0)
    np.random.seed(0)                                # timm's Mixup draws from numpy's global generator
    loss = task.loss(student, batch)
    assert torch.equal(seen["teacher"], seen["student"])   # the teacher's forward left the clip as it was
    assert not torch.equal(seen["student"], batch["video"].float())   # mixed once, then fed to both
    with torch.no_grad():
        expected = distillation_loss(student(seen["student"]), teacher(seen["teacher"]), cfg.temperature)
    assert loss.item() > 0.01 and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert task.report_fields(1, 1.0)["teacher_forward_s"] > 0


def test_the_teacher_gets_no_gradient_and_keeps_its_weights_bit_for_bit(tmp_path):
    source = save_teacher(tmp_path / "teacher.pt")
    cfg = small_distill_config(tmp_path / "run", tmp_path / "teacher.pt")
    task = Distillation(cfg)
    summary = train(cfg, loader=fake_loader(cfg), task=task)
    teacher = task.teacher
    assert summary["steps"] == 8 and not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    state = teacher.state_dict()
    assert set(state) == set(source) and all(torch.equal(state[k], source[k]) for k in source)
    # the student learned, and only the student is in the run's weights
    student = torch.load(tmp_path / "run" / "distill_final.pt", weights_only=True)
    assert set(student) == set(source) and not torch.equal(student["head.weight"], source["head.weight"])
    rows = read_metrics(tmp_path / "run")
    assert all(r["teacher_forward_s"] > 0 and 0 < r["teacher_time_frac"] < 1 for r in rows)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["teacher"], saved["temperature"], saved["alpha"]) == (str(tmp_path / "teacher.pt"), 1.0, 0.0)


def test_distill_resume_reproduces_the_straight_run(tmp_path):
    save_teacher(tmp_path / "teacher.pt")
    cfg = small_distill_config(tmp_path / "straight", tmp_path / "teacher.pt", alpha=0.5)
    train(cfg, loader=fake_loader(cfg), task=Distillation(cfg))

    cfg2 = small_distill_config(tmp_path / "resumed", tmp_path / "teacher.pt", alpha=0.5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg2, loader=Interrupting(fake_loader(cfg2), after_batches=6), task=Distillation(cfg2))
    train(cfg2, loader=fake_loader(cfg2), task=Distillation(cfg2))
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight] and len(straight) == 8
    a = torch.load(tmp_path / "straight" / "distill_final.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "distill_final.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def ranks_worker(teacher: str, out: str) -> None:
    """One rank of a 2-process distillation: DDP student, teacher sharded with FSDP2 (teacher_fsdp=on)."""
    from conftest import FakeLoader

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cfg = small_distill_config(out, teacher, teacher_fsdp="on", total_steps=4, log_every=2, save_every=4)
    task = Distillation(cfg)
    loader = FakeLoader(cfg.batch_videos_per_gpu, num_sample=cfg.num_sample, img_size=32, rank=rank,
                        world_size=world_size)
    summary = train(cfg, loader=loader, task=task)
    source = torch.load(teacher, weights_only=True)["model"]
    task.teacher.reshard()          # FSDP2's root keeps its own parameters gathered after a forward
    params = dict(task.teacher.named_parameters())
    # FSDP2 shards dim 0 as torch.chunk does: this rank holds its chunk of every tensor, unchanged
    summary["teacher_sharded"] = all(hasattr(param, "to_local") for param in params.values())
    summary["teacher_unchanged"] = all(
        not param.requires_grad and param.grad is None
        and torch.equal(param.to_local(), source[name].chunk(world_size, dim=0)[rank])
        for name, param in params.items())
    summary["teacher_tensors"] = sorted(params) == sorted(source)
    Path(f"{out}-summary-rank{rank}.json").write_text(json.dumps(summary))


def test_two_gloo_ranks_distil_with_a_sharded_teacher_and_keep_one_student(tmp_path):
    source = save_teacher(tmp_path / "teacher.pt")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(tmp_path / "teacher.pt"), str(out)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summaries = [json.loads((tmp_path / f"run-summary-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["world_size"] == 2 and s["steps"] == 4 for s in summaries)
    assert all(s["teacher_sharded"] and s["teacher_unchanged"] and s["teacher_tensors"] for s in summaries)
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"] is not None   # one DDP student
    assert "sharded with FSDP2 over the ranks" in proc.stdout
    student = torch.load(out / "distill_final.pt", weights_only=True)
    assert set(student) == set(source) and not torch.equal(student["head.weight"], source["head.weight"])


@pytest.fixture(scope="module")
def motion_clips(tmp_path_factory):
    """8 labelled glyph clips (4 motion classes) and the same clips packed without labels."""
    from shard_tools.synth import make_synthetic

    root = tmp_path_factory.mktemp("distill-data")
    make_synthetic(root / "labelled", 8, kind="glyphs", label="motion", seed=3, num_frames=16, width=32,
                   height=32, progress=False)
    unlabelled_copy(root / "labelled", root / "unlabelled")
    return root


def unlabelled_copy(labelled, out):
    """The videos of a shard set packed again as a flat folder: the same clips, no labels."""
    from shard_tools.pack import pack

    src = out.parent / f"{out.name}-src"
    src.mkdir(parents=True)
    for tar_path in sorted(labelled.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".webm"):
                    (src / f"clip-{len(list(src.iterdir())):05d}.webm").write_bytes(tar.extractfile(member).read())
    pack(src, out, codec="copy", progress=False)
    return out


def test_head_sizes_and_labels_are_checked_with_the_fix_named(motion_clips, tmp_path):
    save_teacher(tmp_path / "teacher10.pt", num_classes=10)
    cfg = small_distill_config(tmp_path / "run", tmp_path / "teacher10.pt", data=str(motion_clips / "labelled"))
    with pytest.raises(ConfigError, match=r"gives 10 classes but data=.* has 4.*--set head_rows=FILE"):
        Distillation(cfg).make_loader(CPU)
    # head_rows maps the teacher's 10 rows onto the data's 4 classes, as label_710to400.json does for K710
    (tmp_path / "rows.json").write_text("[7, 2, 5, 0]")
    mapped = dataclasses.replace(cfg, head_rows=str(tmp_path / "rows.json"))
    task = Distillation(mapped)
    teacher = task.load_teacher(CPU)
    source = torch.load(tmp_path / "teacher10.pt", weights_only=True)["model"]
    assert task.num_classes == 4 and torch.equal(teacher.head.weight, source["head.weight"][[7, 2, 5, 0]])
    # labels are not needed with alpha = 0, and asked for with alpha > 0
    unlabelled = dataclasses.replace(cfg, data=str(motion_clips / "unlabelled"), head_rows=str(tmp_path / "rows.json"))
    loader = Distillation(unlabelled).make_loader(CPU)
    batch = next(iter(loader))
    assert batch["label"].tolist() == [-1] * len(batch["label"]) and batch["video"].shape[0] == 4
    loader.close()
    with pytest.raises(ConfigError, match=r"alpha=0.5 .* has none; set alpha=0"):
        Distillation(dataclasses.replace(unlabelled, alpha=0.5)).make_loader(CPU)
    with pytest.raises(ConfigError, match="teacher is empty: pass --teacher"):
        Distillation(dataclasses.replace(cfg, teacher=""))


@pytest.mark.parametrize("preset", ["vit_s", "vit_b"])
def test_the_published_students_load_strictly_into_the_students(preset, tmp_path):
    """vit_{s,b}_k710_dl_from_giant.pth: a fine-tuned classifier (spec §6) with a 710-class head under `module`."""
    from test_model import published_shapes

    torch.manual_seed(0)
    shapes = published_shapes(preset, 710)
    published = {"module": {key: torch.randn(shape) for key, shape in shapes.items()}}
    student = vmae2.build_classifier(preset, 710)
    report = vmae2.load_weights(student, published)
    assert sorted(report.loaded) == sorted(shapes) and not report.dropped and not report.initialised
    state = student.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    assert all(torch.equal(state[k], published["module"][k]) for k in shapes)
    if preset == "vit_s":   # and as the start of a distillation run, beside a teacher of the published layout
        torch.save(published, tmp_path / "vit_s_k710_dl_from_giant.pth")
        cfg = distill_config(preset, None, {"teacher": str(tmp_path / "vit_s_k710_dl_from_giant.pth"),
                                            "init": str(tmp_path / "vit_s_k710_dl_from_giant.pth")})
        task = Distillation(cfg)
        assert task.num_classes == 710 and (cfg.dataset, cfg.temperature, cfg.alpha) == ("k710", 1.0, 0.0)
        assert torch.equal(task.build_model().state_dict()["head.weight"], published["module"]["head.weight"])


# ---- the acceptance run: a student matches its teacher on held-out clips, without labels -------------------
TRAIN_CLIPS, HELD_OUT_CLIPS = 640, 160
# Motion of a glyph (4 classes), 4 frames 4 apart: the tubelet pairs frames whose shift shows the direction.
# The classifier recipe is plain (constant lr, no mixup, RandAugment or erasing, full-frame crops, flips with
# the left/right swap, no colour permutation or inversion: tiny's synth recipe has them and no flips) so the
# small model leaves its plateau within the steps; distillation uses it too.
CLIPS = {**SMALL_MODEL, "model.num_frames": 4, "frame_stride": 4, "loader_threads": 1, "progress": False,
         "tensorboard": False, "device": "cpu", "log_every": 100, "save_every": 100_000}
RECIPE = {**CLIPS, "batch_videos_per_gpu": 16, "num_sample": 1, "base_lr": 0.016, "min_lr_base": 0.016,
          "warmup_fraction": 0.02, "crop_scale_min": 1.0, "crop_ratio_min": 1.0, "crop_ratio_max": 1.0,
          "layer_decay": 1.0, "drop_path": 0.0, "rand_augment": "", "random_erase_prob": 0.0, "mixup_alpha": 0.0,
          "cutmix_alpha": 0.0, "label_smoothing": 0.0, "eval_every_epochs": 0, "flip": True,
          "colour_permute_prob": 0.0, "invert_prob": 0.0}
PRETRAIN_STEPS, TEACHER_STEPS, DISTILL_STEPS = 300, 2500, 2000


def as_sets(values: dict) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


def top1_predictions(folder) -> dict[str, int]:
    return {row["key"]: row["top5"][0] for row in map(json.loads, (folder / "predictions.jsonl").open())}


def test_a_student_distilled_without_labels_matches_its_teacher_on_held_out_clips(tmp_path):
    from click.testing import CliRunner

    from shard_tools.synth import make_synthetic
    from vmae2.cli import main
    from vmae2.evaluate import run_eval
    from vmae2.train import run_finetune, run_pretrain

    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # the small model runs faster on one thread than on two shared cores
    try:
        make_synthetic(tmp_path / "train", TRAIN_CLIPS, kind="glyphs", label="motion", seed=21, num_frames=16,
                       width=48, height=48, progress=False, workers=2)
        make_synthetic(tmp_path / "held", HELD_OUT_CLIPS, kind="glyphs", label="motion", seed=22, num_frames=16,
                       width=48, height=48, progress=False, workers=2)
        unlabelled_copy(tmp_path / "train", tmp_path / "unlabelled")
        # The per-patch normalised target this acceptance was set with (tiny's default is now pixels): from a
        # pixel-target pre-training the teacher reached 83.8 % and the student agreed with it on 69 % of the
        # held-out clips (one run), from this one 96.9 % and 90.6 %. Its base lr too (tiny's is now half).
        run_pretrain("tiny", str(tmp_path / "train"), str(tmp_path / "pre"), steps=PRETRAIN_STEPS,
                     sets=as_sets({**CLIPS, "batch_videos_per_gpu": 8, "num_sample": 2, "base_lr": 0.192,
                                   "min_lr_base": 0.00128, "model.decoder_mask_ratio": 0.0,
                                   "model.normalize_target": True}))
        run_finetune("tiny", str(tmp_path / "train"), str(tmp_path / "teacher"), init=str(tmp_path / "pre"),
                     steps=TEACHER_STEPS, sets=as_sets(RECIPE))
        (tmp_path / "recipe.json").write_text(json.dumps(RECIPE))
        result = CliRunner().invoke(main, [
            "distill", "--teacher", str(tmp_path / "teacher"), "--preset", "tiny", "--data",
            str(tmp_path / "unlabelled"), "--out", str(tmp_path / "student"), "--init", str(tmp_path / "pre"),
            "--steps", str(DISTILL_STEPS), "--config", str(tmp_path / "recipe.json")])
        assert result.exit_code == 0, result.output[-3000:]
        scores = {name: run_eval(str(tmp_path / name), str(tmp_path / "held"), str(tmp_path / f"eval-{name}"),
                                 views="2x3", device="cpu")
                  for name in ("teacher", "student")}
    finally:
        torch.set_num_threads(threads)
    teacher, student = top1_predictions(tmp_path / "eval-teacher"), top1_predictions(tmp_path / "eval-student")
    agreement = np.mean([teacher[key] == student[key] for key in teacher])
    top1 = {name: score["top1"] for name, score in scores.items()}
    assert len(teacher) == HELD_OUT_CLIPS and set(student) == set(teacher)
    assert top1["teacher"] >= 50, top1                         # chance is 25 %
    assert top1["student"] >= 0.9 * top1["teacher"], top1
    assert agreement >= 0.85, (agreement, top1)
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["alpha"] == 0.0 and saved["data"] == str(tmp_path / "unlabelled")
    assert json.loads((tmp_path / "unlabelled" / "manifest.json").read_text())["labels"] == []


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))     # conftest, as pytest has it
    ranks_worker(*sys.argv[1:])
