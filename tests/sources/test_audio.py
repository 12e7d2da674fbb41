"""AudioFileSource: exact samples on 16 kHz WAV, resampling and down-mix, windows, sound tracks of videos."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from stages.sources import AudioFileSource, open_source, window_count

from .conftest import asset, assets_under, wav_samples

RATE = 16000


def read_windows(source: AudioFileSource) -> tuple[list, int]:
    """The audio messages of a source and the count its eos reports (contract checks on the way)."""
    windows, eos_count = [], None
    for message in source:
        if message.kind == "eos":
            eos_count = message.seq
            continue
        assert eos_count is None, "nothing may follow the eos"
        samples = message.arrays[0]
        assert message.kind == "audio" and message.seq == len(windows) and message.stream == source.stream
        assert samples.dtype == np.float32 and samples.ndim == 1 and samples.size == source.windows.window_samples
        assert message.media == {"sample_rate": 16000, "channels": 1, "sample_format": "f32"}
        assert np.all(np.abs(samples) <= 1.0)
        windows.append(message)
    return windows, eos_count


def reassemble(windows: list) -> np.ndarray:
    """The signal the windows cover, from each window's pts and valid samples."""
    last = windows[-1]
    total = round(last.pts * RATE) + last.meta.get("valid_samples", last.arrays[0].size)
    signal = np.zeros(total, dtype=np.float32)
    for message in windows:
        start = round(message.pts * RATE)
        valid = message.meta.get("valid_samples", message.arrays[0].size)
        signal[start:start + valid] = message.arrays[0][:valid]
        assert not np.any(message.arrays[0][valid:]), "the padding of the last window must be zeros"
    return signal


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", [p for p in assets_under("audio/librispeech")
                                  if not isinstance(p, Path) or p.suffix == ".wav"],
                         ids=lambda p: p.name)
@pytest.mark.parametrize("window_s, hop_s", [(2.0, 1.0), (1.0, 0.4), (0.5, 0.5)])
def test_librispeech_wav_samples_are_exact(path: Path, window_s: float, hop_s: float) -> None:
    reference, rate = wav_samples(path)
    assert rate == RATE
    windows, eos_count = read_windows(AudioFileSource(path, window_s=window_s, hop_s=hop_s))
    window, hop = round(window_s * RATE), round(hop_s * RATE)
    assert len(windows) == eos_count == window_count(reference.size, window, hop)
    assert [round(m.pts * RATE) for m in windows] == [k * hop for k in range(len(windows))]
    signal = reassemble(windows)
    assert signal.size == reference.size  # every sample is covered, none invented
    # 16-bit PCM to float is x / 32768 in libswresample as in numpy: equal, not just close.
    np.testing.assert_array_equal(signal, reference.astype(np.float32) / 32768)
    for message in windows:  # overlapping windows hold the same samples where they overlap
        start = round(message.pts * RATE)
        valid = message.meta.get("valid_samples", window)
        np.testing.assert_array_equal(message.arrays[0][:valid], signal[start:start + valid])


@pytest.mark.timeout(30)
def test_jfk_flac_is_resampled_and_downmixed() -> None:
    path = asset("audio/speech_long/jfk.flac")  # 11.0 s, 44.1 kHz stereo
    source = AudioFileSource(path)
    windows, eos_count = read_windows(source)
    assert (source.input_sample_rate, source.input_channels) == (44100, 2)
    signal = reassemble(windows)
    assert signal.size == 11 * RATE  # 485100 samples at 44.1 kHz = exactly 11 s
    assert len(windows) == eos_count == window_count(signal.size, 2 * RATE, RATE) == 10
    # Independent check of timing and down-mix: decode the FLAC here, average the channels,
    # resample by linear interpolation. libswresample's filter differs only above ~7 kHz, so
    # the two must be almost perfectly correlated; its stereo down-mix is (L + R) / sqrt(2).
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray() for frame in container.decode(audio=0)]
        assert container.streams.audio[0].format.name == "s32"  # packed: L R L R ... per row
    stereo = np.concatenate(frames, axis=1).reshape(-1, 2).astype(np.float64) / 2**31
    reference = np.interp(np.arange(signal.size) / RATE, np.arange(len(stereo)) / 44100, stereo.mean(axis=1))
    assert np.corrcoef(reference, signal)[0, 1] > 0.999
    assert np.sqrt(np.mean(signal.astype(np.float64) ** 2) / np.mean(reference ** 2)) == pytest.approx(2 ** 0.5, rel=0.01)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("relative", [
    "hollywood2/actioncliptrain00001.avi",          # AC3 stereo 44.1 kHz
    "audio/soundtrack/steamboat_willie_1928.mp4",   # AAC stereo 48 kHz
    "traffic/highway_topdown.avi",                  # MP3 44.1 kHz (digital silence throughout)
])
def test_sound_track_of_video_files(relative: str) -> None:
    path = asset(relative)
    source = open_source(path, media="audio")
    assert isinstance(source, AudioFileSource)
    windows, eos_count = read_windows(source)
    signal = reassemble(windows)
    # Independent reference: decode the track here without resampling.
    with av.open(str(path)) as container:
        track = container.streams.audio[0]
        decoded = np.concatenate([frame.to_ndarray() for frame in container.decode(track)], axis=1)
        rate = track.rate
    assert decoded.shape[0] == 2  # planar stereo in all three
    # The resampler maps n input samples to n * 16000 / rate output samples (rounded).
    assert abs(signal.size - decoded.shape[1] * RATE / rate) <= 2
    assert len(windows) == eos_count == window_count(signal.size, 2 * RATE, RATE)
    reference_rms = float(np.sqrt(np.mean(decoded.astype(np.float64).mean(axis=0) ** 2)))
    rms = float(np.sqrt(np.mean(signal.astype(np.float64) ** 2)))
    if reference_rms == 0.0:
        assert rms == 0.0  # highway_topdown.avi's MP3 track holds only zeros
    else:
        assert 0.9 < rms / reference_rms < 1.5  # down-mix gain between 1 and sqrt(2)


@pytest.mark.timeout(30)
def test_a_short_file_gives_one_padded_window() -> None:
    path = asset("audio/speech_commands/yes_1000ms.wav")  # 1 s, shorter than a 2 s window
    reference, _ = wav_samples(path)
    windows, eos_count = read_windows(AudioFileSource(path))
    assert len(windows) == eos_count == 1
    assert windows[0].meta == {"valid_samples": reference.size} and windows[0].pts == 0.0
    np.testing.assert_array_equal(windows[0].arrays[0][:reference.size], reference / np.float32(32768))
