"""A small declarative validator for YAML configs: unknown keys, wrong types and missing keys are errors."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

REQUIRED = object()


@dataclass(frozen=True)
class Opt:
    """A field: `kind` is a Python type, a tuple of types, a nested schema dict, ListOf, OneOf or AnyOf."""

    kind: Any
    default: Any = REQUIRED
    help: str = ""


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class OneOf:
    values: tuple


@dataclass(frozen=True)
class MapOf:
    """A dict with free keys (str or int) whose values follow `value`."""

    value: Any


NUMBER = (int, float)
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false", list: "a list", dict: "a mapping"}


def _type_name(kind) -> str:
    if isinstance(kind, tuple):
        return " or ".join(_type_name(k) for k in kind)
    if isinstance(kind, dict):
        return "a mapping"
    if isinstance(kind, (ListOf,)):
        return "a list"
    if isinstance(kind, MapOf):
        return "a mapping"
    if isinstance(kind, OneOf):
        return "one of " + ", ".join(repr(v) for v in kind.values)
    if kind is type(None):
        return "null"
    return _TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def _check_scalar(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if k is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if k is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if k is not int and k is not float and isinstance(value, k):
            return True
    return False


def validate(value, kind, where: str, source: str):
    """Return `value` with defaults filled in, or raise ConfigError naming the key path."""
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(value).__name__}; fix the config")
        unknown = sorted(set(value) - set(kind))
        if unknown:
            known = ", ".join(sorted(kind))
            raise ConfigError(f"{source}: unknown key '{_join(where, unknown[0])}'; known keys here: {known}")
        out = {}
        for key, opt in kind.items():
            path = _join(where, key)
            if key in value:
                out[key] = validate(value[key], opt.kind, path, source)
            elif opt.default is REQUIRED:
                raise ConfigError(f"{source}: missing required key '{path}' ({opt.help or _type_name(opt.kind)}); add it")
            elif isinstance(opt.kind, dict) and isinstance(opt.default, dict):
                out[key] = validate(copy.deepcopy(opt.default), opt.kind, path, source)
            else:
                out[key] = copy.deepcopy(opt.default)
        return out
    if isinstance(kind, ListOf):
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{where}' must be a list, got {type(value).__name__}; fix the config")
        return [validate(v, kind.item, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if isinstance(kind, MapOf):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(value).__name__}; fix the config")
        return {k: validate(v, kind.value, _join(where, str(k)), source) for k, v in value.items()}
    if isinstance(kind, OneOf):
        if value not in kind.values:
            raise ConfigError(f"{source}: '{where}' is {value!r}; it must be {_type_name(kind)}")
        return value
    if not _check_scalar(value, kind):
        raise ConfigError(f"{source}: '{where}' must be {_type_name(kind)}, got {value!r}; fix the config")
    if isinstance(value, int) and not isinstance(value, bool) and kind is float:
        return float(value)
    return value


def _join(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)
