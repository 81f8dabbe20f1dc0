"""GPU acceptance tests: NVDEC decode, the mixed-device loader, bf16 + compile, NCCL, the non-finite guard,
distillation's bf16 teacher.

Every test is marked `gpu` and skips with "needs a CUDA GPU" where torch sees none. They read the
shard sets of bench.gpu (`python -m bench.gpu make-shards DIR`, then VMAE2_GPU_SHARDS=DIR), since a
GPU machine may lack PyAV to encode H.264 / HEVC; without that variable the sets are made here when
PyAV can encode them. `python -m bench.gpu` runs this file with `pytest -m gpu`.
"""
from __future__ import annotations

import copy
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import take

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DECODE_SETS = ["h264-coded", "hevc-coded", "vp9-coded"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """The folder holding bench.gpu's full shard sets."""
    from bench.gpu.shards import make_shards, missing_sets

    root = Path(os.environ["VMAE2_GPU_SHARDS"]) if os.environ.get("VMAE2_GPU_SHARDS") \
        else tmp_path_factory.mktemp("gpu-shards")
    if missing_sets(root, dry_run=False):
        try:
            make_shards(root, progress=False)
        except RuntimeError as err:
            pytest.skip(f"no shard sets: {err}")
    return root


# ---- NVDEC against a CPU reference decoder ----------------------------------------------------------

def reference_frames(encoded: bytes) -> tuple[np.ndarray, str]:
    """All frames of one encoded video as (F, H, W, 3) uint8 RGB, and the decoder's name.

    PyAV (FFmpeg) when installed, else decord, else OpenCV: the GPU machine has the latter two only.
    """
    try:
        import av

        with av.open(io.BytesIO(encoded)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]), "pyav"
    except ImportError:
        pass
    try:
        import decord

        reader = decord.VideoReader(io.BytesIO(encoded), ctx=decord.cpu(0))
        return reader.get_batch(list(range(len(reader)))).asnumpy(), "decord"
    except ImportError:
        pass
    import cv2

    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(encoded)
        f.flush()
        capture = cv2.VideoCapture(f.name)
        frames = []
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        capture.release()
    return np.stack(frames), "opencv"


def nvdec_samples(root: Path, start: int, num_frames: int, stride: int, count: int):
    """(frames (T, H, W, 3) uint8 from the mixed decoder, encoded bytes) of the first `count` samples."""
    from nvidia.dali import pipeline_def

    from dali_pipes import graph, open_shards

    shards = open_shards(root)

    @pipeline_def(batch_size=1, num_threads=2, device_id=torch.cuda.current_device())
    def whole_clips():
        encoded, _ = graph.read_samples(shards.tar_paths, shards.index_paths, shards.video_exts, shard_id=0,
                                        num_shards=1, shuffle=False, initial_fill=1, seed=0)
        frames = graph.decode_clip(encoded, start, num_frames=num_frames, stored_stride=stride, device="mixed")
        return frames, encoded

    pipe = whole_clips()
    pipe.build()
    out = []
    for _ in range(count):
        frames, encoded = pipe.run()
        out.append((np.asarray(frames.as_cpu()[0]), np.asarray(encoded[0]).tobytes()))
    return out


