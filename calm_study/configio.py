"""Strict conversion between YAML documents and frozen dataclasses.

Every problem in a document is collected and reported at once, each with its key path and, for a misspelt key,
a "did you mean". PyYAML's SafeLoader follows YAML 1.1, which reads `1e-5` as a *string*; `load_yaml` uses a loader
that reads it as a float (YAML 1.2 behaviour) and refuses duplicate keys, which SafeLoader silently overwrites.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration document has problems; `problems` lists them all, each naming its key path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) in the configuration:\n{lines}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader + YAML 1.2 floats (`1e-5`) + an error on duplicate keys."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                message = f"duplicate key {key!r} (the second would silently replace the first)"
                raise yaml.constructor.ConstructorError(None, None, message, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_FLOAT_1_2 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789.":
    resolvers = _StrictLoader.yaml_implicit_resolvers.get(_first, [])
    _StrictLoader.yaml_implicit_resolvers[_first] = [(t, rx) for t, rx in resolvers if t != "tag:yaml.org,2002:float"]
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text with the strict loader; syntax errors become a ConfigError naming the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader derives from SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(source, [f"YAML syntax: {e}".replace("\n", " ")]) from None


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file with the strict loader."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read the file: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), [f"not a text file (byte {e.start} is not UTF-8): a study or trial file is YAML "
                                      "text"]) from None
    return parse_yaml(text, str(path))


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest option, or ''."""
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false"}.get(
            tp.__name__, tp.__name__
        )
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return str(tp)


def _convert(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    """Convert a YAML value to type `tp`, appending a message to `errors` when it does not fit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(value, non_none[0], path, errors)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping with keys {sorted(f.name for f in dataclasses.fields(tp))}, "
                          f"got {value!r}")
            return tp()
        return from_dict(tp, value, path, errors)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            return ()
        (item_tp, *_) = typing.get_args(tp)
        return tuple(_convert(v, item_tp, f"{path}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return {}
        value_tp = typing.get_args(tp)[1]
        return {k: _convert(v, value_tp, f"{path}.{k}", errors) for k, v in value.items()}
    if tp is Any:
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"unsupported config type {tp} at {path}")
    if not ok:
        hint = " (write a number like 1.0e-5, without quotes)" if tp is float and isinstance(value, str) else ""
        errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}{hint}")
        return None
    return float(value) if tp is float else value


def from_dict(cls: type, data: dict, path: str, errors: list[str]) -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are appended to `errors`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            errors.append(f"{where}: unknown key{did_you_mean(key, names)}; valid keys: {', '.join(names)}")
            continue
        converted = _convert(value, hints[key], where, errors)
        if converted is not None or value is None:
            kwargs[key] = converted
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        errors.append(f"{path or cls.__name__}: {e}")
        return cls()


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict/list structure (tuples become lists), suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_differences(saved: dict, cfg: Any) -> list[str]:
    """'key: a -> b' for every flattened key whose value differs between a stored config (a checkpoint's,
    a manifest's) and `cfg` (a config dataclass, e.g. a TrialConfig).

    A key the stored config lacks was added to calm_study after it was written: it matches when `cfg` has that
    field's default (the behaviour the stored run had). A key `cfg` lacks was removed from calm_study: ignored.
    """
    a, b = flatten(saved), flatten(to_dict(cfg))
    defaults = flatten(to_dict(type(cfg)()))
    diffs = []
    for k in sorted(b):
        before = a[k] if k in a else defaults.get(k)
        if before != b[k]:
            added = "" if k in a else " (a field added since; the stored run had its default)"
            diffs.append(f"{k}: {before!r} -> {b[k]!r}{added}")
    return diffs


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: `override` merged into `base`, recursively for nested mappings."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_path(d: dict, dotted: str, value: Any) -> dict:
    """A new dict with `dotted` (e.g. 'loss.alpha') set to `value`, creating mappings on the way."""
    head, _, rest = dotted.partition(".")
    out = dict(d)
    if rest:
        child = out.get(head)
        out[head] = set_path(child if isinstance(child, dict) else {}, rest, value)
    else:
        out[head] = value
    return out


def dataclass_paths(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key path of a dataclass type, e.g. ['model.clip', ..., 'loss.alpha']."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        out.extend(dataclass_paths(tp, key) if dataclasses.is_dataclass(tp) else [key])
    return out
