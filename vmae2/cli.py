"""`vmae2-train`: pretrain, finetune, distill, eval, visualize and the CPU demo. Commands parse and call."""
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
    from dali_pipes import DatasetError

    from .overrides import ConfigError
    from .train import NonFiniteLoss

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
    """VideoMAE V2: pre-training, fine-tuning, evaluation, reconstructions.

    Errors print one message; set VMAE2_TRACEBACK=1 for the full traceback.
    """


def _print_summary(summary: dict) -> None:
    click.echo(json.dumps(summary, indent=2))


PRESET_HELP = "model size: tiny, vit_s, vit_b, vit_l, vit_h, vit_g"
SET_HELP = "config override, repeatable (e.g. --set base_lr=6e-4 --set model.img_size=112)"
CONFIG_HELP = "JSON or YAML file of config keys (applied before --set); the resolved config is saved alike"
RESUME_HELP = ("default: continue automatically when --out holds a checkpoint; --resume requires one, "
               "--no-resume refuses an existing run")
VERIFY_HELP = ("first check every shard's sha256 against its manifest (reads all the data; torchrun's processes "
               "share the shards)")


def _verify_data(*data) -> None:
    """--verify-data of eval and extract (pretrain and finetune check the data of their resolved config)."""
    from dali_pipes.bad_samples import verify_datasets

    verify_datasets(data, rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)))


@main.command()
@click.option("--preset", required=True, help=PRESET_HELP)
@click.option("--data", required=True, help="shard folder (or its manifest.json) from vmae2-shard, or a mixture file")
@click.option("--out", required=True, help="run folder: config.json, metrics.jsonl, checkpoints, events")
@click.option("--steps", type=int, default=None, help="total optimizer steps (the preset's otherwise)")
@click.option("--init", default=None,
              help="start from these weights: a published pre-training .pth, safetensors, hf://OWNER/REPO, a run")
@click.option("--config", "config_file", default=None, help=CONFIG_HELP)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--resume/--no-resume", default=None, help=RESUME_HELP)
@click.option("--verify-data", is_flag=True, help=VERIFY_HELP)
def pretrain(preset, data, out, steps, init, config_file, sets, resume, verify_data):
    """Pre-train VideoMAE V2 (torchrun for several processes)."""
    from .train import run_pretrain

    with user_errors():
        _print_summary(run_pretrain(preset, data, out, steps=steps, sets=sets, resume=resume, init=init,
                                    config_file=config_file, verify_data=verify_data))


@main.command()
@click.option("--ckpt", required=True, help="run folder, checkpoint folder or weights .pt of a pre-training run")
@click.option("--data", required=True, help="shard folder (or manifest.json) to take clips from")
@click.option("--out", required=True, help="PNG to write")
@click.option("--num-clips", type=int, default=2, show_default=True, help="clips shown (rows of three)")
@click.option("--num-frames", type=int, default=4, show_default=True, help="frames shown per clip")
@click.option("--seed", type=int, default=0, show_default=True, help="crops and masks")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda")
@click.option("--all-masked/--as-trained", default=True, show_default=True,
              help="decode every token the encoder did not see, or only the running-cell share training decodes "
                   "(the rest stays grey)")
def visualize(ckpt, data, out, num_clips, num_frames, seed, device, all_masked):
    """Original, masked input and reconstruction for a few clips."""
    from .visualize import visualize as run

    with user_errors():
        click.echo(str(run(ckpt, data, out, num_clips=num_clips, num_frames=num_frames, seed=seed, device=device,
                           decode_all=all_masked)))


@main.command()
@click.option("--preset", required=True, help=PRESET_HELP)
@click.option("--dataset", default=None,
              help="published recipe: k400, k710, ssv2, k710_to_k400, ... (the preset's first one by default)")
@click.option("--data", required=True, help="labeled training shards")
@click.option("--val-data", default=None, help="labeled validation shards (1-view top-1 during training, "
                                                "the full clips x crops protocol at the end)")
@click.option("--out", required=True, help="run folder")
@click.option("--init", default=None, help="pre-training run / checkpoint / .pth, a post-pre-trained classifier, "
                                           "safetensors or hf://OWNER/REPO; omit to train from scratch")