@pytest.mark.parametrize("name", DECODE_SETS)
@pytest.mark.parametrize("start,num_frames,stride", [(0, 24, 1), (5, 8, 2)])
def test_nvdec_decodes_frame_for_frame_like_the_cpu_reference(shards, name, start, num_frames, stride):
    """NVDEC (DALI mixed) and a CPU decoder give the same frames, from the start and after a seek.

    The clips say which frame they are (bench.gpu.shards.coded_frames), so the frame sequence is
    checked exactly, against the start + i·stride rule with the last frame repeated past the end.
    Pixel values within mean |diff| < 2.5 and max ≤ 12 per 8-bit value, not exact: NVDEC's YUV
    4:2:0 → RGB conversion is DALI's own kernel, the reference's is FFmpeg's swscale (or decord's /
    OpenCV's build of it), and they upsample chroma and round differently (DALI's CPU decoder against
    PyAV on these VP9 clips: mean 1.2, max 5).
    """
    from bench.gpu.shards import coded_frame_numbers

    for ours, encoded in nvdec_samples(shards / name, start, num_frames, stride, count=4):
        all_theirs, decoder = reference_frames(encoded)
        wanted = np.minimum(start + stride * np.arange(num_frames), len(all_theirs) - 1)
        assert coded_frame_numbers(ours).tolist() == wanted.tolist(), (name, decoder)
        assert coded_frame_numbers(all_theirs).tolist() == list(range(len(all_theirs))), (name, decoder)
        theirs = all_theirs[wanted].astype(int)
        assert ours.shape == theirs.shape, (name, decoder, ours.shape, theirs.shape)
        diff = np.abs(ours.astype(int) - theirs)
        assert diff.mean() < 2.5 and diff.max() <= 12, (name, decoder, diff.mean(), diff.max())


# ---- the mixed-device loader --------------------------------------------------------------------------

SAMPLING = dict(num_sample=2, num_frames=8, img_size=64, stride=2, patch_size=16)


def make_loader(root: Path, prefetch: int = 2):
    import dali_pipes

    return dali_pipes.pretrain_loader(root / "h264-test", 2, dali_pipes.SamplingConfig(**SAMPLING), device="cuda",
                                      seed=11, num_threads=2, prefetch=prefetch)


def test_mixed_pipeline_resumes_mid_epoch_exactly(shards):
    full = take(make_loader(shards), 9)            # 8 videos / batch 2 = 4 batches an epoch: crosses 2 epochs
    assert full[0]["video"].is_cuda and full[0]["video"].dtype == torch.uint8
    assert full[0]["video"].shape == (4, 8, 64, 64, 3)
    first = make_loader(shards)
    take(first, 3)
    state = first.state_dict()
    first.close()
    resumed = make_loader(shards)
    resumed.load_state_dict(state)
    for a, b in zip(full[3:], take(resumed, 6), strict=True):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["video"], b["video"])
        for k in a["masks"]:
            assert b["masks"][k].is_cuda and torch.equal(a["masks"][k], b["masks"][k])


def test_dlpack_batches_stay_valid_across_the_next_batches(shards):
    """Zero-copy device outputs must not be overwritten while DALI runs ahead (prefetch 2)."""
    loader = make_loader(shards, prefetch=2)
    kept = []
    for batch in take(loader, 6):
        kept.append((batch["video"], batch["video"].clone(), batch["masks"]["visible_idx"],
                     batch["masks"]["visible_idx"].clone()))
    torch.cuda.synchronize()
    assert len({int(v.data_ptr()) for v, *_ in kept}) > 1
    for video, video_copy, visible, visible_copy in kept:
        assert torch.equal(video, video_copy) and torch.equal(visible, visible_copy)


# ---- the model and the trainer on the device ----------------------------------------------------------

def small_model(**overrides):
    import vmae2

    return vmae2.build_pretrain_model("vit_s", num_frames=8, img_size=64, depth=4, decoder_depth=2,
                                      **overrides).cuda()


def device_batch(model, clips: int, seed: int):
    from dali_pipes.masking import dual_masks

    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (clips, cfg.num_frames, cfg.img_size, cfg.img_size, 3), dtype=torch.uint8,
                          generator=g).cuda()
    masks = dual_masks(np.random.default_rng(seed), clips, cfg.grid, cfg.encoder_mask_ratio, cfg.decoder_mask_ratio)
    return video, {k: torch.from_numpy(v).cuda() for k, v in masks.items()}


