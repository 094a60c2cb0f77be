"""Frozen dataclass configs from defaults, a TOML file, CLI flags and `--set key.sub=value` overrides.

Precedence, lowest first: dataclass defaults < TOML file < explicit CLI flags < --set overrides.
Unknown keys are refused with a did-you-mean; values are checked against the field's type.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pocketlm.common.errors import ConfigError

T = TypeVar("T")


def load_config(
    cls: type[T],
    *,
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build a `cls` instance from defaults, a TOML file, flag values (dotted keys allowed) and --set strings."""
    raw: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        try:
            with path.open("rb") as fh:
                file_data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        _deep_merge(raw, file_data)
    for key, value in (flags or {}).items():
        if value is not None:
            _deep_merge(raw, _nest(key, value))
    for item in overrides:
        key, value = parse_override(item)
        _deep_merge(raw, _nest(key, value))
    return from_dict(cls, raw)


def parse_override(item: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); values are TOML literals, else plain strings."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. --set optim.lr=3e-4), got {item!r}")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def from_dict(
    cls: type[T], data: Mapping[str, Any], *, base: T | None = None, prefix: str = ""
) -> T:
    """Construct dataclass `cls` from a nested mapping, starting from `base` (or the defaults)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix + key, [prefix + k for k in fields]))
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        dotted = prefix + name
        current = getattr(base, name) if base is not None else _default_of(field)
        if name not in data:
            if current is dataclasses.MISSING:
                raise ConfigError(f"missing required config value '{dotted}'")
            kwargs[name] = current
            continue
        kwargs[name] = _convert(hints[name], data[name], dotted, current)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"invalid config{' ' + prefix.rstrip('.') if prefix else ''}: {exc}"
        ) from exc


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> plain JSON/TOML-friendly nested dict (tuples become lists, paths strings)."""
    return _plain(dataclasses.asdict(config))


def replace(config: T, **changes: Any) -> T:
    """dataclasses.replace with dotted keys: replace(cfg, **{'optim.lr': 1e-3})."""
    nested: dict[str, Any] = {}
    for key, value in changes.items():
        _deep_merge(nested, _nest(key, value))
    return from_dict(type(config), nested, base=config)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{key}'{hint} (known keys here: {', '.join(sorted(known))})"


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _convert(tp: Any, value: Any, key: str, current: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' is a section; set its fields, e.g. {key}.<field>=...")
        base = current if dataclasses.is_dataclass(current) else None
        return from_dict(tp, value, base=base, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, current)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"'{key}': invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                f"'{key}' must be one of {', '.join(repr(a) for a in args)}; got {value!r}"
            )
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"'{key}' expects a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_convert(item_type, v, f"{key}[{i}]", None) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' expects a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "yes",
            "1",
            "on",
            "false",
            "no",
            "0",
            "off",
        ):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"'{key}' expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"'{key}' expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"'{key}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"'{key}' expects a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{key}' expects a string, got {value!r}")
    if tp is Path:
        return Path(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"'{key}': cannot use {value!r} as {getattr(tp, '__name__', tp)}")