@click.option("--steps", type=int, default=None, help="total optimizer steps (instead of the recipe's epochs)")
@click.option("--epochs", type=float, default=None, help="epochs (the recipe's otherwise)")
@click.option("--config", "config_file", default=None, help=CONFIG_HELP)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="config override, repeatable (e.g. --set head_rows=label_710to400.json)")
@click.option("--resume/--no-resume", default=None, help=RESUME_HELP)
@click.option("--verify-data", is_flag=True, help=VERIFY_HELP)
def finetune(preset, dataset, data, val_data, out, init, steps, epochs, config_file, sets, resume, verify_data):
    """Fine-tune (or post-pre-train) a classifier with the published recipe; evaluate on --val-data."""
    from .train import run_finetune

    with user_errors():
        _print_summary(run_finetune(preset, data, out, dataset=dataset, val_data=val_data, init=init, steps=steps,
                                    epochs=epochs, sets=sets, resume=resume, config_file=config_file,
                                    verify_data=verify_data))


@main.command()
@click.option("--teacher", required=True, help="the frozen teacher classifier: a published fine-tuned .pth, "
                                               "safetensors, hf://OWNER/REPO or a vmae2 run / checkpoint")
@click.option("--teacher-preset", default=None, help="the teacher's model size (default: its run config's, else the "
                                                     "preset matching its sizes)")
@click.option("--preset", required=True, help="the student's model size: " + PRESET_HELP.split(": ", 1)[1])
@click.option("--dataset", "recipe", default=None,
              help="recipe: k710_distill (vit_s, vit_b), synth_distill (tiny), or a fine-tuning recipe of the preset "
                   "(default: the preset's first distillation recipe)")
@click.option("--data", required=True, help="training shards; labels are not needed with alpha=0 (the default)")
@click.option("--val-data", default=None, help="labeled validation shards (1-view top-1 during training, "
                                                "the full clips x crops protocol at the end)")
@click.option("--out", required=True, help="run folder")
@click.option("--init", default=None, help="the student's start: its pre-training or post-pre-training run / .pth, "
                                           "safetensors or hf://OWNER/REPO; omit to start from scratch")
@click.option("--steps", type=int, default=None, help="total optimizer steps (instead of the recipe's epochs)")
@click.option("--epochs", type=float, default=None, help="epochs (the recipe's otherwise)")
@click.option("--config", "config_file", default=None, help=CONFIG_HELP)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="config override, repeatable (e.g. --set temperature=2 --set alpha=0.5 "
                   "--set head_rows=label_710to400.json)")
@click.option("--resume/--no-resume", default=None, help=RESUME_HELP)
@click.option("--verify-data", is_flag=True, help=VERIFY_HELP)
def distill(teacher, teacher_preset, preset, recipe, data, val_data, out, init, steps, epochs, config_file, sets,
            resume, verify_data):
    """Distil a frozen teacher classifier into a student: KL between their softmaxes at temperature T on the same
    augmented clip (x T^2), plus alpha x cross-entropy on the labels (alpha 0: no labels needed)."""
    from .train import run_distill

    with user_errors():
        _print_summary(run_distill(preset, data, out, teacher=teacher, teacher_preset=teacher_preset, recipe=recipe,
                                   val_data=val_data, init=init, steps=steps, epochs=epochs, sets=sets,
                                   resume=resume, config_file=config_file, verify_data=verify_data))


@main.command("eval")
@click.option("--weights", required=True, help="classifier: our run / checkpoint, a published fine-tuned .pth, "
                                               "safetensors or hf://OWNER/REPO")
@click.option("--data", required=True, help="labeled shards to evaluate on")
@click.option("--out", required=True, help="folder for result.json and predictions.jsonl")
@click.option("--preset", default=None, help=PRESET_HELP + " (taken from our run's config when there is one)")
@click.option("--views", default="5x3", show_default=True, help="test views CLIPSxCROPS (SSv2: 2x3)")
@click.option("--head-rows", default=None, help="map a K710 head onto the data's classes: label_710to400.json "
                                                "(JSON list) or one row index per line")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="config override (e.g. sampling=tsn)")
