"""Reading a model's config.json into its frozen dataclass, with errors that name the bad key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from runtime.errors import RemoverError

ConfigT = TypeVar("ConfigT")
ANY = object()  # in an `ignored` map: the key may have any value

SIZE_MULTIPLE = 16  # frame sides the models take: the VAE's 8x, then the transformer's 2x2 patches


def config_from_dict(cls: type[ConfigT], raw: dict[str, Any], *, ignored: dict[str, Any], source: str) -> ConfigT:
    """Build `cls` from a diffusers-style config dict.

    Keys starting with "_" (class name, version) are skipped. `ignored` maps keys that the released
    files carry but that do not change the computation to the value they must have (or ANY).
    Any other unknown key, a missing required key or a value of the wrong type is an error naming it.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("_"):
            continue
        if key in ignored:
            expected = ignored[key]
            if expected is not ANY and value != expected:
                raise RemoverError(f"{source}: {key}={value!r} is not supported (expected {expected!r})")
            continue
        if key not in fields:
            raise RemoverError(f"{source}: unknown config key {key!r}; is this the right model folder?")
        values[key] = _coerce(value, fields[key], source)
    missing = [
        name
        for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RemoverError(f"{source}: missing config keys {missing}")
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate(source)
    return config


def read_config(cls: type[ConfigT], path: Path, *, ignored: dict[str, Any]) -> ConfigT:
    """Read and parse a config.json file; a missing or unparsable file is a RemoverError."""
    if not path.is_file():
        raise RemoverError(f"missing config file {path}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RemoverError(f"cannot parse {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise RemoverError(f"{path}: expected a JSON object")
    return config_from_dict(cls, raw, ignored=ignored, source=str(path))


def _coerce(value: Any, field: dataclasses.Field, source: str) -> Any:
    """Check a JSON value against the field's annotation; JSON lists become tuples."""
    kind = str(field.type)
    if kind.startswith("tuple"):
        if not isinstance(value, list):
            raise RemoverError(f"{source}: {field.name} must be a list, got {value!r}")
        return tuple(value)
    checks = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
    }
    if kind in checks and not checks[kind](value):
        raise RemoverError(f"{source}: {field.name} must be of type {kind}, got {value!r}")
    return float(value) if kind == "float" else value


def write_config(config: object, path: Path, class_name: str, extra: dict[str, Any] | None = None) -> None:
    """Write a config dataclass as a diffusers-style config.json (tuples become lists); `extra`
    adds fixed keys other readers need (e.g. use_flow_sigmas for diffusers' scheduler)."""
    values = {"_class_name": class_name, **dataclasses.asdict(config), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2) + "\n")
