"""Hollywood2Source on a dataset layout built in tmp_path around the real clip (symlinked)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import av
import pytest

from pipeline.errors import SourceFormatError, SourceNotFoundError
from stages.sources import Hollywood2Source, open_source, read_clip_list, window_count

from .conftest import asset

CLIP = "actioncliptrain00001"
RATE = 16000


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """ROOT/AVIClips/<clip>.avi -> the real clip; ROOT/ClipSets/ with list files."""
    clip = asset(f"hollywood2/{CLIP}.avi")
    (tmp_path / "AVIClips").mkdir()
    (tmp_path / "AVIClips" / f"{CLIP}.avi").symlink_to(clip)
    (tmp_path / "ClipSets").mkdir()
    # The dataset's own format: "<clip id>  <label>"; a listed clip that is not there.
    (tmp_path / "ClipSets" / "AnswerPhone_train.txt").write_text(
        f"{CLIP}  1\nactioncliptrain00002  -1\nactioncliptrain99999  1\n")
    return tmp_path


def read_all(source: Hollywood2Source) -> tuple[list, dict[str, int]]:
    messages, eos_counts = [], {}
    with source:
        for message in source:
            messages.append(message)
            if message.kind == "eos":
                eos_counts[message.stream] = message.seq
    return messages, eos_counts


@pytest.mark.timeout(60)
def test_clip_gives_video_and_audio_streams_and_missing_clips_are_counted(
        dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = Hollywood2Source(dataset, "AnswerPhone_train.txt", positives_only=True)
    with caplog.at_level(logging.WARNING, logger="stages.sources"):
        messages, eos_counts = read_all(source)
    video = [m for m in messages if m.kind == "video"]
    audio = [m for m in messages if m.kind == "audio"]
    with av.open(str(dataset / "AVIClips" / f"{CLIP}.avi")) as container:
        declared = container.streams.video[0].frames
        track = container.streams.audio[0]
        audio_samples = round(float(track.duration * track.time_base) * RATE)
    assert declared == 201 and len(video) == 201
    assert {m.stream for m in video} == {f"{CLIP}/video"} and {m.stream for m in audio} == {f"{CLIP}/audio"}
    assert all(m.meta == {"clip": CLIP, "label": 1} for m in video)
    assert all({k: v for k, v in m.meta.items() if k != "valid_samples"} == {"clip": CLIP, "label": 1}
               for m in audio)
    assert video[0].arrays[0].shape == (224, 528, 3)
    # 8.046 s of AC3 at 16 kHz in 2 s windows every 1 s: 8 windows (the count is the same
    # for any total within a few samples of the container's duration).
    assert len(audio) == window_count(audio_samples, 2 * RATE, RATE) == 8
    assert eos_counts == {f"{CLIP}/video": 201, f"{CLIP}/audio": 8}
    assert [m.seq for m in audio] == list(range(8)) and [m.seq for m in video] == list(range(201))
    # One decoding pass, so picture and sound interleave rather than one after the other.
    positions = {id(m): i for i, m in enumerate(messages)}
    assert positions[id(audio[0])] < positions[id(video[-1])]
    # Each stream's eos comes after its last data message.
    last_eos = max(i for i, m in enumerate(messages) if m.kind == "eos")
    assert messages[-2].kind == messages[-1].kind == "eos" and last_eos == len(messages) - 1
    # positives_only dropped the -1 line; the missing positive is counted, logged, reported.
    assert [c.clip for c in source.clips] == [CLIP, "actioncliptrain99999"]
    assert source.missing_clips == ["actioncliptrain99999"] and source.clips_read == [CLIP]
    assert any("actioncliptrain99999" in r.getMessage() and "missing" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(60)
def test_bare_id_list_via_factory_spec_without_audio_track(dataset: Path) -> None:
    (dataset / "list_test.txt").write_text(f"# one id per line\n\n{CLIP}.avi\nnot_there\n")
    source = open_source(f"hollywood2:{dataset}:list_test.txt", max_frames=5)
    assert isinstance(source, Hollywood2Source)
    messages, eos_counts = read_all(source)
    assert eos_counts[f"{CLIP}/video"] == 5 and all("label" not in m.meta for m in messages if m.kind != "eos")
    assert source.missing_clips == ["not_there"]


@pytest.mark.timeout(60)
def test_without_list_file_reads_every_clip_and_skips_undecodable_ones(dataset: Path) -> None:
    (dataset / "AVIClips" / "actioncliptrain00000.avi").write_text("not a video")
    source = Hollywood2Source(dataset, audio=False, max_frames=3)
    messages, eos_counts = read_all(source)
    assert [c.clip for c in source.clips] == ["actioncliptrain00000", CLIP]
    assert list(source.failed_clips) == ["actioncliptrain00000"]
    assert eos_counts == {f"{CLIP}/video": 3}


@pytest.mark.parametrize("text, expected", [
    ("actioncliptrain00001  1\nactioncliptrain00002 -1\n", [("actioncliptrain00001", 1), ("actioncliptrain00002", -1)]),
    ("a\n\n# comment\nb.avi\na\n", [("a", None), ("b", None)]),  # duplicates keep the first line
])
def test_list_files(tmp_path: Path, text: str, expected: list) -> None:
    path = tmp_path / "list.txt"
    path.write_text(text)
    assert [(e.clip, e.label) for e in read_clip_list(path)] == expected


@pytest.mark.parametrize("text, words", [
    ("clip one two\n", "expected '<clip id> [<label>]'"),
    ("../etc/passwd\n", "plain clip id"),
    ("clip yes\n", "integer label"),
])
def test_malformed_list_files_name_file_and_line(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(SourceFormatError, match=re.escape(words)) as raised:
        read_clip_list(path)
    assert f"{path}:1" in str(raised.value)


def test_missing_root_folder_or_list(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="root not found"):
        Hollywood2Source(tmp_path / "nowhere").open()
    with pytest.raises(SourceNotFoundError, match="AVIClips"):
        Hollywood2Source(tmp_path).open()
    (tmp_path / "AVIClips").mkdir()
    with pytest.raises(SourceNotFoundError, match="no_such_list.txt"):
        Hollywood2Source(tmp_path, "no_such_list.txt").open()
    with Hollywood2Source(tmp_path) as empty:  # no clips at all: nothing to yield, no error
        assert list(empty) == [] and empty.clips == []
