"""Training, export and evaluation of the binary early-exit network (TensorFlow + larq, imported
only here; models/early_exit.py holds the exit rule, the costs, the runtime and the policy, and
the module docstring there describes the network).

- `build_network`: the Keras network of an `ExitArchitecture` and its parts (block k's input ->
  exit k's probabilities and block k's features, sharing weights), with multiply-adds and binary
  multiply-adds per part counted from the layer shapes;
- `train_network`: every exit trained jointly (weighted sum of cross-entropies, classes balanced;
  optionally with self-distillation, `distill_loss`), the epoch whose exits' mean validation
  accuracy is best kept; `train_speech` (a mixture
  directory's train/val splits, log-mel input) and `train_vehicles` (frames, Skip's split);
- `export_early_exit`: one TFLite part per block, each checked against Keras and the chain
  against the whole network, and metadata.json;
- `evaluate_directory` / `evaluate_speech`: an exported filter replayed through the runtime on
  labelled inputs (exit report, threshold sweep, live latency); `plot_report` draws it.
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
from models.early_exit import (CLASSES, DEFAULT_THRESHOLDS, FORMAT, KIND, RULES, Cost, EarlyExitPolicy, ExitModels,
                               conv_cost, exit_costs, exit_report, sweep)
from pipeline.message import Message


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
    # Self-distillation (`distill_loss`): an early exit's loss is (1 - distill) x its cross-entropy
    # + distill x T^2 x KL(the last exit's answer at temperature T || its own); 0 = off.
    distill: float = 0.0
    temperature: float = 2.0

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


def distill_loss(outputs: Sequence[Any], labels: Any, sample_weights: Any, exit_weights: Sequence[float],
                 distill: float, temperature: float) -> Any:
    """The joint loss with self-distillation (Phuong & Lampert, ICCV'19, for multi-exit networks):
    every exit learns the labels, and each early exit also learns the last exit's answer softened
    by `temperature` (the last exit's output is a constant here: it teaches, it is not pulled
    towards the early ones). The aim: an early exit sure where the whole network is sure, which is
    what an exit rule relies on (docs/early-exit.md has what it did on the speech mixtures). Each
    exit's loss is reduced as Keras reduces a weighted loss (sum of weighted losses / batch size)."""
    import tensorflow as tf
    classes = int(outputs[-1].shape[-1])
    onehot = tf.one_hot(labels, classes)
    batch = tf.cast(tf.shape(labels)[0], tf.float32)

    def soften(probs):
        # softmax(logits / T) from the softmax's output: p^(1/T), renormalised
        powered = tf.clip_by_value(probs, 1e-7, 1.0) ** (1.0 / temperature)
        return powered / tf.reduce_sum(powered, -1, keepdims=True)

    teacher = soften(tf.stop_gradient(outputs[-1]))
    total = 0.0
    for k, probs in enumerate(outputs):
        loss = -tf.reduce_sum(onehot * tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0)), -1)
        if k < len(outputs) - 1 and distill > 0:
            student = soften(probs)
            kl = tf.reduce_sum(teacher * (tf.math.log(teacher) - tf.math.log(student)), -1)
            loss = (1 - distill) * loss + distill * temperature ** 2 * kl
        total += exit_weights[k] * tf.reduce_sum(loss * sample_weights) / batch
    return total


def train_network(arch: ExitArchitecture, inputs: np.ndarray, labels: np.ndarray,
                  val_inputs: np.ndarray, val_labels: np.ndarray, options: ExitOptions = ExitOptions(),
                  say: Callable[[str], None] | None = print, sample_weights: np.ndarray | None = None,
                  augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None) -> ExitTraining:
    """Train every exit jointly (weighted sum of their cross-entropies; the two classes weigh the
    same, or each input weighs its `sample_weights`); keep the epoch whose exits' mean validation
    accuracy is best. `augment` (batch, rng) -> batch jitters each training batch (not validation)."""
    import tensorflow as tf
    from models.train import seed_everything

    started = time.monotonic()
    seed_everything(options.seed, options.threads)
    network = build_network(arch)
    k = len(arch.filters)
    weights = list(options.exit_weights or [1.0] * k)
    if len(weights) != k:
        raise ValueError(f"exit_weights needs {k} values (one per exit), got {len(weights)}")
    if not 0 <= options.distill < 1 or options.temperature <= 0:
        raise ValueError(f"distill must lie in [0, 1) and temperature be > 0, got {options.distill}, "
                         f"{options.temperature}")
    optimizer = tf.keras.optimizers.Adam(options.learning_rate)
    model = network.model
    if options.distill:
        @tf.function
        def distilled_step(x, y, w):
            with tf.GradientTape() as tape:
                loss = distill_loss(model(x, training=True), y, w, weights, options.distill, options.temperature)
            variables = model.trainable_variables
            # apply_gradients also applies the binary kernels' weight_clip constraint
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        def train_step(x, y, w):
            return distilled_step(tf.constant(x), tf.constant(y), tf.constant(w))
    else:
        model.compile(optimizer=optimizer, loss=["sparse_categorical_crossentropy"] * k, loss_weights=weights)

        def train_step(x, y, w):
            return model.train_on_batch(x, [y] * k, sample_weight=[w] * k)
    labels = np.asarray(labels).astype(np.int32)
    counts = np.bincount(labels, minlength=arch.classes).astype(np.float64)
    class_weight = np.where(counts > 0, len(labels) / (arch.classes * np.maximum(counts, 1)), 0.0)
    weight_of = class_weight[labels] if sample_weights is None else np.asarray(sample_weights, np.float64)
    if len(weight_of) != len(labels):
        raise ValueError(f"sample_weights needs one weight per input ({len(labels)}), got {len(weight_of)}")
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
            x = augment(inputs[pick], rng) if augment is not None else inputs[pick]
            result = train_step(np.asarray(x, np.float32), y, weight_of[pick].astype(np.float32))
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
                f"{v['threshold']}; exits {v['exit_counts']}, binary ops saved {v['binary_ops_saved']:.1%}, all "
                f"multiply-adds {v['multiply_adds_saved']:.1%} (float ones {v['macs_saved']:.1%})")
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


