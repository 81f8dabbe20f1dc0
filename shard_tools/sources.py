"""Parse SRC (a folder, a VideoMAE list file, or a CSV) into entries, and give each a stable key.

- Folder: searched recursively for files with a video extension. A file inside a sub-folder
  takes that first-level sub-folder's name as its label (Kinetics layout `class/clip.mp4`);
  files directly in SRC are unlabeled. `source` is the path relative to SRC.
- List file (VideoMAE format): `path label` per line, or `path start total` in pre-training lists
  (unlabeled; `start`/`total` are recorded but not used to cut). Paths may contain spaces: the
  label (or start/total) is taken from the right. `--root` is prepended to relative paths.
- CSV: a header row naming the path column and, optionally, the label column.

Labels are class names or integers. `resolve_labels` turns them into indices with the label map
(given, or built from the entries) and reports entries whose label is not in the map.
"""

import csv
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

# Extensions searched in a folder SRC (anything FFmpeg commonly holds video in).
FOLDER_VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv",
                     ".flv", ".wmv", ".3gp", ".ts")
KEY_SLUG_CHARS = 40


class SourceError(Exception):
    """SRC cannot be read as a folder, list file or CSV."""


@dataclass
class Entry:
    source: str                  # the input path as given (relative to SRC for a folder)
    path: str                    # the path opened on disk
    label_raw: str | None = None  # label as written in SRC (name or integer), None if unlabeled
    label: int | None = None     # index into the label map, set by resolve_labels
    label_name: str | None = None
    extra: dict = field(default_factory=dict)  # e.g. start/total of a pre-training list

    @property
    def key(self):
        return make_key(self.source)


def make_key(source):
    """A dot-free, space-free, ASCII key: readable slug of the path plus a hash of the full path."""
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:12]
    ascii_text = unicodedata.normalize("NFKD", source).encode("ascii", "ignore").decode("ascii")
    stem = ascii_text.rsplit(".", 1)[0] if "." in Path(ascii_text).name else ascii_text
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[-KEY_SLUG_CHARS:].strip("_")
    return f"{slug}_{digest}" if slug else digest


def parse_sources(src, root=None, path_column="path", label_column="label"):
    """Entries of SRC in file order (folder: sorted paths)."""
    src_path = Path(src)
    if not src_path.exists():
        raise SourceError(f"SRC {src} does not exist; give a folder of videos, a list file or a "
                          f"CSV")
    if src_path.is_dir():
        return _parse_folder(src_path)
    if src_path.suffix.lower() in FOLDER_VIDEO_EXTS:
        raise SourceError(f"SRC {src} is a single video; give the folder that holds it, or a list "
                          f"file naming it")
    if src_path.suffix.lower() == ".csv":
        return _parse_csv(src_path, root, path_column, label_column)
    return _parse_list(src_path, root)


def _parse_folder(folder):
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if path.suffix.lower() not in FOLDER_VIDEO_EXTS or any(
                part.startswith(".") for part in rel.parts):
            continue
        label = rel.parts[0] if len(rel.parts) > 1 else None
        entries.append(Entry(source=rel.as_posix(), path=str(path), label_raw=label))
    return entries


def _join(root, path):
    return str(Path(root) / path) if root and not Path(path).is_absolute() else path


def _is_int(text):
    return re.fullmatch(r"-?\d+", text) is not None


def _parse_list(list_path, root):
    entries = []
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise SourceError(f"{list_path}: not a UTF-8 text list file ({err}); give a folder, a "
                          f"`path label` list file or a CSV") from err
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.rsplit(" ", 2)
        # `path start total` (pre-training) unless the two-field reading names an existing file.
        if len(tokens) == 3 and _is_int(tokens[1]) and _is_int(tokens[2]) and not Path(
                _join(root, f"{tokens[0]} {tokens[1]}")).exists():
            extra = {"start": int(tokens[1]), "total": int(tokens[2])}
            entries.append(Entry(tokens[0], _join(root, tokens[0]), None, extra=extra))
            continue
        parts = line.rsplit(" ", 1)
        if len(parts) == 1:
            entries.append(Entry(parts[0], _join(root, parts[0])))
        else:
            entries.append(Entry(parts[0], _join(root, parts[0]), parts[1]))
    return entries


def _parse_csv(csv_path, root, path_column, label_column):
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if path_column not in columns:
            raise SourceError(
                f"{csv_path}: no column {path_column!r} in header {columns}; "
                f"name the path column with --path-column"
            )
        has_label = label_column in columns
        return [Entry(row[path_column], _join(root, row[path_column]),
                      (row[label_column] or None) if has_label else None) for row in reader]


def read_label_map(path):
    """Class names in index order from a file: one name per line, or `name index` per line."""
    names = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(" ", 1)
        if len(parts) == 2 and _is_int(parts[1]):
            names[int(parts[1])] = parts[0]
        else:
            names[len(names)] = line
    if sorted(names) != list(range(len(names))):
        raise SourceError(f"{path}: label indices must be 0..{len(names) - 1} without gaps")
    return [names[i] for i in range(len(names))]


def resolve_labels(entries, labels=None):
    """Set `label`/`label_name` on every entry; return (labels, [(entry, detail)] not in the map).

    With `labels` given, a name must be in it and an integer must index it. Without, integer
    labels use themselves as indices (names "0".."max") and class names are sorted.
    """
    raw = [e.label_raw for e in entries if e.label_raw is not None]
    if labels is None:
        if raw and all(_is_int(r) for r in raw):
            labels = [str(i) for i in range(max(int(r) for r in raw) + 1)]
        else:
            labels = sorted(set(raw))
    index_of = {name: i for i, name in enumerate(labels)}
    rejected = []
    for entry in entries:
        if entry.label_raw is None:
            continue
        if entry.label_raw in index_of:
            entry.label = index_of[entry.label_raw]
        elif _is_int(entry.label_raw) and 0 <= int(entry.label_raw) < len(labels):
            entry.label = int(entry.label_raw)
        else:
            rejected.append((entry, f"label {entry.label_raw!r} is not in the label map "
                                    f"({len(labels)} classes); add it to --labels"))
            continue
        entry.label_name = labels[entry.label]
    return list(labels), rejected
