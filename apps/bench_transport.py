"""Transport and decode benchmark: how fast frames move between stages, and how fast clips decode.

1. One hop of 640x480x3 uint8 frames through our `Sender` -> `Receiver` (PUSH/PULL): a real
   `Message` per frame (8 random frames in turn); the receiver decodes each one (arrays stay
   views of the ZeroMQ frames) and checks the sequence. ipc and tcp (127.0.0.1) run the sides
   as two spawned processes, inproc (the in-process channel) as two threads, `INPROC_SCALE`
   times as many frames. Baseline in the same run: imagezmq's default REQ/REP (`send_image`,
   `recv_image` + `send_reply`) over ipc and tcp, same frames (imagezmq's ends each have their
   own context, so no inproc). Rows marked sndbuf=OS keep the kernel's default send buffer on
   the ipc connection instead of `SocketOptions.ipc_send_buffer_bytes`; send-copy, pyzmq copies
   frames on send instead of lending them (ipc senders always copy). Our processes keep freed
   buffers (`pipeline.transport.keep_freed_buffers`, called by every ipc/tcp socket), imagezmq's
   run as they are. The receiver times the frames after `WARMUP`; our sender closes only once the receiver signals it has them all. Runs are
   interleaved so that noise hits every configuration alike, and ratios ours/imagezmq are taken
   within each repetition. CPU time and page faults per frame of each side (whole processes)
   explain most differences.
2. `--sweep`: ipc and tcp with high-water marks 1..16 x kernel send buffer sizes, 2 io threads,
   copies on send or receive, inproc high-water marks, and imagezmq.
3. Decode frames/s of each clip in `<assets>/traffic/`: our `VideoFileSource`, PyAV decoding with
   threads to BGR arrays, and OpenCV `VideoCapture.read`.

    python apps/bench_transport.py [--json PATH] [--frames N] [--repeats R] [--quick] [--sweep]

--json PATH writes every raw measurement, medians, ratios, machine facts and a timestamp, and a
PNG beside it (same stem): median frames/s per transport, ours against imagezmq.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

from pipeline.assets import ENV_VAR, assets_dir
from pipeline.message import Message, decode
from pipeline.transport import Endpoint, Receiver, Sender, SocketOptions, free_tcp_port

FRAME_SHAPE = (480, 640, 3)
FRAME_BYTES = int(np.prod(FRAME_SHAPE))
WARMUP = 100  # frames received before the clock starts (connecting, first allocations)
INPROC_SCALE = 5  # inproc runs move this many times more frames, or a run would last ~0.1 s
TIMEOUT = 60.0  # seconds one run may take before it counts as failed
SPAWN = multiprocessing.get_context("spawn")
MEDIA = {"fps": 25.0, "width": FRAME_SHAPE[1], "height": FRAME_SHAPE[0], "pixel_format": "bgr24"}


@dataclass(frozen=True)
class Hop:
    """One configuration of a sender -> receiver hop."""

    library: str = "ours"  # "ours" (Sender/Receiver, PUSH/PULL) or "imagezmq" (REQ/REP)
    transport: str = "tcp"  # inproc | ipc | tcp
    hwm: int = SocketOptions().hwm
    buffer_bytes: int = SocketOptions().buffer_bytes
    ipc_send_buffer_bytes: int = SocketOptions().ipc_send_buffer_bytes  # 0: the OS default
    io_threads: int = 1  # libzmq io threads per context (processes only)
    send_copy: bool = False  # pyzmq copies each frame into ZeroMQ instead of lending it
    recv_copy: bool = False  # receive bytes (a copy) instead of zmq.Frame views

    def label(self, full: bool = False) -> str:
        """Library and transport, then the settings that differ from the defaults (all if `full`)."""
        if self.library == "imagezmq":
            return f"imagezmq {self.transport}"
        text = f"ours {self.transport}"
        if full or self.hwm != Hop.hwm:
            text += f" hwm={self.hwm}"
        if full or self.buffer_bytes != Hop.buffer_bytes:
            text += f" buf={self.buffer_bytes >> 20}M"
        if self.transport == "ipc" and (full or self.ipc_send_buffer_bytes != Hop.ipc_send_buffer_bytes):
            text += f" sndbuf={self.ipc_send_buffer_bytes >> 20}M" if self.ipc_send_buffer_bytes else " sndbuf=OS"
        return text + "".join([f" io={self.io_threads}" * (self.io_threads != 1), " send-copy" * self.send_copy,
                               " recv-copy" * self.recv_copy])

    def options(self) -> SocketOptions:
        return SocketOptions(hwm=self.hwm, buffer_bytes=self.buffer_bytes,
                             ipc_send_buffer_bytes=self.ipc_send_buffer_bytes)


def _frames() -> list[np.ndarray]:
    """Eight distinct random frames to cycle through (a fresh one per message would time malloc)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8) for _ in range(8)]


