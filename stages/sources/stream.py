"""Network video streams (RTSP, HTTP, UDP, TCP, RTMP, SRT) through PyAV, with bounded waits and reconnects."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import av
import av.error

from pipeline.errors import SourceError, SourceFormatError, SourceNotFoundError, SourceTimeoutError
from pipeline.message import Message
from stages.sources.base import MediaSource, default_stream_id, source_eos, video_message
from stages.sources.decoding import FrameClock, frame_rate, picture_stream

logger = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "udp", "tcp", "rtmp", "srt")

# How a live stream ends, as FFmpeg reports it: an HTTP server closing the connection gives
# EIO (OSError), a UDP stream falling silent trips the read timeout (ExitError), TCP gives a
# clean EOF or a reset. All of them mean "this connection is over".
_CONNECTION_ERRORS = (av.error.FFmpegError, OSError, EOFError)


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a stream reconnects: `attempts` tries with exponential back-off between them.

    The first connection gets ``1 + attempts`` tries; after a connection ends (server closed,
    read timeout, network error), up to ``attempts`` reconnections are tried before the stream
    ends. The delay before try k (0-based) is ``min(initial_delay_s * multiplier**k, max_delay_s)``.
    ``attempts=0`` reads one connection and ends with it (a finite stream).
    """

    attempts: int = 3
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 0:
            raise ValueError(f"attempts must be an integer >= 0, got {self.attempts!r}")
        if not (self.initial_delay_s >= 0 and math.isfinite(self.initial_delay_s)):
            raise ValueError(f"initial_delay_s must be >= 0 seconds, got {self.initial_delay_s!r}")
        if not (self.max_delay_s >= self.initial_delay_s and math.isfinite(self.max_delay_s)):
            raise ValueError(f"max_delay_s must be >= initial_delay_s ({self.initial_delay_s}), "
                             f"got {self.max_delay_s!r}")
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")

    def delays(self) -> list[float]:
        """The back-off delays, one per reconnection attempt."""
        return [min(self.initial_delay_s * self.multiplier ** k, self.max_delay_s) for k in range(self.attempts)]


