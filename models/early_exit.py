"""The Binary Early-Exit Network (Interspeech'22): a binary network with an exit after every block.

The network (training side, TensorFlow + larq, imported only by the functions that train and
export):

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

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from models.audio_features import SAMPLE_RATE, LogMel, LogMelSettings
from models.base import Decision, FramePolicy
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
        report.update({"mean_macs": macs, "mean_binary_ops": binary,
                       "all_blocks": full.to_json(),
                       "macs_saved": 1 - macs / full.macs if full.macs else 0.0,
                       "binary_ops_saved": 1 - binary / full.binary_ops if full.binary_ops else 0.0})
    return report


def sweep(all_probs: np.ndarray, labels: np.ndarray, rule: str, costs: Sequence[Cost],
          thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """`exit_report`'s main numbers at each threshold: how accuracy trades against work."""
    rows = []
    for threshold in thresholds:
        r = exit_report(all_probs, labels, rule, threshold, costs)
        rows.append({key: r[key] for key in ("threshold", "accuracy", "last_exit_accuracy", "mean_exit",
                                             "macs_saved", "binary_ops_saved", "exit_counts", "none_confident",
                                             "filtered", "infi_accuracy")})
    return rows


# ----------------------------------------------------------------------- training (TF + larq)

@dataclass(frozen=True)
class ExitArchitecture:
    """What shapes the network; stored in metadata.json (``architecture``)."""

    input_shape: tuple[int, int, int]          # audio: (frames, mels, 1); video: (S, S, 3)
    input_mean: float = 0.0                    # the input is normalised as (x - mean) / std inside
    input_std: float = 1.0
    stem: int = 8                              # full-precision first conv: filters
    stem_stride: int = 2
    filters: tuple[int, ...] = (16, 32, 64, 128)   # one binary block per entry: K exits
    classes: int = 2

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ExitArchitecture:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in document.items()})


@dataclass
class ExitNetwork:
    """The Keras network (`model`: input -> K probability outputs) and its parts, sharing weights:
    `parts[k]` maps block k's input to (exit k's probabilities, block k's features)."""

    arch: ExitArchitecture
    model: Any
    parts: list
    costs: dict[str, Any]                      # stem, blocks, heads, exits (per exit, cumulative)

    @property
    def exit_costs(self) -> list[Cost]:
        return [Cost(**c) for c in self.costs["exits"]]

    def binary_layers(self) -> list:
        import larq
        return [layer for layer in self.model.layers if isinstance(layer, larq.layers.QuantConv2D)]


