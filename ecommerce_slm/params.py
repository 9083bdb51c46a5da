"""params.yaml: reading it, and the base of every section's typed, self-validating dataclass.

Each section's dataclass lives beside the code that reads it (`TrainConfig` in stages/train.py,
`EvalConfig` in ecommerce_slm/evaluation.py, ...). A bad value raises ParamError with the full dotted
key and what was expected, e.g. `params.yaml: data.noise.typo: expected a rate in [0, 1], got 1.5`.
Types are checked from the annotations before a section's own range checks run, so every key of every
section rejects a wrong type the same way; CLI flags go through `with_overrides`, the same path.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ecommerce_slm.cli import ProjectError

PARAMS_FILE = Path(os.environ.get("ECOMMERCE_SLM_PARAMS", "params.yaml"))
SECTIONS: dict[str, type[Section]] = {}  # params.yaml section -> its dataclass, filled as modules are imported


class ParamError(ProjectError, ValueError):
    pass


def read_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    try:
        params = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: not found (run from the project root)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ParamError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a mapping of sections")
    return params


def yaml_number(value: Any) -> Any:
    """YAML reads `2e-5` (no dot) as a string; a number field takes it, as users write learning rates that way."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


# What each annotation accepts, and how the error names it.
def _coerce(kind: Any, value: Any) -> tuple[bool, Any, str]:
    if kind is bool:
        return isinstance(value, bool), value, "true or false"
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value, "an integer"
    if kind is float:
        value = yaml_number(value)
        if isinstance(value, str):
            return False, value, "a number"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value, "a finite number"
    if kind is str:
        return isinstance(value, str), value, "a string"
    if kind is list:
        return isinstance(value, list), value, "a list"
    if kind is dict:
        return isinstance(value, dict), value, "a mapping"
    return True, value, ""  # Any: the section's own check decides


class Section:
    """Mixin for a params.yaml section's dataclass: build it from a mapping, checking keys and types.

    A subclass with SECTION set registers itself, so tests can find every section's class.
    """

    SECTION: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.SECTION:
            SECTIONS[cls.SECTION] = cls

    @classmethod
    def load(cls, path: Path = PARAMS_FILE):
        params = read_params(path)
        if cls.SECTION not in params:
            raise ParamError(f"{path}: missing section '{cls.SECTION}'")
        return cls.from_dict(params[cls.SECTION], cls.SECTION, path)

    @classmethod
    def from_dict(cls, values: Any, prefix: str | None = None, path: Path | str = PARAMS_FILE):
        prefix = prefix or cls.SECTION
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ParamError(f"{path}: {prefix}: expected a mapping, got {values!r}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ParamError(f"{path}: {prefix}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
        kwargs = {}
        for name, value in values.items():
            kind = hints[name]
            if isinstance(kind, type) and issubclass(kind, Section):
                value = kind.from_dict(value, f"{prefix}.{name}", path)
            else:
                ok, value, expected = _coerce(kind, value)
                if not ok:
                    raise ParamError(f"{path}: {prefix}.{name}: expected {expected}, got {value!r}")
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except ParamError as err:
            raise ParamError(f"{path}: {prefix}.{err}") from None

    @classmethod
    def keys(cls, prefix: str | None = None) -> list[tuple[str, Any]]:
        """(dotted key, annotation) of every value the section takes, subsections flattened."""
        prefix = prefix or cls.SECTION
        out = []
        for name, kind in typing.get_type_hints(cls).items():
            if name == "SECTION":
                continue
            if isinstance(kind, type) and issubclass(kind, Section):
                out += kind.keys(f"{prefix}.{name}")
            else:
                out.append((f"{prefix}.{name}", kind))
        return out

    def with_overrides(self, source: str, **overrides):
        """This config with some values replaced (CLI flags), validated exactly as params.yaml values are."""
        return type(self).from_dict({**dataclasses.asdict(self), **overrides}, path=source)


def check(condition: bool, key: str, expected: str, value: Any) -> None:
    if not condition:
        raise ParamError(f"{key}: expected {expected}, got {value!r}")


def is_rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def is_pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
