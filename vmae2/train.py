"""VideoMAE V2 pre-training: one `train(cfg)` from one CPU to many GPU nodes.

Read top to bottom: processes and device → model (compile, DDP/FSDP2) → optimizer → loader →
resume → the step loop (lr, micro-steps, clip, non-finite guard, update, log, checkpoint) → final
checkpoint and weights. Nothing syncs with the host between logged steps: metrics are summed on
the device, and a non-finite step is skipped on the device too (torch's fused AdamW drops the whole
update when its `found_inf` is set, as under GradScaler) and reported when the next row is logged.
"""
from __future__ import annotations

import contextlib
import json
import math
import resource
import time
from pathlib import Path

import torch

from . import checkpoint, distributed, optim, weights
from .model import VideoMAEv2
from .train_config import PretrainConfig, parse_set_args, pretrain_config, save_config, to_json

# Config keys that may change between a run and its resumption without changing its numbers.
RESUMABLE_CHANGES = {"log_every", "save_every", "keep_last", "max_nonfinite_skips", "tensorboard",
                     "progress", "log_keys", "loader_threads", "data", "out_dir"}


class NonFiniteLoss(RuntimeError):
    """The loss (or its gradient) became NaN or infinite more often than max_nonfinite_skips allows."""


class NonFiniteGuard:
    """Non-finite steps counted on the device; `check` (when logging or saving) reports and enforces.

    The gradient norm is all-reduced, so every rank sees the same steps as non-finite and raises at
    the same check.
    """

    def __init__(self, device: torch.device, max_skips: int):
        self.max_skips, self.reported = max_skips, 0
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.first_step = torch.full((), -1, dtype=torch.int64, device=device)  # first unreported one
        self.first_loss = torch.zeros((), device=device)

    def record(self, step: int, finite: torch.Tensor, loss: torch.Tensor) -> None:
        new_first = ~finite & (self.first_step < 0)
        self.first_step = torch.where(new_first, step, self.first_step)
        self.first_loss = torch.where(new_first, loss.float(), self.first_loss)
        self.count += (~finite).long()

    def check(self, last_ckpt, is_main: bool) -> None:
        count = int(self.count)
        if count == self.reported:
            return
        where = f"last checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint written yet"
        message = (f"non-finite loss at step {int(self.first_step)}: loss {float(self.first_loss)} (this rank); "
                   f"{count - self.reported} non-finite step(s) since the last report, updates skipped; {where}")
        if count > self.max_skips:
            raise NonFiniteLoss(f"{message}; stopping after {count} non-finite step(s) "
                                f"(max_nonfinite_skips={self.max_skips}); lower base_lr, set clip_grad_norm, "
                                f"or resume from the checkpoint")
        if is_main:
            print(f"{message} ({count} of max_nonfinite_skips={self.max_skips})")
        self.reported = count
        self.first_step.fill_(-1)


def make_loader(cfg: PretrainConfig, env: distributed.DistEnv):
    """The DALI pre-training loader of dali_pipes for this rank."""
    if not Path(cfg.data).exists():
        raise FileNotFoundError(f"data={cfg.data!r}: no such shard folder or manifest.json; pack videos with "
                                f"`vmae2-shard pack` or make a synthetic set with `vmae2-shard synth OUT`")
    from dali_pipes import pretrain_loader

    m = cfg.model
    return pretrain_loader(cfg.data, cfg.batch_videos_per_gpu, num_sample=cfg.num_sample,
                           num_frames=m.num_frames, img_size=m.img_size, device=env.device,
                           rank=env.rank, world_size=env.world_size, seed=cfg.seed,
                           patch_size=m.patch_size, encoder_mask_ratio=m.encoder_mask_ratio,
                           decoder_mask_ratio=m.decoder_mask_ratio, stride=cfg.frame_stride,
                           num_threads=cfg.loader_threads)


