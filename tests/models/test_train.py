"""Training and export on tiny synthetic clips: a one-epoch model trains, converts to TFLite with
the same outputs as Keras, and lands in a filter directory with the contract's files and fields;
reuse pairs come from one clip's own part, labelled 1 when the counts differ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.dataset import ClipData, split_indices
from models.train import TrainOptions, augment, auc, pair_metrics, sample_pairs, skip_metrics

SIZE = 16
TINY = dict(size=SIZE, epochs=1, batch=16, filters=(4, 8), embedding=4, head=4, threads=1)


def synthetic_clip(name: str, frames: int = 60, seed: int = 0) -> ClipData:
    """A camera where frame i holds count[i] bright squares on a dark, noisy road."""
    rng = np.random.default_rng(seed)
    count = np.repeat(rng.integers(0, 3, frames // 4 + 1), 4)[:frames].astype(np.int32)
    images = rng.integers(0, 40, (frames, SIZE, SIZE, 3)).astype(np.uint8)
    for index, cars in enumerate(count):
        for car in range(cars):
            images[index, 2 + 5 * car:5 + 5 * car, 4:8] = 230
    return ClipData(name, Path(f"{name}.mp4"), np.arange(frames), images, count,
                    np.arange(frames) / 10.0, split_indices(frames))


def test_auc_and_filter_metrics():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))
    metrics = skip_metrics(np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.6, 0.7, 0.9]))
    assert metrics["accuracy"] == 0.8 and metrics["auc"] == 1.0
    assert metrics["filtered_at_recall_0.95"] == 0.6      # below the weakest non-empty frame's 0.7
    assert pair_metrics(np.array([1, 0, 0, 0]), np.array([0.9, 0.1, 0.2, 0.6]))["balanced_accuracy"] == pytest.approx(5 / 6)


def test_reuse_pairs_stay_inside_one_part_of_one_clip():
    clip = synthetic_clip("a", frames=200)
    pairs, differ = sample_pairs(clip, "train", 500, max_offset_s=2.0, rng=np.random.default_rng(1))
    train = set(clip.part("train").tolist())
    assert set(pairs.ravel().tolist()) <= train
    gaps = np.abs(pairs[:, 0] - pairs[:, 1])
    assert gaps.min() == 1 and gaps.max() <= 20             # 2 s at 10 frames/s
    assert (pairs[:, 0] > pairs[:, 1]).any() and (pairs[:, 0] < pairs[:, 1]).any()
    assert differ.tolist() == (clip.count[pairs[:, 0]] != clip.count[pairs[:, 1]]).tolist()


def test_augmentation_of_one_camera_changes_its_frames_alike():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    same = augment(np.stack([frame] * 4), rng, same=True)
    assert same.dtype == np.float32 and same.shape == (4, SIZE, SIZE, 3)
    assert all(np.array_equal(same[0], other) for other in same[1:]) and not np.array_equal(same[0], frame)
    each = augment(np.stack([frame] * 4), rng)
    assert not np.array_equal(each[0], each[1])
    assert min(same.min(), each.min()) >= 0 and max(same.max(), each.max()) <= 255


CONTRACT = {"format", "kind", "input_size", "task", "rule", "classes", "params", "trained_on", "split", "epochs",
            "commit", "created", "training"}


def test_a_tiny_skip_filter_trains_and_round_trips_through_tflite(tmp_path):
    pytest.importorskip("tensorflow")
    from models.export import run_tflite
    from models.train import train_skip

    clips = [synthetic_clip("a"), synthetic_clip("b", seed=1), synthetic_clip("left_out", seed=2)]
    result = train_skip([], exclude=["left_out"], options=TrainOptions(**TINY), out=tmp_path / "skip",
                        progress=False, say=None, data=clips[:2])
    assert sorted(p.name for p in (tmp_path / "skip").iterdir()) == ["metadata.json", "model.tflite"]
    meta = json.loads((tmp_path / "skip" / "metadata.json").read_text())
    assert CONTRACT <= set(meta)
    assert (meta["kind"], meta["input_size"], meta["rule"], meta["classes"]) == ("skip", SIZE, "empty", [2, 3, 5, 7])
    assert meta["trained_on"] == ["a", "b"] and meta["epochs"] == 1
    assert {"accuracy", "auc"} <= set(meta["training"]["validation"])
    frames = clips[0].frames[:6]
    lite = run_tflite((tmp_path / "skip" / "model.tflite").read_bytes(), frames)
    assert lite.shape == (6, 1)
    np.testing.assert_allclose(lite, np.asarray(result.model(frames.astype(np.float32), training=False)), atol=1e-5)


def test_a_tiny_reuse_filter_exports_its_embedding_and_head(tmp_path):
    pytest.importorskip("tensorflow")
    from models.export import head_numpy, run_tflite
    from models.train import train_reuse

    clips = [synthetic_clip("a"), synthetic_clip("b", seed=1)]
    result = train_reuse([], options=TrainOptions(**TINY, contrastive=0.5), out=tmp_path / "reuse",
                         progress=False, say=None, data=clips)
    directory = tmp_path / "reuse"
    assert sorted(p.name for p in directory.iterdir()) == ["head.npz", "metadata.json", "model.tflite"]
    meta = json.loads((directory / "metadata.json").read_text())
    assert CONTRACT | {"embedding"} <= set(meta)
    assert (meta["kind"], meta["rule"], meta["embedding"]) == ("reuse", "same-count", 4)
    head = dict(np.load(directory / "head.npz"))
    assert {k: v.shape for k, v in head.items()} == {"w1": (4, 4), "b1": (4,), "w2": (4, 1), "b2": (1,)}
    frames = clips[0].frames[:6]
    embeddings = run_tflite((directory / "model.tflite").read_bytes(), frames)
    assert embeddings.shape == (6, 4)
    nets = result.model
    np.testing.assert_allclose(embeddings, np.asarray(nets.embed(frames.astype(np.float32))), atol=1e-5)
    # the contract's numpy head on |e1 - e2| is the trained pair model's p_differ
    pair = nets.pair([frames[:3].astype(np.float32), frames[3:].astype(np.float32)], training=False)
    np.testing.assert_allclose(head_numpy(head, np.abs(embeddings[:3] - embeddings[3:])),
                               np.asarray(pair["differ"]), atol=1e-5)


def test_the_directory_writer_keeps_the_contract(tmp_path):
    from models.export import write_filter_dir

    (tmp_path / "calibration.json").write_text("{}")       # thresholds of an older model
    write_filter_dir(tmp_path, "skip", b"model", {"input_size": 8})
    assert not (tmp_path / "calibration.json").exists()
    assert json.loads((tmp_path / "metadata.json").read_text())["kind"] == "skip"
    with pytest.raises(ValueError, match="reuse filter needs its head"):
        write_filter_dir(tmp_path, "reuse", b"model", {})
