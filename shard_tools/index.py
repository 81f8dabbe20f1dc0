"""DALI's webdataset index (the `wds2idx` v1.2 text format), written and read without `tar`.

    v1.2 {num_samples}
    {ext} {data_offset} {size} {member_name} {ext} {data_offset} {size} {member_name} ...

One line per sample, its members in tar order; `data_offset` is the byte offset of the member's
data (after its 512-byte header). Member names must contain no spaces (our keys never do).
"""

import tarfile

INDEX_VERSION = "v1.2"


def split_name(name):
    """(key, ext): DALI takes everything after the first dot of the basename as the extension."""
    dot = name.find(".", name.rfind("/") + 1)
    return name[:dot], name[dot + 1:]


def format_index(members):
    """Index text from [(name, data_offset, size)] in tar order."""
    samples, last_key = [], None
    for name, offset, size in members:
        key, ext = split_name(name)
        if key != last_key:
            samples.append([])
            last_key = key
        samples[-1].append(f"{ext} {offset} {size} {name}")
    return f"{INDEX_VERSION} {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)


def tar_members(tar_path):
    """[(name, data_offset, size)] of the regular files in a tar, read with tarfile."""
    with tarfile.open(tar_path, "r:") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isreg()]


def index_for_tar(tar_path):
    """The index text a correct .idx beside `tar_path` must hold."""
    return format_index(tar_members(tar_path))


def parse_index(text):
    """[[(ext, offset, size, name), ...] per sample] from index text; ValueError if malformed.

    The one reader of the format: `samples`, `verify` and the DALI data engine all use it.
    """
    lines = text.splitlines()
    if not lines:
        raise ValueError("empty index")
    header = lines[0].split()
    if len(header) != 2 or not header[1].isdigit():
        raise ValueError(f"index line 1 is {lines[0]!r}, expected '{INDEX_VERSION} <num_samples>'")
    version, count = header
    if version != INDEX_VERSION:
        raise ValueError(f"index version {version}, expected {INDEX_VERSION}")
    samples = []
    for number, line in enumerate(lines[1:], 2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise ValueError(f"malformed index line {number}: {line!r} (expected groups of "
                             f"'ext offset size name')")
        try:
            samples.append([(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                            for i in range(0, len(fields), 4)])
        except ValueError as err:
            raise ValueError(f"malformed index line {number}: {line!r} ({err})") from err
    if len(samples) != int(count):
        raise ValueError(f"index header says {count} samples but lists {len(samples)}")
    return samples
