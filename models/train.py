"""Training InFi-Skip and InFi-Reuse on labelled clips, and writing the filter directory.

Data (models/dataset.py): each clip's shrunk frames and YOLO vehicle counts; the training part
of the split trains, the validation part picks the best epoch and gives the metrics stored in
metadata.json; test halves are never read here. ``exclude=`` leaves clips out (leave-one-camera-
out folds).

- Skip learns P(frame not empty) with binary cross-entropy; the two classes weigh the same, and
  so does every clip, however long (a long empty lane must not teach that roads are empty). A
  frame is not empty when YOLO finds a vehicle scoring above `needed_conf` (`ClipData.needed`):
  by default the counting conf 0.25; down to the labels' floor (0.1), a frame Skip skips is
  empty for a worker run at any conf from `needed_conf` up (highway_topdown is counted at 0.1,
  where a car seen at scores 0.17-0.29 only must reach the tracker). metadata.json records it
  as ``detector_conf_floor``, which the runtime checks against the worker's conf.
- Reuse learns on frame pairs of one clip (the runtime only compares frames of one stream). A
  step draws a few clips, a window of `max_offset_s` seconds in each and frames in it (each with
  its next frame), and trains on every pair of frames of one clip: offsets from 1 frame to the
  window's length, each frame embedded once for dozens of pairs. Label 1 when the counts differ;
  differing and same pairs weigh the same. The loss is binary cross-entropy on the head's
  p_differ, plus (weight `contrastive`) the contrastive loss on the embeddings' distance.

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
from models.labels import COUNT_CONF, VEHICLE_CLASSES

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
    # learning rate per epoch: "constant" or "cosine" (decays to 0). Measured at the shipped
    # settings: cosine gave skip val AUC 0.879 vs 0.856 but filtered 11.9 % vs 13.1 % at 95 %
    # recall, and reuse pair AUC 0.743 vs 0.754: no clear gain, so the shipped runs keep constant.
    schedule: str = "constant"
    seed: int = 0
    threads: int = 2
    augment: bool = True
    # skip only: "the model is needed" = a vehicle scoring above this detector conf (at least the
    # labels' floor). 0.25 (the counting conf) is the shipped Skip's; 0.1 was measured (docs/filters.md)
    needed_conf: float = COUNT_CONF
    epoch_frames: int | None = None    # training frames per epoch (drawn afresh each epoch); None = all
    # reuse only
    val_pairs_per_clip: int = 300      # fixed validation pairs per clip
    clips_per_batch: int = 2
    max_offset_s: float = 10.0
    contrastive: float = 0.0           # weight of the contrastive loss beside the head's BCE
    margin: float = 1.0
    # network (models.features.Architecture fields); None = that class's default
    filters: tuple[int, ...] | None = None
    norm: str | None = None
    embedding: int | None = None
    head: int | None = None
    pool: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


#: The shipped filters' settings. The input size was chosen by measurement (SIZE_CHOICE, also in
#: every metadata.json): at 32 px Skip filtered the most frames at 95 % recall of non-empty frames
#: on both seeds, its AUC equalled 48 px's, and one TFLite invoke costs less than half as much.
DEFAULT_SIZE = 32
DEFAULT_EPOCHS = {"skip": 12, "reuse": 15}
#: Reuse variants tried against these defaults, each calibrated as the shipped filter is (share of
#: the 22 clips' validation frames, 1,447, kept from YOLO at 0.95 pooled agreement; 41-threshold
#: grid + fine search; Reuse policy at its defaults). None beat the seed-to-seed spread (3 points),
#: so the defaults stay. Without max_run: shipped (seed 0) 32.1 %, seed 1 29.0 %; 30 epochs: best
#: validation epoch still 15 (pair AUC between 0.72 and 0.75 from epoch 3 on); size 48: 27.2 % (and
#: 0.17 ms per invoke); embedding and head 32: 31.0 %; pairs within 3 s: 32.7 %; one clip per
#: batch (classes balanced within a camera): 34.1 % / 30.2 % (seeds 0/1). With max_run 25: shipped
#: 30.3 %, seed 1 27.9 %; one clip per batch 29.3 % / 26.3 %; one clip per batch and pairs within
#: 3 s 30.3 % / 29.2 %. Every variant splits clips all-or-nothing (static scenes ~100 % reused,
#: busy ones ~0 %): at 32 px the embedding tells scenes apart better than count changes.
#: Reuse pools max and mean features: a count changes the mean, not always the max (measured at
#: 32 px, 5 epochs: pair AUC max 0.728, avg 0.737, maxavg 0.747; within noise, none worse).
DEFAULT_POOL = {"skip": "max", "reuse": "maxavg"}
#: Neighbouring frames are near copies: an epoch of 3,000 frames drawn from the ~5,700 training
#: frames of the 22 shared clips learns as much per step, and keeps `make train` in its budget.
DEFAULT_EPOCH_FRAMES = 3000
SIZE_CHOICE = {
    "method": ("skip trained 5 epochs x 3,000 frames on the 22 shared clips' training parts; metrics of the best "
               "validation epoch on their validation parts (1,447 frames, 82 % non-empty); invoke = set_tensor + "
               "invoke + get_tensor, LiteRT, 1 thread, 20 interleaved rounds x 50 invokes per size in one process, "
               "this 2-core machine (shared with other jobs)"),
    "rows": [
        {"size": 32, "seed": 0, "accuracy": 0.860, "auc": 0.856, "filtered_at_recall_0.95": 0.131, "invoke_median_ms": 0.078},
        {"size": 32, "seed": 1, "accuracy": 0.814, "auc": 0.826, "filtered_at_recall_0.95": 0.132},
        {"size": 48, "seed": 0, "accuracy": 0.838, "auc": 0.822, "filtered_at_recall_0.95": 0.084, "invoke_median_ms": 0.177},
        {"size": 48, "seed": 1, "accuracy": 0.847, "auc": 0.859, "filtered_at_recall_0.95": 0.101},
        {"size": 64, "seed": 0, "accuracy": 0.837, "auc": 0.829, "filtered_at_recall_0.95": 0.093, "invoke_median_ms": 0.301},
    ],
    "chosen": 32,
}


def default_options(kind: str, size: int | None = None, epochs: int | None = None, seed: int = 0,
                    needed_conf: float = COUNT_CONF) -> TrainOptions:
    return TrainOptions(size=size or DEFAULT_SIZE, epochs=epochs or DEFAULT_EPOCHS[kind], seed=seed,
                        epoch_frames=DEFAULT_EPOCH_FRAMES, pool=DEFAULT_POOL[kind], needed_conf=needed_conf)


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


def epoch_learning_rate(options: TrainOptions, epoch: int) -> float:
    """The learning rate of `epoch` (0-based): cosine decay over the run, or constant."""
    if options.schedule == "constant":
        return options.learning_rate
    if options.schedule != "cosine":
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {options.schedule!r}")
    return options.learning_rate * 0.5 * (1 + np.cos(np.pi * epoch / max(1, options.epochs)))


def architecture(options: TrainOptions):
    from models.features import Architecture

    arch = Architecture(size=options.size)
    overrides = {k: getattr(options, k) for k in ("filters", "norm", "embedding", "head", "pool")
                 if getattr(options, k) is not None}
    return replace(arch, **overrides)


def augment(batch: np.ndarray, rng: np.random.Generator, same: bool = False) -> np.ndarray:
    """Photometric and geometric jitter of uint8 frames [B, S, S, 3] -> float32 0..255: contrast,
    brightness and per-channel gain, a horizontal flip, a shift of up to S/24 pixels. Each frame
    gets its own draw, or with `same` all get one (frames of one camera whose pairs are compared:
    the camera changes, not the scene)."""
    x = batch.astype(np.float32)
    x = x[:, None] if same else x[None]     # axis 1 indexes the draws, axis 0 the frames sharing one
    draws, size = x.shape[1], x.shape[2]
    contrast = rng.uniform(0.7, 1.3, (1, draws, 1, 1, 1)).astype(np.float32)
    brightness = rng.uniform(-30, 30, (1, draws, 1, 1, 1)).astype(np.float32)
    gain = rng.uniform(0.9, 1.1, (1, draws, 1, 1, 3)).astype(np.float32)
    mean = x.mean(axis=(2, 3, 4), keepdims=True)
    x = np.clip(((x - mean) * contrast + mean + brightness) * gain, 0, 255)
    flip = rng.random(draws) < 0.5
    x[:, flip] = x[:, flip, :, ::-1]
    limit = max(1, size // 24)
    for index, (dy, dx) in enumerate(rng.integers(-limit, limit + 1, (draws, 2))):
        if dy or dx:
            padded = np.pad(x[:, index], ((0, 0), (limit, limit), (limit, limit), (0, 0)), mode="edge")
            x[:, index] = padded[:, limit + dy:limit + dy + size, limit + dx:limit + dx + size]
    return x[:, 0] if same else x[0]


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


def _needed_at(clips: list[ClipData], which: str, conf: float) -> np.ndarray:
    """Skip's label (a vehicle above detector conf `conf`) of every frame in split part `which`,
    clips in `_frames_at`'s order."""
    return np.concatenate([clip.needed(conf)[clip.part(which)] for clip in clips])


