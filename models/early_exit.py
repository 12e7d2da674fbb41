"""The Binary Early-Exit Network (Interspeech'22): a binary network with an exit after every block.

The network (built, trained and exported by models/early_exit_train.py, the only module that
imports TensorFlow and larq for it; this one runs it without them):

    input -> normalise -> stem: Conv2D 3x3 (full precision) -> BatchNorm
          -> block k (k = 0..K-1): QuantConv2D 3x3 (binary) -> MaxPool 2x2 -> BatchNorm
             '-> exit k: GlobalAveragePooling -> Dense(classes) -> softmax (full precision)

A block's convolution is really binary, unlike the seed notebook's layers (seeds.md §3): its
input and its kernel pass through larq's ``ste_sign`` (forward: sign, values in {-1, +1};
backward: the straight-through estimator), and ``weight_clip`` keeps the latent float kernel in
[-1, 1]. The first layer and the exit heads stay full precision, as BNNs usually keep them: the
first layer sees real-valued features, and a head is a few hundred multiply-adds. All exits train
jointly: the loss is the weighted sum of the exits' cross-entropies (equal weights by default).

Inputs: for audio, the log-mel spectrogram of a window (models/audio_features.py, numpy, so the
runtime needs no TensorFlow); for video, the frame shrunk to S x S BGR pixels (models/frames.py,
as Skip reads it). The two classes are 0 "the model is not needed" and 1 "needed": for speech the
InFi rule (the recognizer would give more than N = 2 words), for vehicles at least one vehicle.

The exit rule (`confident`), the same at training, evaluation and run time:
- ``maxprob``: exit k is confident when its highest class probability >= threshold;
- ``entropy``: when its entropy, divided by log(classes) so it lies in [0, 1], <= threshold.
The first confident exit answers. When none is, the last exit's answer stands and is reported as
exit K-1 (the seed notebook reported a nonexistent exit K+1). `exit_report` gives per-exit
accuracy, the exit distribution, exits per class and the multiply-adds (and binary operations)
spent per window against running every block.

Export (`export_early_exit`): one TFLite model per block, ``exit_k.tflite``: model 0 takes the
input and gives (exit 0's probabilities, block 0's features); model k takes block k-1's features
and gives (exit k's probabilities, block k's features); the last gives its probabilities only.
The runtime (`ExitModels`, LiteRT as models/lite.py; this module imports no TensorFlow at its top)
runs them in order and stops at the first confident exit: later blocks are never computed.
Every model file is checked against Keras on export, and so is the chain against the whole network.

Policy (`EarlyExitPolicy`, ``--filter early-exit`` or a trained directory): at the first confident
exit whose answer is "not needed" it decides ``exit(k, result)`` with the task's empty answer
(speech: ``{"needs_recognition": false}``, which the aggregator resolves to the empty transcript;
vehicles: ``{"count": 0}``); a confident "needed", or no confident exit, is no opinion (None): in a
cascade the next policy decides, alone the model runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from models.audio_features import LogMel, LogMelSettings
from models.base import Decision, FramePolicy
from models.lite import load_interpreter
from models.options import Option, choice, number, parse_options
from pipeline.errors import ConfigError
from pipeline.message import Message

KIND = "early-exit"
RULES = ("maxprob", "entropy")
#: Thresholds used when none is given: exit when the top class has 90 % (maxprob), or when the
#: normalised entropy is at most 0.3 (for two classes: the top class has about 94 %).
DEFAULT_THRESHOLDS = {"maxprob": 0.9, "entropy": 0.3}
CLASSES = ("not needed", "needed")
#: The answer of an exit that says "the model is not needed", per task (stages/tasks.py parse_exit).
EMPTY_RESULTS: dict[str, dict[str, Any]] = {"speech": {"needs_recognition": False}, "vehicles": {"count": 0}}
TASKS = tuple(EMPTY_RESULTS)
SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"
SHIPPED_TASK_DIRS = {"speech": "speech", "vehicles": "vehicle"}
FORMAT = 1


# ------------------------------------------------------------------------------- the exit rule

def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of each row of class probabilities (last axis) divided by log(classes): 0 for a
    one-hot row, 1 for a uniform one."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    classes = p.shape[-1]
    return -(p * np.log(p)).sum(-1) / math.log(classes)


def check_rule(rule: str, threshold: float) -> None:
    if rule not in RULES:
        raise ConfigError(f"early-exit rule must be one of {', '.join(RULES)}, got {rule!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ConfigError(f"early-exit threshold must be a number in [0, 1], got {threshold!r}")


def confident(probs: np.ndarray, rule: str, threshold: float) -> np.ndarray:
    """Whether each row of class probabilities is confident enough to exit (see the module)."""
    probs = np.asarray(probs)
    if rule == "maxprob":
        return probs.max(-1) >= threshold
    if rule == "entropy":
        return normalised_entropy(probs) <= threshold
    raise ConfigError(f"early-exit rule must be one of {', '.join(RULES)}, got {rule!r}")


def first_exit(exit_probs: np.ndarray, rule: str, threshold: float) -> tuple[int, bool]:
    """(k, fired) for one input's [K, classes] probabilities: the first confident exit and True,
    or the last exit (K-1, never K) and False when no exit is confident."""
    fired = np.flatnonzero(confident(exit_probs, rule, threshold))
    if len(fired):
        return int(fired[0]), True
    return len(exit_probs) - 1, False


def exit_indices(all_probs: np.ndarray, rule: str, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For [N, K, classes] probabilities: each input's exit (0..K-1), whether it fired (False: no
    exit was confident and the last one answered), and the class the exit answered."""
    all_probs = np.asarray(all_probs)
    sure = confident(all_probs, rule, threshold)                     # [N, K]
    fired = sure.any(1)
    exits = np.where(fired, sure.argmax(1), all_probs.shape[1] - 1)
    predicted = all_probs[np.arange(len(all_probs)), exits].argmax(-1)
    return exits.astype(int), fired, predicted


