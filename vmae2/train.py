"""The training loop of vmae2: one `train(cfg)` for pre-training, fine-tuning and distillation, one CPU to many
GPU nodes.

Read top to bottom: processes and device → model from the task (compile, DDP/FSDP2) → optimizer →
loader → resume → the step loop (lr, micro-steps, clip, non-finite guard, update, EMA, log, evaluate,
checkpoint) → final weights and evaluation. What is trained comes from the task (vmae2.tasks): the
model, its parameter groups, the loader and the loss of a batch. Nothing syncs with the host between
logged steps: metrics are summed on the device, and a non-finite step is skipped on the device too
(torch's fused AdamW drops the whole update when its `found_inf` is set, as under GradScaler) and
reported when the next row is logged.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import time
from pathlib import Path

import torch

from dali_pipes.bad_samples import check_bad_fraction, describe, merge_records, verify_datasets
from dali_pipes.contract import forever
from shard_tools.files import write_json_atomic, write_text_atomic

from . import checkpoint, distributed, optim, weights
from .config import (
    FinetuneConfig,
    ModelConfig,
    TrainConfig,
    distill_config,
    finetune_config,
    pretrain_config,
    save_config,
)
from .overrides import config_text, parse_set_args, read_config_file
from .tasks import task_for

# Config keys that may change between a run and its resumption without changing its numbers.
RESUMABLE_CHANGES = {"log_every", "save_every", "keep_last", "max_nonfinite_skips", "max_bad_sample_fraction",
                     "tensorboard", "progress", "log_keys", "loader_threads", "data", "val_data", "out_dir", "init"}


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


class BadSampleLog:
    """Videos the loader replaced as bad (dali_pipes.bad_samples), over all ranks, read when logging.

    Each metrics row gets the count so far and the keys first met since the previous row; once more
    than max_bad_sample_fraction of the videos read were bad, every rank stops at the same row.
    """

    def __init__(self, loader, max_fraction: float):
        self.loader, self.max_fraction = loader, max_fraction
        self.tracked = hasattr(loader, "bad_samples")   # a test's stand-in loader may not track them
        self.records, self.samples_read = self._gather()
        self.reported = {r["key"] for r in self.records}  # met before a resume: in the kept rows already

    def _gather(self) -> tuple[list[dict], int]:
        if not self.tracked:
            return [], 0
        parts = distributed.all_gather_objects((self.loader.bad_samples(), self.loader.samples_read()))
        return merge_records(records for records, _ in parts), sum(read for _, read in parts)

    @property
    def count(self) -> int:
        return sum(r["count"] for r in self.records)

    def row_fields(self) -> dict:
        if not self.tracked:
            return {}
        self.records, self.samples_read = self._gather()
        fields = {"bad_samples": self.count}
        new = [r["key"] for r in self.records if r["key"] not in self.reported]
        if new:
            fields["new_bad_keys"] = new
            self.reported.update(new)
        return fields

    def check(self) -> None:
        check_bad_fraction(self.records, self.samples_read, self.max_fraction)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def field_defaults(config_class) -> dict:
    """A config dataclass's plain field defaults (fields with a factory or no default are left out)."""
    return {f.name: f.default for f in dataclasses.fields(config_class) if f.default is not dataclasses.MISSING}


def check_resume_config(saved: dict, current: dict, path, config_class=None) -> None:
    """Refuse a resume whose settings changed. A key added since the checkpoint was written takes its default
    there (that is what the checkpoint's run used): model keys ModelConfig's, others `config_class`'s (the
    run's config class; None: a missing run key counts as changed)."""
    if config_class is not None:
        saved = {**field_defaults(config_class), **saved}
    if isinstance(saved.get("model"), dict):
        saved = {**saved, "model": {**field_defaults(ModelConfig), **saved["model"]}}
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
    write_text_atomic(path, "".join(r + "\n" for r in rows if json.loads(r)["step"] <= step))