def conf_floor(clips: Sequence[ClipData], conf: float) -> float | None:
    """The detector conf from which up a Skip trained on "a vehicle above `conf`" skips only
    empty frames: `conf`, when every clip's labels say they reach down to it; else None."""
    floors = [clip.floor_conf for clip in clips]
    return None if not floors or None in floors or max(floors) > conf + 1e-9 else float(conf)


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
    if say is not None:
        say(text)
    else:
        log.info(text)


def _metadata(kind: str, options: TrainOptions, arch: Any, clips: list[ClipData], params: int,
              training: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    from models.export import git_commit

    meta = {"input_size": options.size, "task": "vehicles", "rule": "empty" if kind == "skip" else "same-count",
            "classes": list(VEHICLE_CLASSES)}
    if kind == "reuse":
        meta["embedding"] = arch.embedding
    meta.update({"params": int(params), "trained_on": [clip.name for clip in clips], "split": SPLIT_NOTE,
                 "epochs": options.epochs, "commit": git_commit(), "architecture": arch.to_json(),
                 "size_choice": SIZE_CHOICE, "training": training, **extra})
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
    frames, _, owner = _frames_at(data, "train")
    val_frames, _, _ = _frames_at(data, "val")
    needed = _needed_at(data, "train", options.needed_conf).astype(np.float32)
    val_needed = _needed_at(data, "val", options.needed_conf)
    floor = conf_floor(data, options.needed_conf)
    # every clip weighs the same in total, and within that both classes weigh the same
    weights = np.zeros(len(needed), np.float32)
    for index in np.unique(owner):
        mine = owner == index
        for label in (0.0, 1.0):
            cell = mine & (needed == label)
            if cell.any():
                weights[cell] = 1.0 / cell.sum()
    weights *= len(weights) / weights.sum()
    _report(say, f"skip: {len(needed)} training frames from {len(data)} clips ({needed.mean():.1%} with a vehicle "
                 f"above conf {options.needed_conf:g}), {len(val_needed)} validation frames, size {options.size}")

    arch = architecture(options)
    model = skip_model(arch)
    model.compile(optimizer=tf.keras.optimizers.Adam(options.learning_rate), loss="binary_crossentropy")
    rng = np.random.default_rng(options.seed)
    best, best_weights, history = -1.0, None, []
    per_epoch = min(len(needed), options.epoch_frames or len(needed))
    steps = max(1, int(np.ceil(per_epoch / options.batch)))
    for epoch in range(options.epochs):
        model.optimizer.learning_rate.assign(epoch_learning_rate(options, epoch))
        order = rng.permutation(len(needed))[:per_epoch]
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
        metrics = skip_metrics(val_needed, _predict(model, val_frames)[:, 0])
        score = metrics["auc"] if np.isfinite(metrics["auc"]) else metrics["accuracy"]
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **metrics})
        _report(say, f"{time.strftime('%H:%M:%S')} skip epoch {epoch + 1}/{options.epochs}: loss {np.mean(losses):.4f}, val accuracy "
                     f"{metrics['accuracy']:.3f}, AUC {metrics['auc']:.3f}, filtered at 95% recall "
                     f"{metrics.get('filtered_at_recall_0.95', float('nan')):.3f}")
        if score > best:
            best, best_weights = score, model.get_weights()
    model.set_weights(best_weights)
    best_epoch = int(np.argmax([h["auc"] if np.isfinite(h["auc"]) else h["accuracy"] for h in history])) + 1
    final = skip_metrics(val_needed, _predict(model, val_frames)[:, 0])
    seconds = time.monotonic() - started
    training = {"options": options.to_json(), "best_epoch": best_epoch, "validation": final,
                "train_frames": int(len(needed)), "history": history, "seconds": round(seconds, 1)}
    _report(say, f"skip: best epoch {best_epoch}: val accuracy {final['accuracy']:.3f}, AUC {final['auc']:.3f}, "
                 f"filtered at 95% recall {final.get('filtered_at_recall_0.95', float('nan')):.3f} "
                 f"({seconds:.0f} s)")
    if out is not None:
        extra = {"detector_conf_floor": floor, **(extra_metadata or {})}
        out = _export_skip(model, arch, options, data, val_frames, training, extra, out)
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