# ------------------------------------------------------------------------------------- costs

@dataclass(frozen=True)
class Cost:
    """Work of a part of the network per input: full-precision multiply-adds and binary
    multiply-adds (an XNOR and a popcount step each, on hardware with binary kernels)."""

    macs: int = 0
    binary_ops: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.macs + other.macs, self.binary_ops + other.binary_ops)

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def conv_cost(output_hw: tuple[int, int], kernel_hw: tuple[int, int], channels_in: int, channels_out: int,
              binary: bool) -> Cost:
    """One convolution: every output value takes kh * kw * channels_in multiply-adds."""
    ops = int(output_hw[0] * output_hw[1] * kernel_hw[0] * kernel_hw[1] * channels_in * channels_out)
    return Cost(0, ops) if binary else Cost(ops, 0)


def exit_costs(stem: Cost, blocks: Sequence[Cost], heads: Sequence[Cost]) -> list[Cost]:
    """The cost of answering at exit k: the stem, blocks 0..k and heads 0..k (every earlier head
    ran and was not confident)."""
    costs, total = [], stem
    for block, head in zip(blocks, heads):
        total = total + block + head
        costs.append(total)
    return costs


def exit_report(all_probs: np.ndarray, labels: np.ndarray, rule: str, threshold: float,
                costs: Sequence[Cost] | None = None) -> dict[str, Any]:
    """What the exits do on labelled inputs ([N, K, classes] probabilities, [N] classes):
    per-exit accuracy (each exit answering every input), the exit distribution (fired or not),
    exits per class, the early-exit answer's accuracy against the last exit's, and, with
    `costs` (per exit, `exit_costs`), the mean work per input against running every block."""
    all_probs, labels = np.asarray(all_probs), np.asarray(labels).astype(int)
    n, k = all_probs.shape[:2]
    exits, fired, predicted = exit_indices(all_probs, rule, threshold)
    per_exit = (all_probs.argmax(-1) == labels[:, None]).mean(0) if n else np.full(k, np.nan)
    report: dict[str, Any] = {
        "rule": rule, "threshold": float(threshold), "inputs": int(n), "exits": int(k),
        "per_exit_accuracy": [float(a) for a in per_exit],
        "accuracy": float((predicted == labels).mean()) if n else float("nan"),
        "last_exit_accuracy": float(per_exit[-1]),
        "exit_counts": [int((exits == e).sum()) for e in range(k)],
        "none_confident": int((~fired).sum()),
        "per_class_exits": {name: [int(((exits == e) & (labels == c)).sum()) for e in range(k)]
                            for c, name in enumerate(CLASSES[:all_probs.shape[2]])},
        "mean_exit": float(exits.mean()) if n else float("nan"),
        # As a filter: the inputs the policy answers (a confident "not needed"), and InFi's
        # accuracy, where only an answered input that needed the model is an error.
        "filtered": float((fired & (predicted == 0)).mean()) if n else 0.0,
        "infi_accuracy": float(1 - (fired & (predicted == 0) & (labels == 1)).mean()) if n else float("nan"),
    }
    if costs is not None:
        full = costs[-1]
        spent = [costs[e] for e in exits]
        macs = float(np.mean([c.macs for c in spent])) if n else 0.0
        binary = float(np.mean([c.binary_ops for c in spent])) if n else 0.0
        every = full.macs + full.binary_ops
        # Three views of the work saved: the float multiply-adds alone (almost all the stem's,
        # which always runs), the binary ones alone, and all multiply-adds, a binary one counted
        # as one (what the "multiply-adds saved" reads as when nothing is left out).
        report.update({"mean_macs": macs, "mean_binary_ops": binary,
                       "all_blocks": full.to_json(),
                       "macs_saved": 1 - macs / full.macs if full.macs else 0.0,
                       "binary_ops_saved": 1 - binary / full.binary_ops if full.binary_ops else 0.0,
                       "multiply_adds_saved": 1 - (macs + binary) / every if every else 0.0})
    return report


