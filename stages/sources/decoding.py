"""PyAV plumbing shared by the file sources: opening with our errors, probing, and one decode loop.

`decode_messages` is the single place where recorded media becomes messages: video frames
(BGR) and audio windows (16 kHz mono) decoded from one pass over one container, interleaved in
demux order. `VideoFileSource`, `AudioFileSource` and the Hollywood2 reader all use it, so they
handle truncated and corrupt input the same way:

* a video packet the decoder rejects is a frame read but undecodable: its ``seq`` is skipped
  (a gap the next frame's ``prev_seq`` names), and the stream's end-of-stream marker counts it
  in ``dropped`` and ``meta["source"]["dropped"]["undecodable"]``;
* a video frame read that the decoder silently never outputs (H.264 frames before the first
  keyframe) is counted the same way, its ``seq`` skipped at the end of the stream;
* an audio packet the decoder rejects is logged and counted in the marker's
  ``meta["source"]["uncounted"]["undecodable-packets"]``: windows are cut from the samples that
  decoded, so how many windows it would have made is unknown, and the summary says so;
* a read error in the middle of the file (truncated, damaged) ends the streams cleanly with a
  warning, after everything that decoded, and the markers say so in ``meta["source"]["uncounted"]``
  (``unread-frames`` when the container declares more frames than could be read, else ``read-error``);
* an input from which nothing at all decodes raises `SourceFormatError` naming the path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import av
import av.error
import numpy as np

from pipeline.errors import SourceError, SourceFormatError, SourceNotFoundError
from pipeline.message import Message
from stages.sources.base import AUDIO_SAMPLE_RATE, MediaSource, audio_message, source_eos, video_message
from stages.sources.windows import WindowSpec, Windower

logger = logging.getLogger(__name__)

# Log the first few rejected packets of an input in full, then only count them: a damaged
# file can have thousands, and the log must stay readable.
_LOGGED_PACKET_ERRORS = 3


def open_input(path: Path, expected: str) -> av.container.InputContainer:
    """Open a media file for reading, turning every failure into our errors with the path.

    Args:
        path: the file.
        expected: what the caller wants, for messages, e.g. ``"video"`` or ``"audio"``.

    Raises:
        SourceNotFoundError: the path does not exist.
        SourceFormatError: a directory, an empty file, or data FFmpeg cannot parse.
        SourceError: any other failure to open (permissions, I/O).
    """
    if not path.exists():
        raise SourceNotFoundError(f"{expected} file not found: {path}")
    if path.is_dir():
        raise SourceFormatError(f"expected a {expected} file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise SourceFormatError(f"expected a {expected} file, got an empty file (0 bytes): {path}")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.error.FileNotFoundError:
        raise SourceNotFoundError(f"{expected} file not found: {path}") from None
    except av.error.InvalidDataError as error:
        raise SourceFormatError(
            f"expected a {expected} file in a format FFmpeg reads, got data it cannot parse "
            f"({error.strerror}; not a media file, or truncated before its headers or index): {path}"
        ) from None
    except (av.error.FFmpegError, OSError) as error:
        raise SourceError(f"cannot open {expected} file {path}: {type(error).__name__}: {error}") from None


class ContainerSource(MediaSource):
    """A source that reads one PyAV container, opened by the subclass's `_open`."""

    _container: av.container.InputContainer | None = None

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def picture_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video stream that is moving picture (cover art in audio files is not)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


@dataclass(frozen=True)
class MediaProbe:
    """What a media file holds: whether it has moving picture and sound."""

    path: Path
    has_video: bool
    has_audio: bool


def probe(path: Path) -> MediaProbe:
    """Open `path` briefly and report its streams (errors as in `open_input`)."""
    container = open_input(path, "media")
    try:
        return MediaProbe(path, picture_stream(container) is not None, bool(container.streams.audio))
    finally:
        container.close()