def redact(url: str) -> str:
    """The URL without a password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class NetworkStreamSource(MediaSource):
    """Video frames from a network stream, decoded by PyAV (FFmpeg) from its first video track.

    Every blocking FFmpeg call is bounded: ``av.open(url, timeout=(open_timeout_s,
    read_timeout_s))``. When the connection ends for any reason, the source reconnects
    following `reconnect`; the stream id stays the same and ``seq`` keeps counting, so the
    runtime sees one stream with no gaps, except one ``seq`` skipped per frame read that the
    decoder rejects or never outputs (a connection joining mid-GOP), counted as ``undecodable``
    in the end-of-stream marker. ``pts`` starts at 0 and stays monotonic across
    reconnections: within a connection it follows the stream's timestamps, and a new
    connection continues from the wall time elapsed since the first frame.

    Args:
        url: ``rtsp://``, ``http(s)://``, ``udp://``, ``tcp://``, ``rtmp://`` or ``srt://`` URL.
            FFmpeg protocol options go in the URL's query (``?pkt_size=1316``).
        stream: the stream id; default the URL's host (with port) and path.
        open_timeout_s: limit for connecting and probing one connection.
        read_timeout_s: limit for waiting on data once connected.
        reconnect: the reconnection policy (default 3 attempts, 0.5 s doubling to 8 s).
        format: force a demuxer (e.g. ``"mpegts"`` for raw UDP), None to probe.
        options: demuxer/protocol options for ``av.open`` (e.g. ``{"rtsp_transport": "tcp"}``).
        max_frames: stop after this many frames (None: until the stream ends).

    Raises (from ``open()``, after all tries):
        SourceTimeoutError: the server did not answer in time.
        SourceNotFoundError: the server says there is no such stream (HTTP 404).
        SourceFormatError: the stream has no video track.
        SourceError: any other failure (connection refused, bad URL), naming the URL.
    """

    live = True

    def __init__(self, url: str, *, stream: str | None = None, open_timeout_s: float = 10.0,
                 read_timeout_s: float = 5.0, reconnect: ReconnectPolicy | None = None,
                 format: str | None = None, options: Mapping[str, str] | None = None,
                 max_frames: int | None = None) -> None:
        super().__init__(stream or default_stream_id(url))
        scheme = urlsplit(url).scheme.lower()
        if scheme not in STREAM_SCHEMES:
            raise ValueError(f"expected a URL with a scheme in {STREAM_SCHEMES}, got {redact(url)!r}")
        for name, value in (("open_timeout_s", open_timeout_s), ("read_timeout_s", read_timeout_s)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {max_frames!r}")
        self.url = url
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.reconnect = reconnect or ReconnectPolicy()
        self.format = format
        self.options = {str(k): str(v) for k, v in (options or {}).items()}
        self.max_frames = max_frames
        self.connections = 0       # successful connections so far
        self.rejected_packets = 0  # frames read but undecodable: packets refused, or never output
        self.read_packets = 0      # video packets read (frames, for the accounting)
        self._container: av.container.InputContainer | None = None

    @property
    def location(self) -> str:
        return redact(self.url)

    def _scrub(self, error: BaseException) -> str:
        # FFmpeg's messages quote the URL as given, password included.
        return str(error).replace(self.url, self.location)

    def _connect_once(self) -> av.container.InputContainer:
        try:
            container = av.open(self.url, mode="r", format=self.format, options=self.options,
                                timeout=(self.open_timeout_s, self.read_timeout_s), metadata_errors="ignore")
        except av.error.ExitError:  # FFmpeg's interrupt callback fired: our timeout
            raise SourceTimeoutError(f"stream {self.location} did not answer within "
                                     f"{self.open_timeout_s} s") from None
        except (av.error.TimeoutError, TimeoutError) as error:
            raise SourceTimeoutError(f"stream {self.location} timed out while connecting: "
                                     f"{self._scrub(error)}") from None
        except av.error.HTTPNotFoundError:
            raise SourceNotFoundError(f"stream {self.location} not found on the server (HTTP 404)") from None
        except _CONNECTION_ERRORS as error:
            raise SourceError(f"cannot open stream {self.location}: {type(error).__name__}: "
                              f"{self._scrub(error)}") from None
        if picture_stream(container) is None:
            found = ", ".join(s.type for s in container.streams) or "no streams"
            container.close()
            raise SourceFormatError(f"expected a stream with video, got {found}: {self.location}")
        self.connections += 1
        return container

    def _connect(self, delays: list[float], first: bool) -> tuple[av.container.InputContainer | None, int]:
        """Connect, sleeping each delay before a try (the first connection also tries at once).

        Returns the container (None if every try failed) and the number of delays used. On
        the first connection, failing every try raises the last error instead.
        """
        tries = ([0.0] if first else []) + delays
        last: SourceError | None = None
        for attempt, delay in enumerate(tries):
            if delay:
                time.sleep(delay)
            try:
                return self._connect_once(), attempt + (0 if first else 1)
            except SourceFormatError:
                raise  # the server answered with something that is not video: retrying cannot help
            except SourceError as error:
                last = error
                logger.warning("%s (try %d of %d)", error, attempt + 1, len(tries))
        if first:
            assert last is not None
            raise type(last)(f"{last} (gave up after {len(tries)} tries)") from None
        return None, len(tries)

    def _open(self) -> None:
        self._container, _ = self._connect(self.reconnect.delays(), first=True)

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _frames(self, container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
        """Decoded frames of one connection; returns when the connection ends, however it ends."""
        video = picture_stream(container)
        video.thread_type = "AUTO"
        demuxer = container.demux(video)
        try:
            while True:
                try:
                    packet = next(demuxer)
                except StopIteration:
                    logger.info("stream %s: end of stream", self.location)
                    return
                except _CONNECTION_ERRORS as error:
                    logger.info("stream %s: connection ended (%s: %s)", self.location, type(error).__name__,
                                self._scrub(error))
                    # Frames may still sit in the decoder (frame threads); the demuxer's own
                    # flush packet never comes after an error, so flush here.
                    try:
                        yield from video.decode(None)
                    except av.error.FFmpegError as flush_error:
                        logger.debug("stream %s: decoder flush failed: %s", self.location, flush_error)
                    return
                self.read_packets += packet.size > 1   # not the flush packet, not a 1-byte placeholder
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as error:
                    self.rejected_packets += 1
                    logger.debug("stream %s: skipping a packet the decoder rejects: %s", self.location, error)
                    continue
                yield from frames
        finally:
            demuxer.close()

    def _messages(self) -> Iterator[Message]:
        count = 0
        origin: float | None = None        # monotonic time of the first frame
        last_pts = -math.inf
        failures = 0                       # reconnection tries since a connection last gave a frame
        skipped = 0                        # rejected packets whose seq has been skipped
        while self._container is not None:
            container = self._container
            video = picture_stream(container)
            fps = frame_rate(video)
            clock = FrameClock(video, fps)  # timestamps restart with each connection
            base: tuple[float, float] | None = None  # (pts offset, stream time) of this connection
            received = 0
            read_before, rejected_before = self.read_packets, self.rejected_packets
            for frame in self._frames(container):
                now = time.monotonic()
                origin = now if origin is None else origin
                stream_time = clock.seconds(frame)
                if base is None:
                    # Connection's first frame: continue from the wall time elapsed, never back.
                    offset = 0.0 if count == 0 else max(now - origin, last_pts + 1.0 / (fps or 1000.0))
                    base = (offset, stream_time)
                pts = base[0] + stream_time - base[1]  # FrameClock keeps it increasing
                count += self.rejected_packets - skipped   # an undecodable frame keeps its seq, as a gap
                skipped = self.rejected_packets
                yield video_message(self.stream, count, frame.to_ndarray(format="bgr24"), pts, fps)
                last_pts = pts
                count += 1
                received += 1
                if self.max_frames is not None and count >= self.max_frames:
                    self._close()
                    yield source_eos(self.stream, count, {"undecodable": skipped})
                    return
            self._close()
            # Frames read that the decoder never output without an error (a connection joining
            # mid-GOP: the frames before the first keyframe) are undecodable too.
            silent = (self.read_packets - read_before) - received - (self.rejected_packets - rejected_before)
            if silent > 0:
                logger.info("stream %s: %d frames read on this connection gave no picture (e.g. before its "
                            "first keyframe); counted as undecodable", self.location, silent)
                self.rejected_packets += silent
            # Tries count until a connection delivers a frame, so a server that accepts and
            # hangs up at once cannot keep the source reconnecting forever.
            failures = 0 if received else failures
            delays = self.reconnect.delays()[failures:]
            if not delays:
                logger.log(logging.WARNING if self.reconnect.attempts else logging.INFO,
                           "stream %s ended after %d frames; no reconnection left (policy: %d "
                           "attempts)", self.location, count, self.reconnect.attempts)
                break
            logger.warning("stream %s: connection ended after %d frames on it; reconnecting "
                           "(up to %d tries)", self.location, received, len(delays))
            self._container, used = self._connect(delays, first=False)
            failures += used
            if self._container is None:
                logger.warning("stream %s: no reconnection after %d tries; ending the stream",
                               self.location, len(delays))
        count += self.rejected_packets - skipped
        yield source_eos(self.stream, count, {"undecodable": self.rejected_packets})
