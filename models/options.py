"""A policy's options on the command line: ``name:key=value,key=value`` (``skip:target=0.9``).

Each policy declares the options it takes as a table of `Option`s (how to read the value, and
what it accepts, for messages); `parse_options` turns the text after ``name:`` into a dict of
typed values, refusing an unknown key or a bad value with a `ConfigError` that lists every
option the policy takes. Only the keys given appear in the result: the policy's own defaults
stay in the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One option: `read` turns the text into the value (ValueError when it cannot); `accepts`
    says what it takes, for help and errors (``0..1``, ``lfu|lru|fifo``)."""

    read: Callable[[str], Any]
    accepts: str


def number(low: float, high: float) -> Option:
    """A finite number between `low` and `high` (inclusive)."""

    def read(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError
        return value

    return Option(read, f"{low:g}..{high:g}")


def whole(low: int, high: int | None = None) -> Option:
    """A whole number >= `low` (and <= `high`)."""

    def read(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise ValueError
        return value

    return Option(read, f"{low}..{high}" if high is not None else f"a whole number >= {low}")


def choice(*names: str) -> Option:
    def read(text: str) -> str:
        if text not in names:
            raise ValueError
        return text

    return Option(read, "|".join(names))


def stated_number(value: Any) -> float | None:
    """A number a file states (JSON int or float, not a bool) as a float; None for anything else."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def options_usage(accepted: dict[str, Option]) -> str:
    """``target=0..1, threshold=0..1`` for help and errors."""
    return ", ".join(f"{key}={option.accepts}" for key, option in accepted.items())


def parse_options(name: str, argument: str, accepted: dict[str, Option]) -> dict[str, Any]:
    """The options in `argument` (``key=value,key=value``) of the policy called `name`."""
    values: dict[str, Any] = {}
    if not argument:
        return values
    takes = f"it takes {options_usage(accepted)}" if accepted else "it takes no options"
    for item in argument.split(","):
        key, equals, text = (part.strip() for part in item.partition("="))
        if not equals or not key:
            raise ConfigError(f"--filter {name}:{argument}: options are key=value pairs joined with commas; {takes}")
        if key not in accepted:
            raise ConfigError(f"--filter {name}: unknown option {key!r}; {takes}")
        if key in values:
            raise ConfigError(f"--filter {name}: option {key!r} given twice")
        try:
            values[key] = accepted[key].read(text)
        except ValueError:
            raise ConfigError(f"--filter {name}: {key} must be {accepted[key].accepts}, got {text!r}") from None
    return values
