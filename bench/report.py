"""Gather the JSON of every bench into one report per device, with tables and PNG plots.

    python -m bench.report [--reports bench/reports] [--folder DIR]

Reads `bench/reports/<device>/*.json` (written by `python -m bench.NAME --json ...`) and writes
`bench/reports/<device>/README.md` plus plots beside it. Every section is headed by the hardware,
versions, git commit and command line its JSON recorded; no number is typed by hand. A section
measured on a tree with uncommitted changes carries a warning line (and one is printed). What is
written by hand below the notes marker (bench.env.NOTES_MARK) survives a rerun.

Plots need matplotlib, which is optional (the `[bench]` extra): without it, or when a plot fails,
the tables are written all the same and the section says which plot was left out and why.
"""
from __future__ import annotations

import glob
import json
import os

import click

from bench.env import DIRTY_WARNING, is_dirty, write_report

ORDER = ["gpu_run", "gpu_tests", "flops", "step", "step_distill", "loader", "e2e", "epoch", "pack", "colour"]
TITLES = {"gpu_run": "Acceptance run: parts and their outcome (`bench.gpu`)",
          "gpu_tests": "GPU tests (`pytest -m gpu`, run by `bench.gpu`)",
          "flops": "FLOPs per clip (`bench.flops`)", "step": "Training step, model alone (`bench.step`)",
          "step_distill": "Distillation step: frozen teacher forward + student step (`bench.step --distill-teacher`)",
          "loader": "Data loader against the reference loader (`bench.loader`)",
          "e2e": "End to end: shards → DALI → trainer (`bench.e2e`)",
          "epoch": "Projected epoch time (`bench.epoch`)", "pack": "Packing shards (`bench.pack`)",
          "colour": "YUV → RGB: DALI's decoder against FFmpeg's swscale (`bench.colour`)"}


def load_reports(folder: str) -> dict[str, dict]:
    """file stem -> payload for each JSON in a device folder; a bare list becomes {'rows': list}."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            payload = json.load(f)
        if isinstance(payload, list):
            payload = {"rows": payload}
        payload.setdefault("env", payload.get("environment"))      # older bench JSON spelled these out
        payload.setdefault("rows", payload.get("results", []))
        out[os.path.splitext(os.path.basename(path))[0]] = payload
    return out


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)[:60]
    return "" if value is None else str(value)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_no rows_\n"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r if not isinstance(r.get(k), (list, dict))))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def env_header(env: dict | None) -> str:
    if not env:
        return "_environment not recorded_\n"
    hw = env.get("gpu") or env.get("cpu")
    parts = [f"hardware: {hw} ({env.get('cpu_count')} CPU cores)",
             f"driver {env['driver']}" if env.get("driver") else None,
             f"torch {env.get('torch')}", f"DALI {env.get('dali')}" if env.get("dali") else None,
             f"python {env.get('python')}", f"commit `{str(env.get('git_commit')).removesuffix('+dirty')}`",
             env.get("time_utc")]
    text = "; ".join(p for p in parts if p)
    if env.get("command"):
        text += f"\n\n    {env['command']}"
    return text + "\n"


def pyplot():
    """matplotlib.pyplot drawing to files (Agg); ImportError where matplotlib is not installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_step(payload: dict, folder: str, name: str, plt) -> list[str]:
    rows = payload.get("rows", [])
    made = []
    if not rows:
        return made
    fig, ax = plt.subplots(figsize=(6, 4))
    series = {}
    for r in rows:
        label = (f"{r['preset']} ratio {r['decoder_mask_ratio']} compile={r['compile']} "
                 f"ckpt={r['activation_checkpointing']}")
        series.setdefault(label, []).append((r["clips_per_step"], r["clips_per_s"]))
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("clips per step")
    ax.set_ylabel("clips/s")
    ax.set_title("Throughput vs batch")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"{name}_throughput_vs_batch.png"), dpi=120)
    plt.close(fig)
    made.append(f"{name}_throughput_vs_batch.png")

    summary = payload.get("dual_masking", [])
    if summary:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        labels = [f"{s['preset']} b{s['clips_per_step']} c{int(s['compile'])} a{int(s['activation_checkpointing'])}"
                  for s in summary]
        ax.bar(labels, [s["speedup"] for s in summary], label="measured")
        ax.axhline(1.79, color="k", linestyle="--", label="paper ViT-B 1.79x")
        ax.set_ylabel("dual / encoder-only step speed")
        ax.set_title("Dual vs encoder-only masking")
        ax.tick_params(axis="x", labelrotation=45, labelsize=6)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, f"{name}_dual_vs_encoder_only.png"), dpi=120)
        plt.close(fig)
        made.append(f"{name}_dual_vs_encoder_only.png")
    return made