def frame_rate(stream: av.video.stream.VideoStream) -> float:
    """The stream's frame rate in frames per second (0.0 when the container does not say)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


class FrameClock:
    """Presentation times in seconds for decoded video frames: best effort, strictly increasing.

    Frame pts are not always trustworthy: AVI stores no presentation times, and with XviD's
    packed B-frames (traffic/highway_cctv.avi) the pts that reach the frames come out of order
    while their dts are monotonic. This applies FFmpeg's own heuristic (``guess_correct_pts``
    in libavcodec/decode.c, the "best effort timestamp" that ffmpeg, ffplay and OpenCV use):
    count how often pts and dts each went backwards and trust the one that did so less. What
    is left (a repeat at the moment it switches, frames with no timestamp at all) is moved to
    half a frame after the previous frame, so pts strictly increase.

    Frames drained with ``decode(None)`` carry a pts but no time base; the stream's applies.
    """

    def __init__(self, stream: Any, fps: float) -> None:
        self._time_base = stream.time_base
        self._step = 1.0 / fps if fps > 0 else 0.04
        self._faulty_pts = self._faulty_dts = 0
        self._last_pts: int | None = None
        self._last_dts: int | None = None
        self._last_seconds: float | None = None

    def _best_effort(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            self._faulty_dts += self._last_dts is not None and dts <= self._last_dts
            self._last_dts = dts
        elif pts is not None:
            self._last_dts = pts
        if pts is not None:
            self._faulty_pts += self._last_pts is not None and pts <= self._last_pts
            self._last_pts = pts
        elif dts is not None:
            self._last_pts = dts
        if pts is not None and (self._faulty_pts <= self._faulty_dts or dts is None):
            return pts
        return dts

    def seconds(self, frame: av.VideoFrame) -> float:
        """The frame's presentation time in seconds (call once per frame, in output order)."""
        value = self._best_effort(frame.pts, frame.dts)
        time_base = frame.time_base or self._time_base
        seconds = float(value * time_base) if value is not None and time_base else None
        last = self._last_seconds
        if seconds is None:
            seconds = 0.0 if last is None else last + self._step
        elif last is not None and seconds <= last:
            seconds = last + self._step / 2
        self._last_seconds = seconds
        return seconds


class Pacer:
    """Sleeps so that media time advances no faster than wall time (real-time playback)."""

    def __init__(self) -> None:
        self._origin: tuple[float, float] | None = None  # (wall, media) at the first call

    def wait_until(self, media_time: float) -> None:
        now = time.monotonic()
        if self._origin is None:
            self._origin = (now, media_time)
            return
        delay = (self._origin[0] + media_time - self._origin[1]) - now
        if delay > 0:
            time.sleep(delay)


class AudioResampling:
    """Decoded audio frames -> 16 kHz mono float32 windows (resampler flushed at the end).

    Mono is libswresample's default down-mix (for stereo (L + R) / sqrt(2); other layouts by
    its default matrix), clipped to [-1, 1].
    """

    def __init__(self, windows: WindowSpec) -> None:
        if windows.sample_rate != AUDIO_SAMPLE_RATE:
            raise ValueError(f"audio windows are cut at {AUDIO_SAMPLE_RATE} Hz, got {windows.sample_rate}")
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)
        self._windower = Windower(windows.window_samples, windows.hop_samples)
        self._start_time: float | None = None

    @property
    def total_samples(self) -> int:
        return self._windower.total_samples

    def window_pts(self, start: int) -> float:
        """Presentation time of the window starting at sample `start`."""
        return (self._start_time or 0.0) + start / AUDIO_SAMPLE_RATE

    def _resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        try:
            return self._resampler.resample(frame)
        except ValueError:
            # PyAV's resampler is set up by the first frame and refuses frames whose format,
            # layout or rate differ (streams may change mid-file). Drain it, start a new one.
            if frame is None:
                raise
            drained = self._resampler.resample(None)
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)
            return [*drained, *self._resampler.resample(frame)]

    def push(self, frame: av.AudioFrame | None) -> Iterator[tuple[float, np.ndarray, int]]:
        """Yield ``(pts, samples, valid)`` per completed window; `None` flushes everything."""
        if frame is not None and self._start_time is None and frame.pts is not None and frame.time_base:
            self._start_time = float(frame.pts * frame.time_base)
        for out in self._resample(frame):
            # flt + mono is packed: one plane, shape (1, n). libswresample down-mixes with
            # FFmpeg's default matrix (stereo: (L + R) / sqrt(2)) without normalising, so
            # loud, correlated channels can exceed 1; clip as FFmpeg's own s16 output would
            # (`ffmpeg -ac 1`, which Whisper's loader uses), keeping the [-1, 1] contract.
            samples = np.clip(out.to_ndarray().reshape(-1), -1.0, 1.0)
            for window in self._windower.push(samples):
                yield self.window_pts(window.start), window.samples, window.valid
        if frame is None:
            for window in self._windower.flush():
                yield self.window_pts(window.start), window.samples, window.valid


