"""CameraSource: a missing camera fails fast and clearly; the read loop, driven through OpenCV."""

from __future__ import annotations

import glob

import pytest

from pipeline.errors import SourceNotFoundError
from stages.sources import CameraSource, VideoFileSource, open_source

from .conftest import asset

no_camera = pytest.mark.skipif(bool(glob.glob("/dev/video*")), reason="a camera is attached here")


@no_camera
@pytest.mark.timeout(30)
@pytest.mark.parametrize("spec, words", [
    ("cam0", "camera 'cam0' (device 0) could not be opened: no such device"),
    ("cam5", "camera 'cam5' (device 5) could not be opened: no such device"),
    ("/dev/video3", "camera 'cam3' (/dev/video3) could not be opened: no such device"),
])
def test_absent_camera_fails_fast(spec: str, words: str) -> None:
    source = open_source(spec)
    with pytest.raises(SourceNotFoundError) as raised:
        with source:
            pass
    assert words in str(raised.value) and "video devices present: none" in str(raised.value)
    assert isinstance(raised.value, FileNotFoundError) and source.closed


@no_camera
@pytest.mark.timeout(30)
def test_absent_camera_fails_on_iteration_too() -> None:
    with pytest.raises(SourceNotFoundError):
        next(iter(CameraSource(0)))


@pytest.mark.timeout(60)
def test_read_loop_through_opencv_matches_pyav() -> None:
    """No camera here, so drive the same OpenCV read loop with a file OpenCV opens as a device.

    This is also an independent decoder check: OpenCV's FFmpeg build decodes highway_cctv.avi to
    the same 748 frames (750 packets, 2 of them dropped-frame placeholders) as PyAV.
    """
    path = asset("traffic/highway_cctv.avi")
    source = CameraSource(str(path), stream="cam9")
    assert source.live
    held = []
    with source:
        assert source.fps == 25.0
        for message in source:
            if message.kind == "eos":
                break
            assert message.seq == len(held) and message.stream == "cam9"
            assert message.arrays[0].shape == (240, 320, 3) and message.media["pixel_format"] == "bgr24"
            held.append(message.arrays[0])
    assert message.seq == len(held)
    pyav_frames = [m.arrays[0] for m in VideoFileSource(path) if m.kind == "video"]
    assert len(held) == len(pyav_frames) == 748
    # Each read gives a new array: none shares memory with another.
    assert len({frame.__array_interface__["data"][0] for frame in held}) == len(held)
    # Same pictures up to colour-conversion rounding (different swscale settings).
    difference = abs(held[100].astype(int) - pyav_frames[100].astype(int))
    assert difference.mean() < 3


@pytest.mark.timeout(30)
def test_camera_max_frames() -> None:
    messages = list(CameraSource(str(asset("traffic/highway_cctv.avi")), max_frames=5))
    assert [m.kind for m in messages] == ["video"] * 5 + ["eos"] and messages[-1].seq == 5
    assert messages[0].pts == 0.0 and messages[4].pts >= messages[3].pts