def forever(loader):
    """Batches across epochs; the loader's own state says where an interrupted epoch stands."""
    while True:
        yield from loader


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def check_resume_config(saved: dict, current: dict, path) -> None:
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ValueError(f"{path} was written with a different config ({detail}); an exact resume needs the "
                         f"same settings: run the original command again, or use a new --out")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows after `step` (written by a run killed after its last checkpoint)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if json.loads(r)["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(r + "\n" for r in kept))
    tmp.replace(path)


def open_tensorboard(cfg: PretrainConfig, run_dir: Path, step: int):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed: metrics go to metrics.jsonl only (pip install tensorboard)")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None)


def train(cfg: PretrainConfig, loader=None) -> dict:
    """Pre-train (or continue pre-training) into cfg.out_dir; returns a summary of the run.

    loader: anything with the dali_pipes.pretrain_loader contract (iterable of {"video", "masks",
    "keys"} batches with len(), state_dict() and load_state_dict()); built from cfg.data when None.
    """
    env = distributed.init(cfg.device)
    try:
        return _train(cfg, env, loader)
    finally:
        distributed.shutdown()


def _train(cfg: PretrainConfig, env: distributed.DistEnv, loader) -> dict:
    run_dir = Path(cfg.out_dir)
    if not cfg.out_dir:
        raise ValueError("out_dir is empty: pass --out RUN_DIR")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and env.device.type == "cuda")
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    # Model: the same init on every rank (DDP also broadcasts rank 0's weights).
    torch.manual_seed(cfg.seed)
    raw_model = VideoMAEv2(cfg.model).to(env.device)
    if cfg.compile:
        distributed.compile_blocks(raw_model)
    model = distributed.wrap(raw_model, env, cfg.parallel, bf16)

    # Optimizer: lr scaled by the videos of one optimizer step over all processes (spec §7).
    videos_per_step = cfg.videos_per_step * env.world_size
    peak_lr = cfg.base_lr * videos_per_step / 256
    min_lr = cfg.min_lr_base * videos_per_step / 256
    groups = optim.pretrain_param_groups(model, cfg.weight_decay)
    optimizer = optim.build_optimizer(groups, kind=cfg.optimizer, lr=peak_lr, eps=cfg.adam_eps,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2), device=env.device)
    if loader is None:
        loader = make_loader(cfg, env)

    # Resume from the newest complete checkpoint, if any; else start with per-rank RNG streams.
    step, config = 0, to_json(cfg)
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is not None:
        check_resume_config(json.loads((latest / "config.json").read_text()), config, latest)
        meta, rank_state = checkpoint.load(latest, model, optimizer, env)
        step = meta["step"]
        checkpoint.set_rng_state(rank_state["rng"], env.device)
        loader.load_state_dict(rank_state["loader"])
        if env.is_main:
            print(f"resumed from {latest} at step {step}")
    else:
        torch.manual_seed(cfg.seed + 1 + env.rank)
    if env.is_main:
        save_config(cfg, run_dir / "config.json")
        truncate_metrics(run_dir / "metrics.jsonl", step)
    metrics_file = open(run_dir / "metrics.jsonl", "a") if env.is_main else None
    tb = open_tensorboard(cfg, run_dir, step) if env.is_main else None
    keys_file = open(run_dir / f"keys-rank{env.rank}.jsonl", "a") if cfg.log_keys else None
    from tqdm import tqdm

    bar = tqdm(total=cfg.total_steps, initial=step, unit="step", dynamic_ncols=True,
               disable=not (env.is_main and cfg.progress))

    clips_per_step = videos_per_step * cfg.num_sample
    last_ckpt = latest
    guard = NonFiniteGuard(env.device, cfg.max_nonfinite_skips)
    skips_on_device = getattr(optimizer, "_step_supports_amp_scaling", False)  # torch's fused AdamW
    loss_sum = torch.zeros((), device=env.device)   # summed on the device, read when logging
    window_updates = torch.zeros((), device=env.device)
    window_steps, data_wait_s, window_start = 0, 0.0, time.perf_counter()
    run_start, start_step, summary_loss = time.perf_counter(), step, float("nan")
    data = forever(loader)
    model.train()
    while step < cfg.total_steps:
        lr = optim.lr_at(step, peak_lr=peak_lr, min_lr=min_lr, warmup_steps=cfg.warmup_steps,
                         total_steps=cfg.total_steps)
        optim.set_lr(optimizer, lr)
        step_loss = torch.zeros((), device=env.device)
        for micro in range(cfg.grad_accum_steps):
            wait_start = time.perf_counter()
            batch = next(data)
            data_wait_s += time.perf_counter() - wait_start
            if keys_file is not None:
                keys_file.write(json.dumps({"step": step, "keys": list(batch["keys"])}) + "\n")
            with distributed.no_grad_sync(model, sync=micro == cfg.grad_accum_steps - 1):
                with autocast:
                    loss, _ = model(batch["video"], batch["masks"])
                (loss / cfg.grad_accum_steps).backward()
            step_loss += loss.detach() / cfg.grad_accum_steps
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm or math.inf)
        if hasattr(grad_norm, "full_tensor"):   # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        finite = torch.isfinite(grad_norm)
        if skips_on_device:
            optimizer.found_inf = (~finite).float()   # 1 skips the whole update: moments, decay, step count
            optimizer.step()
        elif finite.item():                           # apex: the host has to decide
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        guard.record(step + 1, finite, step_loss)
        loss_sum += torch.where(finite, step_loss, 0.0)
        window_updates += finite.float()
        step += 1
        window_steps += 1
        bar.update(1)

        if step % cfg.log_every == 0 or step == cfg.total_steps:
            guard.check(last_ckpt, env.is_main)
            elapsed = time.perf_counter() - window_start
            stats = distributed.all_reduce_mean(torch.stack([loss_sum / window_updates.clamp(min=1),
                                                             loss_sum.new_tensor(data_wait_s)]))
            summary_loss, mean_wait = stats.tolist()
            row = {"step": step, "loss": summary_loss, "lr": lr, "grad_norm": grad_norm.item(),
                   "clips_per_s": clips_per_step * window_steps / elapsed, "step_time_s": elapsed / window_steps,
                   "data_wait_frac": mean_wait / elapsed, "peak_mem_gib": peak_memory_gib(env.device),
                   "elapsed_s": time.perf_counter() - run_start}
            if env.is_main:
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                if tb is not None:
                    for key, value in row.items():
                        if key != "step":
                            tb.add_scalar(f"pretrain/{key}", value, step)
                bar.set_postfix(loss=f"{summary_loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{row['clips_per_s']:.1f}",
                                data_wait=f"{100 * row['data_wait_frac']:.0f}%")
            loss_sum.zero_()
            window_updates.zero_()
            window_steps, data_wait_s, window_start = 0, 0.0, time.perf_counter()

        if step % cfg.save_every == 0 or step == cfg.total_steps:
            guard.check(last_ckpt, env.is_main)
            rank_state = {"rng": checkpoint.rng_state(env.device), "loader": loader.state_dict()}
            last_ckpt = checkpoint.save(run_dir, step, model, optimizer, rank_state, config, env, cfg.keep_last)
    bar.close()

    weights.export_weights(model, run_dir / weights.FINAL_WEIGHTS, env)
    for f in (metrics_file, keys_file):
        if f is not None:
            f.close()
    if tb is not None:
        tb.close()
    summary = {"run_dir": str(run_dir), "steps": step, "steps_this_session": step - start_step,
               "final_loss": summary_loss, "last_checkpoint": str(last_ckpt) if last_ckpt else None,
               "wall_s": time.perf_counter() - run_start, "world_size": env.world_size,
               "skipped_steps": int(guard.count), "weights_sha256": distributed.weights_digest(model)}
    if env.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_pretrain(preset: str, data: str, out: str, steps: int | None = None, sets=(), resume: bool | None = None,
                 loader=None) -> dict:
    """What `vmae2-train pretrain` does: preset + overrides → config → train.

    resume: None continues automatically when `out` holds a checkpoint; True requires one; False
    refuses to touch a run folder that has one.
    """
    overrides = {"data": data, "out_dir": out, **parse_set_args(sets)}
    if steps is not None:
        overrides["total_steps"] = steps
    cfg = pretrain_config(preset, overrides)
    latest = checkpoint.latest_checkpoint(out) if Path(out).is_dir() else None
    if resume is True and latest is None:
        raise FileNotFoundError(f"--resume: {out} holds no complete checkpoint (ckpt-*/ with meta.json)")
    if resume is False and latest is not None:
        raise FileExistsError(f"--no-resume: {out} already holds {latest.name}; pick another --out or delete it")
    return train(cfg, loader=loader)
