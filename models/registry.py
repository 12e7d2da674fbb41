"""Policy names on the command line (``--filter``), and the classes they stand for.

A spec is one policy or a cascade of them joined with ``+``; each is ``name`` or
``name:argument``: ``stride:3``, or options ``key=value,key=value`` (``skip:target=0.9``,
models/options.py). The table maps each name to ``"module:Class"`` and is read only when the
name is used, so naming ``none`` or ``stride:N`` never imports a learned filter's dependencies
(the LiteRT interpreter; TensorFlow is never needed to run one). The class turns its argument
into options with ``from_spec(argument)``, refusing bad ones with a `ConfigError` that says what
it expected. Help and error messages are generated from the table, so they list every policy.

A name that is a path (it holds a ``/``, or names an existing directory) is a trained filter
directory (models/filterdir.py): its metadata says whether it is a skip or a reuse filter, and
it takes that policy's options (``runs/my-camera/reuse:target=0.9``). Building a policy checks
its files (metadata, calibration, the model's input size) but loads no weights: that waits for
``open()``, in the process that runs the filter.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError
from models.base import Policy
from models.cascade import Cascade


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
    "skip": PolicyEntry("models.skip:SkipPolicy", "skip[:target=T|threshold=P,max_run=50,window=20,max_misses=1]",
                        "the shipped InFi-Skip filter: skip a frame whose P(a vehicle) is below the threshold "
                        "(calibrated for per-frame count agreement T, default 0.95); it checks itself and "
                        "stops skipping a stream where YOLO finds vehicles it would have skipped"),
    "reuse": PolicyEntry("models.reuse:ReusePolicy",
                         "reuse[:target=T|threshold=P,k=5,k_min=1,homogeneity=1,capacity=256,"
                         "replacement=lfu|lru|fifo,reset=0,max_run=25,pending=0,refer=nearest|latest|agree,check=20]",
                         "the shipped InFi-Reuse filter: answer a frame with an earlier inferred frame's "
                         "answer when its k nearest cached frames (learned distance) agree; it checks itself "
                         "(1 in check=N would-reuse frames probed, 0: off) and lowers its threshold on a "
                         "stream where its reuses are too often wrong"),
    "cascade": PolicyEntry("models.registry:ShippedCascade", "cascade[:target=T,task=vehicles|speech,check=N]",
                           "the shipped best cascade for the task: for vehicles skip then reuse, thresholds "
                           "calibrated together for per-frame count agreement T (default 0.95), both checking "
                           "themselves (check=N: Reuse's self-check, 1 in N would-reuse frames probed, "
                           "default 20, 0: off); for speech "
                           "the audio gates calibrated for InFi accuracy T (the speech apps pick task=speech)"),
    "line": PolicyEntry("models.line_guard:LineGuard", "line:x1,y1,x2,y2[,band=PX,threshold=S,hold=N]",
                        "send every frame in which something moves across the counting line to the model "
                        "(more than S of the pixels within PX of the line, default 1 % and 24 px, and N frames "
                        "after, default 5); else the next policy decides. First in a cascade, it keeps line counts "
                        "whole (vehicle_count.py adds it when given --line)"),
    "framediff": PolicyEntry("models.baselines.framediff:FrameDiff",
                             "framediff[:feature=pixel|edge|area,threshold=X,size=96]",
                             "Reducto's pixel, edge or area difference from the last inferred frame; "
                             "below the threshold, reuse its answer"),
    "vad": PolicyEntry("models.baselines.vad:Vad", "vad:silero[:threshold=P] | vad:webrtc[:MODE][,threshold=S]",
                       "audio: skip a window a voice activity detector finds no speech in (Silero's highest "
                       "speech probability below P, default 0.5; or WebRTC's voiced share below S, default 0.1, "
                       "aggressiveness MODE 0-3, default 3)"),
    "energy": PolicyEntry("models.baselines.vad:EnergyGate", "energy[:threshold=DB]",
                          "audio: skip a window whose RMS level is below DB dBFS (default -50)"),
    "audio-skip": PolicyEntry("models.audio_skip:AudioSkipPolicy", "audio-skip[:target=T|threshold=P]",
                              "audio: the shipped InFi-Skip on log-mel spectrograms: skip a window whose P(the "
                              "recognizer gives more than 2 words) is below P (default: the threshold that kept "
                              "InFi accuracy T, default 0.95)"),
    "motion": PolicyEntry("models.baselines.motion:MotionGate",
                          "motion[:rule=sum|mask|delta|now,threshold=X,size=64,history=500]",
                          "background subtraction (MOG2): while the motion since the last inferred frame "
                          "is below the threshold, reuse its answer"),
    "early-exit": PolicyEntry("models.early_exit:EarlyExitPolicy",
                              "early-exit[:task=speech|vehicles,rule=maxprob|entropy,target=T|threshold=P]",
                              "the binary early-exit network (larq): runs its blocks in order and, at the first "
                              "exit confident that the model is not needed (top probability >= P, default 0.9; "
                              "or normalised entropy <= P, default 0.3; target=T: the threshold calibrated for InFi accuracy T), "
                              "answers exit(k) with the empty result"),
}

#: The form of a trained filter directory on the command line (not a name of the table).
DIRECTORY_USAGE = ("DIR[:options]", "a trained filter directory (infistream filter train): its metadata "
                                    "says which filter it is (skip, reuse, early-exit, audio-skip), and it "
                                    "takes that policy's options")


#: The shipped speech cascade: for each target InFi accuracy, the policy spec calibrated for it
#: on the validation mixtures (`infistream filter calibrate --task speech`).
SPEECH_CASCADE = Path(__file__).resolve().parent / "shipped" / "speech" / "cascade.json"


class ShippedCascade(Cascade):
    """``cascade``: the shipped best cascade of a task.

    Vehicles (the default): the shipped Skip then Reuse filters, at the thresholds calibrated for
    them together (models/shipped/vehicle/cascade.json), which filter more at the same agreement
    than each one calibrated alone (``skip+reuse``). Speech (``task=speech``, which the speech
    apps add to a bare ``cascade``): the spec models/shipped/speech/cascade.json names for the
    target, e.g. an energy gate then the audio Skip, each at its calibrated threshold.
    """

    @classmethod
    def from_spec(cls, argument: str) -> ShippedCascade:
        from models.filterdir import DEFAULT_TARGET, cascade_thresholds, open_filter_dir, shipped_dir
        from models.options import choice, number, parse_options, whole
        from models.reuse import ReusePolicy
        from models.skip import SkipPolicy
        options = parse_options("cascade", argument, {"target": number(0, 1), "task": choice(*CASCADE_TASKS),
                                                      "check": whole(0, 1000)})
        target = options.get("target", DEFAULT_TARGET)
        if options.get("task", "vehicles") == "speech":
            if "check" in options:
                raise ConfigError("--filter cascade: check= is Reuse's self-check, for the vehicle cascade only")
            return cls(speech_cascade_policies(target))
        skip_dir = open_filter_dir(shipped_dir("skip"), "skip")
        reuse_dir = open_filter_dir(shipped_dir("reuse"), "reuse")
        skip_threshold, reuse_threshold = cascade_thresholds(target)
        reuse = ReusePolicy(reuse_dir, reuse_threshold, "reuse", **({"check": options["check"]} if "check" in options else {}))
        reuse.target = target          # the self-check's error budget is 1 - target
        return cls([SkipPolicy(skip_dir, skip_threshold, "skip"), reuse])


CASCADE_TASKS = ("vehicles", "speech")


def speech_cascade_policies(target: float, path: Path | None = None) -> list[Policy]:
    """The policies of the shipped speech cascade calibrated for `target` (its cascade.json)."""
    import json
    from models.filterdir import lookup_target
    path = path or SPEECH_CASCADE
    if not path.exists():
        raise ConfigError(f"no shipped speech cascade at {path}: run `make train` to train and calibrate "
                          f"the shipped audio filters")
    try:
        targets = json.loads(path.read_text(encoding="utf-8"))["targets"]
        table = {float(known): spec for known, spec in targets.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"{path} is not a speech cascade file ({{\"targets\": {{\"0.95\": SPEC}}}}): "
                          f"{error}") from None
    spec = lookup_target(table, target, path, "calibrate one (infistream filter calibrate --task speech) or name "
                                               "the policies with thresholds")
    if not isinstance(spec, str) or "cascade" in spec:
        raise ConfigError(f"{path}: target {target:g} names {spec!r:.80}, not a spec of audio policies")
    policy = parse_policy(spec)
    return list(getattr(policy, "policies", [policy]))


def task_spec(spec: str, task: str) -> str:
    """`spec` as a speech app means it: a bare ``cascade`` (or one with options) is the speech
    cascade there (``cascade:task=speech``) unless a task is named; everything else is unchanged."""
    if task != "speech" or not isinstance(spec, str):
        return spec
    parts = []
    for part in spec.split("+"):
        name, colon, argument = part.strip().partition(":")
        if name == "cascade" and "task=" not in argument:
            part = f"cascade:{argument},task=speech" if argument else "cascade:task=speech"
        parts.append(part)
    return "+".join(parts)


def policy_help() -> str:
    """One line per policy, for ``--filter`` help."""
    forms = [(entry.usage, entry.summary) for entry in POLICIES.values()]
    forms += [DIRECTORY_USAGE, ("A+B", "a cascade: the first policy that decides answers; else the model runs")]
    width = max(len(usage) for usage, _ in forms)
    return "\n".join(f"{usage:<{width}}  {summary}" for usage, summary in forms)


def policy_usages() -> str:
    return ", ".join([entry.usage for entry in POLICIES.values()] + [DIRECTORY_USAGE[0]])


def is_directory_spec(name: str) -> bool:
    """Whether a policy name stands for a filter directory: a path, not a name of the table."""
    return name not in POLICIES and ("/" in name or os.sep in name or Path(name).is_dir())


def directory_policy(path: str, argument: str, name: str) -> Policy:
    """The skip or reuse policy of the trained filter directory at `path` (its metadata says which)."""
    from models.filterdir import open_filter_dir
    directory = open_filter_dir(path)
    return policy_class(directory.kind).from_directory(directory, argument, name=name)


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
        if is_directory_spec(name):
            policy = directory_policy(name, argument, part)
        else:
            policy = policy_class(name).from_spec(argument)
        # A cascade inside a cascade (``line:...+cascade``) is its policies in order: one level,
        # so that the accounting and the offline replay see every policy.
        policies.extend(policy.policies if isinstance(policy, Cascade) and len(parts) > 1 else [policy])
    if len(policies) == 1:
        return policies[0]
    names = [policy.name for policy in policies]
    if len(set(names)) < len(names):
        raise ConfigError(f"--filter {spec!r} names a policy twice")
    return Cascade(policies)
