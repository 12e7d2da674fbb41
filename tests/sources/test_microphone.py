"""MicrophoneSource for real, on the file-backed ALSA device of tests/media/alsa_fakemic.conf."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import SourceNotFoundError
from stages.sources import MicrophoneSource, window_count

from .conftest import ALSA_FAKEMIC_CONF, asset

needs_portaudio = pytest.mark.skipif(ctypes.util.find_library("portaudio") is None,
                                     reason="PortAudio is not installed (Debian: libportaudio2)")
RATE = 16000


def raw_from_wav(wav: Path, raw: Path, seconds: float) -> np.ndarray:
    """Write the first `seconds` of a 16 kHz mono WAV as headerless S16_LE; return those samples.

    The ALSA file plugin reads its file raw: a WAV header would come through as 22 samples
    of noise.
    """
    with wave.open(str(wav), "rb") as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (RATE, 1, 2)
        data = reader.readframes(int(seconds * RATE))
    raw.write_bytes(data)
    return np.frombuffer(data, dtype="<i2")


def run_mic_reader(tmp_path: Path, raw: Path, device: str, max_seconds: float, window_s: float,
                   hop_s: float) -> dict[str, np.ndarray]:
    """Run mic_reader.py in a fresh process on the fake device serving `raw`; what it saved."""
    out = tmp_path / "mic.npz"
    env = {**os.environ, "ALSA_CONFIG_PATH": str(ALSA_FAKEMIC_CONF), "FAKEMIC_RAW": str(raw)}
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("mic_reader.py")), str(out), device, str(max_seconds),
         str(window_s), str(hop_s)], env=env, capture_output=True, text=True, timeout=45)
    assert completed.returncode == 0, completed.stderr
    with np.load(out, allow_pickle=False) as saved:
        return {name: saved[name] for name in saved.files}


@needs_portaudio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("device, max_seconds, window_s, hop_s", [
    ("fakemic", 5.3, 2.0, 1.0),   # ends inside a window: last window zero-padded
    ("default", 3.0, 1.0, 0.25),
])
def test_fake_microphone_samples_are_exact(tmp_path: Path, device: str, max_seconds: float, window_s: float,
                                           hop_s: float) -> None:
    # A real recording, and more of it than is read: past its end the fake device would
    # return stale ring-buffer data instead of silence.
    raw = tmp_path / "tap.raw"
    reference = raw_from_wav(asset("audio/background_noise/running_tap.wav"), raw, max_seconds + 3.0)
    expected = reference.astype(np.float32) / 32768  # what PortAudio's int16 -> float32 gives
    got = run_mic_reader(tmp_path, raw, device, max_seconds, window_s, hop_s)
    assert "error" not in got, str(got.get("error"))
    window, hop, total = round(window_s * RATE), round(hop_s * RATE), round(max_seconds * RATE)
    count = window_count(total, window, hop)
    assert got["samples"].shape == (count, window) and got["samples"].dtype == np.float32
    assert list(got["seq"]) == list(range(count)) and list(got["eos"]) == [count]
    assert bool(got["live"]) and int(got["overflows"]) == 0
    assert str(got["media"][0]) == str(sorted({"sample_rate": 16000, "channels": 1, "sample_format": "f32"}.items()))
    covered = 0
    for k in range(count):
        start, valid = round(got["pts"][k] * RATE), int(got["valid"][k])
        assert start == k * hop
        np.testing.assert_array_equal(got["samples"][k][:valid], expected[start:start + valid])
        assert not np.any(got["samples"][k][valid:])
        covered = max(covered, start + valid)
    assert covered == total


@needs_portaudio
@pytest.mark.timeout(60)
def test_missing_device_names_it_and_lists_devices(tmp_path: Path) -> None:
    raw = tmp_path / "silence.raw"
    raw.write_bytes(bytes(RATE * 2))
    error = str(run_mic_reader(tmp_path, raw, "no-such-microphone", 1.0, 1.0, 0.5)["error"])
    assert error.startswith("SourceNotFoundError") and "'no-such-microphone'" in error
    assert "fakemic" in error  # the input devices that do exist are listed


@needs_portaudio
@pytest.mark.timeout(30)
def test_missing_device_without_any_sound_hardware() -> None:
    """In the test process itself (no fake device configured) nothing is found either."""
    with pytest.raises(SourceNotFoundError, match="'no-such-microphone'") as raised:
        MicrophoneSource("no-such-microphone").open()
    assert "input devices present" in str(raised.value)
