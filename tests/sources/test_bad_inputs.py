"""Damaged and wrong inputs: each gives our error naming the path, or a clean, warned ending."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline.errors import SourceError, SourceFormatError, SourceNotFoundError
from stages.sources import AudioFileSource, VideoFileSource, open_source

from .conftest import asset

CLIP = "hollywood2/actioncliptrain00001.avi"   # 201 frames, MPEG-4 + AC3, index at the end
MP4 = "traffic/street_two_lane.mp4"           # moov atom at the end of the file


def make_file(tmp_path: Path, kind: str) -> Path:
    """Build one kind of bad input in tmp_path (never inside the repository)."""
    if kind == "missing":
        return tmp_path / "no_such_clip.mp4"
    if kind == "empty":
        path = tmp_path / "empty.mp4"
        path.write_bytes(b"")
        return path
    if kind == "text renamed .mp4":
        path = tmp_path / "notes.mp4"
        path.write_text("These are notes, not a video.\n" * 20)
        return path
    if kind == "directory":
        path = tmp_path / "folder.mp4"
        path.mkdir()
        return path
    if kind == "mp4 cut in half (no moov)":
        data = asset(MP4).read_bytes()
        path = tmp_path / "half.mp4"
        path.write_bytes(data[:len(data) // 2])
        return path
    if kind == "avi cut after its headers":
        data = asset(CLIP).read_bytes()
        path = tmp_path / "headers_only.avi"
        path.write_bytes(data[:data.index(b"movi") + 4])  # stream headers, then no packet at all
        return path
    raise AssertionError(kind)


# (bad input, error, words the message must hold besides the path)
OPEN_ERRORS = [
    ("missing", SourceNotFoundError, "not found"),
    ("empty", SourceFormatError, "empty file"),
    ("text renamed .mp4", SourceFormatError, "cannot parse"),
    ("directory", SourceFormatError, "directory"),
    ("mp4 cut in half (no moov)", SourceFormatError, "cannot parse"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind, error, words", OPEN_ERRORS, ids=[row[0] for row in OPEN_ERRORS])
@pytest.mark.parametrize("opener", ["open_source", "VideoFileSource", "AudioFileSource"])
def test_bad_files_fail_on_open_with_our_error(tmp_path: Path, kind: str, error: type, words: str,
                                               opener: str) -> None:
    path = make_file(tmp_path, kind)
    with pytest.raises(error) as raised:
        if opener == "open_source":
            open_source(path).open()
        else:
            {"VideoFileSource": VideoFileSource, "AudioFileSource": AudioFileSource}[opener](path).open()
    assert str(path) in str(raised.value) and words in str(raised.value)
    assert not isinstance(raised.value, (KeyError, AttributeError))
    assert type(raised.value).__module__ == "pipeline.errors"  # never a raw av exception


@pytest.mark.timeout(30)
def test_truncated_avi_yields_what_decodes_then_ends_with_a_warning(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    data = asset(CLIP).read_bytes()
    path = tmp_path / "half.avi"
    path.write_bytes(data[:len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="stages.sources"):
        messages = list(VideoFileSource(path))
    frames = [m for m in messages if m.kind == "video"]
    assert 0 < len(frames) < 201
    assert [m.seq for m in frames] == list(range(len(frames)))
    assert messages[-1].kind == "eos" and messages[-1].seq == len(frames)
    assert any("truncated" in record.getMessage() and str(path) in record.getMessage()
               for record in caplog.records)


@pytest.mark.timeout(30)
def test_truncated_avi_with_nothing_decodable_raises(tmp_path: Path) -> None:
    path = make_file(tmp_path, "avi cut after its headers")
    source = VideoFileSource(path)
    source.open()  # the headers parse: it looks like a video
    with pytest.raises(SourceFormatError, match="nothing that decodes") as raised:
        list(source)
    assert str(path) in str(raised.value) and source.closed


@pytest.mark.timeout(30)
def test_audio_source_on_a_file_without_sound() -> None:
    path = asset("traffic/highway_cctv.avi")  # video only
    with pytest.raises(SourceFormatError, match="expected a file with an audio track, got video") as raised:
        AudioFileSource(path).open()
    assert str(path) in str(raised.value)


@pytest.mark.timeout(30)
def test_video_source_on_a_file_without_picture() -> None:
    path = asset("audio/speech_long/jfk.flac")
    with pytest.raises(SourceFormatError, match="expected a file with a video stream, got audio") as raised:
        VideoFileSource(path).open()
    assert str(path) in str(raised.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("relative", ["audio/speech_long/jfk.flac", "audio/librispeech/i_tell_you.wav"])
def test_factory_routes_audio_only_files_to_the_audio_source(relative: str) -> None:
    source = open_source(asset(relative))
    assert isinstance(source, AudioFileSource) and not source.live
    assert source.stream == Path(relative).stem


@pytest.mark.timeout(30)
def test_a_source_is_read_once() -> None:
    source = VideoFileSource(asset(CLIP), max_frames=2)
    assert len(list(source)) == 3 and source.closed
    with pytest.raises(SourceError, match="closed"):
        list(source)
