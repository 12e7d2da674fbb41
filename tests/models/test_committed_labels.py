"""The committed labels (data/labels, data/README.md): restored into the caches by
scripts/labels.sh, and still the labels the label commands would look for, so that `make train`
runs neither YOLO nor Whisper on the shared media (a change of the detector's or recognizer's
settings, or of the cache key, fails here: run `make labels`)."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from models.labels import DetectorSettings, count_labels, label_path
from models.speech_labels import RecognizerSettings
from tests.conftest import asset_or_skip

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "labels"
SCRIPT = ROOT / "scripts" / "labels.sh"


def test_restore_unzips_every_label_file_and_keeps_those_already_cached(tmp_path):
    cache = tmp_path / "cache"
    kept = cache / "labels" / next(DATA.glob("video/*.jsonl.gz")).name.removesuffix(".gz")
    kept.parent.mkdir(parents=True)
    kept.write_text("already here\n")
    subprocess.run([str(SCRIPT), "restore", str(DATA), str(cache)], check=True, capture_output=True)
    for kind, folder in (("video", "labels"), ("speech", "speech-labels")):
        committed = sorted(DATA.glob(f"{kind}/*.jsonl.gz"))
        restored = sorted((cache / folder).glob("*.jsonl"))
        assert committed and [p.name for p in restored] == [p.name.removesuffix(".gz") for p in committed]
        assert not list((cache / folder).glob("*.partial"))
    assert kept.read_text() == "already here\n"
    other = next(p for p in sorted((cache / "labels").glob("*.jsonl")) if p != kept)
    assert other.read_bytes() == gzip.decompress((DATA / "video" / f"{other.name}.gz").read_bytes())


def test_save_then_restore_gives_the_same_files_and_bad_use_is_refused(tmp_path):
    video, speech = tmp_path / "video", tmp_path / "speech"
    for folder, name in ((video, "clip-0123-abcd.jsonl"), (speech, "noise-000-4567-ef01.jsonl")):
        folder.mkdir()
        (folder / name).write_text('{"seq": 0}\n{"end": true}\n')
    out = tmp_path / "data"
    subprocess.run([str(SCRIPT), "save", str(video), str(speech), str(out)], check=True, capture_output=True)
    first = (out / "video" / "clip-0123-abcd.jsonl.gz").read_bytes()
    subprocess.run([str(SCRIPT), "save", str(video), str(speech), str(out)], check=True, capture_output=True)
    assert (out / "video" / "clip-0123-abcd.jsonl.gz").read_bytes() == first      # no date in the header
    subprocess.run([str(SCRIPT), "restore", str(out), str(tmp_path / "cache")], check=True, capture_output=True)
    assert (tmp_path / "cache" / "speech-labels" / "noise-000-4567-ef01.jsonl").read_text() == '{"seq": 0}\n{"end": true}\n'
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([str(SCRIPT), "save", str(empty), str(speech), str(out)], capture_output=True, text=True)
    assert done.returncode != 0 and "no label files" in done.stderr
    assert (out / "video" / "clip-0123-abcd.jsonl.gz").exists()                    # the old ones untouched
    assert subprocess.run([str(SCRIPT), "restore"], capture_output=True).returncode == 2


def test_every_shared_clip_has_its_committed_labels_under_the_default_detector_settings(assets, tmp_path):
    clips = sorted(p for p in asset_or_skip(assets, "traffic").iterdir() if p.suffix in (".mp4", ".avi", ".webm"))
    committed = {p.name.removesuffix(".gz") for p in DATA.glob("video/*.jsonl.gz")}
    expected = {label_path(clip, DetectorSettings(), tmp_path).name for clip in clips}
    assert expected == committed, f"missing: {sorted(expected - committed)}; stale: {sorted(committed - expected)}"


def test_committed_labels_are_whole_and_say_their_settings(tmp_path):
    subprocess.run([str(SCRIPT), "restore", str(DATA), str(tmp_path)], check=True, capture_output=True)
    for path in sorted((tmp_path / "labels").glob("*.jsonl")):
        end = json.loads(path.read_text().splitlines()[-1])
        # (a clip may end in frames the source read but could not decode: street_parked_cars 20)
        assert end["end"] and 0 < end["labelled"] <= end["frames"], path.name
        assert end["detector"]["conf"] == DetectorSettings().conf
        assert len(count_labels(path).seq) == end["labelled"], path.name
    speech_key = RecognizerSettings().key()
    speech = sorted((tmp_path / "speech-labels").glob("*.jsonl"))
    assert speech and all(path.stem.endswith(speech_key) for path in speech)
    for path in speech:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert lines[-1].get("end") and all("words" in line for line in lines[:-1]), path.name
