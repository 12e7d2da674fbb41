"""Training InFi-Skip and InFi-Reuse on labelled clips, and writing the filter directory.

Data (models/dataset.py): each clip's shrunk frames and YOLO vehicle counts; the training part
of the split trains, the validation part picks the best epoch and gives the metrics stored in
metadata.json; test halves are never read here. ``exclude=`` leaves clips out (leave-one-camera-
out folds).

- Skip learns P(frame not empty) with binary cross-entropy; the two classes weigh the same, and
  so does every clip, however long (a long empty lane must not teach that roads are empty).
- Reuse learns on frame pairs of one clip (the runtime only compares frames of one stream):
  time offsets drawn log-uniformly from 1 frame to `max_offset_s` seconds, either direction, so
  that the next frame and a frame seconds away are both seen; label 1 when the counts differ.
  Pairs are drawn afresh every epoch; differing and same pairs weigh the same. The loss is
  binary cross-entropy on the head's p_differ, plus (weight `contrastive`) the contrastive loss
  on the embeddings' distance.

Both use light augmentation so a camera never seen still looks familiar: brightness, contrast
and per-channel gain jitter, a horizontal flip, shifts of a few pixels (the same draw for both
frames of a pair: it is the camera that changes, not the scene). Seeds are fixed (numpy, Python,
TensorFlow); a run on the same data repeats up to TensorFlow's thread scheduling.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from models.dataset import ClipData, load_clips
from models.labels import VEHICLE_CLASSES

log = logging.getLogger(__name__)

SPLIT_NOTE = ("per clip in seq order: first half = training (its first 80%) + validation (its last 20%); "
              "second half = test (not read in training)")


@dataclass(frozen=True)
class TrainOptions:
    """How to train; every field lands in metadata.json (``training.options``)."""

    size: int = 48
    epochs: int = 12
    batch: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    threads: int = 2
    augment: bool = True
    # reuse only
    pairs_per_clip: int = 1200
    max_offset_s: float = 10.0
    contrastive: float = 0.0           # weight of the contrastive loss beside the head's BCE
    margin: float = 1.0
    # network (models.features.Architecture fields); None = that class's default
    filters: tuple[int, ...] | None = None
    norm: str | None = None
    embedding: int | None = None
    head: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


#: The shipped filters' settings (the size chosen by measurement: metadata.json "size_choice").
DEFAULT_SIZE = 48
DEFAULT_EPOCHS = {"skip": 12, "reuse": 10}


def default_options(kind: str, size: int | None = None, epochs: int | None = None, seed: int = 0) -> TrainOptions:
    return TrainOptions(size=size or DEFAULT_SIZE, epochs=epochs or DEFAULT_EPOCHS[kind], seed=seed)


@dataclass
class TrainResult:
    out: Path | None
    metrics: dict[str, Any]
    seconds: float
    model: Any = None                  # skip: the Keras model; reuse: models.features.Siamese
    history: list = field(default_factory=list)


# ---------------------------------------------------------------------------------- helpers

def seed_everything(seed: int, threads: int) -> None:
    import tensorflow as tf

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass                            # already initialised in this process: keep its setting


def architecture(options: TrainOptions):
    from models.features import Architecture

    arch = Architecture(size=options.size)
    overrides = {k: getattr(options, k) for k in ("filters", "norm", "embedding", "head")
                 if getattr(options, k) is not None}
    return replace(arch, **overrides)


def augment(batch: np.ndarray, rng: np.random.Generator, pairs: int = 1) -> np.ndarray:
    """Photometric and geometric jitter of uint8 frames -> float32 0..255. With `pairs` = 2 the
    batch is [2, B, S, S, 3] and both frames of pair i get the same draw."""
    x = batch.astype(np.float32)
    if pairs == 1:
        x = x[None]
    count, size = x.shape[1], x.shape[2]
    contrast = rng.uniform(0.7, 1.3, (1, count, 1, 1, 1)).astype(np.float32)
    brightness = rng.uniform(-30, 30, (1, count, 1, 1, 1)).astype(np.float32)
    gain = rng.uniform(0.9, 1.1, (1, count, 1, 1, 3)).astype(np.float32)
    mean = x.mean(axis=(2, 3, 4), keepdims=True)
    x = np.clip(((x - mean) * contrast + mean + brightness) * gain, 0, 255)
    flip = rng.random(count) < 0.5
    x[:, flip] = x[:, flip, :, ::-1]
    limit = max(1, size // 24)
    shifts = rng.integers(-limit, limit + 1, (count, 2))
    for index, (dy, dx) in enumerate(shifts):
        if dy or dx:
            padded = np.pad(x[:, index], ((0, 0), (limit, limit), (limit, limit), (0, 0)), mode="edge")
            x[:, index] = padded[:, limit + dy:limit + dy + size, limit + dx:limit + dx + size]
    return x if pairs == 2 else x[0]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties averaged); nan with one class only."""
    labels = np.asarray(labels, bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = np.asarray(scores)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(average, counts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def skip_metrics(needed: np.ndarray, p: np.ndarray, recall: float = 0.95) -> dict[str, float]:
    """Accuracy at 0.5, AUC, and the share of frames filtered when the threshold keeps `recall`
    of the non-empty frames for YOLO."""
    needed = np.asarray(needed, bool)
    metrics = {"frames": int(len(p)), "nonempty": float(needed.mean()) if len(p) else float("nan"),
               "accuracy": float(((p >= 0.5) == needed).mean()) if len(p) else float("nan"),
               "auc": auc(needed, p)}
    if needed.any():
        threshold = float(np.quantile(p[needed], 1 - recall, method="lower"))
        metrics[f"filtered_at_recall_{recall:g}"] = float((p < threshold).mean())
        metrics[f"threshold_at_recall_{recall:g}"] = threshold
    return metrics


def pair_metrics(differ: np.ndarray, p: np.ndarray) -> dict[str, float]:
    differ = np.asarray(differ, bool)
    weights = np.where(differ, 0.5 / max(differ.sum(), 1), 0.5 / max((~differ).sum(), 1))
    return {"pairs": int(len(p)), "differ": float(differ.mean()) if len(p) else float("nan"),
            "accuracy": float(((p >= 0.5) == differ).mean()) if len(p) else float("nan"),
            "balanced_accuracy": float((((p >= 0.5) == differ) * weights).sum()) if len(p) else float("nan"),
            "auc": auc(differ, p)}


def _frames_at(clips: list[ClipData], which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames, counts and clip index of every frame in split part `which`, all clips together."""
    frames, counts, owner = [], [], []
    for index, clip in enumerate(clips):
        positions = clip.part(which)
        frames.append(np.asarray(clip.frames[positions]))
        counts.append(clip.count[positions])
        owner.append(np.full(len(positions), index))
    return np.concatenate(frames), np.concatenate(counts), np.concatenate(owner)


def _predict(model: Any, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    out = [np.asarray(model(frames[i:i + batch].astype(np.float32), training=False))
           for i in range(0, len(frames), batch)]
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False)


def _report(say: Callable[[str], None] | None, text: str) -> None:
    log.info(text)
    if say is not None:
        say(text)


def _metadata(kind: str, options: TrainOptions, arch: Any, clips: list[ClipData], params: int,
              training: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    from models.export import git_commit

    meta = {"input_size": options.size, "task": "vehicles", "rule": "empty" if kind == "skip" else "same-count",
            "classes": list(VEHICLE_CLASSES)}
    if kind == "reuse":
        meta["embedding"] = arch.embedding
    meta.update({"params": int(params), "trained_on": [clip.name for clip in clips], "split": SPLIT_NOTE,
                 "epochs": options.epochs, "commit": git_commit(), "architecture": arch.to_json(),
                 "training": training, **extra})
    return meta


# ---------------------------------------------------------------------------------- skip

def train_skip(clips: Sequence[Path | str], exclude: Sequence[str] = (), options: TrainOptions = TrainOptions(),
               out: Path | None = None, progress: bool = True, say: Callable[[str], None] | None = print,
               data: list[ClipData] | None = None, extra_metadata: dict[str, Any] | None = None) -> TrainResult:
    """Train InFi-Skip on the training parts of `clips` (minus `exclude`); write `out` if given."""
    import tensorflow as tf
    from models.features import skip_model

    started = time.monotonic()
    seed_everything(options.seed, options.threads)
    data = data if data is not None else load_clips(clips, options.size, exclude, progress)
    frames, counts, owner = _frames_at(data, "train")
    val_frames, val_counts, _ = _frames_at(data, "val")
    needed = (counts > 0).astype(np.float32)
    # every clip weighs the same in total, and within that both classes weigh the same
    weights = np.zeros(len(needed), np.float32)
    for index in np.unique(owner):
        mine = owner == index
        for label in (0.0, 1.0):
            cell = mine & (needed == label)
            if cell.any():
                weights[cell] = 1.0 / cell.sum()
    weights *= len(weights) / weights.sum()
    _report(say, f"skip: {len(needed)} training frames from {len(data)} clips ({needed.mean():.1%} with a vehicle), "
                 f"{len(val_counts)} validation frames, size {options.size}")

    arch = architecture(options)
    model = skip_model(arch)
    model.compile(optimizer=tf.keras.optimizers.Adam(options.learning_rate), loss="binary_crossentropy")
    rng = np.random.default_rng(options.seed)
    best, best_weights, history = -1.0, None, []
    steps = max(1, int(np.ceil(len(needed) / options.batch)))
    for epoch in range(options.epochs):
        order = rng.permutation(len(needed))
        losses = []
        bar = _progress(steps, f"skip epoch {epoch + 1}/{options.epochs}") if progress else None
        for step in range(steps):
            pick = np.sort(order[step * options.batch:(step + 1) * options.batch])
            x = augment(frames[pick], rng) if options.augment else frames[pick].astype(np.float32)
            losses.append(float(model.train_on_batch(x, needed[pick], sample_weight=weights[pick])))
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        metrics = skip_metrics(val_counts > 0, _predict(model, val_frames)[:, 0])
        score = metrics["auc"] if np.isfinite(metrics["auc"]) else metrics["accuracy"]
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **metrics})
        _report(say, f"skip epoch {epoch + 1}/{options.epochs}: loss {np.mean(losses):.4f}, val accuracy "
                     f"{metrics['accuracy']:.3f}, AUC {metrics['auc']:.3f}, filtered at 95% recall "
                     f"{metrics.get('filtered_at_recall_0.95', float('nan')):.3f}")
        if score > best:
            best, best_weights = score, model.get_weights()
    model.set_weights(best_weights)
    best_epoch = int(np.argmax([h["auc"] if np.isfinite(h["auc"]) else h["accuracy"] for h in history])) + 1
    final = skip_metrics(val_counts > 0, _predict(model, val_frames)[:, 0])
    seconds = time.monotonic() - started
    training = {"options": options.to_json(), "best_epoch": best_epoch, "validation": final,
                "train_frames": int(len(needed)), "history": history, "seconds": round(seconds, 1)}
    _report(say, f"skip: best epoch {best_epoch}: val accuracy {final['accuracy']:.3f}, AUC {final['auc']:.3f}, "
                 f"filtered at 95% recall {final.get('filtered_at_recall_0.95', float('nan')):.3f} "
                 f"({seconds:.0f} s)")
    if out is not None:
        out = _export_skip(model, arch, options, data, val_frames, training, extra_metadata or {}, out)
        _report(say, f"skip filter written to {out}")
    return TrainResult(out, final, seconds, model, history)


def _export_skip(model, arch, options, data, val_frames, training, extra, out: Path) -> Path:
    from models.export import check_tflite, invoke_ms, to_tflite, write_filter_dir

    tflite = to_tflite(model, options.size)
    sample = val_frames[np.linspace(0, len(val_frames) - 1, min(8, len(val_frames))).astype(int)]
    training["tflite_max_abs_gap"] = check_tflite(tflite, model, sample)
    training["invoke"] = invoke_ms(tflite, options.size, repeats=200)
    meta = _metadata("skip", options, arch, data, model.count_params(), training, extra)
    return write_filter_dir(out, "skip", tflite, meta)


# ---------------------------------------------------------------------------------- reuse

def _fps(clip: ClipData) -> float:
    if len(clip.pts) > 1 and clip.pts[-1] > clip.pts[0]:
        return (len(clip.pts) - 1) / (clip.pts[-1] - clip.pts[0])
    return 25.0


def sample_pairs(clip: ClipData, which: str, count: int, max_offset_s: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` pairs of positions inside split part `which` of one clip: offsets log-uniform in
    1 .. max_offset_s seconds (in frames), either direction. Returns (pairs [n, 2], differ [n])."""
    positions = clip.part(which)
    if len(positions) < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, bool)
    longest = max(1, min(len(positions) - 1, int(round(max_offset_s * _fps(clip)))))
    offsets = np.floor(np.exp(rng.uniform(0, np.log(longest + 1), count))).astype(np.int64)
    offsets = np.clip(offsets, 1, longest)
    first = rng.integers(0, len(positions) - offsets)      # index into positions
    second = first + offsets
    swap = rng.random(count) < 0.5
    first, second = np.where(swap, second, first), np.where(swap, first, second)
    pairs = np.stack([positions[first], positions[second]], axis=1)
    return pairs, clip.count[pairs[:, 0]] != clip.count[pairs[:, 1]]


def _all_pairs(data: list[ClipData], which: str, per_clip: int, max_offset_s: float, rng: np.random.Generator):
    """Pairs of every clip as (clip index, position a, position b, differ)."""
    rows = []
    for index, clip in enumerate(data):
        pairs, differ = sample_pairs(clip, which, per_clip, max_offset_s, rng)
        rows.append(np.column_stack([np.full(len(pairs), index), pairs, differ]))
    return np.concatenate(rows).astype(np.int64)


def _pair_frames(data: list[ClipData], rows: np.ndarray) -> np.ndarray:
    """[2, n, S, S, 3] uint8 frames of pair rows."""
    out = np.empty((2, len(rows), *data[0].frames.shape[1:]), np.uint8)
    for index, (clip, a, b, _) in enumerate(rows):
        out[0, index] = data[clip].frames[a]
        out[1, index] = data[clip].frames[b]
    return out


def _balanced_weights(differ: np.ndarray) -> np.ndarray:
    differ = differ.astype(bool)
    weights = np.where(differ, 0.5 / max(differ.sum(), 1), 0.5 / max((~differ).sum(), 1)).astype(np.float32)
    return weights * len(weights)


def train_reuse(clips: Sequence[Path | str], exclude: Sequence[str] = (), options: TrainOptions = TrainOptions(),
                out: Path | None = None, progress: bool = True, say: Callable[[str], None] | None = print,
                data: list[ClipData] | None = None, extra_metadata: dict[str, Any] | None = None) -> TrainResult:
    """Train InFi-Reuse (siamese embedding + distance head) on frame pairs from the training parts
    of `clips` (minus `exclude`); write `out` if given."""
    import tensorflow as tf
    from models.features import contrastive_loss, siamese

    started = time.monotonic()
    seed_everything(options.seed, options.threads)
    data = data if data is not None else load_clips(clips, options.size, exclude, progress)
    rng = np.random.default_rng(options.seed)
    val_rows = _all_pairs(data, "val", max(64, options.pairs_per_clip // 4), options.max_offset_s,
                          np.random.default_rng(options.seed + 1))
    val_frames = _pair_frames(data, val_rows)
    arch = architecture(options)
    nets = siamese(arch)
    losses = {"differ": "binary_crossentropy"}
    weights = {"differ": 1.0}
    if options.contrastive:
        losses["distance"] = contrastive_loss(options.margin)
        weights["distance"] = options.contrastive
    nets.pair.compile(optimizer=tf.keras.optimizers.Adam(options.learning_rate), loss=losses, loss_weights=weights)
    _report(say, f"reuse: {options.pairs_per_clip} pairs per clip per epoch from {len(data)} clips, "
                 f"{len(val_rows)} validation pairs ({val_rows[:, 3].mean():.1%} differ), size {options.size}")

    def predict(frames: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, frames.shape[1], 256):
            got = nets.pair([frames[0, i:i + 256].astype(np.float32), frames[1, i:i + 256].astype(np.float32)],
                            training=False)
            out.append(np.asarray(got["differ"])[:, 0])
        return np.concatenate(out)

    best, best_weights, history = -1.0, None, []
    for epoch in range(options.epochs):
        rows = _all_pairs(data, "train", options.pairs_per_clip, options.max_offset_s, rng)
        rows = rows[rng.permutation(len(rows))]
        sample_weight = _balanced_weights(rows[:, 3])
        steps = max(1, int(np.ceil(len(rows) / options.batch)))
        epoch_losses = []
        bar = _progress(steps, f"reuse epoch {epoch + 1}/{options.epochs}") if progress else None
        for step in range(steps):
            chunk = slice(step * options.batch, (step + 1) * options.batch)
            frames = _pair_frames(data, rows[chunk])
            x = augment(frames, rng, pairs=2) if options.augment else frames.astype(np.float32)
            y = rows[chunk, 3].astype(np.float32)
            targets = {"differ": y, **({"distance": y} if options.contrastive else {})}
            sw = {name: sample_weight[chunk] for name in targets}
            result = nets.pair.train_on_batch([x[0], x[1]], targets, sample_weight=sw)
            epoch_losses.append(float(result[0] if isinstance(result, list) else result))
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        metrics = pair_metrics(val_rows[:, 3], predict(val_frames))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(epoch_losses)), **metrics})
        _report(say, f"reuse epoch {epoch + 1}/{options.epochs}: loss {np.mean(epoch_losses):.4f}, val pair accuracy "
                     f"{metrics['accuracy']:.3f} (balanced {metrics['balanced_accuracy']:.3f}), AUC {metrics['auc']:.3f}")
        score = metrics["auc"] if np.isfinite(metrics["auc"]) else metrics["balanced_accuracy"]
        if score > best:
            best, best_weights = score, nets.pair.get_weights()
    nets.pair.set_weights(best_weights)
    best_epoch = int(np.argmax([h["auc"] if np.isfinite(h["auc"]) else h["balanced_accuracy"] for h in history])) + 1
    final = pair_metrics(val_rows[:, 3], predict(val_frames))
    final["next_frame"] = _next_frame_metrics(nets, data)
    seconds = time.monotonic() - started
    training = {"options": options.to_json(), "best_epoch": best_epoch, "validation": final,
                "history": history, "seconds": round(seconds, 1)}
    _report(say, f"reuse: best epoch {best_epoch}: val pair accuracy {final['accuracy']:.3f} (balanced "
                 f"{final['balanced_accuracy']:.3f}), AUC {final['auc']:.3f}; consecutive frames: AUC "
                 f"{final['next_frame']['auc']:.3f} ({seconds:.0f} s)")
    if out is not None:
        out = _export_reuse(nets, arch, options, data, val_frames, training, extra_metadata or {}, out)
        _report(say, f"reuse filter written to {out}")
    return TrainResult(out, final, seconds, nets, history)