def build_network(arch: ExitArchitecture) -> ExitNetwork:
    """The network of `arch` (see the module's docstring), with its per-part costs counted from
    the layer shapes."""
    import larq
    import tensorflow as tf
    layers = tf.keras.layers

    def block_layers(k: int, filters: int) -> list:
        return [larq.layers.QuantConv2D(filters, 3, padding="same", pad_values=1.0, use_bias=False,
                                        input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                        kernel_constraint="weight_clip", name=f"block{k}_binary_conv"),
                layers.MaxPooling2D(2, padding="same", name=f"block{k}_pool"),
                layers.BatchNormalization(momentum=0.9, name=f"block{k}_norm")]

    def head_layers(k: int) -> list:
        return [layers.GlobalAveragePooling2D(name=f"exit{k}_pool"),
                layers.Dense(arch.classes, name=f"exit{k}_dense"),
                layers.Softmax(name=f"exit{k}")]

    def chain(x, stack):
        for layer in stack:
            x = layer(x)
        return x

    stem = [layers.Normalization(mean=arch.input_mean, variance=arch.input_std ** 2, name="normalise"),
            layers.Conv2D(arch.stem, 3, strides=arch.stem_stride, padding="same", use_bias=False, name="stem_conv"),
            layers.BatchNormalization(momentum=0.9, name="stem_norm")]
    blocks = [block_layers(k, f) for k, f in enumerate(arch.filters)]
    heads = [head_layers(k) for k in range(len(arch.filters))]

    inputs = tf.keras.Input(arch.input_shape, name="features")
    x, outputs, shapes = chain(inputs, stem), [], [tuple(int(d) for d in inputs.shape[1:])]
    stem_out = tuple(int(d) for d in x.shape[1:])
    block_in = [stem_out]
    for k in range(len(blocks)):
        x = chain(x, blocks[k])
        outputs.append(chain(x, heads[k]))
        block_in.append(tuple(int(d) for d in x.shape[1:]))
    model = tf.keras.Model(inputs, outputs, name="binary_early_exit")

    # Costs from the shapes: a conv's output is its input's size over the stride ("same" padding).
    def conv_out(hw, stride):
        return (math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))

    stem_cost = conv_cost(conv_out(shapes[0][:2], arch.stem_stride), (3, 3), shapes[0][2], arch.stem, binary=False)
    block_costs = [conv_cost(block_in[k][:2], (3, 3), block_in[k][2], f, binary=True)
                   for k, f in enumerate(arch.filters)]
    head_costs = [Cost(f * arch.classes, 0) for f in arch.filters]
    costs = {"stem": stem_cost.to_json(), "blocks": [c.to_json() for c in block_costs],
             "heads": [c.to_json() for c in head_costs],
             "exits": [c.to_json() for c in exit_costs(stem_cost, block_costs, head_costs)],
             "counted": "multiply-adds of the convolutions and dense layers (binary ones apart); batch "
                        "normalisation, pooling and the softmax are not counted"}

    parts = []
    for k in range(len(blocks)):
        start = inputs if k == 0 else tf.keras.Input(block_in[k], name=f"block{k - 1}_features")
        y = chain(start, stem) if k == 0 else start
        y = chain(y, blocks[k])
        probs = chain(y, heads[k])
        last = k == len(blocks) - 1
        parts.append(tf.keras.Model(start, [probs] if last else [probs, y], name=f"exit{k}_part"))
    return ExitNetwork(arch, model, parts, costs)


def layer_costs(model: Any) -> dict[str, Cost]:
    """Multiply-adds per conv and dense layer of a built Keras model, read from its layers' own
    shapes (a check on `build_network`'s counts): binary when both larq quantizers are set."""
    import tensorflow as tf
    costs = {}
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Conv2D):
            kh, kw, cin, cout = (int(d) for d in layer.kernel.shape)
            _, oh, ow, _ = layer.get_output_shape_at(0)
            binary = getattr(layer, "input_quantizer", None) is not None and \
                getattr(layer, "kernel_quantizer", None) is not None
            costs[layer.name] = conv_cost((oh, ow), (kh, kw), cin, cout, binary)
        elif isinstance(layer, tf.keras.layers.Dense):
            costs[layer.name] = Cost(int(layer.kernel.shape[0]) * int(layer.kernel.shape[1]), 0)
    return costs


def quantized_kernels(network: ExitNetwork) -> list[np.ndarray]:
    """The binary blocks' kernels as the forward pass uses them (larq's quantized scope)."""
    import larq
    with larq.context.quantized_scope(True):
        return [layer.get_weights()[0] for layer in network.binary_layers()]


