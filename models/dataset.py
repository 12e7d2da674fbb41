"""Training data for the frame filters: every frame of a clip, shrunk, beside its YOLO count.

A clip's frames are decoded once with PyAV and numbered by decode order, which is how the
project's source numbers them (stages/sources/decoding.py: ``seq`` counts decoded frames from 0);
the label file (models/labels.py) says how many frames its run read, and a clip whose decode
gives another number is refused rather than silently misaligned. Frames are shrunk by
`models.frames.reduce_frame`, the function the live filter uses, and cached as ``.npy`` under
``<cache>/frames`` by clip content and size, so a second training run or an evaluation reads
them in a second.

The split protocol, the same for every helper of issue 9 (`split_indices`): per clip, frames in
seq order; the first half is for training and validation (training = its first 80 %,
validation = its last 20 %), the second half for testing.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import av
import numpy as np

from models.frames import reduce_frame
from models.labels import (COUNT_CONF, DetectorSettings, FrameLabels, cached_labels, count_labels, file_sha256,
                           label_clip)
from pipeline.assets import assets_dir, cache_dir
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: Bumped when cached frame arrays would come out differently (another reduction, numbering).
FRAMES_FORMAT = 1
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".ts")


class AlignmentError(ValueError):
    """Decoded frames and label file disagree on how many frames a clip has."""


@dataclass(frozen=True)
class Split:
    """Indices (positions in seq order) of one clip's training, validation and test frames."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_indices(frames: int) -> Split:
    """The protocol: first half = training (first 80 % of it) + validation (last 20 %); second half = test."""
    half = frames // 2
    train_end = (half * 4) // 5
    positions = np.arange(frames)
    return Split(positions[:train_end], positions[train_end:half], positions[half:])


@dataclass(frozen=True)
class ClipData:
    """One clip as the filters learn from it: frames in seq order, their vehicle counts, the split."""

    name: str
    path: Path
    seq: np.ndarray        # int64 [N]
    frames: np.ndarray     # uint8 [N, S, S, 3], BGR, reduce_frame(frame, S)
    count: np.ndarray      # int32 [N] vehicles (classes 2, 3, 5, 7) at COUNT_CONF: what answers agree on
    pts: np.ndarray        # float64 [N] seconds
    split: Split
    # The highest vehicle score per frame (0: none above the label file's floor, `floor_conf`):
    # Skip's "the model is needed" at a detector conf c is top_score > c (`needed`). None: only
    # `count` is known.
    top_score: np.ndarray | None = None      # float32 [N]
    floor_conf: float | None = None          # None: the labels do not say

    def needed(self, conf: float = COUNT_CONF) -> np.ndarray:
        """bool [N]: YOLO at detector confidence `conf` finds a vehicle (Skip's label). Refused
        below the labels' floor, where they cannot tell."""
        if self.floor_conf is not None and conf < self.floor_conf - 1e-9:
            raise ConfigError(f"{self.name}: its labels hold detections above {self.floor_conf:g} only, so they "
                              f"cannot say which frames hold a vehicle at conf {conf:g}; label at --conf {conf:g}")
        if self.top_score is None:
            if abs(conf - COUNT_CONF) > 1e-9:
                raise ConfigError(f"{self.name}: only counts at {COUNT_CONF:g} are known, not scores")
            return self.count > 0
        return self.top_score > conf

    @property
    def size(self) -> int:
        return int(self.frames.shape[1])

    def part(self, which: str) -> np.ndarray:
        """Positions of "train", "val" or "test" frames."""
        return getattr(self.split, which)


def default_clips() -> list[Path]:
    """Every video under ``$INFI_ASSETS/traffic`` (the cameras the shipped filters learn from)."""
    folder = assets_dir() / "traffic"
    clips = sorted(p for p in folder.glob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise ConfigError(f"no video clips under {folder}; set INFI_ASSETS or pass --clips")
    return clips


@functools.lru_cache(maxsize=256)
def _content_key(clip: Path, mtime_ns: int, length: int) -> str:
    return file_sha256(clip)[:16]


def frames_cache_path(clip: Path, size: int, out_dir: Path | None = None) -> Path:
    """Where `clip`'s frames at `size` are cached: by content (sha256 prefix), not name or date."""
    folder = Path(out_dir or cache_dir() / "frames")
    stat = clip.stat()
    return folder / f"{clip.stem}-{_content_key(clip.resolve(), stat.st_mtime_ns, stat.st_size)}-s{size}-f{FRAMES_FORMAT}.npy"


def decode_reduced(clip: Path, sizes: Sequence[int], progress: bool = False) -> list[np.ndarray]:
    """Every decoded frame of `clip` in decode order, shrunk to each of `sizes` (one decode for all):
    a uint8 [N, size, size, 3] array per size."""
    try:
        container = av.open(str(clip), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError) as error:
        raise ConfigError(f"cannot open {clip} as video: {error}") from None
    frames: list[list[np.ndarray]] = [[] for _ in sizes]
    decoded = 0
    try:
        streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            raise ConfigError(f"expected a video stream in {clip}, found none")
        stream = streams[0]
        stream.thread_type = "AUTO"
        bar = _progress_bar(stream.frames or None, f"decode {clip.name}") if progress else None
        try:
            for frame in container.decode(stream):
                image = frame.to_ndarray(format="bgr24")
                for out, size in zip(frames, sizes):
                    out.append(reduce_frame(image, size))
                decoded += 1
                if bar is not None:
                    bar.update()
        finally:
            if bar is not None:
                bar.close()
    except av.error.FFmpegError as error:
        raise AlignmentError(f"{clip}: the decoder failed after {decoded} frames ({error}); frames "
                             f"could no longer be matched to their labels by decode order") from None
    finally:
        container.close()
    return [np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8) for out, size in zip(frames, sizes)]