def _next_frame_metrics(nets, data: list[ClipData]) -> dict[str, float]:
    """Pair metrics on every consecutive pair of validation frames (the pairs live reuse sees most)."""
    from models.export import head_arrays, head_numpy

    head = head_arrays(nets.head_layers)
    differ, scores = [], []
    for clip in data:
        positions = clip.part("val")
        if len(positions) < 2:
            continue
        embedding = _predict(nets.embed, np.asarray(clip.frames[positions]))
        scores.append(head_numpy(head, np.abs(embedding[1:] - embedding[:-1]))[:, 0])
        differ.append(clip.count[positions[1:]] != clip.count[positions[:-1]])
    return pair_metrics(np.concatenate(differ), np.concatenate(scores))


def _export_reuse(nets, arch, options, data, val_frames, training, extra, out: Path) -> Path:
    from models.export import check_tflite, head_arrays, head_numpy, invoke_ms, to_tflite, write_filter_dir

    tflite = to_tflite(nets.embed, options.size)
    sample = val_frames[0, np.linspace(0, val_frames.shape[1] - 1, min(8, val_frames.shape[1])).astype(int)]
    training["tflite_max_abs_gap"] = check_tflite(tflite, nets.embed, sample)
    head = head_arrays(nets.head_layers)
    # the numpy head must equal the Keras head (the runtime uses the former)
    half = len(sample) // 2
    gap = np.abs(np.asarray(nets.embed(sample[:half].astype(np.float32)))
                 - np.asarray(nets.embed(sample[half:2 * half].astype(np.float32))))
    if not np.allclose(head_numpy(head, gap), np.asarray(nets.head(gap)), atol=1e-5):
        raise AssertionError("the exported numpy head differs from the Keras head")
    training["invoke"] = invoke_ms(tflite, options.size, repeats=200)
    meta = _metadata("reuse", options, arch, data, nets.embed.count_params() + nets.head.count_params(),
                     training, extra)
    meta["head"] = arch.head
    return write_filter_dir(out, "reuse", tflite, meta, head)
