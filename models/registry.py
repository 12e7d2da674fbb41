"""Policy names on the command line (``--filter``), and the classes they stand for.

A spec is one policy or a cascade of them joined with ``+``; each is ``name`` or
``name:argument`` (``stride:3``). The table maps each name to ``"module:Class"`` and is read
only when the name is used, so naming ``none`` or ``stride:N`` never imports a learned filter's
dependencies (TensorFlow, the LiteRT interpreter). The class turns its argument into options
with ``from_spec(argument)``, refusing bad ones with a `ConfigError` that says what it expected.
Help and error messages are generated from the table, so they list every policy there is.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pipeline.errors import ConfigError
from models.base import Policy


@dataclass(frozen=True)
class PolicyEntry:
    """One name of the table: the class it builds (``module:Class``), its usage, one line of help."""

    target: str
    usage: str
    summary: str


POLICIES: dict[str, PolicyEntry] = {
    "none": PolicyEntry("models.baselines.stride:InferAll", "none",
                        "no filtering: every input goes to the model (the reference)"),
    "stride": PolicyEntry("models.baselines.stride:Stride", "stride:N",
                          "infer one input in N, reuse its answer for the N-1 after it"),
}


def policy_help() -> str:
    """One line per policy, for ``--filter`` help."""
    width = max(len(entry.usage) for entry in POLICIES.values())
    lines = [f"{entry.usage:<{width}}  {entry.summary}" for entry in POLICIES.values()]
    return "\n".join(lines + ["A+B  a cascade: the first policy that decides answers; else the model runs"])


def policy_usages() -> str:
    return ", ".join(entry.usage for entry in POLICIES.values())


def policy_class(name: str) -> type[Policy]:
    """The class registered as `name`, imported now."""
    entry = POLICIES.get(name)
    if entry is None:
        raise ConfigError(f"unknown filter policy {name!r}; expected one of: {policy_usages()} "
                          f"(or several joined with +)")
    module_name, _, class_name = entry.target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Policy)):   # a broken table entry: our bug
        raise TypeError(f"filter policy {name!r} names {entry.target}, which is not a Policy")
    return cls


def parse_policy(spec: str) -> Policy:
    """The policy, or the cascade of policies, that `spec` names (``none``, ``stride:3``, ``a+b``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"--filter needs a policy: one of {policy_usages()} (or several joined with +)")
    parts = [part.strip() for part in spec.split("+")]
    if any(not part for part in parts):
        raise ConfigError(f"--filter {spec!r} has an empty part; join policies as A+B")
    policies = []
    for part in parts:
        name, _, argument = part.partition(":")
        policies.append(policy_class(name).from_spec(argument))
    if len(policies) == 1:
        return policies[0]
    names = [policy.name for policy in policies]
    if len(set(names)) < len(names):
        raise ConfigError(f"--filter {spec!r} names a policy twice")
    from models.cascade import Cascade
    return Cascade(policies)
