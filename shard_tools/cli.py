"""`vmae2-shard`: the command line. Commands only parse options and call the library."""

import json
import sys

import click

from shard_tools.format import FormatError
from shard_tools.frames import DEFAULT_FIRST_FRAME, DEFAULT_FRAME_TEMPLATE, DEFAULT_FRAMES_FPS
from shard_tools.info import format_info, format_mixture_info, info, mixture_info
from shard_tools.mixture import MixtureError, is_mixture_file
from shard_tools.pack import DEFAULT_SHARD_SIZE, PackError, format_summary, pack
from shard_tools.sources import LIST_FORMATS, SourceError
from shard_tools.synth import GLYPH_STYLES, KINDS, SYNTH_SIZES, make_synthetic
from shard_tools.transcode import ENCODERS, TranscodeError
from shard_tools.verify import verify

CODECS = ["copy", *ENCODERS]


def _fail(err):
    click.echo(f"error: {err}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(package_name="vmae2", prog_name="vmae2-shard")
def main():
    """Pack video collections into DALI-ready WebDataset shards (shard_tools/FORMAT.md)."""


def _shard_options(fn):
    fn = click.option("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, show_default=True,
                      help="Target shard size in bytes; a shard is cut before it would pass "
                           "it.")(fn)
    fn = click.option("--prefix", default="train", show_default=True,
                      help="Shard name prefix: {prefix}-000000.tar.")(fn)
    fn = click.option("--workers", type=int, default=1, show_default=True,
                      help="Worker processes for probing, transcoding and writing shards "
                           "(with --ray local: the CPUs Ray is started with).")(fn)
    fn = click.option("--seed", type=int, default=0, show_default=True,
                      help="Seed of the global shuffle (and of synthetic clips).")(fn)
    fn = click.option("--no-progress", is_flag=True, help="Hide the progress bars.")(fn)
    return fn


@main.command("pack")
@click.argument("src")
@click.argument("out")
@click.option("--root", "--data-root", "root", default=None,
              help="Folder prepended to relative paths of a list file or CSV (--data-root is "
                   "the published scripts' name for it).")
@click.option("--labels", default=None,
              help="Label map file: one class name per line, the line order fixing the index "
                   "(the published label_map_k400.txt), or `name index` on every line. A label "
                   "in the data but not in the map is an error. Default: built from the inputs.")
@click.option("--path-column", default="path", show_default=True,
              help="Path column of a list file whose first line is a header.")
@click.option("--label-column", default="label", show_default=True,
              help="Label column of a headered list file (absent: unlabeled).")
@click.option("--list-format", type=click.Choice(["auto", *LIST_FORMATS]), default="auto",
              show_default=True,
              help="Reading of `path N M` lines: path-frames-label (fine-tuning frame lists), "
                   "path-start-total (pre-training lists), or auto: `path start total` when any "
                   "total is -1 or every start is 0 or 1, else `path total_frames label`.")
@click.option("--fps", type=float, default=DEFAULT_FRAMES_FPS, show_default=True,
              help="Frame rate of frame folders (the lists do not record it; SSv2's published "
                   "frames are 12 fps).")
@click.option("--frame-template", default=DEFAULT_FRAME_TEMPLATE, show_default=True,
              help="File name of frame N in a frame folder, a Python format string.")
@click.option("--first-frame", type=int, default=DEFAULT_FIRST_FRAME, show_default=True,
              help="Index of a frame folder's first frame (a `path start total` line gives its "
                   "own start).")
@click.option("--codec", type=click.Choice(CODECS), default="copy", show_default=True,
              help="copy keeps streams the data engine decodes (others are skipped as "
                   "unsupported-codec); any other value re-encodes (closed GOP, no B-frames, "
                   "8-bit 4:2:0).")
@click.option("--short-side", type=int, default=None,
              help="Scale so the short side has this many pixels (transcode only).")
@click.option("--gop", type=int, default=16, show_default=True,
              help="Key frame every this many stored frames (transcode only).")
@click.option("--quality", type=int, default=None,
              help="CRF for vp9/h264/hevc, q:v for mjpeg (default: 32/23/28/4).")
@click.option("--frame-stride", type=int, default=1, show_default=True,
              help="Store every K-th source frame (transcode only); recorded in the manifest.")
@click.option("--max-seconds", type=float, default=None,
              help="Cut videos into clips of at most this many seconds (transcode only).")
@click.option("--flip-map", default=None, metavar="FILE",
              help="Classes a horizontal flip turns into each other, one pair of class names per line "
                   "(`push_left push_right`): the fine-tuning loader swaps them when it mirrors a clip. "
                   "Recorded in the manifest; implies --direction-sensitive.")
@click.option("--direction-sensitive", is_flag=True,
              help="The labels depend on left and right (SSv2's 'pushing left to right'): without a "
                   "--flip-map, loaders do not flip this set.")
@click.option("--strict", is_flag=True, help="Fail (exit 1) if any input is skipped.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None,
              metavar="[ADDRESS]",
              help="Probe and transcode as Ray tasks on a running cluster: `auto` (the default "
                   "when the flag has no value), `ray://host:port`, or `local` to start Ray "
                   "here with --workers CPUs. Inputs and OUT must be on storage every node "
                   "sees. Same bytes as a process-pool run. Needs pip install \"vmae2[ray]\".")
@_shard_options
def pack_command(src, out, root, labels, path_column, label_column, list_format, fps,
                 frame_template, first_frame, codec, short_side, gop, quality, frame_stride,
                 max_seconds, flip_map, direction_sensitive, strict, ray_address, shard_size, prefix, workers,
                 seed, no_progress):
    """Pack SRC (a folder of videos, a list file of videos or frame folders, or a CSV) into
    shards in OUT.

    Rerunning the same command after an interruption keeps finished shards and redoes the rest.
    """
    try:
        summary = pack(src, out, codec=codec, short_side=short_side, gop=gop, quality=quality,
                       frame_stride=frame_stride, max_seconds=max_seconds, seed=seed,
                       shard_size=shard_size, prefix=prefix, root=root, labels=labels,
                       path_column=path_column, label_column=label_column,
                       list_format=list_format, fps=fps, frame_template=frame_template,
                       first_frame=first_frame, workers=workers, ray=ray_address, strict=strict,
                       progress=not no_progress, flip_map=flip_map, direction_sensitive=direction_sensitive)
    except (PackError, SourceError, TranscodeError) as err:
        _fail(err)
    click.echo(format_summary(summary))


@main.command("verify")
@click.argument("out")
@click.option("--full", is_flag=True, help="Decode every clip, not one per shard.")
def verify_command(out, full):
    """Check OUT: tar <-> index <-> manifest consistency, members, and decoding with PyAV."""
    report = verify(out, full=full)
    for problem in report["problems"]:
        click.echo(f"problem: {problem}", err=True)
    click.echo(f"{report['shards']} shards, {report['samples']} samples, {report['decoded']} "
               f"decoded: {len(report['problems'])} problems")
    sys.exit(1 if report["problems"] else 0)


@main.command("info")
@click.argument("out")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_command(out, as_json):
    """Counts, duration and resolution histograms, codec mix and labels of OUT; for a mixture
    file (JSON or YAML list of {path, weight, stride}), each dataset's samples, normalised
    weight and stride."""
    try:
        if is_mixture_file(out):
            summary = mixture_info(out)
            text = format_mixture_info(summary)
        else:
            summary = info(out)
            text = format_info(summary)
    except (FormatError, MixtureError, ValueError) as err:
        _fail(err)
    click.echo(json.dumps(summary, indent=1) if as_json else text)


@main.command("synth")
@click.argument("out")
@click.option("--num-videos", type=int, required=True, help="Number of clips to generate.")
@click.option("--kind", type=click.Choice(KINDS), default="scenes", show_default=True,
              help="scenes: filmed scenes of textured shapes whose motion (8 classes) is the label, with a "
                   "panning camera and distractors (hard by design); glyphs: one large digit moving left, "
                   "right, up or down over a plain background, labelled by what it is (--label glyph, 10 "
                   "classes) or where it goes (--label motion, 4): a set a model plainly can learn.")
@click.option("--label", type=click.Choice(["glyph", "motion"]),
              default=None, help="Which label goes into the manifest [default: motion for scenes, glyph for "
                                 "glyphs]. Directional labels record their flip pairs.")
@click.option("--style", type=click.Choice(GLYPH_STYLES), default="varied", show_default=True,
              help="glyphs only: how the digits are drawn. varied: random stroke weight, slant, width, a small "
                   "rotation, sometimes outlined; plain: upright in one weight (an easier appearance label: "
                   "with 20 labelled clips per class a small CNN reaches about 46 % held-out on plain, 22 % on "
                   "varied, bench/experiments/ceiling).")
@click.option("--codec", type=click.Choice(list(ENCODERS)), default="vp9", show_default=True,
              help="Codec of the generated clips (vp9 decodes on DALI's CPU backend).")
@click.option("--num-frames", type=int, default=None, help="Frames per clip [default: 64 scenes, 48 glyphs].")
@click.option("--width", type=int, default=None, help="Frame width [default: 160 scenes, 128 glyphs].")
@click.option("--height", type=int, default=None, help="Frame height [default: 128].")
@click.option("--fps", type=int, default=25, show_default=True, help="Frames per second.")
@click.option("--gop", type=int, default=16, show_default=True, help="Key-frame interval.")
@_shard_options
def synth_command(out, num_videos, kind, label, style, codec, num_frames, width, height, fps, gop, shard_size, prefix,
                  workers, seed, no_progress):
    """Generate a synthetic dataset (--kind scenes or glyphs) and pack it into OUT."""
    size = SYNTH_SIZES[kind]
    try:
        summary = make_synthetic(out, num_videos, codec=codec, seed=seed, num_frames=num_frames or size[0],
                                 width=width or size[1], height=height or size[2], fps=fps, gop=gop,
                                 shard_size=shard_size, prefix=prefix, workers=workers,
                                 progress=not no_progress, kind=kind, label=label, style=style)
    except (PackError, TranscodeError) as err:
        _fail(err)
    click.echo(format_summary(summary))


if __name__ == "__main__":
    main()
