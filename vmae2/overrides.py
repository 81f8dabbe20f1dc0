"""`--set key=value` and `--config FILE` for any config dataclass: parsed against the field's type.

Keys are the dataclass's fields; a field that is itself a dataclass (the model) is reached with a dotted
key, `model.img_size`. An unknown key is an error naming the closest valid key; a value that does not
parse as the field's type is an error naming the key and the type. Config files are JSON or YAML (by
suffix) holding the same keys, nested (`{"model": {"img_size": 112}}`) or dotted.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A preset, key or value that does not fit the config."""


def valid_keys(cls) -> list[str]:
    """Every settable key of a config class: its fields, and `name.field` for dataclass fields."""
    keys = []
    for f in dataclasses.fields(cls):
        typ = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(typ):
            keys += [f"{f.name}.{sub.name}" for sub in dataclasses.fields(typ)]
        else:
            keys.append(f.name)
    return keys


def parse_value(key: str, text: str, typ):
    """`text` as a value of `typ` (bool, int, float, str); errors name the key and the expected type."""
    if typ is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r}: expected a boolean (true/false)")
    if typ is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected an integer") from None
    if typ is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a number") from None
    if typ is str:
        return text
    raise ConfigError(f"{key}: fields of type {typ} cannot be set from the command line")


def _coerce(key: str, value, typ):
    if isinstance(value, str) and typ is not str:
        return parse_value(key, value, typ)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r}: expected {typ.__name__}, got {type(value).__name__}")
    return value


def closest_key(key: str, keys: list[str]) -> str:
    """'; did you mean ...?' for a misspelt key: the same words in another order first, then spelling."""
    words = sorted(key.replace(".", "_").split("_"))
    match = [k for k in keys if sorted(k.replace(".", "_").split("_")) == words]
    match = match or difflib.get_close_matches(key, keys, n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def flatten(values: dict, prefix: str = "") -> dict:
    """{"model": {"img_size": 1}} -> {"model.img_size": 1}."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(cfg, overrides: dict[str, typing.Any]):
    """A copy of `cfg` with `overrides` ({key: value or string}, dotted or nested) applied and type-checked.

    The dataclasses' own __post_init__ checks run on the result.
    """
    cls = type(cfg)
    hints = typing.get_type_hints(cls)
    keys = valid_keys(cls)
    flat, nested = {}, {}
    for key, value in flatten(overrides).items():
        if key not in keys:
            raise ConfigError(f"unknown config key {key!r}{closest_key(key, keys)}")
        outer, _, inner = key.partition(".")
        if inner:
            sub_hints = typing.get_type_hints(hints[outer])
            nested.setdefault(outer, {})[inner] = _coerce(key, value, sub_hints[inner])
        else:
            flat[key] = _coerce(key, value, hints[key])
    for outer, values in nested.items():
        flat[outer] = dataclasses.replace(getattr(cfg, outer), **values)
    return dataclasses.replace(cfg, **flat)


def parse_set_args(items: typing.Iterable[str]) -> dict[str, str]:
    """['key=value', ...] from the command line -> {key: 'value'}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def _yaml():
    try:
        import yaml
    except ImportError:
        raise ConfigError("YAML config files need PyYAML: pip install pyyaml (or use a .json file)") from None
    return yaml


def read_config_file(path) -> dict:
    """The key/value mapping of a JSON or YAML config file (by suffix)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            values = _yaml().safe_load(text)
        else:
            values = json.loads(text)
    except Exception as err:   # json.JSONDecodeError or yaml.YAMLError
        raise ConfigError(f"--config {path}: not valid {path.suffix[1:].upper() or 'JSON'}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of config keys, got {type(values).__name__}")
    return values


def config_text(cfg, fmt: str = "json") -> str:
    """The resolved config as JSON or YAML text (nested: the model under `model`)."""
    values = dataclasses.asdict(cfg)
    if fmt == "yaml":
        return _yaml().safe_dump(values, sort_keys=False)
    return json.dumps(values, indent=2) + "\n"