def _url(transport: str, tag: str) -> str:
    if transport == "inproc":
        return f"inproc://bench-{tag}"
    if transport == "ipc":
        return f"ipc://{tempfile.gettempdir()}/infistream-bench-{os.getpid()}-{tag}.sock"
    return f"tcp://127.0.0.1:{free_tcp_port()}"


def _usage() -> tuple[float, int]:
    """(CPU seconds, minor page faults) of this whole process so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def _timed(count: int, step: Callable[[int], None], side: str) -> dict:
    """Call `step(i)` for i in 0..count-1, timing the calls after the warm-up."""
    for index in range(count):
        if index == WARMUP:
            started, (cpu0, faults0) = time.perf_counter(), _usage()
        step(index)
    elapsed, (cpu, faults), timed = time.perf_counter() - started, _usage(), count - WARMUP
    result = {f"{side}_cpu_us": (cpu - cpu0) / timed * 1e6, f"{side}_faults": (faults - faults0) / timed}
    return {**result, "fps": timed / elapsed} if side == "receiver" else result


# --- the two sides of a hop ---------------------------------------------------------------

def send_ours(hop: Hop, url: str, count: int, done: Any, context: zmq.Context | None = None) -> dict:
    """Send `count` frame messages with our `Sender`; close once the receiver has them all."""
    own = context is None
    context = context or zmq.Context(io_threads=hop.io_threads)
    sender = Sender([Endpoint(url, bind=True)], options=hop.options(), context=context)
    if hop.send_copy:
        sender.socket.copy_threshold = FRAME_BYTES + 1  # pyzmq copies frames smaller than this
    frames, deadline = _frames(), time.monotonic() + TIMEOUT

    def step(seq: int) -> None:
        message = Message("video", "bench", seq, pts=seq / 25, media=MEDIA, arrays=(frames[seq % 8],))
        while not sender.send(message):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{hop.label()}: nobody took frame {seq} in {TIMEOUT:.0f} s")

    result = _timed(count, step, "sender")
    done.wait(TIMEOUT)  # a sender closing while its receiver is at its HWM loses what is queued
    sender.close()
    if own:
        context.term()  # before exiting, or libzmq may free lent buffers under its io thread
    return result


def receive_ours(hop: Hop, url: str, count: int, done: Any, context: zmq.Context | None = None) -> dict:
    """Receive and decode `count` messages, checking their order, then tell the sender."""
    own = context is None
    context = context or zmq.Context(io_threads=hop.io_threads)
    receiver = Receiver([Endpoint(url, bind=False)], options=hop.options(), context=context)

    def next_message() -> Message | None:
        if not hop.recv_copy:
            return receiver.recv(timeout=TIMEOUT)
        for _ in range(int(TIMEOUT / 0.2)):  # bytes instead of zmq.Frame views: a copy per frame
            with contextlib.suppress(zmq.Again):
                return decode(receiver.socket.recv_multipart(copy=True))
        return None

    def step(expected: int) -> None:
        message = next_message()
        if message is None or message.seq != expected or message.arrays[0].shape != FRAME_SHAPE:
            raise RuntimeError(f"{hop.label()}: expected frame {expected}, got {message and message.seq}")

    result = _timed(count, step, "receiver")
    done.set()
    receiver.close(linger_ms=0)
    if own:
        context.term()
    return result


def send_imagezmq(hop: Hop, url: str, count: int, done: Any) -> dict:
    """imagezmq's REQ sender: every frame waits for the hub's reply, so none is lost at close."""
    import imagezmq

    frames, sender = _frames(), imagezmq.ImageSender(connect_to=url)
    result = _timed(count, lambda seq: sender.send_image(str(seq), frames[seq % 8]), "sender")
    sender.close()
    return result


def receive_imagezmq(hop: Hop, url: str, count: int, done: Any) -> dict:
    """imagezmq's REP hub: receive, check the frame's name (its header) and reply OK."""
    import imagezmq

    hub = imagezmq.ImageHub(open_port=url)

    def step(expected: int) -> None:
        name, image = hub.recv_image()
        hub.send_reply(b"OK")
        if name != str(expected) or image.shape != FRAME_SHAPE:
            raise RuntimeError(f"{hop.label()}: expected frame {expected}, got {name}")

    result = _timed(count, step, "receiver")
    hub.close()
    return result


SIDES: dict[tuple[str, str], Callable[..., dict]] = {
    ("ours", "send"): send_ours, ("ours", "receive"): receive_ours,
    ("imagezmq", "send"): send_imagezmq, ("imagezmq", "receive"): receive_imagezmq,
}


def _process_main(role: str, hop: Hop, url: str, count: int, done: Any, pipe: Any) -> None:
    """Entry point of a spawned sender or receiver: run one side, send back its numbers."""
    try:
        pipe.send(SIDES[hop.library, role](hop, url, count, done))
    except BaseException as error:
        pipe.send({"error": f"{hop.label()} {role}: {error!r}"})
        raise


def run_hop(hop: Hop, frames: int, tag: str) -> dict:
    """Move `frames` timed frames (after the warm-up) through `hop` once; its rate and costs."""
    count, url = frames + WARMUP, _url(hop.transport, tag)
    if hop.transport == "inproc":  # two threads (a ZeroMQ inproc pair needs one shared context)
        count = frames * INPROC_SCALE + WARMUP
        done, sent = threading.Event(), {}
        context = zmq.Context.instance()
        thread = threading.Thread(target=lambda: sent.update(send_ours(hop, url, count, done, context)))
        thread.start()
        result = receive_ours(hop, url, count, done, context)
        thread.join(TIMEOUT)
        return {**result, **sent, "frames": count - WARMUP}
    done, result = SPAWN.Event(), {}
    pipes = [SPAWN.Pipe(duplex=False) for _ in range(2)]
    processes = [SPAWN.Process(target=_process_main, args=(role, hop, url, count, done, write), daemon=True)
                 for role, (_, write) in zip(("receive", "send"), pipes)]
    for process in processes:
        process.start()
    for (read, _), process in zip(pipes, processes):
        result.update(read.recv() if read.poll(TIMEOUT + 30) else {"error": f"{hop.label()}: no answer"})
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()
    if hop.transport == "ipc":  # libzmq leaves the socket file behind unless unbound first
        Path(url[len("ipc://"):]).unlink(missing_ok=True)
    if "error" in result:
        raise RuntimeError(result["error"])
    return {**result, "frames": frames}


def sweep_grid() -> list[Hop]:
    """The `--sweep` configurations (see the module docstring)."""
    hwms = (1, 2, 4, 8, 16)
    grid = [Hop(transport="ipc", hwm=h, ipc_send_buffer_bytes=b) for h in hwms for b in (0, 1 << 20, 4 << 20)]
    grid += [Hop(transport="tcp", hwm=h, buffer_bytes=b) for h in hwms for b in (0, 1 << 20, 4 << 20)]
    grid += [replace(Hop(transport=t), **knob) for t in ("ipc", "tcp")
             for knob in ({"io_threads": 2}, {"send_copy": True}, {"recv_copy": True})]
    grid += [Hop(transport="inproc", hwm=h) for h in (1, 2, 4, 16, 64)]
    return grid + [Hop("imagezmq", "ipc"), Hop("imagezmq", "tcp")]


def measure(hops: list[Hop], frames: int, repeats: int, desc: str, full: bool = False) -> dict[str, list[dict]]:
    """Run every hop `repeats` times, interleaved repetition by repetition; raw results per label."""
    from tqdm import tqdm

    raw: dict[str, list[dict]] = {hop.label(full): [] for hop in hops}
    with tqdm(total=repeats * len(hops), desc=desc, unit="run", file=sys.stderr, leave=False) as bar:
        for repeat in range(repeats):
            for index, (label, hop) in enumerate(zip(raw, hops)):
                raw[label].append(run_hop(hop, frames, f"{desc.replace(' ', '')}-{repeat}-{index}"))
                bar.update()
    return raw


# --- decoding -------------------------------------------------------------------------------

def count_frames(decoder: str, path: Path) -> int:
    """Decode every video frame of `path` into a BGR array with `decoder`; how many there were."""
    if decoder == "VideoFileSource":  # infistream's own source: PyAV, threaded, yields Messages
        from stages.sources.video import VideoFileSource

        return sum(message.kind == "video" for message in VideoFileSource(path))
    if decoder == "PyAV threaded":
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            return sum(frame.to_ndarray(format="bgr24").ndim == 3 for frame in container.decode(stream))
    import cv2

    capture, count = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def measure_decode(clips: list[Path], repeats: int) -> tuple[dict[str, dict[str, list]], str]:
    """(frames, frames/s) per clip, decoder and repetition; and a note on what was not timed."""
    from tqdm import tqdm

    decoders, note = ["VideoFileSource", "PyAV threaded", "OpenCV read"], ""
    try:
        from stages.sources.video import VideoFileSource  # noqa: F401
    except ImportError as error:
        decoders, note = decoders[1:], f"VideoFileSource not timed ({error}): raw PyAV only"
    raw: dict[str, dict[str, list]] = {clip.name: {name: [] for name in decoders} for clip in clips}
    for _ in tqdm(range(repeats), desc="decode", unit="round", file=sys.stderr, leave=False):
        for clip in clips:
            for name in decoders:
                started = time.perf_counter()
                count = count_frames(name, clip)
                raw[clip.name][name].append((count, count / (time.perf_counter() - started)))
    return raw, note


# --- reporting ------------------------------------------------------------------------------

def summarize(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


COSTS = ("sender_cpu_us", "receiver_cpu_us", "sender_faults", "receiver_faults")


def hop_summary(runs: list[dict]) -> dict:
    """Median/min/max frames/s, MB/s at the median, and the median costs per frame."""
    row = summarize([run["fps"] for run in runs])
    costs = {key: statistics.median(run[key] for run in runs) for key in COSTS}
    return {**row, "mb_s": row["median"] * FRAME_BYTES / 1e6, **costs}


def ratios(raw: dict[str, list[dict]]) -> dict[str, dict]:
    """Ratios of frames/s within each repetition (ours/imagezmq, inproc/ipc) and their medians."""
    pairs = {f"{t} ours/imagezmq": (f"ours {t}", f"imagezmq {t}") for t in ("tcp", "ipc")}
    pairs["inproc/ipc ours"] = ("ours inproc", "ours ipc")
    pairs["ipc ours sndbuf 4M/OS"] = ("ours ipc", "ours ipc sndbuf=OS")
    out = {}
    for label, (top, bottom) in pairs.items():
        if top in raw and bottom in raw:
            each = [a["fps"] / b["fps"] for a, b in zip(raw[top], raw[bottom])]
            out[label] = {"median": statistics.median(each), "each": each}
    return out


def print_hops(title: str, summary: dict[str, dict]) -> None:
    print(f"\n{title}\n{'configuration':38} {'median':>7} {'min':>7} {'max':>7} {'MB/s':>6} "
          f"{'cpu µs send':>11} {'recv':>4} {'faults send':>11} {'recv':>5}")
    for name, row in summary.items():
        print(f"{name:38} {row['median']:7,.0f} {row['min']:7,.0f} {row['max']:7,.0f} {row['mb_s']:6,.0f} "
              f"{row['sender_cpu_us']:11.0f} {row['receiver_cpu_us']:4.0f} {row['sender_faults']:11.1f} "
              f"{row['receiver_faults']:5.1f}")


def machine_facts() -> dict:
    import av

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version(), "av": av.__version__,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_at_start": os.getloadavg()}


def plot(report: dict, path: Path) -> None:
    """Bars of median frames/s per transport, ours (with the proposed settings) and imagezmq's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    series = (("ours", "", "tab:blue"), ("ours", " sndbuf=OS", "tab:cyan"), ("imagezmq", "", "tab:grey"))
    for offset, (library, knob, colour) in zip((-0.25, 0.0, 0.25), series):
        for x, transport in enumerate(("inproc", "ipc", "tcp")):
            row = report["hop"].get(f"{library} {transport}{knob}")
            if row is not None:
                whiskers = [[row["median"] - row["min"]], [row["max"] - row["median"]]]
                axis.bar(x + offset, row["median"], 0.25, yerr=whiskers, capsize=3, color=colour,
                         label=f"{library}{knob}" if transport == "ipc" else None)
                axis.text(x + offset, row["max"], f"{row['median']:,.0f}", ha="center", va="bottom", fontsize=7)
    # Issue 2's ipc target, and inproc's (10x the ipc median): a log scale shows both at once.
    ipc = report["hop"].get("ours ipc")
    axis.hlines(5000, 0.6, 1.4, colors="tab:red", linestyles="dashed", label="targets: ipc 5,000; inproc 10x ipc")
    if ipc is not None:
        axis.hlines(10 * ipc["median"], -0.4, 0.4, colors="tab:red", linestyles="dashed")
    axis.set_yscale("log")
    axis.set_xticks(range(3), ["inproc (threads)", "ipc (processes)", "tcp 127.0.0.1 (processes)"])
    axis.set_ylabel("frames/s, 640x480x3 uint8 (log scale)")
    axis.set_title(f"One hop: median of {report['repeats']} runs of {report['frames']} frames "
                   f"(inproc x{INPROC_SCALE}; whiskers: min-max), {report['machine']['cpus']} CPUs", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_decode(report: dict, quick: bool, repeats: int) -> None:
    """Time every decoder on the shared traffic clips (one clip if `quick`) and print a table."""
    clips_dir = assets_dir() / "traffic"
    clips = sorted(p for p in clips_dir.glob("*") if p.suffix in (".mp4", ".avi", ".mkv", ".mov"))
    if not clips:
        report["decode_skipped"] = f"no clips under {clips_dir} (set {ENV_VAR} to the shared assets)"
        print(f"\nDecode benchmark skipped: {report['decode_skipped']}")
        return
    raw, note = measure_decode(clips[:1] if quick else clips, repeats)
    report.update(decode_raw=raw, decode_note=note, decode={})
    print(f"\nDecode to BGR arrays, {repeats} runs (frames/s median [min-max]){'; ' + note if note else ''}")
    for clip, per_decoder in raw.items():
        counts = sorted({count for runs in per_decoder.values() for count, _ in runs})
        rows = {name: summarize([rate for _, rate in runs]) for name, runs in per_decoder.items()}
        report["decode"][clip] = {"frames": counts, "frames_match": len(counts) == 1, **rows}
        cells = "  ".join(f"{name} {row['median']:5,.0f} [{row['min']:,.0f}-{row['max']:,.0f}]"
                          for name, row in rows.items())
        warning = "" if len(counts) == 1 else "  FRAME COUNTS DIFFER"
        print(f"  {clip:24} {'/'.join(map(str, counts)):>4} frames  {cells}{warning}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write every measurement here, and a PNG plot beside it")
    parser.add_argument("--frames", type=int, help="timed frames per run (default 4000; --quick 400)")
    parser.add_argument("--repeats", type=int, help="repetitions (default 5; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few frames, 2 repeats, one clip")
    parser.add_argument("--sweep", action="store_true", help="also sweep high-water marks, buffers and copies")
    parser.add_argument("--transports", default="inproc,ipc,tcp",
                        help="comma-separated transports of the one-hop table (default all three), for a "
                             "focused paired comparison with more --repeats")
    args = parser.parse_args()
    frames = args.frames or (400 if args.quick else 4000)
    repeats = args.repeats or (2 if args.quick else 5)
    if frames < 1 or repeats < 1:
        parser.error("--frames and --repeats must be at least 1")
    report: dict[str, Any] = {"frames": frames, "warmup": WARMUP, "repeats": repeats, "frame_shape": FRAME_SHAPE,
                              "socket_defaults": asdict(Hop()), "machine": machine_facts()}

    # Sender copies frames over ipc by itself (pipeline/transport.py), so no send-copy row here.
    transports = set(args.transports.split(","))
    if not transports <= {"inproc", "ipc", "tcp"}:
        parser.error(f"--transports takes inproc, ipc and tcp, got {args.transports!r}")
    hops = [Hop(transport="inproc"), Hop(transport="ipc"), Hop(transport="ipc", ipc_send_buffer_bytes=0),
            Hop("imagezmq", "ipc"), Hop(transport="tcp"), Hop("imagezmq", "tcp")]
    hops = [hop for hop in hops if hop.transport in transports]
    raw = measure(hops, frames, repeats, "one hop")
    report.update(hop_raw=raw, ratios=ratios(raw), hop={name: hop_summary(runs) for name, runs in raw.items()})
    print_hops(f"One hop, 640x480x3 uint8, {frames} frames x {repeats} runs, hwm={Hop.hwm} "
               f"buffer_bytes={Hop.buffer_bytes}: frames/s, and CPU µs and page faults per frame of each\n"
               f"side (inproc: of the one process)", report["hop"])
    for label, ratio in report["ratios"].items():
        print(f"  {label:38} {ratio['median']:5.2f}x  (each run: {', '.join(f'{r:.2f}' for r in ratio['each'])})")

    if args.sweep:
        grid = sweep_grid()
        sweep_raw = measure(grid, frames, repeats, "sweep", full=True)
        report.update(sweep_raw=sweep_raw, sweep={label: {**hop_summary(runs), "hop": asdict(hop)}
                                                  for (label, runs), hop in zip(sweep_raw.items(), grid)})
        print_hops("Sweep: frames/s, and CPU µs and page faults per frame of each side", report["sweep"])

    run_decode(report, args.quick, repeats)
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        plot(report, args.json.with_suffix(".png"))
        print(f"\nwrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