def sweep(all_probs: np.ndarray, labels: np.ndarray, rule: str, costs: Sequence[Cost],
          thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """`exit_report`'s main numbers at each threshold: how accuracy trades against work."""
    rows = []
    for threshold in thresholds:
        r = exit_report(all_probs, labels, rule, threshold, costs)
        rows.append({key: r[key] for key in ("threshold", "accuracy", "last_exit_accuracy", "mean_exit",
                                             "macs_saved", "binary_ops_saved", "multiply_adds_saved", "exit_counts",
                                             "none_confident",
                                             "filtered", "infi_accuracy")})
    return rows


def meets_work_target(row: dict[str, Any], saved: float = 0.5, drop: float = 0.01) -> bool:
    """Whether a report (or sweep row) meets the exits' target: at least `saved` of the binary
    operations saved, and the early-exit accuracy at most `drop` below the last exit's."""
    return row["binary_ops_saved"] >= saved and row["accuracy"] >= row["last_exit_accuracy"] - drop


def pick_work_target(rows: Sequence[dict[str, Any]], saved: float = 0.5, drop: float = 0.01) -> float | None:
    """The threshold of the sweep row that saves the most binary operations among those meeting
    the target (`meets_work_target`); None when none does."""
    meeting = [r for r in rows if meets_work_target(r, saved, drop)]
    return max(meeting, key=lambda r: r["binary_ops_saved"])["threshold"] if meeting else None


def work_target_threshold(all_probs: np.ndarray, labels: np.ndarray, costs: Sequence[Cost], thresholds: Sequence[float],
                          saved: float = 0.5, drop: float = 0.01, rule: str = "maxprob") -> float | None:
    """`pick_work_target` over a sweep of `thresholds` on these labelled inputs."""
    return pick_work_target(sweep(all_probs, labels, rule, costs, thresholds), saved, drop)


def cross_fit_exits(calibration_probs: np.ndarray, calibration_labels: np.ndarray, probs: np.ndarray,
                    labels: np.ndarray, fold: np.ndarray, costs: Sequence[Cost], thresholds: Sequence[float],
                    saved: float = 0.5, drop: float = 0.01, rule: str = "maxprob") -> dict[str, Any]:
    """The exits' target read on held-out inputs with thresholds picked on `calibration_*` plus the
    OTHER folds of the held-out inputs (`fold`: a fold index per input): each fold is scored at
    its own pick and never picks for itself. A fold whose calibration set meets the target at no
    threshold runs every block (threshold 1.0 for maxprob, 0.0 for entropy). Returns the pooled
    accuracy, the last exit's, the binary operations saved and the picks."""
    probs, labels, fold = np.asarray(probs), np.asarray(labels).astype(int), np.asarray(fold)
    exits = np.zeros(len(labels), int)
    answered = np.zeros(len(labels), int)
    picks = []
    never = 1.0 if rule == "maxprob" else 0.0
    for k in sorted(set(fold.tolist())):
        scored, rest = fold == k, fold != k
        picked = work_target_threshold(np.concatenate([calibration_probs, probs[rest]]),
                                       np.concatenate([calibration_labels, labels[rest]]), costs, thresholds,
                                       saved, drop, rule)
        exits[scored], _, answered[scored] = exit_indices(probs[scored], rule, never if picked is None else picked)
        picks.append({"fold": int(k), "threshold": picked, "scored": int(scored.sum())})
    spent = np.asarray([costs[e].binary_ops for e in exits], np.float64)
    full = costs[-1].binary_ops
    return {"accuracy": float((answered == labels).mean()) if len(labels) else float("nan"),
            "last_exit_accuracy": float((probs[:, -1].argmax(-1) == labels).mean()) if len(labels) else float("nan"),
            "binary_ops_saved": float(1 - spent.mean() / full) if len(labels) and full else 0.0,
            "folds": picks}


def add_train_arguments(parser: Any) -> None:
    """``infistream filter train early-exit`` options (models/cli.py adds them to its train command)."""
    group = parser.add_argument_group("early-exit")
    group.add_argument("--task", choices=TASKS, default="speech",
                       help="early-exit: speech (audio windows of a mixture directory) or vehicles (frames of --clips)")
    group.add_argument("--mixtures", type=Path, default=None,
                       help="early-exit --task speech: the mixture directory (infistream filter mixtures; "
                            "default .cache/speech-mixtures/seed-0)")
    group.add_argument("--words", type=int, default=2, help="early-exit --task speech: the rule's N (default 2)")
    group.add_argument("--rule", choices=RULES, default="maxprob",
                       help="early-exit: the exit rule reported at training (default maxprob)")
    group.add_argument("--exit-threshold", type=float, default=None,
                       help="early-exit: the rule's threshold (default 0.9 for maxprob, 0.3 for entropy)")
    group.add_argument("--exit-stem", type=int, default=None,
                       help="early-exit: filters of the full-precision first convolution (default 8)")
    group.add_argument("--exit-filters", type=int, nargs="+", default=None, metavar="F",
                       help="early-exit: filters of each binary block, one exit after each (default 16 32 64 128)")
    group.add_argument("--exit-distill", type=float, default=0.0, metavar="A",
                       help="early-exit: self-distillation weight in [0, 1): each early exit also learns the last "
                            "exit's softened answer with weight A (default 0, off, as the shipped networks were "
                            "trained; docs/early-exit.md has what 0.5 did on the speech mixtures)")
    group.add_argument("--exit-threads", type=int, default=None,
                       help="early-exit: TensorFlow threads while training (default 2; the shipped speech "
                            "network was trained with 1)")


def run_train_command(args: Any) -> int:
    """``infistream filter train early-exit --task speech|vehicles``: train, report, write the directory."""
    from models.early_exit_train import ExitOptions, train_speech, train_vehicles
    threshold = args.exit_threshold
    if threshold is not None:
        check_rule(args.rule, threshold)
    arch: dict[str, Any] = {}
    stem, filters = getattr(args, "exit_stem", None), getattr(args, "exit_filters", None)
    if stem is not None:
        if stem < 1:
            raise ConfigError(f"--exit-stem must be at least 1 filter, got {stem}")
        arch["stem"] = stem
    if filters is not None:
        if not filters or min(filters) < 1:
            raise ConfigError(f"--exit-filters takes one filter count >= 1 per block, got {filters}")
        arch["filters"] = tuple(filters)
    threads = getattr(args, "exit_threads", None)
    if threads is not None and threads < 1:
        raise ConfigError(f"--exit-threads must be at least 1, got {threads}")
    distill = getattr(args, "exit_distill", 0.0)
    if not 0 <= distill < 1:
        raise ConfigError(f"--exit-distill must lie in [0, 1), got {distill}")
    options = ExitOptions(epochs=args.epochs or ExitOptions.epochs, seed=args.seed, rule=args.rule,
                          threshold=threshold, distill=distill, **({"threads": threads} if threads else {}))
    out = args.out or SHIPPED_ROOT / SHIPPED_TASK_DIRS[args.task] / KIND
    if args.task == "speech":
        from models.mixtures import default_mixture_dir
        mixtures = args.mixtures or default_mixture_dir()
        if not (Path(mixtures) / "manifest.json").exists():
            raise ConfigError(f"no speech mixtures at {mixtures}: build them with `infistream filter mixtures "
                              f"--label` or name them with --mixtures")
        training = train_speech(mixtures, out, options, words=args.words, **arch)
    else:
        from models.dataset import default_clips
        clips = args.clips or default_clips()
        training = train_vehicles(clips, out, options, size=args.size or 32, exclude=args.exclude,
                                  progress=args.progress, **arch)
    print(f"early-exit ({args.task}): {training.seconds:.0f} s; written to {out}")
    return 0


# ------------------------------------------------------------------------- runtime (LiteRT)

def _interpreter(tflite: bytes | Path):
    """`load_interpreter` with its tensors allocated (an exit part is run as soon as it is loaded)."""
    runner = load_interpreter(tflite)
    try:
        runner.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ConfigError(f"{tflite if isinstance(tflite, Path) else 'model'}: not a model the LiteRT interpreter "
                          f"can load ({error}); export the filter again") from None
    return runner


class ExitModels:
    """The K parts of an exported network, run block after block (LiteRT, one thread).

    `invocations[k]` counts the runs of part k, so what was computed can be checked."""

    def __init__(self, sources: Sequence[bytes | Path]):
        self.sources = list(sources)
        self.invocations = [0] * len(self.sources)
        self._runners: list = []

    @classmethod
    def from_bytes(cls, models: Sequence[bytes]) -> ExitModels:
        runner = cls(models)
        runner.open()
        return runner

    @property
    def exits(self) -> int:
        return len(self.sources)

    def open(self) -> None:
        if self._runners:
            return
        runners = []
        for k, source in enumerate(self.sources):
            runner = _interpreter(source)
            (inp,) = runner.get_input_details()
            probs = [d["index"] for d in runner.get_output_details() if len(d["shape"]) == 2]
            features = [d["index"] for d in runner.get_output_details() if len(d["shape"]) > 2]
            last = k == len(self.sources) - 1
            if len(probs) != 1 or len(features) != (0 if last else 1):
                raise ConfigError(f"early-exit part {k} ({source if isinstance(source, Path) else 'model'}) "
                                  f"should give [1, classes] probabilities{'' if last else ' and block features'}, "
                                  f"gives {[list(d['shape']) for d in runner.get_output_details()]}")
            runners.append((runner, inp["index"], tuple(int(d) for d in inp["shape"]), probs[0],
                            features[0] if features else None))
        self._runners = runners

    def close(self) -> None:
        self._runners = []

    def input_shape(self, k: int = 0) -> tuple[int, ...]:
        return self._runners[k][2][1:]

    def run_part(self, k: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Part k on one input (without the batch axis): (probabilities [classes], features or None)."""
        if not self._runners:
            raise RuntimeError("open() the early-exit models before running them")
        runner, inp, shape, probs, features = self._runners[k]
        runner.set_tensor(inp, np.asarray(x, np.float32).reshape(shape))
        runner.invoke()
        self.invocations[k] += 1
        return (runner.get_tensor(probs)[0].copy(),
                runner.get_tensor(features)[0].copy() if features is not None else None)

    def run_until(self, x: np.ndarray, rule: str, threshold: float) -> tuple[int, np.ndarray, bool]:
        """Run parts in order until an exit is confident: (exit k, its probabilities, fired). With
        no confident exit, every part ran and the last exit answers (k = K-1, fired False)."""
        features = x
        for k in range(self.exits):
            probs, features = self.run_part(k, features)
            if confident(probs, rule, threshold):
                return k, probs, True
        return self.exits - 1, probs, False

    def run_all(self, x: np.ndarray) -> np.ndarray:
        """Every exit's probabilities [K, classes] (evaluation: runs every part)."""
        rows, features = [], x
        for k in range(self.exits):
            probs, features = self.run_part(k, features)
            rows.append(probs)
        return np.stack(rows)


@dataclass(frozen=True)
class EarlyExitDir:
    """A checked early-exit filter directory (``kind: early-exit``): metadata.json and exit_k.tflite."""

    path: Path
    metadata: dict[str, Any] = field(repr=False)
    kind: str = KIND

    @property
    def exits(self) -> int:
        return int(self.metadata["exits"])

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def input_kind(self) -> str:
        return self.metadata["input"]["kind"]

    def model_paths(self) -> list[Path]:
        return [self.path / f"exit_{k}.tflite" for k in range(self.exits)]

    def costs(self) -> list[Cost]:
        return [Cost(**c) for c in self.metadata["costs"]["exits"]]


def open_early_exit_dir(path: Path | str, metadata: dict[str, Any]) -> EarlyExitDir:
    """Check an early-exit directory whose metadata.json has been read (models/filterdir.py calls
    this for ``kind: early-exit``): task, input, exits, costs and every part's model file."""
    path = Path(path)
    where = path / "metadata.json"
    exits, task, inputs = metadata.get("exits"), metadata.get("task"), metadata.get("input")
    if type(exits) is not int or exits < 1:
        raise ConfigError(f"{where}: \"exits\" must be a whole number >= 1, got {exits!r:.40}")
    if task not in TASKS:
        raise ConfigError(f"{where}: \"task\" must be one of {', '.join(TASKS)}, got {task!r:.40}")
    if not isinstance(inputs, dict) or inputs.get("kind") not in ("audio", "video"):
        raise ConfigError(f"{where}: \"input\" must say {{\"kind\": \"audio\"|\"video\", ...}}, got {inputs!r:.80}")
    try:
        if inputs["kind"] == "audio":
            shape = (*LogMelSettings.from_json(inputs.get("features", {})).shape, 1)
        else:
            shape = (int(inputs["size"]), int(inputs["size"]), 3)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"{where}: bad \"input\" ({error})") from None
    costs = metadata.get("costs", {}).get("exits") if isinstance(metadata.get("costs"), dict) else None
    if not isinstance(costs, list) or len(costs) != exits:
        raise ConfigError(f"{where}: \"costs\" must hold \"exits\": one entry per exit ({exits})")
    directory = EarlyExitDir(path, metadata)
    for k, model in enumerate(directory.model_paths()):
        if not model.is_file():
            raise ConfigError(f"early-exit model {model} not found (metadata.json says {exits} exits)")
    first = _interpreter(directory.model_paths()[0]).get_input_details()[0]
    if tuple(int(d) for d in first["shape"]) != (1, *shape):
        raise ConfigError(f"{directory.model_paths()[0]} takes {list(first['shape'])}; metadata.json's input "
                          f"says {[1, *shape]}")
    return directory


def shipped_early_exit(task: str) -> Path:
    path = SHIPPED_ROOT / SHIPPED_TASK_DIRS[task] / KIND
    if not (path / "metadata.json").exists():
        raise ConfigError(f"no shipped early-exit filter for {task} at {path}: train one with "
                          f"`infistream filter train early-exit --task {task} --out DIR` and name DIR in --filter")
    return path


EARLY_EXIT_OPTIONS: dict[str, Option] = {"rule": choice(*RULES), "threshold": number(0, 1), "task": choice(*TASKS),
                                         "target": number(0, 1)}


def calibrated_threshold(directory: EarlyExitDir, target: float, rule: str, name: str) -> float:
    """The maxprob threshold calibration.json holds for `target`: InFi accuracy for speech
    (``infistream filter calibrate --task speech DIR``), per-frame count agreement for vehicles
    (``infistream filter calibrate DIR``, as Skip); calibration is done for the maxprob rule only."""
    from models.filterdir import lookup_target, read_json_file, threshold_table
    path = directory.path / "calibration.json"
    if rule != "maxprob":
        raise ConfigError(f"--filter {name}: target= is calibrated for rule=maxprob; give threshold= for rule={rule}")
    if not path.exists():
        how = "--task speech " if directory.task == "speech" else ""
        raise ConfigError(f"--filter {name}: {directory.path} has no calibration.json; calibrate it "
                          f"(`infistream filter calibrate {how}{directory.path}`) or give threshold=")
    table = threshold_table(read_json_file(path, "calibration"), path, ("threshold",))
    return lookup_target(table, target, path, "calibrate it for that target or give threshold=")["threshold"]


@dataclass
class ExitStats:
    """What the live policy decided: inputs answered at each exit ("not needed"), inputs an exit
    was confident needed the model, and inputs no exit was sure of (the filter stage logs it)."""

    exited: list[int]
    needed: list[int]
    none_confident: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EarlyExitPolicy(FramePolicy):
    """Runs the exits of one input in order; answers ``exit(k, empty result)`` at the first
    confident exit that says "not needed", else has no opinion.

    Options: ``rule=maxprob|entropy`` (default maxprob), ``threshold=P`` (default 0.9 for maxprob,
    0.3 for entropy) or ``target=T`` (the maxprob threshold calibration.json holds for InFi accuracy
    T); ``task=speech|vehicles`` picks the shipped filter when no directory is named.
    `stats` counts the inputs answered at each exit, those confident "needed" and those no exit
    was sure of; `model.invocations` the parts run.
    """

    kind = KIND

    def __init__(self, directory: EarlyExitDir, rule: str = "maxprob", threshold: float | None = None,
                 name: str = KIND):
        threshold = DEFAULT_THRESHOLDS.get(rule, 0.0) if threshold is None else float(threshold)
        check_rule(rule, threshold)
        self.directory = directory
        self.rule, self.threshold, self.name = rule, threshold, name
        self.task = directory.task
        self.input_kind = directory.input_kind
        self.model = ExitModels(directory.model_paths())
        inputs = directory.metadata["input"]
        self._log_mel = LogMel(LogMelSettings.from_json(inputs.get("features", {}))) \
            if self.input_kind == "audio" else None
        self.size = int(inputs["size"]) if self.input_kind == "video" else 0
        self._exits = [Decision("exit", exit=k, result=dict(EMPTY_RESULTS[self.task]), policy=name)
                       for k in range(directory.exits)]
        self.stats = ExitStats([0] * directory.exits, [0] * directory.exits)

    @classmethod
    def from_spec(cls, argument: str) -> EarlyExitPolicy:
        name = f"{KIND}:{argument}" if argument else KIND
        options = parse_options(name, argument, EARLY_EXIT_OPTIONS)
        path = shipped_early_exit(options.pop("task", "speech"))
        return cls.from_directory(path, "", name=name, options=options)

    @classmethod
    def from_directory(cls, path: Path | str | EarlyExitDir, argument: str = "", name: str | None = None,
                       options: dict[str, Any] | None = None) -> EarlyExitPolicy:
        if isinstance(path, EarlyExitDir):
            directory = path
        else:
            from models.filterdir import open_filter_dir
            directory = open_filter_dir(path, KIND)
        name = name or str(directory.path)
        options = dict(options) if options is not None else parse_options(name, argument, EARLY_EXIT_OPTIONS)
        task = options.pop("task", None)
        if task is not None and task != directory.task:
            raise ConfigError(f"--filter {name}: the filter at {directory.path} is for {directory.task}, not {task}")
        rule, threshold = options.get("rule", "maxprob"), options.get("threshold")
        if "target" in options:
            if threshold is not None:
                raise ConfigError(f"--filter {name}: give target= (a calibrated threshold) or threshold=, not both")
            threshold = calibrated_threshold(directory, options["target"], rule, name)
        return cls(directory, rule, threshold, name)

    def open(self) -> None:
        self.model.open()

    def close(self) -> None:
        self.model.close()

    def features(self, data: np.ndarray) -> np.ndarray:
        """The network's input for one audio window (log-mel) or video frame (shrunk)."""
        if self._log_mel is not None:
            return self._log_mel(data)[..., None]
        from models.frames import reduce_frame
        return reduce_frame(data, self.size).astype(np.float32)

    def prepare(self, data: np.ndarray) -> np.ndarray:
        """Every exit's probabilities, flattened [K * classes] (evaluation replays thresholds on
        them; the live path, `decide`, stops at the first confident exit instead)."""
        return self.model.run_all(self.features(data)).ravel()

    def decide_prepared(self, stream: str, seq: int, features: np.ndarray) -> Decision | None:
        probs = np.asarray(features).reshape(self.model.exits, -1)
        k, fired = first_exit(probs, self.rule, self.threshold)
        return self._decision(k, probs[k], fired)

    def decide(self, message: Message) -> Decision | None:
        if message.kind != self.input_kind or not message.arrays:
            return None                     # not an input of this filter's kind: no opinion
        k, probs, fired = self.model.run_until(self.features(message.arrays[0]), self.rule, self.threshold)
        return self._decision(k, probs, fired)

    def _decision(self, k: int, probs: np.ndarray, fired: bool) -> Decision | None:
        if not fired:
            self.stats.none_confident += 1
            return None
        if int(np.argmax(probs)) == 0:
            self.stats.exited[k] += 1
            return self._exits[k]
        self.stats.needed[k] += 1
        return None

    def threshold_grid(self) -> np.ndarray:
        """Thresholds in the order that filters more along the grid, as calibration expects. Unlike
        the other frame policies' thresholds, a larger maxprob threshold filters less, so its grid
        decreases (1.0: never exit early, unless an exit's probability rounds to 1; 0.5: every input
        exits at block 0): 0.01 apart, and log-spaced between 0.99 and 0.9999, where a trained
        network's confident exits gather (on the vehicles network's validation frames 0.99 to 1.0
        was one step from 9.7 % filtered to none)."""
        if self.rule != "maxprob":
            return np.linspace(0.0, 1.0, 101)
        return np.unique(np.round(np.concatenate([np.linspace(0.5, 1.0, 51), 1 - np.geomspace(1e-4, 1e-2, 13)]),
                                  6))[::-1]

