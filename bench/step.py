"""Training-step throughput of the model alone, on synthetic input already on the device.

    python -m bench.step [--presets vit_b,vit_l] [--batch 128] [--json PATH]
    python -m bench.step --distill-teacher vit_g --presets vit_b [--batch 32] [--json PATH]

For each preset × decoder mask ratio × compile × activation checkpointing: clips/s, step time
(median and spread over repeats, warm-up excluded, device synchronised around each step), peak
memory, achieved TFLOP/s and MFU against a matmul peak measured in the same run (and the bf16
datasheet peak where known). A step is forward + backward + AdamW update, bf16 autocast on a GPU,
fp32 on the CPU. Dual-masking speedup and memory ratio are ratios within the same run.

--fsdp shards the model with FSDP2 (vmae2.distributed.fully_shard_blocks, as a run of many ranks
does) over a one-process group (NCCL on a GPU, gloo on the CPU): the memory of one
ViT-g step with activation checkpointing as a multi-GPU run would hold it, before the sharding
divides it.

--distill-teacher PRESET times a distillation step instead (vmae2.distill, the task `vmae2-train distill`
runs): the frozen classifier teacher's forward (bf16 weights on a GPU, eval mode, no_grad) on the clips,
then each --presets student classifier's forward, the task's KL loss, backward and AdamW update, both
with --classes outputs; teacher forward and student step are timed apart (device synchronised between),
with clips/s of the whole step and peak memory.
"""
from __future__ import annotations

import statistics
import time

import click
import numpy as np
import torch

import vmae2
from bench.env import device_label, environment, write_json
from dali_pipes.masking import dual_masks
from vmae2 import distributed
from vmae2.distill import distillation_loss, freeze_teacher
from vmae2.distributed import fully_shard_blocks
from vmae2.flops import classifier_flops, pretrain_flops

# Dense bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s (1 multiply-add = 2 FLOPs).
DATASHEET_BF16_TFLOPS = {"h100 80gb hbm3": 989.4, "h100 sxm": 989.4, "h200": 989.4, "h100 pcie": 756.0,
                         "h100 nvl": 835.0, "a100": 312.0}