def window_batch(clip: ClipData, frames: int, max_offset_s: float, rng: np.random.Generator) -> np.ndarray:
    """Positions of `frames` training frames of one clip, all within `max_offset_s` seconds: half
    drawn at random in a window, each with its next frame, so that the batch's pairs span every
    offset from 1 frame to the window's length."""
    positions = clip.part("train")
    window = max(2, min(len(positions), int(round(max_offset_s * _fps(clip))) + 1))
    start = int(rng.integers(0, len(positions) - window + 1))
    anchors = rng.integers(start, start + window - 1, frames // 2)
    picked = np.unique(np.concatenate([anchors, anchors + 1]))
    return positions[picked]


def _val_pair_rows(data: list[ClipData], per_clip: int, max_offset_s: float, seed: int) -> list[np.ndarray]:
    """Fixed validation pairs per clip (positions inside its validation part)."""
    rng = np.random.default_rng(seed)
    return [sample_pairs(clip, "val", per_clip, max_offset_s, rng)[0] for clip in data]


def _reuse_validation(nets, head_layers, data: list[ClipData], val_pairs: list[np.ndarray]) -> dict[str, Any]:
    """Pair metrics on the fixed validation pairs and on every consecutive validation pair; each
    validation frame is embedded once, the head applied in numpy as the runtime does."""
    from models.export import head_arrays, head_numpy

    head = head_arrays(head_layers)
    differ, scores, next_differ, next_scores = [], [], [], []
    for clip, pairs in zip(data, val_pairs):
        positions = clip.part("val")
        if len(positions) < 2:
            continue
        embedding = _predict(nets.embed, np.asarray(clip.frames[positions]))
        lookup = {int(position): index for index, position in enumerate(positions)}
        if len(pairs):
            a = np.array([lookup[int(x)] for x in pairs[:, 0]])
            b = np.array([lookup[int(x)] for x in pairs[:, 1]])
            scores.append(head_numpy(head, np.abs(embedding[a] - embedding[b]))[:, 0])
            differ.append(clip.count[pairs[:, 0]] != clip.count[pairs[:, 1]])
        next_scores.append(head_numpy(head, np.abs(embedding[1:] - embedding[:-1]))[:, 0])
        next_differ.append(clip.count[positions[1:]] != clip.count[positions[:-1]])
    metrics = pair_metrics(np.concatenate(differ), np.concatenate(scores))
    metrics["next_frame"] = pair_metrics(np.concatenate(next_differ), np.concatenate(next_scores))
    return metrics


def _pair_step(nets, optimizer, options: TrainOptions):
    """One optimisation step on a batch of frames from a few clips: every pair of frames of the
    same clip is a training pair (label 1 when the counts differ), differing and same pairs
    weighing the same; the loss is BCE on the head's p_differ (+ the contrastive loss)."""
    import tensorflow as tf

    margin, contrastive = float(options.margin), float(options.contrastive)

    @tf.function(reduce_retracing=True)
    def step(frames, counts, groups):
        with tf.GradientTape() as tape:
            embedding = nets.embed(frames, training=True)
            n = tf.shape(embedding)[0]
            gap = tf.abs(embedding[:, None, :] - embedding[None, :, :])
            flat = tf.reshape(gap, (n * n, -1))
            p = tf.reshape(nets.head(flat, training=True), (n, n))
            upper = tf.linalg.band_part(tf.ones((n, n)), 0, -1) - tf.eye(n)
            valid = upper * tf.cast(tf.equal(groups[:, None], groups[None, :]), tf.float32)
            differ = tf.cast(tf.not_equal(counts[:, None], counts[None, :]), tf.float32)
            positives = tf.reduce_sum(valid * differ)
            negatives = tf.reduce_sum(valid * (1 - differ))
            weight = valid * (differ * 0.5 / tf.maximum(positives, 1.0) + (1 - differ) * 0.5 / tf.maximum(negatives, 1.0))
            weight = weight / tf.maximum(tf.reduce_sum(weight), 1e-9)
            p = tf.clip_by_value(p, 1e-6, 1 - 1e-6)
            bce = -(differ * tf.math.log(p) + (1 - differ) * tf.math.log(1 - p))
            loss = tf.reduce_sum(weight * bce)
            if contrastive:
                distance = tf.sqrt(tf.reduce_sum(tf.square(gap), axis=-1) + 1e-9)
                pull = (1 - differ) * tf.square(distance) + differ * tf.square(tf.maximum(margin - distance, 0.0))
                loss = loss + contrastive * tf.reduce_sum(weight * pull)
        variables = nets.embed.trainable_variables + nets.head.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def train_reuse(clips: Sequence[Path | str], exclude: Sequence[str] = (), options: TrainOptions = TrainOptions(),
                out: Path | None = None, progress: bool = True, say: Callable[[str], None] | None = print,
                data: list[ClipData] | None = None, extra_metadata: dict[str, Any] | None = None) -> TrainResult:
    """Train InFi-Reuse (siamese embedding + distance head) on frame pairs from the training parts
    of `clips` (minus `exclude`); write `out` if given.

    A step takes `clips_per_batch` clips (uniformly: each camera counts the same) and a window of
    `max_offset_s` seconds in each, `batch // clips_per_batch` frames from it, and trains on every
    pair of frames of one clip: each frame is embedded once for dozens of pairs."""
    import tensorflow as tf
    from models.features import siamese

    started = time.monotonic()
    seed_everything(options.seed, options.threads)
    data = data if data is not None else load_clips(clips, options.size, exclude, progress)
    usable = [index for index, clip in enumerate(data) if len(clip.part("train")) >= 2]
    if not usable:
        raise ValueError("no clip has two training frames to pair")
    rng = np.random.default_rng(options.seed)
    val_pairs = _val_pair_rows(data, options.val_pairs_per_clip, options.max_offset_s, options.seed + 1)
    arch = architecture(options)
    nets = siamese(arch)
    optimizer = tf.keras.optimizers.Adam(options.learning_rate)
    step = _pair_step(nets, optimizer, options)
    per_clip = max(2, options.batch // options.clips_per_batch)
    # an epoch: as many frames as the training parts hold (each frame is in dozens of pairs)
    per_epoch = sum(len(data[i].part("train")) for i in usable)
    steps = max(1, min(per_epoch, options.epoch_frames or per_epoch) // (per_clip * options.clips_per_batch))
    _report(say, f"reuse: {len(usable)} clips, {steps} steps per epoch of {options.clips_per_batch} clips x "
                 f"{per_clip} frames (every same-clip pair trains), size {options.size}")
    best, best_weights, history = -1.0, None, []
    for epoch in range(options.epochs):
        optimizer.learning_rate.assign(epoch_learning_rate(options, epoch))
        epoch_losses = []
        bar = _progress(steps, f"reuse epoch {epoch + 1}/{options.epochs}") if progress else None
        for _ in range(steps):
            frames, counts, groups = [], [], []
            for group, index in enumerate(rng.choice(usable, options.clips_per_batch)):
                clip = data[index]
                positions = window_batch(clip, per_clip, options.max_offset_s, rng)
                chunk = np.asarray(clip.frames[positions])
                frames.append(augment(chunk, rng, same=True) if options.augment else chunk.astype(np.float32))
                counts.append(clip.count[positions])
                groups.append(np.full(len(positions), group))
            loss = step(tf.constant(np.concatenate(frames)), tf.constant(np.concatenate(counts), tf.int32),
                        tf.constant(np.concatenate(groups), tf.int32))
            epoch_losses.append(float(loss))
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        metrics = _reuse_validation(nets, nets.head_layers, data, val_pairs)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(epoch_losses)), **metrics})
        _report(say, f"{time.strftime('%H:%M:%S')} reuse epoch {epoch + 1}/{options.epochs}: loss {np.mean(epoch_losses):.4f}, val pair accuracy "
                     f"{metrics['accuracy']:.3f} (balanced {metrics['balanced_accuracy']:.3f}), AUC {metrics['auc']:.3f}; "
                     f"consecutive frames AUC {metrics['next_frame']['auc']:.3f}")
        score = metrics["auc"] if np.isfinite(metrics["auc"]) else metrics["balanced_accuracy"]
        if score > best:
            best, best_weights = score, nets.pair.get_weights()
    nets.pair.set_weights(best_weights)
    best_epoch = int(np.argmax([h["auc"] if np.isfinite(h["auc"]) else h["balanced_accuracy"] for h in history])) + 1
    final = _reuse_validation(nets, nets.head_layers, data, val_pairs)
    seconds = time.monotonic() - started
    training = {"options": options.to_json(), "best_epoch": best_epoch, "validation": final,
                "history": history, "seconds": round(seconds, 1)}
    _report(say, f"reuse: best epoch {best_epoch}: val pair accuracy {final['accuracy']:.3f} (balanced "
                 f"{final['balanced_accuracy']:.3f}), AUC {final['auc']:.3f}; consecutive frames: AUC "
                 f"{final['next_frame']['auc']:.3f} ({seconds:.0f} s)")
    if out is not None:
        val_frames = np.concatenate([np.asarray(clip.frames[clip.part("val")][:4]) for clip in data])
        out = _export_reuse(nets, arch, options, data, val_frames, training, extra_metadata or {}, out)
        _report(say, f"reuse filter written to {out}")
    return TrainResult(out, final, seconds, nets, history)


def _export_reuse(nets, arch, options, data, val_frames, training, extra, out: Path) -> Path:
    from models.export import check_tflite, head_arrays, head_numpy, invoke_ms, to_tflite, write_filter_dir

    tflite = to_tflite(nets.embed, options.size)
    sample = val_frames[np.linspace(0, len(val_frames) - 1, min(8, len(val_frames))).astype(int)]
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
