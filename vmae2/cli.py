"""`vmae2-train`: pretrain, visualize, finetune and the CPU demo. Commands parse and call."""
from __future__ import annotations

import contextlib
import json
import os

import click


@contextlib.contextmanager
def user_errors():
    """Show a bad config, missing data, a refused resume or a stopped run as a short message.

    Set VMAE2_TRACEBACK=1 to see the full traceback instead.
    """
    from dali_pipes.manifest import DatasetError

    from .train import NonFiniteLoss
    from .train_config import ConfigError

    try:
        yield
    except (ConfigError, DatasetError, NonFiniteLoss, FileNotFoundError, FileExistsError) as err:
        if os.environ.get("VMAE2_TRACEBACK"):
            raise
        raise click.ClickException(str(err)) from err
    except (ValueError, RuntimeError) as err:  # bad weights files, resume mismatches, devices
        if os.environ.get("VMAE2_TRACEBACK"):
            raise
        raise click.ClickException(f"{err}\n(set VMAE2_TRACEBACK=1 to see where it was raised)") from err


@click.group()
def main():
    """VideoMAE V2 pre-training, reconstructions and fine-tuning.

    Errors print one message; set VMAE2_TRACEBACK=1 for the full traceback.
    """


def _print_summary(summary: dict) -> None:
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.option("--preset", required=True, help="model size: tiny, vit_s, vit_b, vit_l, vit_h, vit_g")
@click.option("--data", required=True, help="shard folder (or its manifest.json) from vmae2-shard")
@click.option("--out", required=True, help="run folder: config.json, metrics.jsonl, checkpoints, events")
@click.option("--steps", type=int, default=None, help="total optimizer steps (the preset's otherwise)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="config override, repeatable (e.g. --set base_lr=6e-4 --set model.img_size=112)")
@click.option("--resume/--no-resume", default=None,
              help="default: continue automatically when --out holds a checkpoint; --resume requires one, "
                   "--no-resume refuses an existing run")
def pretrain(preset, data, out, steps, sets, resume):
    """Pre-train VideoMAE V2 (torchrun for several processes)."""
    from .train import run_pretrain

    with user_errors():
        _print_summary(run_pretrain(preset, data, out, steps=steps, sets=sets, resume=resume))


@main.command()
@click.option("--ckpt", required=True, help="run folder, checkpoint folder or weights .pt of a pre-training run")
@click.option("--data", required=True, help="shard folder (or manifest.json) to take clips from")
@click.option("--out", required=True, help="PNG to write")
@click.option("--num-clips", type=int, default=2, show_default=True)
@click.option("--num-frames", type=int, default=4, show_default=True, help="frames shown per clip")
@click.option("--seed", type=int, default=0, show_default=True, help="crops and masks")
@click.option("--device", default="cpu", show_default=True)
def visualize(ckpt, data, out, num_clips, num_frames, seed, device):
    """Original, masked input and reconstruction for a few clips."""
    from .visualize import visualize as run

    with user_errors():
        click.echo(str(run(ckpt, data, out, num_clips=num_clips, num_frames=num_frames, seed=seed, device=device)))


@main.command()
@click.option("--preset", required=True, help="model size (the --init run's architecture is used)")
@click.option("--data", required=True, help="labeled training shards")
@click.option("--val-data", required=True, help="labeled validation shards")
@click.option("--out", required=True, help="run folder")
@click.option("--init", default="", help="pre-training run / checkpoint / .pt; omit to train from scratch")
@click.option("--steps", type=int, default=None)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="config override, repeatable")
def finetune(preset, data, val_data, out, init, steps, sets):
    """Fine-tune a classifier (minimal recipe) and report top-1 on the validation shards."""
    from .finetune import run_finetune

    with user_errors():
        _print_summary(run_finetune(preset, data, val_data, out, init=init, steps=steps, sets=sets))


@main.command()
@click.option("--out", default="vmae2-demo", show_default=True, help="folder for shards, run and PNG")
@click.option("--num-videos", type=int, default=64, show_default=True)
@click.option("--steps", type=int, default=200, show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="pre-training config override")
def demo(out, num_videos, steps, sets):
    """CPU demo: synthetic shards → pre-training of `tiny` → reconstruction PNG."""
    from .demo import run_demo

    with user_errors():
        _print_summary(run_demo(out, num_videos=num_videos, steps=steps, sets=sets))


if __name__ == "__main__":
    main()