PAPER = {"vit_b_speedup": 1.79, "vit_b_memory_M": (631, 328), "vit_g_speedup": 1.48}
PAPER_VIDEOS_PER_GPU, NUM_SAMPLE = 32, 4
DISTILL_CLIPS_PER_GPU = 16 * 2   # the B K710 fine-tuning row: 16 videos x 2 clips per GPU


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, repeats: int = 10) -> float:
    """Median TFLOP/s of a large square matmul: bf16 on a GPU, fp32 on the CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def datasheet_peak(env: dict) -> float | None:
    name = (env.get("gpu") or "").lower()
    return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


def synthetic_batch(cfg, clips: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (clips, cfg.num_frames, cfg.img_size, cfg.img_size, 3)
    video = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    masks = dual_masks(np.random.default_rng(seed), clips, cfg.grid, cfg.encoder_mask_ratio, cfg.decoder_mask_ratio)
    return video.to(device), {k: torch.from_numpy(v).to(device) for k, v in masks.items()}


def one_rank_group(device: torch.device) -> None:
    """A process group of this process alone, for FSDP2 without torchrun."""
    import torch.distributed as dist

    if not dist.is_initialized():
        # NCCL wants the device with its index ("cuda" alone is refused)
        cuda = {"device_id": torch.device("cuda", device.index if device.index is not None
                                          else torch.cuda.current_device())} if device.type == "cuda" else {}
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1, **cuda)


def measure(preset: str, ratio: float, clips: int, compile_model: bool, checkpointing: bool,
            device: torch.device, warmup: int, repeats: int, fsdp: bool = False, model_overrides=None) -> dict:
    """Time one configuration; raises torch.OutOfMemoryError when it does not fit."""
    torch.manual_seed(0)
    model = vmae2.build_pretrain_model(preset, decoder_mask_ratio=ratio, grad_checkpointing=checkpointing,
                                       **(model_overrides or {})).to(device)
    cfg = model.cfg
    if fsdp:
        one_rank_group(device)
        model = fully_shard_blocks(model, bf16=device.type == "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    step_model = torch.compile(model) if compile_model else model
    video, masks = synthetic_batch(cfg, clips, device)

    autocast = distributed.autocast("auto", device)     # bf16 on a GPU, fp32 on the CPU, as the trainer

    def step():
        with autocast:
            loss, _ = step_model(video, masks)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()
    sync(device)
    first_step_s = time.perf_counter() - t0                       # includes compilation
    for _ in range(warmup - 1):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    fwd_flops = pretrain_flops(cfg, ratio)["total"]
    return {
        "preset": preset, "decoder_mask_ratio": ratio, "clips_per_step": clips, "compile": compile_model,
        "activation_checkpointing": checkpointing, "fsdp": fsdp, "step_s_median": median,
        "step_s_p10": float(np.percentile(times, 10)), "step_s_p90": float(np.percentile(times, 90)),
        "repeats": repeats, "first_step_s": first_step_s, "clips_per_s": clips / median,
        # model FLOPs: forward + backward ≈ 3 × forward; ×2 converts multiply-adds to FLOPs
        "model_tflops_per_s": 3 * 2 * fwd_flops * clips / median / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None,
    }


def measure_distill(teacher_preset: str, student_preset: str, clips: int, compile_model: bool, checkpointing: bool,
                    device: torch.device, warmup: int, repeats: int, num_classes: int = 710, fsdp: bool = False,
                    model_overrides=None, temperature: float = 1.0) -> dict:
    """Time one distillation step: teacher forward, then student forward + loss + backward + AdamW update.

    Both models are built on the device (ViT-g's billion parameters initialise slowly on a CPU) with the
    same input size; raises torch.OutOfMemoryError when they do not fit.
    """
    torch.manual_seed(0)
    overrides = model_overrides or {}
    with device:
        teacher = vmae2.VideoClassifier(vmae2.model_config(teacher_preset, **overrides), num_classes, drop_path=0.0)
        student = vmae2.VideoClassifier(vmae2.model_config(student_preset, **overrides,
                                                           grad_checkpointing=checkpointing),
                                        num_classes, drop_path=0.1)
    autocast = distributed.autocast("auto", device)      # bf16 on a GPU, fp32 on the CPU, as the trainer
    teacher = freeze_teacher(teacher, device, bf16=autocast.bf16)
    if fsdp:
        one_rank_group(device)
        teacher = fully_shard_blocks(teacher, bf16=device.type == "cuda")
        student = fully_shard_blocks(student, bf16=device.type == "cuda")
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.999), fused=device.type == "cuda")
    step_student = torch.compile(student) if compile_model else student
    video = synthetic_batch(student.cfg, clips, device)[0]

    def teacher_forward():
        with torch.no_grad(), autocast:
            return teacher(video)

    def student_step(teacher_logits):
        with autocast:
            loss = distillation_loss(step_student(video), teacher_logits, temperature)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    student_step(teacher_forward())
    sync(device)
    first_step_s = time.perf_counter() - t0
    for _ in range(warmup - 1):
        student_step(teacher_forward())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    teacher_times, student_times = [], []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        logits = teacher_forward()
        sync(device)
        t1 = time.perf_counter()
        student_step(logits)
        sync(device)
        teacher_times.append(t1 - t0)
        student_times.append(time.perf_counter() - t1)
    step_s = statistics.median([t + s for t, s in zip(teacher_times, student_times)])
    # forward FLOPs of the teacher + forward and backward (≈ 3 × forward) of the student; ×2: multiply-adds
    flops = 2 * (classifier_flops(teacher.cfg, num_classes) + 3 * classifier_flops(student.cfg, num_classes))
    return {
        "teacher": teacher_preset, "student": student_preset, "num_classes": num_classes, "clips_per_step": clips,
        "compile": compile_model, "activation_checkpointing": checkpointing, "fsdp": fsdp,
        "teacher_dtype": str(next(teacher.parameters()).dtype).removeprefix("torch."),
        "teacher_params_m": sum(p.numel() for p in teacher.parameters()) / 1e6,
        "student_params_m": sum(p.numel() for p in student.parameters()) / 1e6,
        "step_s_median": step_s, "teacher_forward_ms_median": 1e3 * statistics.median(teacher_times),
        "student_step_ms_median": 1e3 * statistics.median(student_times),
        "teacher_share": statistics.median(teacher_times) / step_s, "repeats": repeats,
        "first_step_s": first_step_s, "clips_per_s": clips / step_s,
        "model_tflops_per_s": flops * clips / step_s / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None,
    }


def largest_batch(preset, ratio, compile_model, checkpointing, device, start: int, limit: int) -> int:
    """Largest clips per step that fits, by doubling then bisection (GPU only)."""
    fits, fails = 0, None
    clips = start
    while clips <= limit:
        try:
            measure(preset, ratio, clips, compile_model, checkpointing, device, warmup=1, repeats=1)
            fits, clips = clips, clips * 2
        except torch.OutOfMemoryError:
            fails = clips
            break
        finally:
            torch.cuda.empty_cache()
    while fails is not None and fails - fits > max(8, fits // 8):
        mid = (fits + fails) // 2
        try:
            measure(preset, ratio, mid, compile_model, checkpointing, device, warmup=1, repeats=1)
            fits = mid
        except torch.OutOfMemoryError:
            fails = mid
        finally:
            torch.cuda.empty_cache()
    return fits


def parse_list(text: str, kind=str) -> list:
    return [kind(x) for x in text.split(",") if x != ""]


def parse_model_sets(items) -> dict[str, int]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value.lstrip("-").isdigit():
            raise click.BadParameter(f"{item!r}: expected FIELD=INT, e.g. img_size=56", param_hint="--model")
        out[key] = int(value)
    return out


def on_off(text: str) -> list[bool]:
    return [{"on": True, "off": False}[x] for x in parse_list(text)]


@click.command(help=__doc__.split("\n\n")[0] + " See the module docstring for the method.")
@click.option("--presets", default=None, help="Comma-separated presets [default: tiny on CPU, vit_b,vit_l on GPU].")
@click.option("--ratios", default="0,0.5", show_default=True, help="Decoder mask ratios.")
@click.option("--compile", "compile_modes", default="off,on", show_default=True, help="torch.compile off/on.")
@click.option("--checkpointing", default="off,on", show_default=True, help="Activation checkpointing off/on.")
@click.option("--batch", "batches", default=None,
              help="Comma-separated clips per step [default: 8 on CPU; the paper's 32 videos x 4 = 128 on GPU].")
@click.option("--max-batch/--no-max-batch", default=None,
              help="Also find the largest batch that fits [default: on GPU].")
@click.option("--warmup", default=3, show_default=True, help="Untimed steps (the first includes compilation).")
@click.option("--repeats", default=10, show_default=True, help="Timed steps; the median is quoted.")
@click.option("--model", "model_sets", multiple=True, metavar="FIELD=INT",
              help="Override an integer ModelConfig field of every preset, e.g. img_size=56 (smoke tests).")
@click.option("--fsdp", is_flag=True, help="Shard the model with FSDP2 over a one-process group (memory of a "
              "sharded run, e.g. ViT-g); --max-batch is off with it.")
@click.option("--distill-teacher", default=None, metavar="PRESET",
              help="Time a distillation step with this classifier as the frozen teacher and each --presets model as "
                   "the student (--ratios and --max-batch do not apply).")
@click.option("--classes", "num_classes", default=710, show_default=True,
              help="Classes of teacher and student with --distill-teacher (710: the K710 label space).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write rows and environment as JSON here.")
def main(presets, ratios, compile_modes, checkpointing, batches, max_batch, warmup, repeats, model_sets, fsdp,
         distill_teacher, num_classes, json_path):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    presets = parse_list(presets or ("vit_b,vit_l" if gpu else "tiny"))
    default_batch = (DISTILL_CLIPS_PER_GPU if distill_teacher else PAPER_VIDEOS_PER_GPU * NUM_SAMPLE) if gpu else 8
    batches = parse_list(batches or str(default_batch), int)
    model_overrides = parse_model_sets(model_sets)
    max_batch = (gpu and not fsdp) if max_batch is None else max_batch and not fsdp
    env = environment()
    peak = matmul_peak_tflops(device)
    sheet = datasheet_peak(env)
    click.echo(f"device {env.get('gpu', env['cpu'])}: measured matmul peak {peak:.1f} TFLOP/s"
               + (f", datasheet bf16 {sheet} TFLOP/s" if sheet else ""))
    if distill_teacher:
        rows = distill_rows(distill_teacher, presets, num_classes, compile_modes, checkpointing, batches, device,
                            warmup, repeats, fsdp, model_overrides, peak, sheet)
        if json_path:
            write_json(json_path, {"bench": "step_distill", "env": env, "device_label": device_label(env),
                                   "matmul_peak_tflops": peak, "datasheet_bf16_tflops": sheet, "rows": rows})
            click.echo(f"wrote {json_path}")
        return
    rows = []
    for preset in presets:
        for ratio in parse_list(ratios, float):
            for ckpt in on_off(checkpointing):
                sizes = list(batches)
                if max_batch and gpu:
                    sizes.append(largest_batch(preset, ratio, False, ckpt, device, sizes[0], 4096))
                for comp in on_off(compile_modes):
                    for clips in dict.fromkeys(sizes):
                        try:
                            row = measure(preset, ratio, clips, comp, ckpt, device, warmup, repeats, fsdp,
                                          model_overrides)
                        except torch.OutOfMemoryError:
                            click.echo(f"{preset} ratio={ratio} clips={clips} compile={comp} ckpt={ckpt}: "
                                       f"out of memory")
                            torch.cuda.empty_cache()
                            continue
                        row["mfu_measured_peak"] = row["model_tflops_per_s"] / peak
                        row["mfu_datasheet"] = row["model_tflops_per_s"] / sheet if sheet else None
                        row["largest_batch"] = clips == sizes[-1] and max_batch and gpu
                        row["model_overrides"] = model_overrides
                        rows.append(row)
                        mem = f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else "-"
                        click.echo(f"{preset:6} ratio={ratio:<4} clips={clips:<5} compile={comp!s:5} ckpt={ckpt!s:5} "
                                   f"{row['step_s_median'] * 1e3:8.1f} ms  {row['clips_per_s']:8.1f} clips/s  "
                                   f"{row['model_tflops_per_s']:7.2f} TFLOP/s  "
                                   f"MFU {row['mfu_measured_peak']:.1%}  {mem}")
    if fsdp:
        import torch.distributed as dist

        dist.destroy_process_group()
    summary = dual_masking_summary(rows)
    for r in summary:
        mem = f", memory x{r['memory_ratio']:.2f}" if r["memory_ratio"] else ""
        click.echo(f"dual vs encoder-only masking, {r['preset']} clips={r['clips_per_step']} compile={r['compile']} "
                   f"ckpt={r['activation_checkpointing']}: {r['speedup']:.2f}x faster per step{mem}")
    if json_path:
        write_json(json_path, {"bench": "step", "env": env, "device_label": device_label(env),
                               "matmul_peak_tflops": peak, "datasheet_bf16_tflops": sheet,
                               "paper": PAPER, "rows": rows, "dual_masking": summary})
        click.echo(f"wrote {json_path}")


def distill_rows(teacher: str, students: list[str], num_classes: int, compile_modes: str, checkpointing: str,
                 batches: list[int], device: torch.device, warmup: int, repeats: int, fsdp: bool,
                 model_overrides: dict, peak: float, sheet: float | None) -> list[dict]:
    """measure_distill for each student × activation checkpointing × compile × batch; out-of-memory ones are
    reported and left out."""
    rows = []
    for student in students:
        for ckpt in on_off(checkpointing):
            for comp in on_off(compile_modes):
                for clips in dict.fromkeys(batches):
                    try:
                        row = measure_distill(teacher, student, clips, comp, ckpt, device, warmup, repeats,
                                              num_classes, fsdp, model_overrides)
                    except torch.OutOfMemoryError:
                        click.echo(f"teacher {teacher} student {student} clips={clips} compile={comp} ckpt={ckpt}: "
                                   f"out of memory")
                        torch.cuda.empty_cache()
                        continue
                    row["mfu_measured_peak"] = row["model_tflops_per_s"] / peak
                    row["mfu_datasheet"] = row["model_tflops_per_s"] / sheet if sheet else None
                    row["model_overrides"] = model_overrides
                    rows.append(row)
                    mem = f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else "-"
                    click.echo(f"teacher {teacher} ({row['teacher_dtype']}) student {student} clips={clips} "
                               f"compile={comp} ckpt={ckpt}: teacher forward {row['teacher_forward_ms_median']:.1f} "
                               f"ms + student step {row['student_step_ms_median']:.1f} ms = "
                               f"{row['clips_per_s']:.1f} clips/s  MFU {row['mfu_measured_peak']:.1%}  {mem}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if fsdp:
        import torch.distributed as dist

        dist.destroy_process_group()
    return rows


def dual_masking_summary(rows: list[dict]) -> list[dict]:
    """Speedup and memory ratio of ratio 0.5 over ratio 0, for configurations measured both ways."""
    def key(r):
        return (r["preset"], r["clips_per_step"], r["compile"], r["activation_checkpointing"])
    by_ratio = {(key(r), r["decoder_mask_ratio"]): r for r in rows}
    out = []
    for (k, ratio), dual in by_ratio.items():
        base = by_ratio.get((k, 0.0))
        if ratio != 0.5 or base is None:
            continue
        both = dual["peak_memory_gib"] and base["peak_memory_gib"]
        mem = dual["peak_memory_gib"] / base["peak_memory_gib"] if both else None
        out.append({"preset": k[0], "clips_per_step": k[1], "compile": k[2], "activation_checkpointing": k[3],
                    "speedup": base["step_s_median"] / dual["step_s_median"], "memory_ratio": mem})
    return out


if __name__ == "__main__":
    main()
