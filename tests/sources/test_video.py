"""VideoFileSource on every real clip, plus pacing, frame ownership and the contract's shape."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import av
import numpy as np
import pytest

from stages.sources import VideoFileSource, open_source

from .conftest import asset, assets_under

VIDEO_ASSETS = assets_under("traffic") + assets_under("hollywood2")


def container_video_count(path: Path) -> tuple[int, int, int]:
    """What the container itself says about its first video stream, read by demuxing alone.

    Returns (frames declared in the header/index, picture packets demuxed, placeholder packets).
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        sizes = [packet.size for packet in container.demux(stream) if packet.size > 0]
        return stream.frames, len(sizes), sum(1 for size in sizes if size <= 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", VIDEO_ASSETS, ids=lambda p: p.name)
def test_every_clip_decodes_with_the_containers_frame_count(path: Path) -> None:
    declared, packets, placeholders = container_video_count(path)
    # The header/index count and the demuxed packets must agree, or the file itself is odd.
    assert declared in (0, packets), f"{path.name}: header says {declared} frames, demuxer gives {packets}"
    # AVI files from VfW-era encoders mark a dropped (repeated) frame with a 1-byte placeholder
    # packet (XviD writes 0x7f); FFmpeg's decoder makes no picture of it, so it is not a frame
    # of the stream. highway_cctv.avi has 2 of them among 750 packets, so 748 frames decode,
    # the count OpenCV's own decoder gives too (test_camera.py). No other clip has any.
    expected = (declared or packets) - placeholders
    with VideoFileSource(path) as source:
        width, height, fps = source.width, source.height, source.fps
        count, last_pts = 0, -1.0
        messages = iter(source)
        for message in messages:
            if message.kind == "eos":
                break
            frame = message.arrays[0]
            assert message.kind == "video" and message.stream == path.stem and message.seq == count
            assert frame.shape == (height, width, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
            assert message.media == {"fps": fps, "width": width, "height": height, "pixel_format": "bgr24"}
            assert message.pts > last_pts, f"pts must increase: {message.pts} after {last_pts}"
            last_pts = message.pts
            count += 1
        assert message.kind == "eos" and message.seq == expected and not message.final
        assert list(messages) == [] and source.closed  # nothing after eos; the source closed itself
    # Every frame read is accounted for: decoded, or counted undecodable in the marker (with this
    # FFmpeg, street_parked_cars_window_view.mp4's 19 frames before its first keyframe and its last).
    assert count + message.dropped == expected, f"{path.name}: decoded {count} + undecodable {message.dropped}, " \
                                                f"container count {expected}"
    assert message.meta.get("source", {}).get("dropped", {}) == ({"undecodable": message.dropped} if message.dropped else {})
    assert fps > 0 and last_pts < (declared or packets) / fps + 0.1


@pytest.mark.timeout(30)
def test_frames_are_never_overwritten_later() -> None:
    """The runtime sends frames zero-copy and may hold them: later decoding must not touch them."""
    path = asset("hollywood2/actioncliptrain00001.avi")
    held, digests = [], []
    for message in VideoFileSource(path):
        if message.kind == "video":
            held.append(message.arrays[0])
            digests.append(hashlib.md5(message.arrays[0].tobytes()).hexdigest())
    assert len(held) == 201
    assert [hashlib.md5(frame.tobytes()).hexdigest() for frame in held] == digests
    assert len({frame.__array_interface__["data"][0] for frame in held}) == len(held)


@pytest.mark.timeout(30)
def test_max_frames_and_realtime_pacing() -> None:
    path = asset("traffic/highway_cctv.avi")  # 25 fps
    start = time.monotonic()
    messages = list(VideoFileSource(path, realtime=True, max_frames=13))
    elapsed = time.monotonic() - start
    assert [m.kind for m in messages] == ["video"] * 13 + ["eos"] and messages[-1].seq == 13
    span = messages[12].pts - messages[0].pts
    assert span >= 12 / 25 - 1e-6
    assert elapsed >= span - 0.02, f"13 frames spanning {span:.3f} s took {elapsed:.3f} s: faster than real time"


@pytest.mark.timeout(30)
def test_video_with_its_audio_track_as_second_stream() -> None:
    path = asset("traffic/highway_topdown.avi")  # msmpeg4v2 + mp3
    source = open_source(path, media="both")
    assert isinstance(source, VideoFileSource) and source.stream_ids == ("highway_topdown/video",
                                                                         "highway_topdown/audio")
    counts: dict[str, int] = {}
    eos_counts: dict[str, int] = {}
    with source:
        for message in source:
            if message.kind == "eos":
                eos_counts[message.stream] = message.seq
            else:
                assert message.seq == counts.get(message.stream, 0)
                counts[message.stream] = message.seq + 1
    assert eos_counts == counts
    assert counts["highway_topdown/video"] == 374
    assert counts["highway_topdown/audio"] == 12  # 12.46 s of sound: 2 s windows every 1 s
