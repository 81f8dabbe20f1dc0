"""Which classes a horizontal flip turns into each other ("pushing left to right" <-> "pushing right to left").

A label set declares its flip pairs in the manifest (`flip_pairs`, written by `vmae2-shard pack --flip-map
FILE`, and by `vmae2-shard synth` for its directional labels), or a run names a file
(`--set label_flip_map=FILE`). A set can also be marked `direction_sensitive` without pairs: then a
loader must not flip it at all. The fine-tuning loader swaps the label of every clip it mirrors.

A flip-map file holds one pair per line, two class names (or class indices) separated by whitespace or a
comma; `#` starts a comment. A JSON file holds a list of pairs, or an object {class: its mirror class}.
"""
from __future__ import annotations

import json
from pathlib import Path


class FlipMapError(ValueError):
    """A flip map that does not fit its label set."""


def read_flip_map(path) -> list[list[str]]:
    """The pairs of a flip-map file (module doc), each as two strings, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FlipMapError(f"flip map {path}: no such file (one pair of class names per line, or a JSON list "
                           f"of pairs)")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise FlipMapError(f"flip map {path}: not valid JSON: {err}") from None
        items = list(raw.items()) if isinstance(raw, dict) else raw
        pairs = []
        for n, item in enumerate(items):
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise FlipMapError(f"flip map {path}: entry {n} is {item!r}, expected a pair [class, mirror class]")
            pairs.append([str(item[0]), str(item[1])])
        return _dedupe(pairs, str(path))
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise FlipMapError(f"flip map {path}, line {number}: {line!r} has {len(fields)} fields, expected two "
                               f"class names (a class and the class its mirror image belongs to)")
        pairs.append(fields)
    return _dedupe(pairs, str(path))


def _dedupe(pairs: list[list[str]], where: str) -> list[list[str]]:
    """Pairs with {a: b, b: a} written both ways kept once."""
    seen, out = set(), []
    for a, b in pairs:
        key = frozenset((a, b))
        if key not in seen:
            seen.add(key)
            out.append([a, b])
    return out


def _class_index(name: str, labels: list[str], where: str) -> int:
    if name in labels:
        return labels.index(name)
    if name.isdigit() and (not labels or int(name) < len(labels)):
        return int(name)
    shown = ", ".join(labels[:12]) + (" ..." if len(labels) > 12 else "")
    raise FlipMapError(f"{where}: class {name!r} is not in the label set ({shown}); name classes as the manifest's "
                       f"labels do, or by index")


def flip_permutation(pairs, labels: list[str], num_classes: int | None = None, where: str = "flip map") -> list[int]:
    """perm[c]: the class of a mirrored clip of class c (c itself unless a pair names it).

    pairs: [[a, b], ...] by class name or index; labels: the label set's names (may be empty when labels are
    bare indices, then num_classes bounds them). A class in two pairs, a pair of one class with itself, or
    a class outside the set is an error naming it.
    """
    size = len(labels) if labels else num_classes
    if size is None:
        raise FlipMapError(f"{where}: the label set has no names; give num_classes")
    perm = list(range(size))
    paired: dict[int, str] = {}
    for a, b in pairs:
        ia, ib = _class_index(str(a), labels, where), _class_index(str(b), labels, where)
        if ia >= size or ib >= size or ia < 0 or ib < 0:
            raise FlipMapError(f"{where}: pair {a!r} <-> {b!r} names a class outside 0..{size - 1}")
        if ia == ib:
            raise FlipMapError(f"{where}: pair {a!r} <-> {b!r} names one class twice; leave classes that a flip "
                               f"does not change out of the map")
        for index, name in ((ia, a), (ib, b)):
            if index in paired:
                raise FlipMapError(f"{where}: class {name!r} is in two pairs ({paired[index]} and {a} <-> {b})")
            paired[index] = f"{a} <-> {b}"
        perm[ia], perm[ib] = ib, ia
    return perm
