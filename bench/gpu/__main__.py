"""The acceptance run on one CUDA GPU: GPU tests, step benches (ViT-B/L, ViT-g under FSDP2, a distillation
step of a ViT-g teacher and a ViT-B student), the loader and end-to-end benches and an epoch projection, each
under its own time budget, gathered into one README. --dry-run runs it all on a CPU at toy sizes. See
bench/gpu/README.md."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from bench.gpu.run import plan, run_all
from bench.gpu.shards import make_shards, missing_sets

PART_NAMES = [p.name for p in plan(Path("."), dry_run=False)]


def default_out(dry_run: bool) -> Path:
    """bench/reports/<gpu-label>/ (a temporary folder for a dry run).

    Not $OUT itself: the report folder holds more files than a device call brings back; bench/gpu/run.sh
    packs it into $OUT instead.
    """
    if dry_run:
        return Path(tempfile.gettempdir()) / "vmae2-bench-gpu-dry-run"
    from bench.env import device_label, environment

    return Path("bench") / "reports" / device_label(environment())


def default_shards(dry_run: bool) -> Path:
    return Path(tempfile.gettempdir()) / ("vmae2-bench-gpu-shards-dry" if dry_run else "vmae2-bench-gpu-shards")


def preflight(parts: list[str], dry_run: bool) -> None:
    """Fail fast, before any part runs, when the GPU or DALI the chosen parts need is missing."""
    if dry_run:
        return
    import torch

    if not torch.cuda.is_available():
        raise click.ClickException("torch sees no CUDA GPU (torch.cuda.is_available() is False): run this on a GPU "
                                   "machine, or pass --dry-run to check the script on a CPU")
    if any(p.needs_dali for p in plan(Path("."), False) if p.name in parts):
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "NVIDIA DALI is not importable, and the parts " + ", ".join(
                    p.name for p in plan(Path("."), False) if p.name in parts and p.needs_dali)
                + " need it: on the offline GPU host run `bash .offline/deps/install.sh && export "
                  "PYTHONPATH=$PWD/.offline/site:$PWD` first (bench/gpu/README.md), or choose "
                  "--parts step,step_vit_g,step_distill") from None


@click.group(invoke_without_command=True, help=__doc__)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Report folder [default: bench/reports/<gpu-label>/; with --dry-run a temporary folder]. "
                   "bench/gpu/run.sh packs it into $OUT.")
@click.option("--shards", type=click.Path(file_okay=False), default=None,
              help="Folder of pre-made shard sets (`python -m bench.gpu make-shards DIR`); missing sets are made "
                   "there when PyAV is installed [default: a folder under the system's temporary directory].")
@click.option("--parts", default=",".join(PART_NAMES), show_default=True,
              help="Comma-separated parts to run (always in the order shown); rows of parts run earlier into the "
                   "same --out are kept.")
@click.option("--budget-s", default=525.0, show_default=True,
              help="Wall-clock budget of the whole run in seconds; each part also stops at its own budget.")
@click.option("--dry-run", is_flag=True,
              help="Run everything on the CPU at toy sizes (VP9 shards, tiny model, GPU tests collected and "
                   "skipped) to check the script itself.")
@click.pass_context
def main(ctx, out, shards, parts, budget_s, dry_run):
    if ctx.invoked_subcommand is not None:
        return
    chosen = [p for p in parts.split(",") if p]
    unknown = sorted(set(chosen) - set(PART_NAMES))
    if unknown:
        raise click.BadParameter(f"unknown part(s) {unknown}; choose from {', '.join(PART_NAMES)}",
                                 param_hint="--parts")
    preflight(chosen, dry_run)
    out = Path(out) if out else default_out(dry_run)
    shards = Path(shards) if shards else default_shards(dry_run)
    if missing_sets(shards, dry_run):
        try:
            make_shards(shards, dry_run=dry_run, workers=os.cpu_count() or 1)
        except RuntimeError as err:
            raise click.ClickException(str(err)) from None
    click.echo(f"report folder {out}, shards {shards}, parts {', '.join(chosen)}, budget {budget_s:.0f} s")
    payload = run_all(out, shards, chosen, budget_s, dry_run, echo=click.echo)
    from bench.report import write_readme

    readme = write_readme(str(out), warn=lambda message: click.echo(message, err=True))
    click.echo(f"wrote {readme}")
    for row in payload["rows"]:
        click.echo(f"{row['part']:11} {row['status']:9} {row.get('wall_s', '-')!s:>7} s  {row.get('reason', '')}")
    tests = out / "gpu_tests.json"
    if tests.is_file():
        counts = json.loads(tests.read_text())["counts"]
        click.echo("gpu tests: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if any(not part_passed(r, dry_run) for r in payload["rows"] if r["part"] in chosen):
        ctx.exit(1)


def part_passed(row: dict, dry_run: bool) -> bool:
    """A part ran to the end; a dry run (which checks the script, not the machine) also passes a part
    skipped for an optional package this Python lacks (pytest in a plain `pip install -e .`)."""
    return row["status"] == "ok" or (dry_run and row["status"] == "skipped" and bool(row.get("missing_packages")))


@main.command("make-shards", help="Make the shard sets the run reads into DIR (needs PyAV), and print their size.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--dry-run", is_flag=True, help="Make the toy VP9 sets of --dry-run instead of the full GPU sets.")
@click.option("--workers", default=os.cpu_count() or 1, show_default=True, help="Encoding processes.")
def make_shards_command(directory, dry_run, workers):
    try:
        record = make_shards(Path(directory), dry_run=dry_run, workers=workers)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    for name, spec in record["sets"].items():
        click.echo(f"{name:10} {spec['codec']:5} {spec['videos']:3} videos x {spec['frames']} frames "
                   f"{spec['width']}x{spec['height']}  {spec['bytes'] / 2 ** 20:6.2f} MiB")
    click.echo(f"total {record['total_bytes'] / 2 ** 20:.2f} MiB in {directory}")


if __name__ == "__main__":
    main()