def clean_name(name: str) -> str:
    """A parameter's name without what compile (_orig_mod.) and DDP (module.) add."""
    return name.replace("_orig_mod.", "").replace("module.", "")


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on the host in fp32 (FSDP2 holds DTensor shards)."""
    tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return tensor.detach().float().cpu()


def first_backward(stepped) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one bf16 forward + backward on a fixed batch, as vmae2.train runs it."""
    video, masks = device_batch(stepped.module if hasattr(stepped, "module") else stepped, 8, seed=0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = stepped(video, masks)
    loss.backward()
    return float(loss.detach()), {clean_name(n): full(p.grad) for n, p in stepped.named_parameters()}


def train_steps(stepped, steps: int) -> list[float]:
    """`steps` bf16 steps with vmae2's optimizer (torch's fused AdamW on CUDA) after clearing any grads."""
    from vmae2 import optim

    opt = optim.build_optimizer(optim.pretrain_param_groups(stepped, 0.05), kind="adamw", lr=1e-3,
                                betas=(0.9, 0.95), eps=1e-8, device=torch.device("cuda"))
    assert opt.defaults.get("fused"), "fused AdamW expected on CUDA"
    opt.zero_grad(set_to_none=True)
    losses = []
    for step in range(steps):
        video, masks = device_batch(stepped.module if hasattr(stepped, "module") else stepped, 8, seed=step)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = stepped(video, masks)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stepped.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def relative_error(ref: dict, other: dict) -> float:
    """‖other − ref‖ / ‖ref‖ over all tensors of two name → tensor dicts."""
    assert ref.keys() == other.keys(), sorted(set(ref) ^ set(other))
    num = sum(float((ref[k] - other[k]).pow(2).sum()) for k in ref)
    return (num / sum(float(ref[k].pow(2).sum()) for k in ref)) ** 0.5


# Gradients, not parameters after AdamW, are compared: Adam's first updates are ±lr whatever the
# gradient's size, so bf16 noise on a near-zero gradient flips a whole update and says nothing.
BF16_LOSS_RTOL = 2e-2   # bf16 operands round at 2^-8; a loss sums many of them
BF16_GRAD_RTOL = 5e-2   # ‖g − g_ref‖/‖g_ref‖ after a backward through 6 blocks in bf16


def test_bf16_compiled_step_matches_eager():
    """Per-block torch.compile changes kernels, not the function: the same loss and gradients in
    bf16, and the same loss curve over 3 steps of fused AdamW; NaN never passes."""
    from vmae2.distributed import compile_blocks

    torch.manual_seed(0)
    eager = small_model()
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled)
    eager_loss, eager_grads = first_backward(eager)
    compiled_loss, compiled_grads = first_backward(compiled)
    assert np.isfinite([eager_loss, compiled_loss]).all()
    assert abs(compiled_loss - eager_loss) <= BF16_LOSS_RTOL * abs(eager_loss)
    assert relative_error(eager_grads, compiled_grads) < BF16_GRAD_RTOL
    eager_losses, compiled_losses = train_steps(eager, 3), train_steps(compiled, 3)
    assert np.isfinite(eager_losses + compiled_losses).all()
    np.testing.assert_allclose(compiled_losses, eager_losses, rtol=BF16_LOSS_RTOL)


def test_fused_adamw_step_matches_the_reference_adamw():
    """torch's fused AdamW (vmae2.optim on CUDA) against its for-loop form on the same bf16 gradients:
    both update in fp32, so 3 steps agree to fp32 rounding (1e-5 of ‖p‖)."""
    from vmae2 import optim

    torch.manual_seed(0)
    fused_model = small_model()
    _, grads = first_backward(fused_model)
    loop_model = copy.deepcopy(fused_model)
    fused = optim.build_optimizer(optim.pretrain_param_groups(fused_model, 0.05), kind="adamw", lr=1e-3,
                                  betas=(0.9, 0.95), eps=1e-8, device=torch.device("cuda"))
    groups = optim.pretrain_param_groups(loop_model, 0.05)
    loop = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=False, fused=False)
    assert fused.defaults["fused"]
    for _ in range(3):
        for model, opt in ((fused_model, fused), (loop_model, loop)):
            for name, p in model.named_parameters():
                p.grad = grads[clean_name(name)].to(p.device)
            opt.step()
    after = {clean_name(n): full(p) for n, p in loop_model.named_parameters()}
    assert relative_error(after, {clean_name(n): full(p) for n, p in fused_model.named_parameters()}) < 1e-5


