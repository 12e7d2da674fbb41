"""Every input a source read is accounted for: undecodable frames are counted, not silently gone.

Damaged copies of real media (seeded random bytes written over a part of a temporary copy) go
through the sources and through a real source -> filter -> aggregator chain; the summary must
count what the decoder rejected, or say that it cannot.
"""

from __future__ import annotations

import http.server
import io
import json
import shutil
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from stages.aggregate import Aggregator
from stages.filter import Filter
from stages.savings import format_summary
from stages.source import Source
from stages.sources.audio import AudioFileSource
from stages.sources.stream import NetworkStreamSource, ReconnectPolicy
from stages.sources.video import VideoFileSource
from tests.pipeline.test_stage import chain, join_all

from .conftest import asset
from .stream_server import write_mpegts

VIDEO = "traffic/street_two_lane.mp4"          # 905 frames, H.264
SOUNDTRACK = "audio/soundtrack/steamboat_willie_1928.mp4"   # AAC audio


def damaged_copy(source: Path, target: Path, spans: list[tuple[int, int]], seed: int = 8) -> Path:
    """`source` copied to `target` with seeded random bytes over each (offset, length) span."""
    shutil.copy(source, target)
    target.chmod(0o644)
    rng = np.random.default_rng(seed)
    with target.open("r+b") as file:
        for offset, length in spans:
            file.seek(offset)
            file.write(rng.integers(0, 256, length, dtype=np.uint8).tobytes())
    return target


def video_packets(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)


@pytest.fixture
def garbled_video(tmp_path) -> Path:
    """The issue's case: 64 KiB of garbage 1,200 KiB into the clip (dd bs=1k count=64 seek=1200)."""
    return damaged_copy(asset(VIDEO), tmp_path / "garbled.mp4", [(1200 * 1024, 64 * 1024)])


@pytest.fixture
def garbled_audio(tmp_path) -> Path:
    """The soundtrack with ten AAC packets in its middle overwritten."""
    path = asset(SOUNDTRACK)
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(audio=0) if p.size]
    return damaged_copy(path, tmp_path / "garbled_audio.mp4", packets[600:610])


def test_frames_the_decoder_rejects_keep_their_seq_as_a_gap_and_the_marker_counts_them(garbled_video):
    messages = list(VideoFileSource(garbled_video))
    frames, marker = messages[:-1], messages[-1]
    read = video_packets(garbled_video)
    undecodable = read - len(frames)
    assert undecodable > 0 and all(not m.is_eos for m in frames)
    assert marker.is_eos and marker.seq == read and marker.dropped == undecodable
    assert marker.meta["source"] == {"dropped": {"undecodable": undecodable}}
    seqs = [m.seq for m in frames]
    assert seqs == sorted(set(seqs)) and seqs[-1] < read
    assert sum(b - a - 1 for a, b in zip([-1, *seqs], seqs)) + (read - 1 - seqs[-1]) == undecodable


def test_a_clean_file_ends_with_a_plain_marker():
    messages = list(VideoFileSource(asset("traffic/highway_topdown.avi")))
    assert messages[-1].seq == len(messages) - 1 and messages[-1].dropped == 0 and messages[-1].meta == {}


def test_audio_packets_the_decoder_rejects_are_reported_as_uncounted(garbled_audio):
    messages = list(AudioFileSource(garbled_audio))
    marker = messages[-1]
    assert marker.seq == len(messages) - 1 and marker.dropped == 0
    assert marker.meta["source"] == {"uncounted": {"undecodable-packets": 10}}


def run_chain(make_url, source: Source, tmp_path: Path) -> dict:
    summary_path = tmp_path / "summary.json"
    aggregator = Aggregator(summary=str(summary_path), print_summary=False, eos_timeout_s=5.0)
    threads = chain(make_url, "inproc", [("source", source), ("filter", Filter(policy="none")),
                                         ("aggregate", aggregator)])
    join_all(threads, timeout=120)
    return json.loads(summary_path.read_text())["total"]


def test_undecodable_frames_are_dropped_with_a_reason_in_the_summary(garbled_video, make_url, tmp_path):
    """The issue's reproduction: before, 29 frames vanished and the summary said produced 876,
    dropped 0, balanced, for a 905-frame clip."""
    total = run_chain(make_url, Source(str(garbled_video), progress=False), tmp_path)
    read = video_packets(garbled_video)
    undecodable = total["dropped_at_source"]
    assert total["produced"] == read == 905 and undecodable > 0
    assert total["dropped_at_source_by_reason"] == {"undecodable": undecodable}
    # No worker in this chain: every decoded frame arrives unanswered; the rest were undecodable.
    assert total["unanswered"] == read - undecodable and total["lost"] == 0 and total["late"] == 0
    assert total["dropped"] == read and total["balanced"] and total["produced_known"]
    assert f"at source {undecodable}: undecodable {undecodable}" in format_summary(total)


def test_lost_audio_makes_the_summary_say_the_accounting_is_incomplete(garbled_audio, make_url, tmp_path):
    total = run_chain(make_url, Source(str(garbled_audio), media="audio", progress=False), tmp_path)
    assert total["uncounted"] == {"undecodable-packets": 10} and total["streams_with_uncounted"] == 1
    assert not total["balanced"]
    assert "accounting incomplete: the source lost input it could not count" in format_summary(total)


def damaged_transport_stream(frames: int = 100, seed: int = 8) -> bytes:
    """An H.264 MPEG-TS of the stream server's pattern, 20 TS packets 30 % in garbled (headers
    kept): the demuxer still reads every frame's packet, the decoder gives no picture for some."""
    buffer = io.BytesIO()
    write_mpegts(buffer, frames)
    data = bytearray(buffer.getvalue())
    rng = np.random.default_rng(seed)
    first = len(data) // 188 * 3 // 10
    for index in range(first, first + 20):
        offset = index * 188
        assert data[offset] == 0x47   # a TS packet's sync byte: keep its 4-byte header
        data[offset + 4:offset + 188] = rng.integers(0, 256, 184, dtype=np.uint8).tobytes()
    return bytes(data)


def test_a_network_stream_counts_frames_read_that_give_no_picture(tmp_path):
    body = damaged_transport_stream()
    (tmp_path / "live.ts").write_bytes(body)
    read = sum(1 for packet in av.open(str(tmp_path / "live.ts")).demux(video=0) if packet.size > 1)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/live.ts"
        messages = list(NetworkStreamSource(url, reconnect=ReconnectPolicy(attempts=0)))
    finally:
        server.shutdown()
        server.server_close()
    frames, marker = messages[:-1], messages[-1]
    assert marker.is_eos and marker.seq == read and 0 < marker.dropped == read - len(frames), (read, len(frames))
    assert marker.meta["source"] == {"dropped": {"undecodable": marker.dropped}}
    assert [m.seq for m in frames] == sorted({m.seq for m in frames}) and frames[-1].seq < read