@click.option("--device", default="auto", show_default=True, help="auto, cuda or cpu")
@click.option("--verify-data", is_flag=True, help=VERIFY_HELP)
def evaluate(weights, data, out, preset, views, head_rows, sets, device, verify_data):
    """Evaluate a classifier with the test protocol (softmax averaged over views; torchrun for several GPUs)."""
    from .evaluate import run_eval

    with user_errors():
        if verify_data:
            _verify_data(data)
        _print_summary(run_eval(weights, data, out, preset=preset, views=views, head_rows=head_rows, sets=sets,
                                device=device))


@main.command()
@click.option("--weights", required=True,
              help="fine-tuned classifier or pre-training weights: run folder, checkpoint, .pt or any source "
                   "vmae2.weights reads")
@click.option("--data", required=True, help="shard folder (or its manifest.json) from vmae2-shard pack")
@click.option("--out", required=True, help="folder for <key>.npy per video, index.jsonl and skipped.jsonl")
@click.option("--preset", default=None,
              help="model size; default: the config saved with the weights, else the preset matching their sizes")
@click.option("--window", type=int, default=None, help="frames per window (default: the model's num_frames, 16)")
@click.option("--step", type=int, default=4, show_default=True,
              help="frames between window starts (published: 4 for THUMOS14, 16 for FineAction)")
@click.option("--frame-stride", type=int, default=1, show_default=True,
              help="stride between a window's frames, in stored frames")
@click.option("--size", type=int, default=None, help="input side in pixels (default: the model's img_size)")
@click.option("--compat", type=click.Choice(["none", "official"]), default="none", show_default=True,
              help="none: the model's training preprocessing (short side, centre crop, mean/std); official: the "
                   "published extractor (squash, bilinear without antialias, no mean/std)")
@click.option("--pool", type=click.Choice(["mean", "none"]), default="mean", show_default=True,
              help="mean: one fc_norm'd vector per window; none: the token grid (windows, N, D)")
@click.option("--batch", type=int, default=16, show_default=True, help="windows per forward pass")
@click.option("--device", default="auto", show_default=True, help="auto (cuda when available), cuda or cpu")
@click.option("--verify-data", is_flag=True, help=VERIFY_HELP)
def extract(weights, data, out, preset, window, step, frame_stride, size, compat, pool, batch, device, verify_data):
    """Features of every video, one row per sliding window (torchrun splits the videos)."""
    from .extract import extract as run

    with user_errors():
        if verify_data:
            _verify_data(data)
        _print_summary(run(weights, data, out, preset=preset, window=window, step=step, frame_stride=frame_stride,
                           size=size, compat=compat, pool=pool, batch=batch, device=device))


@main.command()
@click.option("--out", default="vmae2-demo", show_default=True, help="folder for shards, run and PNG")
@click.option("--num-videos", type=int, default=64, show_default=True, help="glyph clips to pre-train on")
@click.option("--held-out-videos", type=int, default=32, show_default=True,
              help="glyph clips (another seed) the loss is scored on")
@click.option("--steps", type=int, default=3000, show_default=True, help="pre-training steps")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="pre-training config override, applied after the demo's own (vmae2/demo.py DEMO_SETS)")
@click.option("--v2-masking", is_flag=True,
              help="V2's masking instead of the demo's: 8 frames, the encoder sees 7 of 64 positions, the decoder "
                   "half the rest (in these minutes it draws patch means, a blur)")
def demo(out, num_videos, held_out_videos, steps, sets, v2_masking):
    """CPU demo: glyph shards → pre-training of `tiny` → held-out loss against baselines → reconstruction PNG."""
    from .demo import run_demo

    with user_errors():
        _print_summary(run_demo(out, num_videos=num_videos, steps=steps, sets=sets,
                                held_out_videos=held_out_videos, v2_masking=v2_masking))


@main.command()
@click.option("--weights", "source", required=True,
              help="weights to convert: published .pth/.pt, run or checkpoint folder, .safetensors, a transformers "
                   "VideoMAE folder, or hf://OWNER/REPO[/FILE]")
@click.option("--out", required=True, help="file to write, e.g. vit_b.safetensors or vit_b.pt")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "pt"]), default=None,
              help="output format (default: safetensors for a .safetensors --out, else pt)")
def export(source, out, fmt):
    """Convert weights from any accepted source to one file in vmae2's (the published) layout."""
    from .weights import export_file

    with user_errors():
        _print_summary(export_file(source, out, fmt=fmt))


if __name__ == "__main__":
    main()
