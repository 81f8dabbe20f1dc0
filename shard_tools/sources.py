"""Parse SRC (a folder, a list file, or a CSV) into entries, and give each a stable key.

- Folder: searched recursively for files with a video extension. A file inside a sub-folder
  takes that first-level sub-folder's name as its label (Kinetics layout `class/clip.mp4`);
  files directly in SRC are unlabeled. `source` is the path relative to SRC.
- List file: the published VideoMAE lists (`train.csv`, `val.csv`, `test.csv` despite the name
  are space-separated with no header), one entry per line in one of `LIST_FORMATS`:
  `path label`, `path total_frames label` (frame-folder fine-tuning lists, e.g. SSv2) or
  `path start total` (pre-training lists: `video 0 -1`, `frame_folder start total`); a bare
  `path` is unlabeled. Paths may contain spaces: fields are taken from the right. Which
  three-field reading applies is decided for the whole file (`detect_three_field_format`) or
  given with `--list-format`. Tab- or comma-separated files work the same way.
- CSV with a header: the first line names the path column (`--path-column`) and, optionally,
  the label column.

`--root` (alias `--data-root`, the published scripts' name) is prepended to relative paths. A
path that is a folder (and whose name has no video extension) is a frame folder; the worker
decides how many frames it holds. Labels are class names or integers; `resolve_labels` turns
them into indices with the label map (given, or built from the entries).
"""

import csv
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

# Extensions searched in a folder SRC (anything FFmpeg commonly holds video in).
FOLDER_VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv",
                     ".flv", ".wmv", ".3gp", ".ts")
KEY_SLUG_CHARS = 40

# Line formats of a list file (besides a bare `path`), as the published VideoMAE lists use them.
LIST_FORMATS = {
    "path-label": "path label",
    "path-frames-label": "path total_frames label",
    "path-start-total": "path start total",
}


class SourceError(Exception):
    """SRC cannot be read as a folder, list file or CSV."""


@dataclass
class Entry:
    source: str                  # the input path as given (relative to SRC for a folder)
    path: str                    # the path opened on disk
    label_raw: str | None = None  # label as written in SRC (name or integer), None if unlabeled
    label: int | None = None     # index into the label map, set by resolve_labels
    label_name: str | None = None
    start: int | None = None     # first frame index of a frame folder, from a list's `start`
    total: int | None = None     # frames of a frame folder from the list; None: count them

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


def _join(root, path):
    return str(Path(root) / path) if root and not Path(path).is_absolute() else path


def _is_int(text):
    return re.fullmatch(r"-?\d+", text) is not None


def _data_lines(lines):
    """(line number, text) of lines that are not blank or `#` comments."""
    return [(n, line.strip()) for n, line in enumerate(lines, 1)
            if line.strip() and not line.strip().startswith("#")]


def detect_delimiter(first_line, suffix):
    """Tab if the first line has one; comma for a `.csv` with commas or a comma line without
    spaces; otherwise whitespace (the published lists)."""
    if "\t" in first_line:
        return "\t"
    if "," in first_line and (suffix == ".csv" or " " not in first_line):
        return ","
    return " "


def split_fields(line, delimiter, max_fields):
    """Fields of a line: space lists split from the right into at most `max_fields` (paths may
    hold spaces); tab and comma lines split by csv (quoting allowed), all fields."""
    if delimiter == " ":
        return line.rsplit(None, max_fields - 1)
    return [f.strip() for f in next(csv.reader([line], delimiter=delimiter))]


def _three_ints(fields):
    return len(fields) == 3 and _is_int(fields[1]) and _is_int(fields[2])


def detect_three_field_format(rows):
    """`path-start-total` or `path-frames-label` for the `path int int` rows of one file.

    Pre-training lists write `video 0 -1` and `frames start total` with start 0 or 1; a
    fine-tuning frame list's second field is a frame count (more than 1). So: any total of -1,
    or every second field 0 or 1, reads as `path start total`; anything else as
    `path total_frames label`.
    """
    pairs = [(int(f[1]), int(f[2])) for f in rows]
    if any(b == -1 for _, b in pairs) or all(a in (0, 1) for a, _ in pairs):
        return "path-start-total"
    return "path-frames-label"


def parse_sources(src, root=None, path_column="path", label_column="label", list_format="auto"):
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
    if list_format not in ("auto", *LIST_FORMATS):
        raise SourceError(f"--list-format {list_format!r} is not one of auto, "
                          f"{', '.join(LIST_FORMATS)}")
    try:
        lines = _data_lines(src_path.read_text(encoding="utf-8-sig").splitlines())
    except UnicodeDecodeError as err:
        raise SourceError(f"{src_path}: not a UTF-8 text list file ({err}); give a folder, a "
                          f"`path label` list file or a CSV") from err
    if not lines:
        raise SourceError(f"{src_path}: no entries (every line is blank or a # comment)")
    delimiter = detect_delimiter(lines[0][1], src_path.suffix.lower())
    header = (lines[0][1].split() if delimiter == " "
              else [f.strip() for f in next(csv.reader([lines[0][1]], delimiter=delimiter))])
    if path_column in header:
        return _parse_table(src_path, lines, delimiter, root, path_column, label_column)
    if delimiter != " " and label_column in header:
        raise SourceError(f"{src_path}: no column {path_column!r} in header {header}; "
                          f"name the path column with --path-column")
    return _parse_list(src_path, lines, delimiter, root, list_format)


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


