"""A loopback MPEG-TS stream server for the network-source tests, run as a separate process.

Usage: ``python stream_server.py [--pace FPS] [--size WxH] PORT FRAMES [FRAMES ...]``. For each FRAMES count the server
listens on ``tcp://127.0.0.1:PORT`` (FFmpeg's ``listen=1``), sends that many H.264 frames of a
test pattern to the client that connects, closes the connection, and listens again for the
next count. It prints ``listening N`` before each session and ``served N`` after it. With
``--pace FPS`` it sends at most FPS frames per second (a stream that lasts), else as fast as it
encodes; ``--size`` sets the picture size (default 160x96).

It runs in its own process because PyAV holds the GIL while an output URL waits in
``listen()``: in a thread it would stop the reading test itself.
"""

from __future__ import annotations

import sys
import time
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np

WIDTH, HEIGHT = 160, 96


def pattern_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A BGR frame that differs from frame to frame (a moving bar over a gradient)."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[:, :, 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    frame[:, (index * 4) % width:(index * 4) % width + 8, 2] = 255
    return frame


def write_mpegts(target: str | BinaryIO, frames: int, fps: int = 25, pace: float | None = None,
                 size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
    """Encode `frames` pattern frames as H.264 in MPEG-TS to a URL or a writable file object.

    `pace`: send at most this many frames per second (None: as fast as they encode)."""
    with av.open(target, mode="w", format="mpegts") as container:
        video = container.add_stream("libx264", rate=fps)
        (video.width, video.height), video.pix_fmt = size, "yuv420p"
        video.options = {"preset": "ultrafast", "tune": "zerolatency"}
        video.codec_context.time_base = Fraction(1, fps)
        started = time.monotonic()
        for index in range(frames):
            if pace:
                time.sleep(max(0.0, started + index / pace - time.monotonic()))
            frame = av.VideoFrame.from_ndarray(pattern_frame(index, *size), format="bgr24")
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)


def main(argv: list[str]) -> int:
    pace, size = None, (WIDTH, HEIGHT)
    while argv[:1] in (["--pace"], ["--size"]):
        if argv[0] == "--pace":
            pace = float(argv[1])
        else:
            width, height = argv[1].split("x")
            size = (int(width), int(height))
        argv = argv[2:]
    port, sessions = int(argv[0]), [int(n) for n in argv[1:]]
    for frames in sessions:
        print(f"listening {frames}", flush=True)
        # listen_timeout (ms) bounds the wait for a client, so the process always ends.
        write_mpegts(f"tcp://127.0.0.1:{port}?listen=1&listen_timeout=20000", frames, pace=pace, size=size)
        print(f"served {frames}", flush=True)
        time.sleep(0.05)  # let the client see the close before we listen again
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