def plot_loader(payload: dict, folder: str, name: str, plt) -> list[str]:
    rows = [r for r in payload.get("rows", []) if "clips_per_s" in r]
    if not rows:
        return []
    label_keys = [k for k in ("loader", "pipeline", "codec", "workers", "threads", "num_threads")
                  if any(k in r for r in rows)]
    labels = [" ".join(f"{r[k]}" for k in label_keys if k in r) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(labels, [r["clips_per_s"] for r in rows])
    ax.set_ylabel("clips/s")
    ax.set_title("Loader vs reference loader")
    ax.tick_params(axis="x", labelrotation=45, labelsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"{name}_vs_reference.png"), dpi=120)
    plt.close(fig)
    return [f"{name}_vs_reference.png"]


PLOTS = {"step": plot_step, "loader": plot_loader}


def plot_lines(kind: str, payload: dict, folder: str, name: str, warn=None) -> list[str]:
    """Markdown for a section's plots: the images, or a line saying which plot was left out and why.

    A report must not die for a plot: the GPU host runs the report at the end of a short loan.
    """
    draw = PLOTS.get(kind)
    if draw is None:
        return []
    try:
        plt = pyplot()
        return [f"![{png}]({png})\n" for png in draw(payload, folder, name, plt)]
    except ImportError as err:
        why = (f"matplotlib is not importable here ({err}); `pip install matplotlib` (the `[bench]` extra) "
               f"and rerun `python -m bench.report --folder` on this folder to draw it")
    except Exception as err:  # a malformed row costs the plot, not the tables above it
        why = f"drawing it failed: {type(err).__name__}: {err}"
    if warn is not None:
        warn(f"warning: {os.path.join(folder, name)}.json: plot left out: {why}")
    return [f"_Plot left out: {why}._\n"]


def render(folder: str, warn=None) -> str:
    """The README of one device folder; `warn(message)` is called once per dirty section and per plot left out."""
    reports = load_reports(folder)
    device = os.path.basename(os.path.normpath(folder))
    text = [f"# vmae2 benchmark report: {device}\n",
            "Generated by `python -m bench.report` from the JSON files in this folder; rerun the command "
            "under each section to reproduce it.\n"]
    def kind(name):
        return reports[name].get("bench") or name

    for name in sorted(reports, key=lambda n: (ORDER.index(kind(n)) if kind(n) in ORDER else len(ORDER), n)):
        payload = reports[name]
        title = TITLES.get(kind(name), name) + (f": `{name}.json`" if name != kind(name) else "")
        text.append(f"## {title}\n")
        if is_dirty(payload.get("env")):
            text.append(DIRTY_WARNING + "\n")
            if warn is not None:
                warn(f"warning: {os.path.join(folder, name)}.json was measured on a tree with uncommitted "
                     f"changes; rerun it from a clean checkout before committing the report")
        text.append(env_header(payload.get("env")))
        for key in ("notes", "summary_text"):
            if payload.get(key):
                text.append(payload[key] if isinstance(payload[key], str) else "\n".join(payload[key]))
                text.append("")
        for key, value in payload.items():
            if key == "results":
                continue
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                text.append(f"**{key}**\n")
                text.append(markdown_table(value))
        text += plot_lines(kind(name), payload, folder, name, warn)
    return "\n".join(text)


def write_readme(folder: str, warn=None) -> str:
    """Render one device folder into its README.md (hand-written notes kept); returns the path."""
    path = os.path.join(folder, "README.md")
    write_report(path, render(folder, warn))
    return path


@click.command(help="Gather bench JSON files into bench/reports/<device>/README.md with tables and PNG plots.")
@click.option("--reports", default=os.path.join("bench", "reports"), show_default=True,
              type=click.Path(file_okay=False), help="Folder holding one sub-folder of JSON files per device.")
@click.option("--folder", default=None, type=click.Path(file_okay=False),
              help="Render only this one folder of JSON files (e.g. the output of `python -m bench.gpu`).")
def main(reports, folder):
    if folder:
        folders = [folder] if glob.glob(os.path.join(folder, "*.json")) else []
    else:
        folders = sorted(d for d in glob.glob(os.path.join(reports, "*"))
                         if os.path.isdir(d) and glob.glob(os.path.join(d, "*.json")))
    if not folders:
        where = folder or f"{reports}/<device>/"
        raise click.ClickException(f"no JSON reports in {where}; run e.g. "
                                   f"`python -m bench.step --json {reports}/cpu/step.json` first")
    for one in folders:
        click.echo(f"wrote {write_readme(one, warn=lambda message: click.echo(message, err=True))}")


if __name__ == "__main__":
    main()
