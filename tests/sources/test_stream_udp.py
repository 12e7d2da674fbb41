"""A live MPEG-TS stream over UDP on loopback, sent in real time by a PyAV writer process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipeline.transport import free_tcp_port
from stages.sources import NetworkStreamSource, ReconnectPolicy

# Paced like a camera: one frame every 40 ms, so the receiver's socket buffer never overflows.
SENDER = textwrap.dedent("""
    import sys, time
    from fractions import Fraction
    import av, numpy as np
    url, frames = sys.argv[1], int(sys.argv[2])
    time.sleep(1.0)  # let the receiver open the socket first: UDP does not wait for anyone
    with av.open(url, mode="w", format="mpegts") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 160, 96, "yuv420p"
        video.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "10"}
        video.codec_context.time_base = Fraction(1, 25)
        for index in range(frames):
            image = np.full((96, 160, 3), index * 4 % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
            time.sleep(0.04)
        for packet in video.encode():
            container.mux(packet)
""")


@pytest.mark.timeout(60)
def test_udp_stream_is_received_until_it_falls_silent():
    port = free_tcp_port()
    sender = subprocess.Popen([sys.executable, "-c", SENDER, f"udp://127.0.0.1:{port}?pkt_size=1316", "60"])
    try:
        source = NetworkStreamSource(f"udp://127.0.0.1:{port}", format="mpegts", open_timeout_s=15,
                                     read_timeout_s=1.5, reconnect=ReconnectPolicy(attempts=0),
                                     options={"fifo_size": "1000000", "overrun_nonfatal": "1"})
        with source:
            messages = list(source)
        assert sender.wait(timeout=20) == 0
    finally:
        sender.kill()
    frames = [m for m in messages if m.kind == "video"]
    # A UDP receiver starts decoding at the first key frame it sees (one every 10 frames).
    assert 45 <= len(frames) <= 60
    assert [m.seq for m in frames] == list(range(len(frames)))
    assert messages[-1].kind == "eos" and messages[-1].seq == len(frames)
    assert frames[0].arrays[0].shape == (96, 160, 3)
