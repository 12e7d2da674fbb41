"""Media sources: files, cameras, microphones, network streams and clip datasets as messages.

`open_source` picks the source for a spec; every source follows the `MediaSource` contract
(`stages.sources.base`). Example::

    from stages.sources import open_source

    with open_source("traffic.mp4") as source:
        for message in source:
            ...  # video messages with BGR frames, then eos("traffic", n)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Mapping
from urllib.parse import unquote, urlsplit

from pipeline.errors import SourceFormatError, SourceNotFoundError
from stages.sources.audio import AudioFileSource
from stages.sources.base import AUDIO_MEDIA, AUDIO_SAMPLE_RATE, MediaSource, default_stream_id
from stages.sources.camera import CameraSource
from stages.sources.decoding import MediaProbe, probe
from stages.sources.hollywood2 import Hollywood2Source, read_clip_list
from stages.sources.microphone import MicrophoneSource, parse_microphone
from stages.sources.stream import STREAM_SCHEMES, NetworkStreamSource, ReconnectPolicy
from stages.sources.video import VideoFileSource
from stages.sources.windows import DEFAULT_HOP_S, DEFAULT_WINDOW_S, Windower, WindowSpec, window_count

__all__ = [
    "AUDIO_MEDIA", "AUDIO_SAMPLE_RATE", "DEFAULT_HOP_S", "DEFAULT_WINDOW_S", "STREAM_SCHEMES",
    "AudioFileSource", "CameraSource", "Hollywood2Source", "MediaProbe", "MediaSource",
    "MicrophoneSource", "NetworkStreamSource", "ReconnectPolicy", "VideoFileSource", "WindowSpec",
    "Windower", "default_stream_id", "open_source", "probe", "read_clip_list", "window_count",
]

MediaChoice = Literal["auto", "video", "audio", "both"]

_CAMERA_SPEC = re.compile(r"^(cam\d+|/dev/video\d+)$")
HOLLYWOOD2_PREFIX = "hollywood2:"


def open_source(
    spec: str | os.PathLike[str] | int,
    *,
    stream: str | None = None,
    media: MediaChoice = "auto",
    realtime: bool = False,
    max_frames: int | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    hop_s: float = DEFAULT_HOP_S,
    max_seconds: float | None = None,
    open_timeout_s: float = 10.0,
    read_timeout_s: float = 5.0,
    reconnect: ReconnectPolicy | None = None,
    stream_format: str | None = None,
    stream_options: Mapping[str, str] | None = None,
) -> MediaSource:
    """The source for `spec`, not yet opened (``with`` opens and closes it).

    Specs:

    * ``"cam0"``, ``"/dev/video2"`` or an int: `CameraSource` (OpenCV).
    * ``"mic"`` (default input) or ``"mic:NAME_OR_INDEX"``: `MicrophoneSource`.
    * a URL with scheme ``rtsp``, ``rtsps``, ``http``, ``https``, ``udp``, ``tcp``, ``rtmp``
      or ``srt``: `NetworkStreamSource`. ``file://`` URLs are files.
    * ``"hollywood2:ROOT"`` or ``"hollywood2:ROOT:LISTFILE"``: `Hollywood2Source`.
    * a file path: by `media` -- ``"auto"`` gives `VideoFileSource` when the file has moving
      picture, else `AudioFileSource`; ``"video"``/``"audio"`` force one (``"audio"`` reads the
      sound track of a video file); ``"both"`` gives `VideoFileSource` with its audio track
      as a second stream.

    Options apply where they mean something and are ignored elsewhere: `realtime` (files,
    Hollywood2), `max_frames` (video files, cameras, streams, per Hollywood2 clip),
    `window_s`/`hop_s` (all audio), `max_seconds` (microphone), timeouts, `reconnect`,
    `stream_format`, `stream_options` (network streams; `open_timeout_s` also cameras).

    Raises:
        SourceNotFoundError: a file path that does not exist (naming it).
        SourceFormatError: a file with neither picture nor sound, or not media at all.
        ValueError: a spec or option that makes no sense (unknown URL scheme, bad window).
    """
    if media not in ("auto", "video", "audio", "both"):
        raise ValueError(f"media must be 'auto', 'video', 'audio' or 'both', got {media!r}")
    if isinstance(spec, int) and not isinstance(spec, bool):
        return CameraSource(spec, stream=stream, open_timeout_s=open_timeout_s, max_frames=max_frames)
    text = os.fspath(spec)
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a source spec (path, URL, camN, mic), got {spec!r}")
    if _CAMERA_SPEC.match(text):
        return CameraSource(text, stream=stream, open_timeout_s=open_timeout_s, max_frames=max_frames)
    if text == "mic" or text.startswith("mic:"):
        return MicrophoneSource(parse_microphone(text), stream=stream, window_s=window_s, hop_s=hop_s,
                                max_seconds=max_seconds)
    if text.startswith(HOLLYWOOD2_PREFIX):
        root, _, list_file = text[len(HOLLYWOOD2_PREFIX):].partition(":")
        if not root:
            raise ValueError(f"expected 'hollywood2:ROOT[:LISTFILE]', got {text!r}")
        # media picks the clips' picture ("video"), sound ("audio") or both (the default).
        return Hollywood2Source(root, list_file or None, window_s=window_s, hop_s=hop_s,
                                video=media != "audio", audio=media != "video",
                                max_frames=max_frames, realtime=realtime,
                                stream=stream or "hollywood2")
    if "://" in text:
        scheme = urlsplit(text).scheme.lower()
        if scheme == "file":
            text = unquote(urlsplit(text).path)
        elif scheme in STREAM_SCHEMES:
            return NetworkStreamSource(text, stream=stream, open_timeout_s=open_timeout_s,
                                       read_timeout_s=read_timeout_s, reconnect=reconnect,
                                       format=stream_format, options=stream_options, max_frames=max_frames)
        else:
            raise ValueError(f"expected a URL with a scheme in {('file',) + STREAM_SCHEMES}, got {scheme!r} "
                             f"in {text!r}")
    path = Path(text)
    if not path.exists():
        raise SourceNotFoundError(f"media file not found: {path}")
    if media == "auto":
        found = probe(path)
        if not found.has_video and not found.has_audio:
            raise SourceFormatError(f"expected a file with video or audio, got neither: {path}")
        media = "video" if found.has_video else "audio"
    if media == "audio":
        return AudioFileSource(path, stream=stream, window_s=window_s, hop_s=hop_s, realtime=realtime)
    return VideoFileSource(path, stream=stream, realtime=realtime, max_frames=max_frames,
                           audio=media == "both", window_s=window_s, hop_s=hop_s)