def open_tensorboard(cfg: TrainConfig, run_dir: Path, step: int):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed: metrics go to metrics.jsonl only (pip install tensorboard)")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None)


def train(cfg: TrainConfig, loader=None, task=None) -> dict:
    """Train (or continue training) into cfg.out_dir; returns a summary of the run.

    loader: anything with the dali_pipes loader contract (iterable of batches with len(), state_dict() and
    load_state_dict()); built by the task from cfg.data when None. task: vmae2.tasks.Reconstruction,
    Classification or Distillation; chosen from the config's type when None.
    """
    env = distributed.init(cfg.device)
    try:
        return _train(cfg, env, loader, task or task_for(cfg))
    finally:
        distributed.shutdown()


def _train(cfg: TrainConfig, env: distributed.DistEnv, loader, task) -> dict:
    run_dir = Path(cfg.out_dir)
    if not cfg.out_dir:
        raise ValueError("out_dir is empty: pass --out RUN_DIR")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    autocast = distributed.autocast(cfg.precision, env.device)

    # Model: the same init on every rank (DDP also broadcasts rank 0's weights).
    torch.manual_seed(cfg.seed)
    raw_model = task.build_model().to(env.device)
    ema = optim.build_ema(raw_model, getattr(cfg, "ema_decay", 0.0))
    if cfg.compile:
        distributed.compile_blocks(raw_model)
    model = distributed.wrap(raw_model, env, cfg.parallel, autocast.bf16)
    if hasattr(task, "load_teacher"):   # distillation: a frozen model beside this one, in no optimizer or checkpoint
        task.load_teacher(env)
    if loader is None:
        loader = task.make_loader(env)
    total_steps, warmup_steps = cfg.steps(len(loader))

    # Optimizer: lr scaled by the videos of one optimizer step over all processes (spec §7).
    videos_per_step = cfg.videos_per_step * env.world_size
    peak_lr, min_lr = optim.scaled_lr(cfg.base_lr, videos_per_step), optim.scaled_lr(cfg.min_lr_base, videos_per_step)
    optimizer = optim.build_optimizer(task.param_groups(model), kind=cfg.optimizer, lr=peak_lr, eps=cfg.adam_eps,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2), device=env.device)
    extra = {"ema": ema} if ema is not None else {}

    # Resume from the newest complete checkpoint, if any; else start with per-rank RNG streams.
    step, config = 0, json.loads(config_text(cfg))
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is not None:
        check_resume_config(json.loads((latest / "config.json").read_text()), config, latest, type(cfg))
        meta, rank_state = checkpoint.load(latest, model, optimizer, env, extra)
        step = meta["step"]
        checkpoint.set_rng_state(rank_state["rng"], env.device)
        loader.load_state_dict(rank_state["loader"])
        if env.is_main:
            print(f"resumed from {latest} at step {step}")
    else:
        checkpoint.seed_rngs(cfg.seed + 1 + env.rank)
    bad_log = BadSampleLog(loader, cfg.max_bad_sample_fraction)
    if env.is_main:
        save_config(cfg, run_dir / "config.json")
        truncate_metrics(run_dir / "metrics.jsonl", step)
    metrics_file = open(run_dir / "metrics.jsonl", "a") if env.is_main else None
    tb = open_tensorboard(cfg, run_dir, step) if env.is_main else None
    keys_file = open(run_dir / f"keys-rank{env.rank}.jsonl", "a") if cfg.log_keys else None
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True,
               disable=not (env.is_main and cfg.progress))

    def log(row: dict) -> None:
        if env.is_main:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            if tb is not None:
                for key, value in row.items():
                    if key != "step" and isinstance(value, (int, float)):
                        tb.add_scalar(f"{task.name}/{key}", value, row["step"])

    steps_per_epoch = max(1, len(loader) // cfg.grad_accum_steps)
    eval_every = round(getattr(cfg, "eval_every_epochs", 0) * steps_per_epoch)
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
    while step < total_steps:
        lr = optim.lr_at(step, peak_lr=peak_lr, min_lr=min_lr, warmup_steps=warmup_steps, total_steps=total_steps)
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
                    loss = task.loss(model, batch)
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
        if ema is not None:
            ema.update(distributed.unwrap(model))
        guard.record(step + 1, finite, step_loss)
        loss_sum += torch.where(finite, step_loss, 0.0)
        window_updates += finite.float()
        step += 1
        window_steps += 1
        bar.update(1)

        if step % cfg.log_every == 0 or step == total_steps:
            guard.check(last_ckpt, env.is_main)
            elapsed = time.perf_counter() - window_start
            stats = distributed.all_reduce_mean(torch.stack([loss_sum / window_updates.clamp(min=1),
                                                             loss_sum.new_tensor(data_wait_s)]))
            summary_loss, mean_wait = stats.tolist()
            row = {"step": step, "loss": summary_loss, "lr": lr, "grad_norm": grad_norm.item(),
                   "clips_per_s": clips_per_step * window_steps / elapsed, "step_time_s": elapsed / window_steps,
                   "data_wait_frac": mean_wait / elapsed, "peak_mem_gib": peak_memory_gib(env.device),
                   "elapsed_s": time.perf_counter() - run_start}
            if hasattr(loader, "source_counts"):      # a mixture: samples drawn per source so far
                row["source_counts"] = loader.source_counts()
            if hasattr(task, "report_fields"):        # distillation: the teacher's forward time
                row.update(task.report_fields(window_steps, elapsed))
            row.update(bad_log.row_fields())
            log(row)
            bad_log.check()
            bar.set_postfix(loss=f"{summary_loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{row['clips_per_s']:.1f}",
                            data_wait=f"{100 * row['data_wait_frac']:.0f}%")
            loss_sum.zero_()
            window_updates.zero_()
            window_steps, data_wait_s, window_start = 0, 0.0, time.perf_counter()

        if eval_every and step % eval_every == 0 and step < total_steps:
            result = task.evaluate(ema or model, env, final=False)
            if result is not None:
                log({"step": step, **{f"val_{k}": v for k, v in result.items() if isinstance(v, (int, float))}})
            model.train()

        if step % cfg.save_every == 0 or step == total_steps:
            guard.check(last_ckpt, env.is_main)
            rank_state = {"rng": checkpoint.rng_state(env.device), "loader": loader.state_dict()}
            last_ckpt = checkpoint.save(run_dir, step, model, optimizer, rank_state, config, env, cfg.keep_last,
                                        extra)
    bar.close()

    final_model = ema if ema is not None else model
    weights.export_weights(final_model, run_dir / f"{task.name}_final.pt", env)   # pretrain_final.pt ...
    result = task.evaluate(final_model, env, final=True)
    if result is not None:
        log({"step": step, **{f"test_{k}": v for k, v in result.items() if isinstance(v, (int, float))}})
        if env.is_main:
            write_json_atomic(run_dir / "result.json", result, indent=2, sort_keys=False)
    for f in (metrics_file, keys_file):
        if f is not None:
            f.close()
    if tb is not None:
        tb.close()
    summary = {"run_dir": str(run_dir), "steps": step, "steps_this_session": step - start_step,
               "final_loss": summary_loss, "last_checkpoint": str(last_ckpt) if last_ckpt else None,
               "wall_s": time.perf_counter() - run_start, "world_size": env.world_size,
               "skipped_steps": int(guard.count), "weights_sha256": distributed.weights_digest(model),
               "bad_samples": bad_log.count, "bad_sample_list": bad_log.records}
    if result is not None:
        summary["result"] = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    if env.is_main:
        write_json_atomic(run_dir / "summary.json", summary, indent=2, sort_keys=False)
        if bad_log.count:
            print(f"{bad_log.count} bad sample(s) of {bad_log.samples_read} read were replaced by other videos of "
                  f"their batch: {describe(bad_log.records)} (details in {run_dir / 'summary.json'})")
    return summary


def resolve_config(kind: str, preset: str, *, dataset: str | None = None, config_file: str | None = None,
                   sets=(), **fields):
    """Preset → config file values → fields given as options → `--set` overrides, in that order."""
    overrides = dict(read_config_file(config_file)) if config_file else {}
    overrides.update({k: v for k, v in fields.items() if v is not None})
    overrides.update(parse_set_args(sets))
    if kind == "finetune":
        return finetune_config(preset, dataset, overrides)
    if kind == "distill":
        return distill_config(preset, dataset, overrides)
    return pretrain_config(preset, overrides)


def run(cfg: TrainConfig, resume: bool | None = None, loader=None, config_format: str = "json",
        verify_data: bool = False) -> dict:
    """What `vmae2-train pretrain/finetune/distill` do once the config is resolved.

    resume: None continues automatically when the run folder holds a checkpoint; True requires one;
    False refuses to touch a run folder that has one. verify_data: every shard of the data (and
    validation data) against its manifest's sha256 first, shared among torchrun's processes.
    """
    if verify_data:
        verify_datasets([cfg.data, getattr(cfg, "val_data", "")], rank=int(os.environ.get("RANK", 0)),
                        world_size=int(os.environ.get("WORLD_SIZE", 1)))
    out = cfg.out_dir
    latest = checkpoint.latest_checkpoint(out) if Path(out).is_dir() else None
    if resume is True and latest is None:
        raise FileNotFoundError(f"--resume: {out} holds no complete checkpoint (ckpt-*/ with meta.json)")
    if resume is False and latest is not None:
        raise FileExistsError(f"--no-resume: {out} already holds {latest.name}; pick another --out or delete it")
    if config_format == "yaml":     # the resolved config also in the format it was given in
        Path(out).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(out) / "config.yaml")
    return train(cfg, loader=loader)