def _bad_line(list_path, number, line, why):
    formats = "; ".join(f"`{text}`" for text in LIST_FORMATS.values())
    return SourceError(f"{list_path}:{number}: {line!r} {why}; accepted formats: `path`, {formats} "
                       f"(space, tab or comma separated; or a CSV whose header names the path "
                       f"column). Fix the line, or pick the reading with --list-format")


def _parse_list(list_path, lines, delimiter, root, list_format):
    rows = [(n, line, split_fields(line, delimiter, 3)) for n, line in lines]
    three_field = list_format
    if list_format == "auto":
        int_rows = [f for _, _, f in rows if _three_ints(f)]
        three_field = detect_three_field_format(int_rows) if int_rows else "path-label"
    entries = []
    for number, line, fields in rows:
        if three_field != "path-label" and _three_ints(fields):
            entries.append(_three_field_entry(list_path, number, line, fields, three_field, root))
            continue
        if list_format in ("path-frames-label", "path-start-total"):
            raise _bad_line(list_path, number, line,
                            f"is not {LIST_FORMATS[list_format]} (given with --list-format)")
        parts = split_fields(line, delimiter, 2)
        if len(parts) > 2 or not parts[0] or (len(parts) == 2 and not parts[1]):
            raise _bad_line(list_path, number, line, "parses as none of them")
        if len(parts) == 1 and list_format == "path-label":
            raise _bad_line(list_path, number, line, "has no label (--list-format path-label)")
        label = parts[1] if len(parts) == 2 else None
        entries.append(Entry(parts[0], _join(root, parts[0]), label))
    return entries


def _three_field_entry(list_path, number, line, fields, list_format, root):
    path, first, second = fields[0], int(fields[1]), int(fields[2])
    if list_format == "path-start-total":
        if first < 0 or (second < 1 and second != -1):
            raise _bad_line(list_path, number, line, "has a negative start or a total that is "
                                                     "neither -1 (whole video) nor positive")
        total = None if second == -1 else second
        return Entry(path, _join(root, path), None, start=first, total=total)
    if first < 1 or second < 0:
        raise _bad_line(list_path, number, line, "has a frame count below 1 or a negative label")
    return Entry(path, _join(root, path), str(second), total=first)


def _parse_table(csv_path, lines, delimiter, root, path_column, label_column):
    """Rows of a headered list; a space-separated one splits from the right (paths may hold
    spaces when the path column comes first)."""
    header = split_fields(lines[0][1], delimiter, len(lines[0][1].split()))
    has_label = label_column in header
    entries = []
    for number, line in lines[1:]:
        fields = split_fields(line, delimiter, len(header))
        if len(fields) != len(header):
            raise _bad_line(csv_path, number, line, f"has {len(fields)} fields but the header "
                                                    f"{header} names {len(header)}")
        row = dict(zip(header, fields, strict=True))
        path = (row.get(path_column) or "").strip()
        if not path:
            raise _bad_line(csv_path, number, line, f"has an empty {path_column!r} column")
        label = (row.get(label_column) or "").strip() or None if has_label else None
        entries.append(Entry(path, _join(root, path), label))
    return entries


def read_label_map(path):
    """Class names in index order from a label-map file.

    One class name per line, the line order giving the index (the published
    `label_map_k400.txt`, so packed labels match published heads); or `name index` on every line
    when the indices are exactly 0..n-1.
    """
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise SourceError(f"{path}: empty label map; write one class name per line")
    pairs = [line.rsplit(" ", 1) for line in lines]
    if all(len(p) == 2 and _is_int(p[1]) for p in pairs) and sorted(
            int(p[1]) for p in pairs) == list(range(len(pairs))):
        names = [name for name, _ in sorted(pairs, key=lambda p: int(p[1]))]
    else:
        names = lines
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SourceError(f"{path}: class names appear more than once: {', '.join(repeated)}; "
                          f"each class must have one line")
    return names


def resolve_labels(entries, labels=None):
    """Set `label`/`label_name` on every entry; return (labels, sorted labels not in the map).

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
    unknown = set()
    for entry in entries:
        if entry.label_raw is None:
            continue
        if entry.label_raw in index_of:
            entry.label = index_of[entry.label_raw]
        elif _is_int(entry.label_raw) and 0 <= int(entry.label_raw) < len(labels):
            entry.label = int(entry.label_raw)
        else:
            unknown.add(entry.label_raw)
            continue
        entry.label_name = labels[entry.label]
    return list(labels), sorted(unknown)
