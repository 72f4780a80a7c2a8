"""What each config field allows, declared beside the field and checked at config load, before any work.

Every field of every config dataclass carries its rule in its metadata, under the key "allowed":

    lr: float = field(default=5e-4, metadata={"allowed": "> 0"})
    kl_kind: str = field(default="low_var_kl", metadata={"allowed": ("k1", "k3", "low_var_kl")})
    path: str | None = field(metadata={"allowed": hf_checkpoint})   # a callable: None if fine, else why not

A rule is one of:
- a comparison `"> 0"`, `">= 1"`, `"< 4"`, `"<= 1"`, or an interval `"[0, 1]"`, `"(0, 1]"`, `"[0, 2147483647]"`:
  the value must also be a finite number (nan and inf never pass);
- `"finite"`: any finite number; `"nonempty"`: a non-empty string; `"any"`: the type is the whole check
  (flags, free text);
- a tuple of the values allowed;
- a callable `value -> str | None` returning why the value is not allowed (it may look at the disk).
A `None` passes any rule where the field's type admits None. Types are checked first (`schema.build`);
relations between fields stay in the dataclass's `__post_init__`. Plain `dataclasses.field` metadata keeps
lower layers (the kernels' loss spec) free of imports from here. `tests/unit/test_config_rules.py`
enumerates every field of `RunConfig` and fails on one without a rule, so a new field states its range.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from typing import Any, Callable

KEY = "allowed"
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
}
_COMPARISON = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(\S+?)\s*,\s*(\S+?)\s*([\])])$")


def rule_of(f: dataclasses.Field) -> Any:
    """The rule a dataclass field declares, or None when it declares none."""
    return f.metadata.get(KEY)


def problem(rule: Any, value: Any) -> str | None:
    """Why `value` breaks `rule` ("must be ..."), or None when it is allowed (or the field states no rule:
    only RunConfig's fields must, which tests/unit/test_config_rules.py enforces)."""
    if rule is None:
        return None
    if callable(rule):
        return rule(value)
    if isinstance(rule, tuple):
        return None if value in rule else f"must be one of {list(rule)}"
    if rule == "any":
        return None
    if rule == "nonempty":
        return None if isinstance(value, str) and value.strip() else "must be a non-empty string"
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return f"must be a finite number{'' if rule == 'finite' else ' ' + _describe(rule)}"
    return None if rule == "finite" or _holds(rule, value) else f"must be {_describe(rule)}"


def valid_rule(rule: Any) -> bool:
    """Whether `rule` is one this module understands (the every-field test uses it)."""
    if callable(rule) or isinstance(rule, tuple) or rule in ("any", "nonempty", "finite"):
        return True
    return isinstance(rule, str) and bool(_COMPARISON.match(rule) or _INTERVAL.match(rule))


def _describe(rule: str) -> str:
    return f"in {rule}" if _INTERVAL.match(rule) else rule


def _holds(rule: str, value: float) -> bool:
    if m := _COMPARISON.match(rule):
        return COMPARISONS[m[1]](value, float(m[2]))
    m = _INTERVAL.match(rule)
    if m is None:
        raise ValueError(f"config rule {rule!r} is not one of the forms in erl_mega/config/rules.py")
    low, high = float(m[2]), float(m[3])
    above = value >= low if m[1] == "[" else value > low
    below = value <= high if m[4] == "]" else value < high
    return above and below
