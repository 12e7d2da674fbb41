"""Speech mixtures: reproducible per seed, splits that share no speaker, sentence or bed, SNRs as asked,
windows as the sources cut them, labels joined from the recognizer's files (no recognizer run here)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models import mixtures
from models.mixtures import (SPLITS, MixtureOptions, build_clip, build_mixtures, labelled_windows, load_audio,
                             load_split, power, read_manifest, speaker_of, window_records)
from models.speech_labels import RecognizerSettings, speech_label_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def espeak():
    if shutil.which(mixtures.ESPEAK) is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng; scripts/setup.sh does it)")


@pytest.fixture
def store(assets):
    for plan in SPLITS.values():
        for relative in (*plan.real_speech, *(bed for bed, _, _ in plan.noise_beds + plan.music_beds if bed != "synth")):
            if not (assets / relative).is_file():
                pytest.skip(f"asset {relative} not found under {assets}")
    return mixtures._Assets(assets)


def tiny_splits() -> dict:
    """The real plan with one short clip per subset, and one short recording in the real subset."""
    return {name: replace(plan, clips={subset: 1 for subset in plan.clips},
                          real_clips=plan.real_clips[1:2]) for name, plan in SPLITS.items()}


def snr_db(speech: np.ndarray, bed: np.ndarray) -> float:
    return 10 * math.log10(power(speech) / power(bed))


def test_a_clip_is_the_same_for_the_same_seed_and_differs_for_another(espeak, store):
    options = MixtureOptions(clip_s=6.0)
    one, two, other = (build_clip(mixtures._clip_rng(seed, "train", "noise", 0), SPLITS["train"], "noise",
                                  options, store) for seed in (5, 5, 6))
    assert np.array_equal(one.mix, two.mix) and one.record == two.record
    assert not np.array_equal(one.mix, other.mix) and one.record != other.record


def test_each_speech_event_is_at_the_snr_asked_over_its_bed(espeak, store, tmp_path):
    options = MixtureOptions(clip_s=12.0, snrs_db=(20.0, 5.0, -5.0))
    checked = set()
    for index in range(3):
        for subset in ("noise", "music"):
            clip = build_clip(mixtures._clip_rng(1, "train", subset, index), SPLITS["train"], subset, options, store)
            assert np.allclose(clip.mix, clip.speech + clip.bed, atol=1e-6)
            for event in clip.record["events"]:
                span = slice(round(event["start_s"] * 16000), round(event["end_s"] * 16000))
                assert snr_db(clip.speech[span], clip.bed[span]) == pytest.approx(event["snr_db"], abs=0.05)
                checked.add(event["snr_db"])
            # Between events there is bed alone: speech-free stretches.
            assert (clip.speech == 0).mean() > 0.1
    assert checked == {20.0, 5.0, -5.0}
    # The file written is the mix (16-bit PCM).
    mixtures.write_wav(tmp_path / "clip.wav", clip.mix)
    assert np.abs(load_audio(tmp_path / "clip.wav") - clip.mix).max() < 2 / 32767


def test_the_plan_holds_out_voices_speakers_vocabulary_and_beds():
    train, val, test = SPLITS["train"], SPLITS["val"], SPLITS["test"]
    assert train.voices and val.voices and not test.voices          # the test split speaks only real speech
    assert not set(train.voices) & set(val.voices)
    assert not set(train.vocabulary) & set(val.vocabulary)
    speakers = {name: {speaker_of(s) for s in plan.real_speech} for name, plan in SPLITS.items()}
    assert speakers["test"] and not speakers["test"] & (speakers["train"] | speakers["val"])
    assert not speakers["train"] & speakers["val"]

    def beds(plan):
        return [bed for bed in plan.noise_beds + plan.music_beds if bed[0] != "synth"]
    test_files = {bed for bed, _, _ in beds(test)} | set(test.real_clips)
    assert test_files and not test_files & {bed for plan in (train, val) for bed, _, _ in beds(plan)}
    for bed, lo, hi in beds(train):                                  # the same recording, other stretches
        for other, other_lo, other_hi in beds(val):
            assert bed != other or hi <= other_lo or other_hi <= lo


def test_a_built_set_is_reproducible_and_its_splits_share_no_sentence_speaker_or_bed(espeak, assets, store, tmp_path):
    options = MixtureOptions(seed=3, clip_s=4.0)
    first = build_mixtures(tmp_path / "a", options, tiny_splits(), assets)
    second = build_mixtures(tmp_path / "b", options, tiny_splits(), assets)
    manifest = read_manifest(first.parent)
    assert manifest == read_manifest(second.parent)
    for clip in manifest["clips"]:
        assert (first.parent / clip["file"]).read_bytes() == (second.parent / clip["file"]).read_bytes()
    stamp = first.stat().st_mtime_ns
    assert build_mixtures(tmp_path / "a", options, tiny_splits(), assets) == first and first.stat().st_mtime_ns == stamp
    assert read_manifest(build_mixtures(tmp_path / "c", replace(options, seed=4), tiny_splits(), assets).parent) != manifest

    by_split: dict[str, dict[str, set]] = {}
    for clip in manifest["clips"]:
        seen = by_split.setdefault(clip["split"], {"texts": set(), "speakers": set(), "beds": set(), "kinds": set()})
        for event in clip["events"]:
            seen["kinds"].add(event["kind"])
            seen["texts"].add(event.get("text"))
            seen["speakers"].add(event.get("voice") or event.get("speaker"))
        if clip["bed"] and clip["bed"]["file"]:
            seen["beds"].add((clip["bed"]["file"], *clip["bed"]["range"]))
        seen["beds"].add(clip.get("source"))
    assert by_split["test"]["kinds"] == {"real"}
    assert {clip["subset"] for clip in manifest["clips"] if clip["split"] == "test"} == {"clean", "noise", "music", "real"}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not (by_split[a]["texts"] - {None}) & (by_split[b]["texts"] - {None})
        assert not by_split[a]["speakers"] & by_split[b]["speakers"]
        assert not (by_split[a]["beds"] - {None}) & (by_split[b]["beds"] - {None})


@pytest.mark.parametrize("seconds", [0.5, 2.0, 4.0, 4.5, 30.0])
def test_the_windows_are_those_the_audio_sources_cut(seconds):
    from stages.sources.windows import window_count
    options = MixtureOptions()
    events = [{"start_s": 0.5, "end_s": 1.5, "snr_db": 5.0}, {"start_s": 2.5, "end_s": 3.0, "snr_db": None}]
    records = window_records(round(seconds * 16000), events, options)
    assert len(records) == window_count(round(seconds * 16000), 32000, 16000)
    if len(records) >= 3:
        assert [r["events"] for r in records[:3]] == [[0], [0, 1], [1]]
        assert [r["speech_s"] for r in records[:3]] == [1.0, 1.0, 0.5]
        assert [r["min_snr_db"] for r in records[:3]] == [5.0, 5.0, None]


def test_labelled_windows_join_the_recognizers_answers_with_the_manifest(tmp_path):
    clip_file = tmp_path / "train" / "noise-000.wav"
    mixtures.write_wav(clip_file, np.zeros(4 * 16000, np.float32))
    options = MixtureOptions(clip_s=4.0)
    events = [{"kind": "espeak", "text": "Hello there friend.", "start_s": 1.0, "end_s": 2.5, "snr_db": 5.0}]
    clip = {"file": "train/noise-000.wav", "split": "train", "subset": "noise", "seconds": 4.0,
            "bed": {"name": "pink_noise", "file": "audio/background_noise/pink_noise.wav"}, "events": events,
            "windows": window_records(4 * 16000, events, options)}
    (tmp_path / "manifest.json").write_text(json.dumps({"options": {"window_s": 2.0, "hop_s": 1.0}, "clips": [clip]}))
    labels = tmp_path / "labels"
    labels.mkdir()
    words = [2, 3, 0]
    with speech_label_path(clip_file, RecognizerSettings(), labels).open("w") as out:
        for seq, count in enumerate(words):
            out.write(json.dumps({"seq": seq, "pts": float(seq), "text": " ".join(["hey"] * count),
                                  "words": count, "infer_ms": 5.0}) + "\n")
        out.write(json.dumps({"end": True, "windows": 3, "labelled": 3, "window_s": 2.0, "hop_s": 1.0}) + "\n")
    rows = labelled_windows(tmp_path, label_dir=labels)
    assert [row["words"] for row in rows] == words and [row["needs"] for row in rows] == [False, True, False]
    assert [row["events"] for row in rows] == [[0], [0], [0]] and [row["speech_s"] for row in rows] == [1.0, 1.5, 0.5]
    assert rows[0]["bed"] == "pink_noise" and rows[2]["min_snr_db"] == 5.0
    assert [row["needs"] for row in labelled_windows(tmp_path, label_dir=labels, words=1)] == [True, True, False]
    with pytest.raises(Exception, match="windows are 2.0 s every 1.0 s"):
        labelled_windows(tmp_path, RecognizerSettings(window_s=3.0), labels)

    samples, needs, rows = load_split(tmp_path, "train", label_dir=labels)
    assert samples.shape == (3, 32000) and samples.dtype == np.float32 and needs.tolist() == [False, True, False]
    with pytest.raises(Exception, match="no window in split 'test'"):
        load_split(tmp_path, "test", label_dir=labels)


def test_a_split_is_loaded_without_labelling_the_other_splits_clips(tmp_path, monkeypatch):
    """Another seed's draw may be labelled for its test split only: loading that split must not
    run the recognizer over the train and val clips (half an hour of Whisper)."""
    options = MixtureOptions(clip_s=4.0)
    clips = []
    for split in ("train", "test"):
        mixtures.write_wav(tmp_path / split / "noise-000.wav", np.zeros(4 * 16000, np.float32))
        clips.append({"file": f"{split}/noise-000.wav", "split": split, "subset": "noise", "seconds": 4.0,
                      "bed": None, "events": [], "windows": window_records(4 * 16000, [], options)})
    (tmp_path / "manifest.json").write_text(json.dumps({"options": {"window_s": 2.0, "hop_s": 1.0}, "clips": clips}))
    asked = []

    def label(path, settings, label_dir):
        asked.append(path.relative_to(tmp_path).as_posix())
        out = tmp_path / f"{len(asked)}.jsonl"
        with out.open("w") as file:
            for seq in range(3):
                file.write(json.dumps({"seq": seq, "pts": float(seq), "text": "", "words": 0, "infer_ms": 5.0}) + "\n")
            file.write(json.dumps({"end": True, "windows": 3, "labelled": 3, "window_s": 2.0, "hop_s": 1.0}) + "\n")
        return out

    monkeypatch.setattr(mixtures, "label_speech", label)
    samples, needs, rows = load_split(tmp_path, "test")
    assert asked == ["test/noise-000.wav"] and len(rows) == 3 and {row["split"] for row in rows} == {"test"}
    assert len(labelled_windows(tmp_path)) == 6 and asked[1:] == ["train/noise-000.wav", "test/noise-000.wav"]


@pytest.mark.slow
def test_infistream_filter_mixtures_writes_the_clips_and_the_manifest(espeak, store, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", "filter", "mixtures",
                           "--out", str(tmp_path), "--seed", "2", "--scale", "0.01", "--clip-seconds", "3"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = read_manifest(tmp_path)
    assert manifest["seed"] == 2 and manifest["options"]["clip_s"] == 3.0
    real = [c for c in manifest["clips"] if c["subset"] == "real"]
    # one clip per subset at this scale: train and val clean/noise/music, test clean/noise/music and its recordings
    assert len(manifest["clips"]) == 9 + len(real) and len(real) == len(SPLITS["test"].real_clips)
    for clip in manifest["clips"]:
        audio = load_audio(tmp_path / clip["file"])
        assert audio.size == clip["samples"] and len(clip["windows"]) >= 1
        assert clip["subset"] == "real" or clip["samples"] == 3 * 16000
    assert all(window["speech_s"] is None for clip in real for window in clip["windows"])
    assert f"{len(manifest['clips'])} clips" in done.stdout
