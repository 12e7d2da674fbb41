"""Training data: every decoded frame of a clip beside its label, in the project's seq order;
the split protocol; a label file that does not match the decoded clip is refused."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from models.dataset import AlignmentError, cached_frames, frames_cache_path, load_clip, split_indices
from models.frames import reduce_frame

FRAMES, WIDTH, HEIGHT = 12, 64, 48


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFI_CACHE", str(tmp_path / "cache"))


def write_clip(path: Path, frames: int = FRAMES) -> Path:
    """A tiny lossless clip: frame i is a flat grey of level 20 * i (each frame tells its index)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "bgr0"
        for index in range(frames):
            image = np.full((HEIGHT, WIDTH, 3), 20 * index % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode(None))
    return path


def write_labels(path: Path, counts: list[int], frames_read: int | None = None, seqs: list[int] | None = None) -> Path:
    """A label file in models/labels.py's format: `counts[i]` cars in labelled frame seqs[i]."""
    seqs = list(range(len(counts))) if seqs is None else seqs
    with path.open("w") as out:
        for seq, count in zip(seqs, counts):
            out.write(json.dumps({"seq": seq, "pts": seq / 10, "boxes": [[0, 0, 5, 5]] * count,
                                  "classes": [2] * count, "scores": [0.9] * count}) + "\n")
        out.write(json.dumps({"end": True, "frames": len(counts) if frames_read is None else frames_read,
                              "labelled": len(counts), "source": {}}) + "\n")
    return path


@pytest.mark.parametrize("frames, train, val, test", [
    (100, range(0, 40), range(40, 50), range(50, 100)),
    (11, range(0, 4), range(4, 5), range(5, 11)),
    (1, [], [], [0]),
    (0, [], [], []),
])
def test_the_split_protocol(frames, train, val, test):
    split = split_indices(frames)
    assert split.train.tolist() == list(train)
    assert split.val.tolist() == list(val)
    assert split.test.tolist() == list(test)


def test_every_frame_is_shrunk_in_decode_order_beside_its_label(tmp_path):
    clip = write_clip(tmp_path / "clip.mkv")
    counts = [0, 1, 1, 2, 0, 0, 3, 1, 1, 0, 2, 2]
    data = load_clip(clip, 16, label_file=write_labels(tmp_path / "labels.jsonl", counts))
    assert data.frames.shape == (FRAMES, 16, 16, 3) and data.frames.dtype == np.uint8
    assert data.seq.tolist() == list(range(FRAMES)) and data.count.tolist() == counts
    # frame i is grey level 20 * i: decode order is seq order
    assert [int(frame[0, 0, 0]) for frame in data.frames] == [20 * i for i in range(FRAMES)]
    expected = reduce_frame(np.full((HEIGHT, WIDTH, 3), 40, np.uint8), 16)
    assert np.array_equal(data.frames[2], expected)
    assert data.split.train.tolist() == [0, 1, 2, 3] and data.split.val.tolist() == [4, 5]
    assert data.part("test").tolist() == list(range(6, 12))


def test_frames_are_cached_by_content_and_size(tmp_path):
    clip = write_clip(tmp_path / "clip.mkv")
    first = cached_frames(clip, 16, also=(8,))
    assert frames_cache_path(clip, 16).exists() and frames_cache_path(clip, 8).exists()
    assert np.array_equal(cached_frames(clip, 16), first)      # read back from the cache
    assert cached_frames(clip, 8).shape == (FRAMES, 8, 8, 3)
    before = frames_cache_path(clip, 16)
    write_clip(clip, FRAMES - 1)                              # new content under the same name: a new key
    assert frames_cache_path(clip, 16) != before
    assert len(cached_frames(clip, 16)) == FRAMES - 1


def test_frames_that_never_decoded_at_the_end_are_not_a_mismatch(tmp_path):
    # the source counts frames read but never output (before the first keyframe) as the last seqs
    clip = write_clip(tmp_path / "clip.mkv")
    data = load_clip(clip, 16, label_file=write_labels(tmp_path / "labels.jsonl", [1] * FRAMES, frames_read=FRAMES + 2))
    assert data.seq.tolist() == list(range(FRAMES))


@pytest.mark.parametrize("labels, message", [
    (dict(counts=[0] * (FRAMES - 1)), "decoding gives 12 frames but the label file .* labels 11 of the 11"),
    (dict(counts=[0] * (FRAMES + 1)), "labels 13 of the 13"),                                 # labels of another clip
    (dict(counts=[0] * FRAMES, frames_read=FRAMES - 1), "labels 12 of the 11"),
    (dict(counts=[0] * FRAMES, frames_read=FRAMES + 1,                                       # a gap mid-stream
          seqs=[s for s in range(FRAMES + 1) if s != 5]), "seqs with gaps"),
])
def test_labels_that_do_not_match_the_decoded_clip_are_refused(tmp_path, labels, message):
    clip = write_clip(tmp_path / "clip.mkv")
    with pytest.raises(AlignmentError, match=message):
        load_clip(clip, 16, label_file=write_labels(tmp_path / "labels.jsonl", **labels))
