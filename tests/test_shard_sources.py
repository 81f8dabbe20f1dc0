"""vmae2-shard pack inputs at scale: frame folders, the published list files, label maps, mixture
files (and `info` on them), and the errors each gives for bad input."""

import importlib.util
import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_shard_pack import all_samples, make_clip

from shard_tools.cli import main
from shard_tools.format import read_manifest
from shard_tools.frames import check_template
from shard_tools.info import mixture_info
from shard_tools.mixture import MixtureError, read_mixture
from shard_tools.pack import PackError, pack
from shard_tools.sources import SourceError, parse_sources


def frame_image(video, index, size=(48, 32)):
    """A smooth frame that differs per video and per index (survives JPEG and VP9 closely)."""
    width, height = size
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    colour = np.array([40 + 50 * video, 120, 200 - 10 * index])
    return (colour * (0.5 + 0.5 * x) * (0.6 + 0.4 * y)).clip(0, 255).astype(np.uint8)


def make_frame_folder(folder, video, num_frames, first=1, template="img_{:05d}.jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + num_frames):
        Image.fromarray(frame_image(video, i)).save(folder / template.format(i), quality=95)
    return folder


def decoded(data):
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def frames_data(tmp_path_factory):
    """The published SSv2 layout: `frames/{id}/img_00001.jpg ...` and a header-less,
    space-separated `train.csv` of `path total_frames label`; one folder lacks a frame, one has
    a corrupt frame."""
    root = tmp_path_factory.mktemp("ssv2")
    counts = {"101": 9, "102": 12, "103": 7, "104": 10, "105": 8}
    for n, (name, count) in enumerate(counts.items()):
        make_frame_folder(root / "frames" / name, n, count)
    (root / "frames" / "104" / "img_00005.jpg").unlink()
    (root / "frames" / "105" / "img_00003.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    labels = {"101": 3, "102": 0, "103": 3, "104": 1, "105": 2}
    (root / "train.csv").write_text("".join(f"frames/{name} {counts[name]} {labels[name]}\n"
                                            for name in counts))
    return root, counts, labels


def test_frame_folders_pack_into_decodable_vp9_with_the_right_frames(frames_data, tmp_path):
    root, counts, labels = frames_data
    summary = pack(root / "train.csv", tmp_path / "out", root=str(root), codec="vp9", gop=4,
                   fps=12, progress=False)
    skipped = {s["source"]: s for s in map(json.loads, (tmp_path / "out" / "skipped.jsonl").open())}
    assert {k: s["reason"] for k, s in skipped.items()} == {
        "frames/104": "missing-frames", "frames/105": "unreadable-frames"}
    assert "img_00005.jpg" in skipped["frames/104"]["detail"]
    assert "img_00003.jpg" in skipped["frames/105"]["detail"]
    assert summary["num_samples"] == 3 and summary["codecs"] == {"vp9": 3}
    for _, ext, data, meta in all_samples(tmp_path / "out"):
        name = meta["source"].split("/")[1]
        frames = decoded(data)
        assert ext == "webm" and meta["codec"] == "vp9" and meta["fps"] == 12.0
        assert len(frames) == meta["num_frames"] == meta["source_frames"] == counts[name]
        assert meta["first_frame"] == 1 and meta["label"] == labels[name]
        source = np.stack([np.asarray(Image.open(root / "frames" / name / f"img_{i:05d}.jpg"))
                           for i in range(1, counts[name] + 1)])
        assert np.abs(frames.astype(int) - source).mean() < 6  # VP9 of smooth frames: close
    assert read_manifest(tmp_path / "out")["labels"] == ["0", "1", "2", "3"]


def test_frame_folders_counted_started_and_templated(tmp_path):
    """A `path label` folder is counted; `path start total` starts where it says; the template
    and first index are options."""
    make_frame_folder(tmp_path / "a", 0, 6)
    make_frame_folder(tmp_path / "b", 1, 9, first=0, template="{:04d}.png")
    (tmp_path / "count.txt").write_text("a cat\n")
    (tmp_path / "pre.txt").write_text("a 3 4\n")
    pack(tmp_path / "count.txt", tmp_path / "o1", root=str(tmp_path), codec="vp9",
         progress=False)
    [(_, _, data, meta)] = all_samples(tmp_path / "o1")
    assert len(decoded(data)) == meta["source_frames"] == 6 and meta["label_name"] == "cat"
    # `a 3 4` also reads as 3 frames of label 4 (auto's choice when no start is 0 or 1).
    pack(tmp_path / "pre.txt", tmp_path / "o2", root=str(tmp_path), codec="vp9",
         list_format="path-start-total", progress=False)
    [(_, _, data, meta)] = all_samples(tmp_path / "o2")
    assert (len(decoded(data)), meta["first_frame"], meta["label"]) == (4, 3, None)
    (tmp_path / "b.txt").write_text("b 1\n")
    pack(tmp_path / "b.txt", tmp_path / "o3", root=str(tmp_path), codec="vp9",
         frame_template="{:04d}.png", first_frame=0, frame_stride=2, progress=False)
    [(_, _, data, meta)] = all_samples(tmp_path / "o3")
    assert (meta["source_frames"], meta["num_frames"], len(decoded(data))) == (9, 5, 5)
    with pytest.raises(PackError, match="frame folders.*--codec vp9"):
        pack(tmp_path / "count.txt", tmp_path / "o4", root=str(tmp_path), progress=False)
    with pytest.raises(PackError, match="exactly one positional field"):
        pack(tmp_path / "count.txt", tmp_path / "o5", root=str(tmp_path), codec="vp9",
             frame_template="img.jpg", progress=False)
    assert check_template("img_{:05d}.jpg").fullmatch("img_00012.jpg")


def test_published_list_and_headered_csv_parse_to_the_same_entries(tmp_path):
    (tmp_path / "train.csv").write_text("k400/abc.mp4 12\nk400/d e.mp4 0\n")  # published
    (tmp_path / "table.csv").write_text("path,label,split\nk400/abc.mp4,12,train\n"
                                        "k400/d e.mp4,0,train\n")
    (tmp_path / "tabbed.txt").write_text("k400/abc.mp4\t12\nk400/d e.mp4\t0\n")
    (tmp_path / "header.txt").write_text("video label\nk400/abc.mp4 12\nk400/d e.mp4 0\n")
    expected = [("k400/abc.mp4", "/data/k400/abc.mp4", "12"), ("k400/d e.mp4", "/data/k400/d e.mp4", "0")]
    for name, column in (("train.csv", "path"), ("table.csv", "path"), ("tabbed.txt", "path"),
                         ("header.txt", "video")):
        entries = parse_sources(tmp_path / name, root="/data", path_column=column)
        assert [(e.source, e.path, e.label_raw) for e in entries] == expected, name
    (tmp_path / "nopath.csv").write_text("video,label\nk400/abc.mp4,12\n")
    with pytest.raises(SourceError, match="no column 'path'.*--path-column"):
        parse_sources(tmp_path / "nopath.csv")


def test_three_field_lines_read_as_the_published_formats(tmp_path):
    (tmp_path / "pre.csv").write_text("k710/a.mp4 0 -1\nava/frames/x 1 300\n")
    (tmp_path / "ssv2.csv").write_text("frames/1 45 87\nframes/2 30 5\n")
    pre = parse_sources(tmp_path / "pre.csv")
    assert [(e.label_raw, e.start, e.total) for e in pre] == [(None, 0, None), (None, 1, 300)]
    ssv2 = parse_sources(tmp_path / "ssv2.csv")
    assert [(e.label_raw, e.start, e.total) for e in ssv2] == [("87", None, 45), ("5", None, 30)]
    forced = parse_sources(tmp_path / "ssv2.csv", list_format="path-start-total")
    assert [(e.label_raw, e.start, e.total) for e in forced] == [(None, 45, 87), (None, 30, 5)]


def test_a_bad_line_names_the_file_the_line_and_the_formats(tmp_path):
    (tmp_path / "list.csv").write_text("a.mp4,3\nb.mp4,1,2,3\n")
    with pytest.raises(SourceError, match=r"list\.csv:2: 'b\.mp4,1,2,3' parses as none.*"
                                          r"`path total_frames label`.*`path start total`"):
        parse_sources(tmp_path / "list.csv")
    (tmp_path / "frames.txt").write_text("# SSv2 frames\nf/1 40 2\nf/2 forty 2\n")
    with pytest.raises(SourceError, match=r"frames\.txt:3: 'f/2 forty 2' is not path "
                                          r"total_frames label.*--list-format"):
        parse_sources(tmp_path / "frames.txt", list_format="path-frames-label")
    (tmp_path / "pre.txt").write_text("v.mp4 0 -1\nw.mp4 0 -5\n")
    with pytest.raises(SourceError, match=r"pre\.txt:2: .*neither -1"):
        parse_sources(tmp_path / "pre.txt")
    result = CliRunner().invoke(main, ["pack", str(tmp_path / "list.csv"), str(tmp_path / "o")])
    assert result.exit_code == 2 and "list.csv:2:" in result.output


def test_label_map_fixes_the_order_and_unknown_classes_are_an_error(tmp_path):
    for i, name in enumerate(["air drumming", "abseiling", "zumba", "air drumming"]):
        (tmp_path / "k" / name).mkdir(parents=True, exist_ok=True)
        make_clip(tmp_path / "k" / name / f"v{i}.webm", seed=i)
    (tmp_path / "label_map.txt").write_text("zumba\nair drumming\nabseiling\nbaking\n")
    pack(tmp_path / "k", tmp_path / "out", labels=str(tmp_path / "label_map.txt"),
         progress=False)
    assert read_manifest(tmp_path / "out")["labels"] == ["zumba", "air drumming", "abseiling",
                                                         "baking"]
    got = sorted((m["label_name"], m["label"]) for _, _, _, m in all_samples(tmp_path / "out"))
    assert got == [("abseiling", 2), ("air drumming", 1), ("air drumming", 1), ("zumba", 0)]
    (tmp_path / "short_map.txt").write_text("zumba\nabseiling\n")
    with pytest.raises(PackError, match=r"1 labels in .* not in the label map .*short_map\.txt "
                                        r"\(2 classes\): 'air drumming'; add them to the map"):
        pack(tmp_path / "k", tmp_path / "o2", labels=str(tmp_path / "short_map.txt"),
             progress=False)
    (tmp_path / "ints.txt").write_text("v0.webm 1\nv1.webm 7\n")
    for i in range(2):
        make_clip(tmp_path / f"v{i}.webm", seed=i)
    with pytest.raises(PackError, match=r"'7'.*integers must be below 4"):
        pack(tmp_path / "ints.txt", tmp_path / "o3", root=str(tmp_path),
             labels=str(tmp_path / "label_map.txt"), progress=False)
    (tmp_path / "twice.txt").write_text("a\nb\na\n")
    with pytest.raises(PackError, match="more than once: a"):
        pack(tmp_path / "k", tmp_path / "o4", labels=str(tmp_path / "twice.txt"), progress=False)


def test_data_root_alias_and_ray_without_ray_installed(tmp_path, monkeypatch):
    make_clip(tmp_path / "one.webm")
    (tmp_path / "val.csv").write_text("one.webm 0\n")
    result = CliRunner().invoke(main, ["pack", str(tmp_path / "val.csv"), str(tmp_path / "out"),
                                       "--data-root", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0 and "packed 1 samples" in result.output
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real_find_spec(name, *a))
    result = CliRunner().invoke(main, ["pack", str(tmp_path / "val.csv"), str(tmp_path / "o2"),
                                       "--data-root", str(tmp_path), "--ray", "local"])
    assert result.exit_code == 2 and 'pip install "vmae2[ray]"' in result.output


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    for name, count in (("k710", 3), ("ssv2", 2)):
        for i in range(count):
            (root / "src" / name / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            make_clip(root / "src" / name / f"c{i % 2}" / f"v{i}.webm", seed=i)
        pack(root / "src" / name, root / "packed" / name, progress=False)
    return root


def test_mixture_file_is_read_checked_and_shown_by_info(two_datasets, tmp_path):
    root = two_datasets
    (root / "mix.yaml").write_text("- {path: packed/k710, weight: 3, stride: 4}\n"
                                   "- path: packed/ssv2/manifest.json\n  stride: 2\n")
    (root / "mix.json").write_text(json.dumps([{"path": str(root / "packed" / "k710")}]))
    sources = read_mixture(root / "mix.yaml")
    assert [(Path(s["path"]).name, s["weight"], s["share"], s["stride"]) for s in sources] == [
        ("k710", 3.0, 0.75, 4), ("ssv2", 1.0, 0.25, 2)]
    assert [s["stride"] for s in read_mixture(root / "mix.json")] == [None]
    summary = mixture_info(root / "mix.yaml")
    assert [s["num_samples"] for s in summary["sources"]] == [3, 2]
    assert summary["num_samples"] == 5
    result = CliRunner().invoke(main, ["info", str(root / "mix.yaml")])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[2:]]
    assert [(Path(r[0]).name, r[1], r[4], r[5], r[6]) for r in rows] == [
        ("k710", "3", "3", "0.750", "4"), ("ssv2", "2", "1", "0.250", "2")]
    bad = {
        "- {path: packed/k710, weigth: 2}\n": r"entry 0 has unknown keys \['weigth'\]",
        "- {path: packed/k710}\n- {path: packed/nope}\n": r"entry 1 \(path 'packed/nope'\): no "
                                                          r"manifest\.json",
        "- {path: packed/k710, stride: 0}\n": r"entry 0 .*stride 0 must be an integer",
        "- {path: packed/k710, weight: 0}\n": r"entry 0 .*weight 0 must be a positive",
        "{path: packed/k710}\n": "a mixture file holds a non-empty list of datasets",
    }
    for text, message in bad.items():
        (root / "bad.yaml").write_text(text)
        with pytest.raises(MixtureError, match=r"bad\.yaml: " + message):
            read_mixture(root / "bad.yaml")
    result = CliRunner().invoke(main, ["info", str(root / "bad.yaml")])
    assert result.exit_code == 2 and "bad.yaml" in result.output
