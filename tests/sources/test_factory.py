"""open_source routing, default stream ids, and the option dataclasses' checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.sources import (AudioFileSource, CameraSource, Hollywood2Source, MicrophoneSource,
                            NetworkStreamSource, ReconnectPolicy, VideoFileSource, WindowSpec,
                            default_stream_id, open_source)

from .conftest import asset

# (spec, class, stream id, live) -- none of these opens anything.
ROUTES = [
    ("cam0", CameraSource, "cam0", True),
    ("cam3", CameraSource, "cam3", True),
    ("/dev/video2", CameraSource, "cam2", True),
    (1, CameraSource, "cam1", True),
    ("mic", MicrophoneSource, "mic", True),
    ("mic:2", MicrophoneSource, "mic", True),
    ("mic:USB Audio", MicrophoneSource, "mic", True),
    ("rtsp://user:secret@cam.local:8554/live", NetworkStreamSource, "cam.local:8554/live", True),
    ("http://127.0.0.1:8000/live.ts", NetworkStreamSource, "127.0.0.1:8000/live.ts", True),
    ("udp://127.0.0.1:5000", NetworkStreamSource, "127.0.0.1:5000", True),
    ("tcp://127.0.0.1:9000", NetworkStreamSource, "127.0.0.1:9000", True),
    ("srt://10.0.0.1:7000", NetworkStreamSource, "10.0.0.1:7000", True),
    ("hollywood2:/data/Hollywood2", Hollywood2Source, "hollywood2", False),
    ("hollywood2:/data/Hollywood2:AnswerPhone_train.txt", Hollywood2Source, "hollywood2", False),
]


@pytest.mark.parametrize("spec, cls, stream, live", ROUTES, ids=[str(r[0]) for r in ROUTES])
def test_routes(spec: object, cls: type, stream: str, live: bool) -> None:
    source = open_source(spec)
    assert type(source) is cls and source.stream == stream and source.live is live
    assert "secret" not in repr(source)  # passwords never reach ids, logs or errors


def test_microphone_and_camera_devices_are_parsed() -> None:
    assert open_source("mic:2").device == 2
    assert open_source("mic:USB Audio").device == "USB Audio"
    assert open_source("mic").device is None
    assert open_source("cam3").device == 3
    assert open_source("/dev/video2").device == "/dev/video2"


def test_hollywood2_spec_splits_root_and_list() -> None:
    source = open_source("hollywood2:/data/Hollywood2:AnswerPhone_train.txt")
    assert source.root == Path("/data/Hollywood2") and source.list_file == Path("AnswerPhone_train.txt")
    assert open_source("hollywood2:/data/Hollywood2").list_file is None


@pytest.mark.timeout(30)
@pytest.mark.parametrize("relative, media, cls, audio", [
    ("traffic/intel_car_detection.mp4", "auto", VideoFileSource, False),
    ("audio/soundtrack/steamboat_willie_1928.mp4", "audio", AudioFileSource, None),
    ("audio/soundtrack/steamboat_willie_1928.mp4", "both", VideoFileSource, True),
    ("audio/speech_long/jfk.flac", "auto", AudioFileSource, None),
])
def test_files_route_by_their_streams(relative: str, media: str, cls: type, audio: bool | None) -> None:
    source = open_source(asset(relative), media=media, stream="s")
    assert type(source) is cls and source.stream == "s" and not source.live
    if audio is not None:
        assert source.audio is audio


def test_file_urls_are_paths() -> None:
    path = asset("audio/speech_long/jfk.flac")
    assert isinstance(open_source(path.as_uri()), AudioFileSource)


@pytest.mark.parametrize("spec, media", [("ftp://example.com/a.mp4", "auto"), ("", "auto"),
                                         ("mic:", "auto"), ("x.mp4", "sound")])
def test_nonsense_specs_are_value_errors(spec: str, media: str) -> None:
    with pytest.raises(ValueError):
        open_source(spec, media=media)


def test_options_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="hop_s must be <= window_s"):
        WindowSpec(1.0, 2.0)
    with pytest.raises(ValueError, match="window_s must be a positive"):
        open_source("mic", window_s=0.0)
    with pytest.raises(ValueError, match="attempts"):
        ReconnectPolicy(attempts=-1)
    with pytest.raises(ValueError, match="max_delay_s"):
        ReconnectPolicy(initial_delay_s=2.0, max_delay_s=1.0)
    with pytest.raises(ValueError, match="read_timeout_s"):
        open_source("tcp://127.0.0.1:1", read_timeout_s=0)
    with pytest.raises(ValueError, match="max_frames"):
        open_source("cam0", max_frames=0)


@pytest.mark.parametrize("spec, expected", [
    ("/media/traffic/highway_cctv.avi", "highway_cctv"),
    ("clip.tar.mp4", "clip.tar"),
    ("cam0", "cam0"),
    ("/dev/video7", "cam7"),
    (4, "cam4"),
    ("mic", "mic"),
    ("mic:hw:1", "mic"),
    ("rtsp://admin:pw@10.1.2.3:554/stream1", "10.1.2.3:554/stream1"),
    ("udp://@:5000", ":5000"),
    ("http://host/", "host"),
])
def test_default_stream_id(spec: object, expected: str) -> None:
    assert default_stream_id(spec) == expected


def test_reconnect_delays_back_off_exponentially_up_to_the_cap() -> None:
    assert ReconnectPolicy(5, 0.5, 3.0).delays() == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert ReconnectPolicy(0).delays() == []