def clip_balanced_weights(owner: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Skip's weighting (models/train.py train_skip): every clip weighs the same in total, and
    within a clip both classes weigh the same; scaled to a mean weight of 1."""
    owner, labels = np.asarray(owner), np.asarray(labels)
    weights = np.zeros(len(labels), np.float64)
    for index in np.unique(owner):
        mine = owner == index
        for label in np.unique(labels[mine]):
            cell = mine & (labels == label)
            weights[cell] = 1.0 / cell.sum()
    return weights * (len(weights) / weights.sum()) if len(weights) else weights


def train_vehicles(clips: Sequence[Path | str], out: Path | None = None, options: ExitOptions = ExitOptions(),
                   size: int = 32, exclude: Sequence[str] = (), progress: bool = True,
                   say: Callable[[str], None] | None = print, augment: bool = True, clip_weights: bool = False,
                   **arch: Any) -> ExitTraining:
    """The video Skip variant: frames shrunk to `size` (models/dataset.py, the clips' training and
    validation parts as Skip uses them), label 1 when YOLO found a vehicle, with Skip's
    photometric and geometric augmentation (`augment`, models/train.py). The two classes weigh
    the same; with `clip_weights`, as for Skip, every clip weighs the same too, and within it both
    classes (off by default: on 2026-12-01 it kept the binary network from learning, the joint
    loss at 2.4-2.6 over 11 epochs and the last exit's val accuracy jumping between 0.67 and 0.91;
    a clip with a few frames of one class gives those frames weights of ~60)."""
    from models.dataset import load_clips
    from models.train import SPLIT_NOTE, _frames_at
    from models.train import augment as skip_augment
    data = load_clips(clips, size, exclude, progress)
    frames, counts, owner = _frames_at(data, "train")
    val_frames, val_counts, _ = _frames_at(data, "val")
    shape = ExitArchitecture(input_shape=(size, size, 3), input_mean=127.5, input_std=127.5,
                             **{"stem_stride": 1, **arch})
    labels, val_labels = (counts > 0).astype(int), (val_counts > 0).astype(int)
    if say is not None:
        say(f"early-exit vehicles: {len(labels)} training frames from {len(data)} clips ({labels.mean():.1%} with a "
            f"vehicle), {len(val_labels)} validation frames, size {size}, augmentation {'on' if augment else 'off'}")
    training = train_network(shape, frames, labels, val_frames.astype(np.float32), val_labels, options, say,
                             sample_weights=clip_balanced_weights(owner, labels) if clip_weights else None,
                             augment=skip_augment if augment else None)
    names = [clip.name for clip in data]
    extra = {"trained_on": names, "train_frames": int(len(labels)), "val_frames": int(len(val_labels)),
             "augment": augment, "weights": "per clip, then per class (as Skip)" if clip_weights else "per class"}
    # trained_on and the split at the top level too, as Skip's metadata has them: video
    # calibration (models/calibrate.py training_clips) reads the clips from there
    return _finish(training, options, out, {**video_metadata(size), "trained_on": names, "split": SPLIT_NOTE},
                   val_frames.astype(np.float32), val_labels, extra, say)


def evaluate_directory(path: Path | str, raw: np.ndarray, labels: np.ndarray, rule: str | None = None,
                       threshold: float | None = None, groups: Sequence[str] | None = None,
                       keep_probs: bool = False) -> dict[str, Any]:
    """The exported filter at `path` on labelled raw inputs (audio windows or frames), through the
    runtime (LiteRT): the exit report at `rule`/`threshold` (default: the directory's), per group
    when `groups` are given, a threshold sweep for both rules, and per-input latency of the live
    path (features + parts up to the exit, `decide`). With `keep_probs`, also every exit's
    probabilities per input (``probs``, [N, K, classes], not JSON) and the costs per exit."""
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
    if keep_probs:
        report["probs"], report["costs"] = probs, costs
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
