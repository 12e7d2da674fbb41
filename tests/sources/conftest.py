"""Fixtures for the source tests: real assets (skipped when absent) and loopback stream servers."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from pipeline.assets import assets_dir
from pipeline.transport import free_tcp_port

from .stream_server import write_mpegts

REPO = Path(__file__).resolve().parents[2]
ALSA_FAKEMIC_CONF = REPO / "tests" / "media" / "alsa_fakemic.conf"


def asset(relative: str) -> Path:
    """The path of a shared asset, or skip the test saying where it was looked for."""
    path = assets_dir() / relative
    if not path.exists():
        pytest.skip(f"shared asset {relative!r} not found at {path} (set INFI_ASSETS)")
    return path


def assets_under(folder: str) -> list:
    """Files in an assets folder, for parametrisation; one skipped case saying why when absent."""
    directory = assets_dir() / folder
    files = sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
    if files:
        return files
    reason = f"no shared assets in {folder!r} at {directory} (set INFI_ASSETS)"
    return [pytest.param(directory, marks=pytest.mark.skip(reason=reason), id="assets-absent")]


def wav_samples(path: Path) -> tuple[np.ndarray, int]:
    """The int16 samples of a mono 16-bit WAV file read with the `wave` module, and its rate."""
    with wave.open(str(path), "rb") as reader:
        assert reader.getsampwidth() == 2 and reader.getnchannels() == 1, path
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2"), reader.getframerate()


@dataclass
class TcpStreamServer:
    """`stream_server.py` in a subprocess: MPEG-TS sessions on tcp://127.0.0.1:PORT, one per count.

    The server listens, sends a session's frames to the client that connects, closes, and
    listens again for the next session. Leaving the ``with`` block waits for it (bounded) and
    kills it if it is still running. `pace`: frames per second to send at (None: as fast as
    they encode); `size`: the picture's width and height (default 160x96).
    """

    sessions: list[int]
    port: int = field(default_factory=free_tcp_port)
    pace: float | None = None
    size: tuple[int, int] | None = None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def __enter__(self) -> TcpStreamServer:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("stream_server.py")),
             *(["--pace", str(self.pace)] if self.pace else []),
             *(["--size", "{}x{}".format(*self.size)] if self.size else []), str(self.port), *map(str, self.sessions)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The server prints "listening N" just before FFmpeg binds; give it a moment more.
        # (Probing the port with a connection would consume the session.)
        line = self.process.stdout.readline()
        if not line.startswith("listening"):
            self.process.kill()
            raise RuntimeError(f"stream server failed to start: {line!r} {self.process.communicate()}")
        time.sleep(0.3)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.output = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.output = self.process.communicate()


class _TsHandler(http.server.BaseHTTPRequestHandler):
    frames = 50

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/live.ts":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        write_mpegts(self.wfile, self.frames)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_stream_server() -> Iterator[tuple[str, int]]:
    """An HTTP server on 127.0.0.1 serving 50 frames of MPEG-TS at /live.ts; yields (url, frames)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TsHandler)
    thread = threading.Thread(target=server.serve_forever, name="http-stream-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/live.ts", _TsHandler.frames
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