@pytest.fixture
def nccl_one_rank():
    import torch.distributed as dist

    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1,
                            device_id=torch.device("cuda", torch.cuda.current_device()))
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ddp_and_fsdp2_on_nccl_with_one_rank_match_the_plain_model(nccl_one_rank, parallel):
    """vmae2.distributed.wrap over NCCL: with one rank the gradient reduction is the identity, so loss
    and gradients match the plain model to bf16 rounding (FSDP2 also gathers bf16 parameters, its
    mixed-precision policy, where autocast casts fp32 ones), and so does a 3-step loss curve."""
    import dataclasses

    from vmae2 import distributed

    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cuda"))
    torch.manual_seed(0)
    plain = small_model()
    if parallel == "fsdp":
        wrapped = distributed.fully_shard_blocks(copy.deepcopy(plain), bf16=True)
    else:  # wrap() leaves a one-process model unwrapped: claim a second rank so it wraps over this group
        wrapped = distributed.wrap(copy.deepcopy(plain), dataclasses.replace(env, world_size=2), parallel, bf16=True)
    assert type(wrapped).__name__ != type(plain).__name__          # really wrapped (DDP / FSDPVideoMAEv2)
    plain_loss, plain_grads = first_backward(plain)
    loss, grads = first_backward(wrapped)
    assert abs(loss - plain_loss) <= BF16_LOSS_RTOL * abs(plain_loss)
    assert relative_error(plain_grads, grads) < BF16_GRAD_RTOL
    np.testing.assert_allclose(train_steps(wrapped, 3), train_steps(plain, 3), rtol=BF16_LOSS_RTOL)


def test_nonfinite_guard_skips_on_the_device_and_stops_past_the_limit(tmp_path):
    from conftest import fake_loader, small_config

    from vmae2.train import NonFiniteLoss, train

    cfg = small_config(tmp_path / "skip", device="cuda", max_nonfinite_skips=1)
    summary = train(cfg, loader=fake_loader(cfg, nan_at_batch=5, device="cuda"))
    assert summary["skipped_steps"] == 1 and summary["steps"] == 8
    assert np.isfinite(summary["final_loss"])
    cfg = small_config(tmp_path / "stop", device="cuda")
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 5: .*last checkpoint: .*ckpt-00000004"):
        train(cfg, loader=fake_loader(cfg, nan_at_batch=5, device="cuda"))


def test_distillation_on_the_gpu_keeps_a_frozen_bf16_teacher(tmp_path):
    """The distillation task on CUDA under bf16 autocast: the teacher's weights are bf16 (its position table
    fp32), bit for bit the source's after 8 steps, and its forward time (CUDA events) is in every metrics row."""
    from conftest import fake_loader, read_metrics
    from test_distill import save_teacher, small_distill_config

    from vmae2.tasks import Distillation
    from vmae2.train import train

    source = save_teacher(tmp_path / "teacher.pt")
    cfg = small_distill_config(tmp_path / "run", tmp_path / "teacher.pt", device="cuda")
    task = Distillation(cfg)
    summary = train(cfg, loader=fake_loader(cfg, device="cuda"), task=task)
    assert summary["steps"] == 8 and np.isfinite(summary["final_loss"])
    params = dict(task.teacher.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.bfloat16} and task.teacher.pos_embed.dtype == torch.float32
    assert sorted(params) == sorted(source)
    assert all(not p.requires_grad and p.grad is None for p in params.values())
    assert all(torch.equal(params[k].cpu(), source[k].to(torch.bfloat16)) for k in source)
    assert all(r["teacher_forward_s"] > 0 for r in read_metrics(tmp_path / "run"))
