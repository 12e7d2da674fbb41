"""The microphone through sounddevice (PortAudio): 16 kHz mono float32, cut into windows."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Iterator

import numpy as np

from pipeline.errors import SourceError, SourceNotFoundError
from pipeline.message import Message, eos
from stages.sources.base import AUDIO_SAMPLE_RATE, MediaSource, audio_message
from stages.sources.windows import DEFAULT_HOP_S, DEFAULT_WINDOW_S, WindowSpec, Windower

logger = logging.getLogger(__name__)


def parse_microphone(spec: str) -> str | int | None:
    """``mic`` -> None (the default input); ``mic:2`` -> 2; ``mic:USB Audio`` -> ``"USB Audio"``."""
    if spec == "mic":
        return None
    if not spec.startswith("mic:") or not spec[4:]:
        raise ValueError(f"expected 'mic' or 'mic:NAME_OR_INDEX', got {spec!r}")
    name = spec[4:]
    return int(name) if name.isdigit() else name


def _input_devices(sd: Any) -> str:
    try:
        devices = [f"{d['index']}: {d['name']}" for d in sd.query_devices() if d["max_input_channels"] > 0]
    except Exception as error:  # PortAudio itself may be unusable
        return f"unknown ({error})"
    return "; ".join(devices) or "none"


class MicrophoneSource(MediaSource):
    """Audio windows from a capture device, read in blocking hop-sized blocks.

    The device is opened at 16 kHz, mono, float32 (PortAudio converts and resamples as
    needed). Each blocking ``InputStream.read`` returns one hop of samples, which the shared
    `stages.sources.windows.Windower` turns into windows of ``window_s`` every ``hop_s``
    seconds; the windows are those an `AudioFileSource` would give for the same samples.
    ``pts`` is the time of the window's first sample counted in samples (drift-free);
    ``t_capture`` is the wall time when its last sample was read. An input overflow (samples
    lost because nobody read in time) is logged and counted in `overflows`.

    sounddevice is imported in ``open()``: a machine without PortAudio can use every other
    source. Note that PortAudio reads the ALSA configuration once, at that import.

    Args:
        device: a device index or (part of) its name; None for the default input.
        stream: the stream id (default ``mic``).
        window_s: window length in seconds.
        hop_s: hop between windows in seconds (also the read block size).
        max_seconds: stop after this much audio (None: until closed). Reading stops at the
            first block boundary at or past it; the remaining samples are flushed as a
            final zero-padded window if no window covers them.

    Raises (from ``open()``):
        SourceNotFoundError: PortAudio is missing, or there is no such input device; the
            message lists the input devices that exist.
        SourceError: the device exists but refuses the stream settings.
    """

    live = True

    def __init__(self, device: str | int | None = None, *, stream: str | None = None,
                 window_s: float = DEFAULT_WINDOW_S, hop_s: float = DEFAULT_HOP_S,
                 max_seconds: float | None = None) -> None:
        super().__init__(stream or "mic")
        if max_seconds is not None and not (max_seconds > 0 and math.isfinite(max_seconds)):
            raise ValueError(f"max_seconds must be a positive number or None, got {max_seconds!r}")
        self.device = device
        self.windows = WindowSpec(window_s, hop_s, AUDIO_SAMPLE_RATE)
        self.max_seconds = max_seconds
        self.overflows = 0
        self.device_name = ""
        self._input: Any = None

    @property
    def location(self) -> str:
        return "default input device" if self.device is None else f"input device {self.device!r}"

    def _open(self) -> None:
        try:
            import sounddevice as sd
        except OSError as error:  # sounddevice raises OSError when libportaudio is absent
            raise SourceNotFoundError(f"microphone ({self.location}) unavailable: the PortAudio library "
                                      f"is missing ({error}); install libportaudio2") from None
        try:
            info = sd.query_devices(self.device, kind="input")
        except (ValueError, sd.PortAudioError) as error:
            raise SourceNotFoundError(f"microphone ({self.location}) not found: {error}; input devices "
                                      f"present: {_input_devices(sd)}") from None
        self.device_name = str(info["name"])
        try:
            # Each read (one hop) spans two PortAudio blocks, and PortAudio's buffer is one
            # block. Other shapes (a read of exactly one block, or a buffer of a read or more)
            # silently lose whole blocks on ALSA devices without a clock, such as the
            # file-backed test device (tests/media/alsa_fakemic.conf); this one is exact there.
            # On a real device it only means an input latency of half a hop.
            block = max(1, self.windows.hop_samples // 2)
            self._input = sd.InputStream(device=self.device, samplerate=AUDIO_SAMPLE_RATE, channels=1,
                                         dtype="float32", blocksize=block,
                                         latency=block / AUDIO_SAMPLE_RATE)
            self._input.start()
        except (ValueError, sd.PortAudioError) as error:
            raise SourceError(f"microphone {self.device_name!r} ({self.location}) refused 16 kHz mono "
                              f"float32 capture: {error}") from None
        logger.info("microphone %r opened (%s)", self.device_name, self.location)

    def _close(self) -> None:
        if self._input is not None:
            try:
                self._input.stop()
            finally:
                self._input.close()
                self._input = None

    def _messages(self) -> Iterator[Message]:
        hop = self.windows.hop_samples
        windower = Windower(self.windows.window_samples, hop)
        limit = None if self.max_seconds is None else int(round(self.max_seconds * AUDIO_SAMPLE_RATE))
        count = 0
        while limit is None or windower.total_samples < limit:
            size = hop if limit is None else min(hop, limit - windower.total_samples)
            block, overflowed = self._input.read(size)
            now = time.time()
            if overflowed:
                self.overflows += 1
                logger.warning("microphone %r overflowed: samples were lost before sample %d (overflow #%d)",
                               self.device_name, windower.total_samples, self.overflows)
            # read() returns a (frames, channels) array that PortAudio's next read does not
            # touch; the windower copies out of it anyway.
            for window in windower.push(np.asarray(block).reshape(-1)):
                yield audio_message(self.stream, count, window.samples, window.start / AUDIO_SAMPLE_RATE,
                                    t_capture=now)
                count += 1
        for window in windower.flush():
            yield audio_message(self.stream, count, window.samples, window.start / AUDIO_SAMPLE_RATE,
                                meta={"valid_samples": window.valid}, t_capture=time.time())
            count += 1
        yield eos(self.stream, count)