@dataclass(frozen=True)
class ExitOptions:
    """How to train; stored in metadata.json (``training.options``)."""

    epochs: int = 20
    batch: int = 64
    learning_rate: float = 2e-3
    exit_weights: tuple[float, ...] | None = None     # per exit; None = all equal
    seed: int = 0
    threads: int = 2
    rule: str = "maxprob"
    threshold: float | None = None                    # None = DEFAULT_THRESHOLDS[rule]

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class ExitTraining:
    network: ExitNetwork
    history: list = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def predict_exits(network: ExitNetwork, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
    """[N, K, classes] probabilities of every exit (Keras)."""
    if not len(inputs):
        return np.zeros((0, len(network.arch.filters), network.arch.classes), np.float32)
    rows = []
    for start in range(0, len(inputs), batch):
        outputs = network.model(np.asarray(inputs[start:start + batch], np.float32), training=False)
        rows.append(np.stack([np.asarray(o) for o in outputs], 1))
    return np.concatenate(rows)


def train_network(arch: ExitArchitecture, inputs: np.ndarray, labels: np.ndarray,
                  val_inputs: np.ndarray, val_labels: np.ndarray, options: ExitOptions = ExitOptions(),
                  say: Callable[[str], None] | None = print) -> ExitTraining:
    """Train every exit jointly (weighted sum of their cross-entropies; the two classes weigh the
    same); keep the epoch whose exits' mean validation accuracy is best."""
    import tensorflow as tf
    from models.train import seed_everything

    started = time.monotonic()
    seed_everything(options.seed, options.threads)
    network = build_network(arch)
    k = len(arch.filters)
    weights = list(options.exit_weights or [1.0] * k)
    if len(weights) != k:
        raise ValueError(f"exit_weights needs {k} values (one per exit), got {len(weights)}")
    network.model.compile(optimizer=tf.keras.optimizers.Adam(options.learning_rate),
                          loss=["sparse_categorical_crossentropy"] * k, loss_weights=weights)
    labels = np.asarray(labels).astype(np.int32)
    counts = np.bincount(labels, minlength=arch.classes).astype(np.float64)
    class_weight = np.where(counts > 0, len(labels) / (arch.classes * np.maximum(counts, 1)), 0.0)
    rng = np.random.default_rng(options.seed)
    rule = options.rule
    threshold = DEFAULT_THRESHOLDS[rule] if options.threshold is None else options.threshold
    best, best_weights, history = -math.inf, None, []
    steps = max(1, math.ceil(len(labels) / options.batch))
    for epoch in range(options.epochs):
        order = rng.permutation(len(labels))
        losses = []
        for step in range(steps):
            pick = order[step * options.batch:(step + 1) * options.batch]
            y = labels[pick]
            result = network.model.train_on_batch(np.asarray(inputs[pick], np.float32), [y] * k,
                                                  sample_weight=[class_weight[y].astype(np.float32)] * k)
            losses.append(float(np.atleast_1d(result)[0]))
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if len(val_labels):
            report = exit_report(predict_exits(network, val_inputs), val_labels, rule, threshold,
                                 network.exit_costs)
            entry.update({"per_exit_accuracy": report["per_exit_accuracy"], "accuracy": report["accuracy"],
                          "macs_saved": report["macs_saved"], "binary_ops_saved": report["binary_ops_saved"]})
            score = float(np.mean(report["per_exit_accuracy"]))
        else:
            score = -entry["loss"]
        history.append(entry)
        if say is not None:
            accuracies = " ".join(f"{a:.3f}" for a in entry.get("per_exit_accuracy", []))
            say(f"early-exit epoch {epoch + 1}/{options.epochs}: loss {entry['loss']:.4f}"
                + (f", val accuracy per exit {accuracies}, early-exit accuracy {entry['accuracy']:.3f}, "
                   f"binary ops saved {entry['binary_ops_saved']:.1%}, MACs {entry['macs_saved']:.1%}"
                   if "accuracy" in entry else ""))
        if score > best:
            best, best_weights = score, network.model.get_weights()
    network.model.set_weights(best_weights)
    validation = exit_report(predict_exits(network, val_inputs), val_labels, rule, threshold,
                             network.exit_costs) if len(val_labels) else {}
    return ExitTraining(network, history, validation, time.monotonic() - started)


# ------------------------------------------------------------------------------------ export

def audio_metadata(settings: LogMelSettings, task: str = "speech", words: int = 2) -> dict[str, Any]:
    """metadata.json's description of an audio early-exit filter (its input and its rule)."""
    return {"task": task, "rule": f"needs recognition: more than {words} words", "words": words,
            "input": {"kind": "audio", "features": settings.to_json()}, "classes": list(CLASSES)}


def video_metadata(size: int) -> dict[str, Any]:
    """metadata.json's description of a video early-exit filter: frames shrunk to size x size."""
    return {"task": "vehicles", "rule": "needs the detector: at least one vehicle",
            "input": {"kind": "video", "size": int(size)}, "classes": list(CLASSES)}


def part_tflite(part: Any, input_shape: tuple[int, ...]) -> bytes:
    """One part as a float32 TFLite model with a batch of one (as the runtime runs it)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, *input_shape], tf.float32, name="x")])
    def serve(x):
        return part(x, training=False)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], part)
    return converter.convert()


def export_early_exit(network: ExitNetwork, out: Path, metadata: dict[str, Any], sample: np.ndarray,
                      atol: float = 1e-3) -> dict[str, Any]:
    """Write exit_k.tflite (k = 0..K-1) and metadata.json into `out`; check every part's TFLite
    output against its Keras part, and the chain of TFLite parts against the whole Keras network,
    on `sample` inputs. Returns the largest gaps found."""
    from models.export import _replace

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = []
    for part in network.parts:
        shape = tuple(int(d) for d in part.inputs[0].shape[1:])
        models.append(part_tflite(part, shape))
    gaps: dict[str, Any] = {"parts": [], "chain": 0.0}
    sample = np.asarray(sample, np.float32)
    runner = ExitModels.from_bytes(models)
    x = sample
    for k, part in enumerate(network.parts):
        expected = part(x, training=False)
        expected = [np.asarray(e) for e in (expected if isinstance(expected, (list, tuple)) else [expected])]
        got = [runner.run_part(k, row) for row in x]
        gap = float(np.max(np.abs(np.stack([probs for probs, _ in got]) - expected[0])))
        if len(expected) > 1:
            gap = max(gap, float(np.max(np.abs(np.stack([features for _, features in got]) - expected[1]))))
            x = expected[1]          # block k+1's input as the Keras chain gives it
        gaps["parts"].append(gap)
        if gap > atol:
            raise AssertionError(f"exit {k}'s TFLite part differs from Keras by up to {gap:.3g} (> {atol})")
    runner = ExitModels.from_bytes(models)
    chained = np.stack([runner.run_all(row) for row in sample])
    gaps["chain"] = float(np.max(np.abs(chained - predict_exits(network, sample))))
    if gaps["chain"] > atol:
        raise AssertionError(f"the chained TFLite parts differ from the Keras network by up to {gaps['chain']:.3g}")
    for k, tflite in enumerate(models):
        _replace(out / f"exit_{k}.tflite", tflite)
    stale = out / "calibration.json"
    if stale.exists():
        stale.unlink()
    meta = {"format": FORMAT, "kind": KIND, **metadata, "exits": len(models),
            "architecture": network.arch.to_json(), "costs": network.costs, "tflite_max_abs_gap": gaps,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _replace(out / "metadata.json", (json.dumps(meta, indent=1) + "\n").encode())
    return gaps


def part_latency_ms(models: Sequence[bytes | Path], inputs: np.ndarray, repeats: int = 200) -> dict[str, Any]:
    """Median ms of one invoke (set input, invoke, read outputs) of each part, LiteRT on one
    thread, over `repeats` runs on real inputs; and the cumulative ms to reach each exit."""
    runner = ExitModels(models)
    runner.open()
    per_part = []
    for k in range(runner.exits):
        xs = []
        for x in inputs[:8]:
            for earlier in range(k):
                x = runner.run_part(earlier, x)[1]
            xs.append(x)
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            runner.run_part(k, xs[i % len(xs)])
            times.append((time.perf_counter() - start) * 1e3)
        per_part.append(float(np.median(times)))
    return {"per_part_ms": per_part, "to_exit_ms": [float(v) for v in np.cumsum(per_part)], "repeats": repeats,
            "threads": 1}


def _training_metadata(training: ExitTraining, options: ExitOptions, extra: dict[str, Any]) -> dict[str, Any]:
    from models.export import git_commit
    rule = options.rule
    return {"commit": git_commit(), "training": {
        "options": options.to_json(), "history": training.history, "seconds": round(training.seconds, 1),
        "validation": training.validation, **extra}, "default_rule": rule,
        "default_threshold": DEFAULT_THRESHOLDS[rule] if options.threshold is None else options.threshold}


def _finish(training: ExitTraining, options: ExitOptions, out: Path | None, metadata: dict[str, Any],
            val_inputs: np.ndarray, val_labels: np.ndarray, extra: dict[str, Any],
            say: Callable[[str], None] | None) -> ExitTraining:
    network = training.network
    if len(val_labels):
        probs = predict_exits(network, val_inputs)
        extra = {**extra, "sweep": {rule: sweep(probs, val_labels, rule, network.exit_costs,
                                                np.round(np.linspace(0.5 if rule == "maxprob" else 0.0, 1.0, 11), 3))
                                    for rule in RULES}}
        if say is not None:
            v = training.validation
            say(f"early-exit: validation accuracy per exit {[round(a, 3) for a in v['per_exit_accuracy']]}, "
                f"early-exit accuracy {v['accuracy']:.3f} (last exit {v['last_exit_accuracy']:.3f}) at {options.rule} "
                f"{v['threshold']}; exits {v['exit_counts']}, MACs saved {v['macs_saved']:.1%}, binary ops saved "
                f"{v['binary_ops_saved']:.1%}")
    if out is not None:
        sample = val_inputs[:8] if len(val_inputs) else None
        if sample is None:
            raise ValueError("exporting needs validation inputs to check the TFLite parts against Keras")
        export_early_exit(network, out, {**metadata, **_training_metadata(training, options, extra)}, sample)
        latency = part_latency_ms(sorted(Path(out).glob("exit_*.tflite"), key=lambda p: int(p.stem[5:])), sample)
        meta_path = Path(out) / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["latency"] = latency
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
        if say is not None:
            say(f"early-exit filter written to {out}; ms per part {[round(v, 3) for v in latency['per_part_ms']]}")
    return training


def train_speech(mixtures: Path, out: Path | None = None, options: ExitOptions = ExitOptions(),
                 label_dir: Path | None = None, words: int = 2, say: Callable[[str], None] | None = print,
                 **arch: Any) -> ExitTraining:
    """Train on a mixture directory's train split (models/mixtures.py `load_split`; labels the
    windows not labelled yet), validate on its val split, export to `out`."""
    from models.mixtures import load_split
    train_x, train_y, _ = load_split(Path(mixtures), "train", label_dir=label_dir, words=words)
    val_x, val_y, _ = load_split(Path(mixtures), "val", label_dir=label_dir, words=words)
    settings = LogMelSettings(window_s=train_x.shape[1] / SAMPLE_RATE)
    log_mel = LogMel(settings)
    inputs, val_inputs = log_mel.batch(train_x)[..., None], log_mel.batch(val_x)[..., None]
    shape = ExitArchitecture(input_shape=inputs.shape[1:], input_mean=float(inputs.mean()),
                             input_std=float(inputs.std()), **arch)
    if say is not None:
        say(f"early-exit speech: {len(train_y)} training windows ({train_y.mean():.1%} need recognition), "
            f"{len(val_y)} validation windows, input {inputs.shape[1:]}")
    training = train_network(shape, inputs, train_y.astype(int), val_inputs, val_y.astype(int), options, say)
    extra = {"trained_on": str(mixtures), "train_windows": int(len(train_y)), "val_windows": int(len(val_y))}
    return _finish(training, options, out, audio_metadata(settings, "speech", words), val_inputs,
                   val_y.astype(int), extra, say)


def train_vehicles(clips: Sequence[Path | str], out: Path | None = None, options: ExitOptions = ExitOptions(),
                   size: int = 32, exclude: Sequence[str] = (), progress: bool = True,
                   say: Callable[[str], None] | None = print, **arch: Any) -> ExitTraining:
    """The video Skip variant: frames shrunk to `size` (models/dataset.py, the clips' training and
    validation parts as Skip uses them), label 1 when YOLO found a vehicle."""
    from models.dataset import load_clips
    from models.train import _frames_at
    data = load_clips(clips, size, exclude, progress)
    frames, counts, _ = _frames_at(data, "train")
    val_frames, val_counts, _ = _frames_at(data, "val")
    shape = ExitArchitecture(input_shape=(size, size, 3), input_mean=127.5, input_std=127.5,
                             **{"stem_stride": 1, **arch})
    labels, val_labels = (counts > 0).astype(int), (val_counts > 0).astype(int)
    if say is not None:
        say(f"early-exit vehicles: {len(labels)} training frames ({labels.mean():.1%} with a vehicle), "
            f"{len(val_labels)} validation frames, size {size}")
    training = train_network(shape, frames.astype(np.float32), labels, val_frames.astype(np.float32), val_labels,
                             options, say)
    extra = {"trained_on": [clip.name for clip in data], "train_frames": int(len(labels))}
    return _finish(training, options, out, video_metadata(size), val_frames.astype(np.float32), val_labels,
                   extra, say)


def evaluate_directory(path: Path | str, raw: np.ndarray, labels: np.ndarray, rule: str | None = None,
                       threshold: float | None = None, groups: Sequence[str] | None = None) -> dict[str, Any]:
    """The exported filter at `path` on labelled raw inputs (audio windows or frames), through the
    runtime (LiteRT): the exit report at `rule`/`threshold` (default: the directory's), per group
    when `groups` are given, a threshold sweep for both rules, and per-input latency of the live
    path (features + parts up to the exit, `decide`)."""
    from models.filterdir import open_filter_dir
    directory = open_filter_dir(path, KIND)
    rule = rule or directory.metadata.get("default_rule", "maxprob")
    threshold = directory.metadata.get("default_threshold", DEFAULT_THRESHOLDS[rule]) if threshold is None \
        else threshold
    policy = EarlyExitPolicy(directory, rule, threshold)
    labels = np.asarray(labels).astype(int)
    with policy:
        probs = np.stack([policy.prepare(x).reshape(directory.exits, -1) for x in raw])
        kind = directory.input_kind
        times = []
        for seq, x in enumerate(raw):
            start = time.perf_counter()
            policy.decide(Message(kind, "eval", seq, arrays=(x,)))
            times.append((time.perf_counter() - start) * 1e3)
    costs = directory.costs()
    report = exit_report(probs, labels, rule, threshold, costs)
    if groups is not None:
        groups = np.asarray(groups)
        report["groups"] = {str(g): exit_report(probs[groups == g], labels[groups == g], rule, threshold, costs)
                            for g in sorted(set(groups.tolist()))}
    report["sweep"] = {r: sweep(probs, labels, r, costs, np.round(np.linspace(0.5 if r == "maxprob" else 0.0, 1.0,
                                                                              21), 3)) for r in RULES}
    report["decide_ms"] = {"median": float(np.median(times)), "p90": float(np.percentile(times, 90)),
                           "what": "features + the parts run up to the exit, LiteRT, 1 thread"}
    return report


def plot_report(report: dict[str, Any], out: Path) -> Path:
    """A PNG: the exit distribution per class at the report's threshold, and accuracy against
    binary operations saved over the threshold sweep."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    exits = np.arange(report["exits"])
    bottom = np.zeros(len(exits))
    for name, counts in report["per_class_exits"].items():
        left.bar(exits, counts, bottom=bottom, label=name)
        bottom += counts
    left.set(xlabel="exit", ylabel="inputs", xticks=exits,
             title=f"exits at {report['rule']} {report['threshold']:g} ({report['none_confident']} none confident)")
    left.legend()
    for rule, rows in report["sweep"].items():
        right.plot([r["binary_ops_saved"] for r in rows], [r["accuracy"] for r in rows], "o-", label=rule)
    right.axhline(report["last_exit_accuracy"], color="grey", ls="--", label="last exit")
    right.set(xlabel="binary operations saved", ylabel="accuracy", title="accuracy vs work over thresholds")
    right.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def evaluate_speech(path: Path | str, mixtures: Path, split: str = "test", words: int = 2,
                    **kwargs: Any) -> dict[str, Any]:
    """`evaluate_directory` on a mixture split's windows, grouped by subset (clean, noise, music, real)."""
    from models.mixtures import load_split
    samples, needs, rows = load_split(Path(mixtures), split, words=words)
    report = evaluate_directory(path, samples, needs.astype(int), groups=[row["subset"] for row in rows], **kwargs)
    report["data"] = {"mixtures": str(mixtures), "split": split, "windows": int(len(needs)),
                      "needs_recognition": float(needs.mean())}
    return report


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


def run_train_command(args: Any) -> int:
    """``infistream filter train early-exit --task speech|vehicles``: train, report, write the directory."""
    threshold = args.exit_threshold
    if threshold is not None:
        check_rule(args.rule, threshold)
    options = ExitOptions(epochs=args.epochs or ExitOptions.epochs, seed=args.seed, rule=args.rule,
                          threshold=threshold)
    out = args.out or SHIPPED_ROOT / SHIPPED_TASK_DIRS[args.task] / KIND
    if args.task == "speech":
        from models.mixtures import default_mixture_dir
        mixtures = args.mixtures or default_mixture_dir()
        if not (Path(mixtures) / "manifest.json").exists():
            raise ConfigError(f"no speech mixtures at {mixtures}: build them with `infistream filter mixtures "
                              f"--label` or name them with --mixtures")
        training = train_speech(mixtures, out, options, words=args.words)
    else:
        from models.dataset import default_clips
        clips = args.clips or default_clips()
        training = train_vehicles(clips, out, options, size=args.size or 32, exclude=args.exclude,
                                  progress=args.progress)
    print(f"early-exit ({args.task}): {training.seconds:.0f} s; written to {out}")
    return 0


# ------------------------------------------------------------------------- runtime (LiteRT)

def _interpreter(tflite: bytes | Path):
    from ai_edge_litert.interpreter import Interpreter
    try:
        if isinstance(tflite, (bytes, bytearray)):
            runner = Interpreter(model_content=bytes(tflite), num_threads=1)
        else:
            runner = Interpreter(model_path=str(tflite), num_threads=1)
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


EARLY_EXIT_OPTIONS: dict[str, Option] = {"rule": choice(*RULES), "threshold": number(0, 1), "task": choice(*TASKS)}


class EarlyExitPolicy(FramePolicy):
    """Runs the exits of one input in order; answers ``exit(k, empty result)`` at the first
    confident exit that says "not needed", else has no opinion.

    Options: ``rule=maxprob|entropy`` (default maxprob), ``threshold=P`` (default 0.9 for maxprob,
    0.3 for entropy); ``task=speech|vehicles`` picks the shipped filter when no directory is named.
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
        self.stats = {"exited": [0] * directory.exits, "needed": [0] * directory.exits, "none_confident": 0}

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
        return cls(directory, options.get("rule", "maxprob"), options.get("threshold"), name)

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
            self.stats["none_confident"] += 1
            return None
        if int(np.argmax(probs)) == 0:
            self.stats["exited"][k] += 1
            return self._exits[k]
        self.stats["needed"][k] += 1
        return None

    def threshold_grid(self) -> np.ndarray:
        return np.linspace(0.5, 1.0, 51) if self.rule == "maxprob" else np.linspace(0.0, 1.0, 101)

