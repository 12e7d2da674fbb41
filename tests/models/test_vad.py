"""The audio baselines (models/baselines/vad.py) on real shared recordings: Silero VAD, WebRTC VAD
and an energy gate skip windows without speech and let speech through, under the `--filter` names."""

from __future__ import annotations

import numpy as np
import pytest

from models.baselines.vad import EnergyGate, SileroVad, WebRtcVad
from models.cascade import Cascade
from models.mixtures import load_audio
from models.registry import parse_policy, policy_help
from pipeline.errors import ConfigError
from pipeline.message import Message
from stages.filter import Filter
from tests.conftest import asset_or_skip

WINDOW = 32_000          # 2 s at 16 kHz, the speech app's window


@pytest.fixture(scope="module")
def windows(assets):
    def first(path):
        return load_audio(asset_or_skip(assets, path))[:WINDOW].copy()
    return {"speech": first("audio/speech_long/jfk.flac"),
            "dishes": first("audio/background_noise/doing_the_dishes.wav"),
            "silence": np.zeros(WINDOW, np.float32)}


def audio(seq, samples, stream="mic"):
    return Message("audio", stream, seq, arrays=(samples,))


@pytest.mark.parametrize("spec", ["vad:silero", "vad:webrtc:3", "energy"])
def test_each_gate_lets_speech_through_and_skips_digital_silence(spec, windows):
    with parse_policy(spec) as gate:
        assert gate.decide(audio(0, windows["speech"])) is None
        decision = gate.decide(audio(1, windows["silence"]))
        assert (decision.action, decision.policy) == ("skip", spec)
        assert gate.decide(Message("video", "cam", 2, arrays=(np.zeros((4, 4, 3), np.uint8),))) is None


def test_silero_skips_kitchen_noise_that_an_energy_gate_cannot_tell_from_quiet_speech(windows):
    """(WebRTC's GMM calls a good share of the same window voiced: research/asr.md measured it
    calling stationary noise and music speech; that is what the learned gate is for.)"""
    with parse_policy("vad:silero") as gate:
        assert gate.prepare(windows["dishes"])[0] < gate.threshold < gate.prepare(windows["speech"])[0]
    with parse_policy("energy") as energy:   # the dishes are as loud as the threshold quiet speech needs
        assert energy.prepare(windows["dishes"])[0] > -60


def test_features_are_what_each_gate_says(windows):
    with SileroVad() as silero, WebRtcVad(0) as webrtc, EnergyGate() as energy:
        assert 0 <= silero.prepare(windows["silence"])[0] < 0.1 and silero.prepare(windows["speech"])[0] > 0.8
        assert webrtc.prepare(windows["silence"])[0] == 0.0 and webrtc.prepare(windows["speech"])[0] > 0.9
        assert webrtc.prepare(windows["speech"][:100])[0] == 0.0          # shorter than one 30 ms frame
        assert energy.prepare(windows["silence"])[0] == EnergyGate.FLOOR_DB
        full_scale = np.ones(160, np.float32)
        assert energy.prepare(full_scale)[0] == pytest.approx(0.0, abs=1e-6)
        assert energy.prepare(full_scale * 0.1)[0] == pytest.approx(-20.0, abs=1e-4)
        assert silero.prepare(windows["speech"][:700]).shape == (1,)     # not a whole number of chunks
        with pytest.raises(ValueError, match="1-D float32"):
            silero.prepare(windows["speech"].astype(np.float64))
    with pytest.raises(RuntimeError, match="open"):
        SileroVad().prepare(windows["speech"])


def test_a_larger_threshold_skips_more(windows):
    with parse_policy("vad:silero:threshold=0.95") as strict, parse_policy("vad:silero:threshold=0.01") as lax:
        assert strict.decide(audio(0, windows["speech"])) is not None       # 0.88 < 0.95: skipped
        assert lax.decide(audio(0, windows["dishes"])) is None


@pytest.mark.parametrize("spec, kind, mode, threshold", [
    ("vad:silero", SileroVad, None, 0.5), ("vad:silero:threshold=0.3", SileroVad, None, 0.3),
    ("vad:webrtc", WebRtcVad, 3, 0.1), ("vad:webrtc:1", WebRtcVad, 1, 0.1),
    ("vad:webrtc:0,threshold=0.25", WebRtcVad, 0, 0.25), ("vad:webrtc:threshold=0.4", WebRtcVad, 3, 0.4),
    ("energy", EnergyGate, None, -50.0), ("energy:threshold=-42.5", EnergyGate, None, -42.5),
])
def test_the_gates_are_named_on_the_command_line(spec, kind, mode, threshold):
    policy = parse_policy(spec)
    assert isinstance(policy, kind) and policy.threshold == threshold and policy.name == spec
    if mode is not None:
        assert policy.mode == mode


@pytest.mark.parametrize("spec, message", [
    ("vad", "silero or webrtc"), ("vad:rnnoise", "silero or webrtc"), ("vad:webrtc:7", "0, 1, 2 or 3"),
    ("vad:webrtc:loud", "aggressiveness 0-3"), ("vad:silero:threshold=2", "threshold must be"),
    ("vad:silero:mode=3", "unknown option"), ("energy:threshold=3", "threshold must be"),
    ("energy:-40", "key=value"),
])
def test_bad_gate_specs_are_refused_saying_what_was_expected(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_policy(spec)


def test_gates_chain_and_run_in_the_filter_stage(windows):
    cascade = parse_policy("energy+vad:silero")
    assert isinstance(cascade, Cascade) and [p.name for p in cascade.policies] == ["energy", "vad:silero"]
    assert "vad:silero" in policy_help() and "energy" in policy_help()
    stage = Filter("energy+vad:silero")
    stage.setup()
    try:
        actions = [stage.process(audio(seq, windows[k])).decision for seq, k in enumerate(["silence", "dishes", "speech"])]
    finally:
        stage.teardown()
    assert [(d["action"], d.get("policy")) for d in actions] == [
        ("skip", "energy"), ("skip", "vad:silero"), ("infer", "energy+vad:silero")]