def run_pretrain(preset: str, data: str, out: str, steps: int | None = None, sets=(), resume: bool | None = None,
                 loader=None, init: str | None = None, config_file: str | None = None,
                 verify_data: bool = False) -> dict:
    """`vmae2-train pretrain`: preset + config file + options + overrides → config → train."""
    cfg = resolve_config("pretrain", preset, config_file=config_file, sets=sets, data=data, out_dir=out,
                         total_steps=steps, init=init)
    return run(cfg, resume, loader, _format(config_file), verify_data)


def run_finetune(preset: str, data: str, out: str, *, dataset: str | None = None, val_data: str | None = None,
                 init: str | None = None, steps: int | None = None, epochs: float | None = None, sets=(),
                 resume: bool | None = None, loader=None, config_file: str | None = None,
                 verify_data: bool = False) -> FinetuneConfig:
    """`vmae2-train finetune`: the published recipe of preset × dataset + overrides → config → train."""
    cfg = resolve_config("finetune", preset, dataset=dataset, config_file=config_file, sets=sets, data=data,
                         out_dir=out, val_data=val_data, init=init, total_steps=steps, epochs=epochs)
    return run(cfg, resume, loader, _format(config_file), verify_data)


def run_distill(preset: str, data: str, out: str, *, teacher: str, teacher_preset: str | None = None,
                recipe: str | None = None, val_data: str | None = None, init: str | None = None,
                steps: int | None = None, epochs: float | None = None, sets=(), resume: bool | None = None,
                loader=None, config_file: str | None = None, verify_data: bool = False) -> dict:
    """`vmae2-train distill`: the preset's distillation recipe + teacher + overrides → config → train."""
    cfg = resolve_config("distill", preset, dataset=recipe, config_file=config_file, sets=sets, data=data,
                         out_dir=out, val_data=val_data, init=init, total_steps=steps, epochs=epochs, teacher=teacher,
                         teacher_preset=teacher_preset)
    return run(cfg, resume, loader, _format(config_file), verify_data)


def _format(config_file: str | None) -> str:
    return "yaml" if config_file and Path(config_file).suffix.lower() in (".yaml", ".yml") else "json"