def _packets(container: av.container.InputContainer, streams: list[Any],
             problems: list[str]) -> Iterator[tuple[Any, av.Packet | None]]:
    """``(stream, packet)`` pairs in file order; ``(stream, None)`` asks to flush that decoder.

    The demuxer ends with an empty flush packet per stream. When reading fails instead
    (truncated or damaged file), the error is recorded in `problems` and the flushes are
    sent here, so that frames still inside the decoder (frame threads, reordering delay) come
    out rather than being lost.
    """
    demuxer = container.demux(streams)
    try:
        while True:
            try:
                packet = next(demuxer)
            except StopIteration:
                return
            except (av.error.FFmpegError, OSError) as error:
                problems.append(f"read error after the last good packet ({type(error).__name__}: {error})")
                for stream in streams:
                    yield stream, None
                return
            yield packet.stream, packet
    finally:
        demuxer.close()


def decode_messages(container: av.container.InputContainer, location: Path, *,
                    video_id: str | None, audio_id: str | None, windows: WindowSpec,
                    meta: dict[str, Any] | None = None, max_frames: int | None = None,
                    realtime: bool = False) -> Iterator[Message]:
    """Yield the messages of one container: video frames, audio windows, then an eos per stream.

    Args:
        container: an open input container (the caller closes it).
        location: the file, for messages.
        video_id: stream id for the video frames, or None to ignore video.
        audio_id: stream id for the audio windows, or None to ignore audio. A container
            without the asked-for stream simply does not produce it (no eos either).
        windows: audio window length and hop.
        meta: copied into every data message's ``meta``.
        max_frames: stop after this many video frames (audio decoded so far is flushed).
        realtime: sleep so that messages come out at the media's own pace.

    Raises:
        SourceFormatError: nothing at all could be decoded from the asked-for streams.
    """
    video = picture_stream(container) if video_id is not None else None
    audio = container.streams.audio[0] if audio_id is not None and container.streams.audio else None
    streams = [s for s in (video, audio) if s is not None]
    if not streams:
        wanted = " and ".join(k for k, v in (("video", video_id), ("audio", audio_id)) if v is not None)
        found = ", ".join(s.type for s in container.streams) or "no streams"
        raise SourceFormatError(f"expected a file with {wanted}, got {found}: {location}")
    fps = 0.0
    if video is not None:
        video.thread_type = "AUTO"  # frame + slice threads; packets still go in file order
        fps = frame_rate(video)
        clock = FrameClock(video, fps)
    resampling = AudioResampling(windows) if audio is not None else None
    pacer = Pacer() if realtime else None
    meta = dict(meta or {})
    problems: list[str] = []
    rejected = 0
    undecodable = {"video": 0, "audio": 0}
    video_packets = video_count = audio_count = 0
    placeholders = 0   # 1-byte "dropped frame" packets of VfW-era AVI encoders: no picture, not a frame
    stopped_early = False
    packets = _packets(container, streams, problems)
    try:
        for stream, packet in packets:
            is_video = stream is video
            if is_video and packet is not None and packet.size:
                video_packets += 1
                placeholders += packet.size <= 1
            try:
                frames = stream.decode(packet)
            except av.error.FFmpegError as error:
                rejected += 1
                if rejected <= _LOGGED_PACKET_ERRORS:
                    logger.warning("%s: skipping a %s packet the decoder rejects (pts %s): %s",
                                   location, stream.type, getattr(packet, "pts", None), error)
                undecodable[stream.type] += 1
                if is_video and packet is not None and packet.size:
                    video_count += 1   # a frame read but undecodable: its seq stays a gap
                continue
            for frame in frames:
                if is_video:
                    if max_frames is not None and video_count >= max_frames:
                        stopped_early = True
                        break
                    pts = clock.seconds(frame)
                    image = frame.to_ndarray(format="bgr24")  # a fresh buffer per frame
                    if pacer is not None:
                        pacer.wait_until(pts)
                    yield video_message(video_id, video_count, image, pts, fps, meta)
                    video_count += 1
                else:
                    for pts, samples, valid in resampling.push(frame):
                        if pacer is not None:
                            pacer.wait_until(pts + valid / AUDIO_SAMPLE_RATE)
                        yield audio_message(audio_id, audio_count, samples, pts,
                                            _window_meta(meta, valid, samples.size))
                        audio_count += 1
            if stopped_early:
                break
    finally:
        packets.close()  # release the demuxer before the caller closes the container
    if resampling is not None:
        for pts, samples, valid in resampling.push(None):
            yield audio_message(audio_id, audio_count, samples, pts, _window_meta(meta, valid, samples.size))
            audio_count += 1
    # Frames read that never came out of the decoder, without an error (H.264 frames before the
    # first keyframe, whose references are missing): undecodable too, their seqs a gap at the end.
    silent = video_packets - placeholders - video_count if video is not None and not stopped_early else 0
    if silent > 0:
        logger.warning("%s: %d video frames were read but the decoder gave no picture for them (e.g. "
                       "frames before the first keyframe); counted as undecodable", location, silent)
        video_count += silent
        undecodable["video"] += silent
    if video_count == undecodable["video"] and audio_count == 0:
        detail = "; ".join(problems) or "the streams hold no decodable frames"
        raise SourceFormatError(f"expected decodable {' and '.join(s.type for s in streams)} in {location}, "
                                f"got nothing that decodes: {detail}")
    declared = video.frames if video is not None else 0
    uncounted: dict[str, int] = {}
    if video is not None and not stopped_early and declared and video_packets < declared:
        problems.append(f"the container declares {declared} video frames but only {video_packets} "
                        f"could be read; the file looks truncated")
        uncounted["unread-frames"] = declared - video_packets
    elif problems:
        uncounted["read-error"] = 1
    for problem in problems:
        logger.warning("%s: %s; ending the streams after %d video frames and %d audio windows",
                       location, problem, video_count, audio_count)
    if rejected:
        logger.warning("%s: %d packets were rejected by the decoder and skipped (%d video frames counted "
                       "as dropped, %d audio packets)", location, rejected, undecodable["video"], undecodable["audio"])
    if video is not None:
        yield source_eos(video_id, video_count, {"undecodable": undecodable["video"]}, uncounted)
    if audio is not None:
        audio_uncounted = {**uncounted, "undecodable-packets": undecodable["audio"]}
        yield source_eos(audio_id, audio_count, {}, audio_uncounted)


def _window_meta(meta: dict[str, Any], valid: int, size: int) -> dict[str, Any]:
    # Only the zero-padded last window says how much of it is real input.
    return meta if valid == size else {**meta, "valid_samples": valid}