def _progress_bar(total: int | None, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="frame", leave=False)


def cached_frames(clip: Path, size: int, progress: bool = False, out_dir: Path | None = None,
                  also: Sequence[int] = ()) -> np.ndarray:
    """`decode_reduced` at `size`, kept as ``.npy`` by clip content and size (read back memory-mapped).
    Sizes in `also` are cached by the same decode when missing (comparing input sizes)."""
    path = frames_cache_path(clip, size, out_dir)
    if path.exists():
        return np.load(path, mmap_mode="r")
    sizes = [size] + [s for s in also if s != size and not frames_cache_path(clip, s, out_dir).exists()]
    arrays = decode_reduced(clip, sizes, progress)
    for each, frames in zip(sizes, arrays):
        target = frames_cache_path(clip, each, out_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial.npy")
        np.save(partial, frames)
        partial.replace(target)      # never a half-written cache under the final name
    return arrays[0]


def label_end(label_file: Path) -> dict:
    """The end line of a label file: ``{"end": true, "frames": frames read, "labelled": n, ...}``."""
    lines = Path(label_file).read_text().splitlines()
    end = json.loads(lines[-1]) if lines else {}
    if not end.get("end"):
        raise AlignmentError(f"{label_file} has no end line: labels are incomplete")
    return end


def align(name: str, frames: np.ndarray, label_file: Path, conf: float | None = COUNT_CONF,
          floor: float | None = None) -> FrameLabels:
    """The labels (`count_labels` at `conf`; `floor`: the conf the file was looked up by) of every
    decoded frame, checked against the label file.

    The source numbers decoded frames 0, 1, 2, ...; a frame read that never decodes without an
    error (H.264 frames before the first keyframe) is counted at the END of the stream
    (stages/sources/decoding.py), so such a clip's labels are seqs 0..decoded-1 and the end line
    reads more frames than were labelled. A packet the decoder rejects mid-stream would leave a
    gap in the seqs instead: decode order could no longer stand for seq, and the clip is refused.
    """
    end = label_end(label_file)
    labels = count_labels(label_file, conf=conf, floor=floor)
    decoded = len(frames)
    if len(labels.seq) != decoded or decoded > end["frames"]:
        raise AlignmentError(f"{name}: decoding gives {decoded} frames but the label file {label_file} labels "
                             f"{len(labels.seq)} of the {end['frames']} the source read: frames cannot be matched "
                             f"to labels (labels of another file or decoder? label the clip again with --refresh)")
    if not np.array_equal(labels.seq, np.arange(decoded)):
        raise AlignmentError(f"{name}: the label file {label_file} labels seqs with gaps (frames the decoder "
                             f"rejected mid-stream): decode order cannot stand for seq on this clip")
    return labels


def load_clip(clip: Path | str, size: int, label_file: Path | None = None, progress: bool = False,
              settings: DetectorSettings = DetectorSettings(), cache: Path | None = None) -> ClipData:
    """One clip's shrunk frames, counts and split; labels it with YOLO first unless cached
    (`cached_labels`). The counts are at `COUNT_CONF`; the top scores reach down to the label
    file's floor (`ClipData.floor_conf`)."""
    clip = Path(clip)
    floor = None
    if label_file is None:      # labels at the floor, or made at the counting conf; else YOLO now, at the floor
        label_file, floor = cached_labels(clip, settings) or (label_clip(clip, settings, progress=progress),
                                                              settings.conf)
    frames = cached_frames(clip, size, progress, cache)
    labels = align(clip.name, frames, label_file, floor=floor)     # top scores do not depend on the conf
    return ClipData(clip.stem, clip, labels.seq, frames, labels.count, labels.pts, split_indices(len(labels.seq)),
                    labels.top_score, labels.floor)


def load_clips(clips: Sequence[Path | str], size: int, exclude: Sequence[str] = (), progress: bool = False,
               settings: DetectorSettings = DetectorSettings()) -> list[ClipData]:
    """`load_clip` for every clip whose name (stem or file name) is not in `exclude`."""
    excluded = set(exclude)
    data = []
    for clip in map(Path, clips):
        if clip.stem in excluded or clip.name in excluded:
            continue
        data.append(load_clip(clip, size, progress=progress, settings=settings))
        log.info("%s: %d frames at %d px", clip.name, len(data[-1].seq), size)
    if not data:
        raise ConfigError(f"no clip left to learn from (clips {[Path(c).name for c in clips]}, excluded {sorted(excluded)})")
    return data
