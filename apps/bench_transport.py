"""Transport and decode benchmark: how fast frames move between stages, and how fast clips decode.

What is measured, and how:

1. One hop of 640x480x3 uint8 frames with infistream's own `Sender` -> `Receiver` (PUSH/PULL):
   the sender builds a real `Message` per frame (cycling through 8 random frames), the receiver
   decodes every message (zero-copy: arrays are views of the ZeroMQ frames) and checks that the
   sequence numbers arrive in order. ipc and tcp (127.0.0.1) run sender and receiver in two
   spawned processes; inproc runs them as two threads sharing `zmq.Context.instance()`.
   The baseline is imagezmq's default REQ/REP (`ImageSender.send_image` -> `ImageHub.recv_image`
   + `send_reply`) over tcp and ipc, in the same run, with the same frames and frame count
   (imagezmq gives every sender and hub its own context, so it cannot use inproc).
   The receiver times the frames after a warm-up of `WARMUP`; the sender closes only when the
   receiver says it has everything (a multiprocessing Event), so no frame is lost at the end.
   Repetitions interleave every configuration, so machine noise hits ours and imagezmq's alike;
   ratios ours/imagezmq are taken within each repetition and their median is reported.
   Each run also reports CPU time per frame of both sides and the receiver's page faults per
   frame (process-wide, io threads included), which explain most differences between settings.
2. `--sweep`: our hop over ipc and tcp for high-water marks 1..16 and kernel buffer sizes, plus
   other knobs at the default high-water mark: 2 io threads, copying on send (pyzmq's
   `copy_threshold` above the frame size) and copying on receive; imagezmq runs alongside.
3. Decode frames/s on each clip under `<assets>/traffic/`: PyAV with threaded decode to BGR arrays,
   OpenCV `VideoCapture.read`, and infistream's `VideoFileSource` (which yields `Message`s).

    python apps/bench_transport.py [--json PATH] [--frames N] [--repeats R] [--quick] [--sweep]

With --json, writes every raw measurement, medians, ratios, machine facts and a timestamp, and
a PNG plot beside it (same stem): median frames/s per transport, ours against imagezmq.
"""

from __future__ import annotations

import argparse
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
from pipeline.transport import Endpoint, Receiver, Sender, SocketOptions

FRAME_SHAPE = (480, 640, 3)
FRAME_BYTES = int(np.prod(FRAME_SHAPE))
WARMUP = 100  # frames received before the clock starts (connection set-up, first allocations)
TIMEOUT = 60.0  # seconds any one run may take before it counts as failed
SPAWN = multiprocessing.get_context("spawn")
MEDIA = {"fps": 25.0, "width": FRAME_SHAPE[1], "height": FRAME_SHAPE[0], "pixel_format": "bgr24"}


@dataclass(frozen=True)
class Hop:
    """One configuration of a sender -> receiver hop."""

    library: str = "ours"  # "ours" (Sender/Receiver, PUSH/PULL) or "imagezmq" (REQ/REP)
    transport: str = "tcp"  # inproc | ipc | tcp
    hwm: int = SocketOptions().hwm
    buffer_bytes: int = SocketOptions().buffer_bytes
    io_threads: int = 1  # libzmq io threads per context (processes only)
    send_copy: bool = False  # copy each frame into ZeroMQ on send instead of sharing it
    recv_copy: bool = False  # receive into bytes (a copy) instead of zmq.Frame views
    keep_heap: bool = False  # glibc keeps freed frame buffers instead of unmapping them (mallopt)

    @property
    def knobs(self) -> str:
        """The settings beyond hwm and buffer size that differ from the defaults, as text."""
        return "".join([f" io={self.io_threads}" * (self.io_threads != 1), " send-copy" * self.send_copy,
                        " recv-copy" * self.recv_copy,
                        " keep-heap" * self.keep_heap])

    @property
    def name(self) -> str:
        return f"{self.library} {self.transport}{self.knobs}"

    def sweep_name(self) -> str:
        """The name with hwm and kernel buffer size spelled out (for the sweep table)."""
        if self.library == "imagezmq":
            return self.name
        return f"ours {self.transport} hwm={self.hwm} buf={self.buffer_bytes >> 20}M{self.knobs}"

    def options(self) -> SocketOptions:
        return SocketOptions(hwm=self.hwm, buffer_bytes=self.buffer_bytes)


def _frames() -> list[np.ndarray]:
    """Eight distinct random frames to cycle through (a fresh one per message would time malloc)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8) for _ in range(8)]


def _url(transport: str, tag: str) -> str:
    if transport == "inproc":
        return f"inproc://bench-{tag}"
    if transport == "ipc":
        return f"ipc://{tempfile.gettempdir()}/infistream-bench-{os.getpid()}-{tag}.sock"
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def keep_heap() -> None:
    """Make glibc keep freed large buffers for reuse instead of returning them to the kernel.

    A received frame is allocated by the io thread and freed by Python; by default glibc gives
    a freed 0.9 MB block back (munmap, or trimming the heap top) and the next frame faults its
    225 pages in again. A fixed mmap threshold and a high trim threshold keep them mapped.
    """
    import ctypes

    libc = ctypes.CDLL(None)
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks below 32 MiB come from the heap
    libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of free heap top


def _usage() -> tuple[float, int]:
    """(CPU seconds, minor page faults) of this whole process so far, all threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


# --- the two sides of a hop ---------------------------------------------------------------

def send_ours(hop: Hop, url: str, count: int, done: Any, context: zmq.Context | None = None) -> dict:
    """Send `count` frame messages with our `Sender`; close once the receiver has them all."""
    own = context is None
    context = context or zmq.Context(io_threads=hop.io_threads)
    frames = _frames()
    sender = Sender([Endpoint(url, bind=True)], options=hop.options(), context=context)
    if hop.send_copy:
        sender.socket.copy_threshold = FRAME_BYTES + 1  # pyzmq copies frames below this size
    deadline = time.monotonic() + TIMEOUT
    cpu0 = None
    for seq in range(count):
        if seq == WARMUP:
            cpu0 = _usage()[0]
        message = Message("video", "bench", seq, pts=seq / 25, media=MEDIA, arrays=(frames[seq % 8],))
        while not sender.send(message):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{hop.name}: nobody took frame {seq} within {TIMEOUT:.0f} s")
    cpu = _usage()[0] - cpu0
    # ZeroMQ loses queued messages when a sender closes while its receiver is at its HWM.
    done.wait(TIMEOUT)
    sender.close()
    if own:
        context.term()  # before exit: libzmq must not free zero-copy buffers under its io thread
    return {"sender_cpu_us": cpu / (count - WARMUP) * 1e6}


def _recv_copy(receiver: Receiver) -> Message | None:
    """Like `Receiver.recv`, but receiving bytes (a copy of every frame) instead of zmq.Frames."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            return decode(receiver.socket.recv_multipart(copy=True))
        except zmq.Again:
            continue
    return None


def receive_ours(hop: Hop, url: str, count: int, done: Any, context: zmq.Context | None = None) -> dict:
    """Receive and decode `count` messages, checking their order; return the timed rate."""
    own = context is None
    context = context or zmq.Context(io_threads=hop.io_threads)
    receiver = Receiver([Endpoint(url, bind=False)], options=hop.options(), context=context)
    for expected in range(count):
        if expected == WARMUP:
            started, (cpu0, faults0) = time.perf_counter(), _usage()
        message = _recv_copy(receiver) if hop.recv_copy else receiver.recv(timeout=TIMEOUT)
        if message is None or message.seq != expected or message.arrays[0].shape != FRAME_SHAPE:
            raise RuntimeError(f"{hop.name}: expected frame {expected}, got {message and message.seq}")
    elapsed = time.perf_counter() - started
    cpu, faults = (now - then for now, then in zip(_usage(), (cpu0, faults0)))
    done.set()
    receiver.close(linger_ms=0)
    if own:
        context.term()
    timed = count - WARMUP
    return {"fps": timed / elapsed, "receiver_cpu_us": cpu / timed * 1e6, "receiver_faults": faults / timed}


def send_imagezmq(hop: Hop, url: str, count: int, done: Any) -> dict:
    """imagezmq's REQ sender: each frame waits for the hub's reply, so none is lost at close."""
    import imagezmq

    frames = _frames()
    sender = imagezmq.ImageSender(connect_to=url)
    for seq in range(count):
        if seq == WARMUP:
            cpu0 = _usage()[0]
        sender.send_image(str(seq), frames[seq % 8])
    cpu = _usage()[0] - cpu0
    sender.close()
    return {"sender_cpu_us": cpu / (count - WARMUP) * 1e6}


def receive_imagezmq(hop: Hop, url: str, count: int, done: Any) -> dict:
    """imagezmq's REP hub: receive, check the frame's name (its header) and reply OK."""
    import imagezmq

    hub = imagezmq.ImageHub(open_port=url)
    for expected in range(count):
        if expected == WARMUP:
            started, (cpu0, faults0) = time.perf_counter(), _usage()
        name, image = hub.recv_image()
        hub.send_reply(b"OK")
        if name != str(expected) or image.shape != FRAME_SHAPE:
            raise RuntimeError(f"{hop.name}: expected frame {expected}, got {name}")
    elapsed = time.perf_counter() - started
    cpu, faults = (now - then for now, then in zip(_usage(), (cpu0, faults0)))
    hub.close()
    timed = count - WARMUP
    return {"fps": timed / elapsed, "receiver_cpu_us": cpu / timed * 1e6, "receiver_faults": faults / timed}


SIDES: dict[tuple[str, str], Callable[..., dict]] = {
    ("ours", "send"): send_ours, ("ours", "receive"): receive_ours,
    ("imagezmq", "send"): send_imagezmq, ("imagezmq", "receive"): receive_imagezmq,
}


def _process_main(role: str, hop: Hop, url: str, count: int, done: Any, pipe: Any) -> None:
    """Entry point of a spawned sender or receiver: run one side, send back its numbers."""
    if hop.keep_heap:
        keep_heap()
    if os.environ.get("BENCH_PIN"):  # TEMP experiment
        pins = os.environ["BENCH_PIN"].split(",")
        os.sched_setaffinity(0, {int(c) for c in pins[0 if role == "send" else 1].split("+")})
    try:
        pipe.send(SIDES[hop.library, role](hop, url, count, done))
    except BaseException as error:
        pipe.send({"error": f"{role}: {error!r}"})
        raise


def run_hop(hop: Hop, frames: int, tag: str) -> dict:
    """Move `frames` timed frames (after the warm-up) through `hop` once; its rate and costs."""
    count, url = frames + WARMUP, _url(hop.transport, tag)
    if hop.transport == "inproc":  # two threads; inproc needs one shared context
        done, out = threading.Event(), {}
        context = zmq.Context.instance()
        thread = threading.Thread(target=lambda: out.update(send_ours(hop, url, count, done, context)))
        thread.start()
        result = receive_ours(hop, url, count, done, context)
        thread.join(TIMEOUT)
        return {**result, **out}
    done, result = SPAWN.Event(), {}
    pipes = [SPAWN.Pipe(duplex=False) for _ in range(2)]
    processes = [SPAWN.Process(target=_process_main, args=(role, hop, url, count, done, write), daemon=True)
                 for role, (_, write) in zip(("receive", "send"), pipes)]
    for process in processes:
        process.start()
    for (read, _), process in zip(pipes, processes):
        result.update(read.recv() if read.poll(TIMEOUT + 30) else {"error": f"{hop.name}: no answer"})
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def sweep_grid() -> list[Hop]:
    """The sweep: high-water marks x kernel buffer sizes over ipc and tcp; the same high-water
    marks with glibc keeping freed buffers; other knobs at the defaults; inproc high-water marks;
    and imagezmq, all in one interleaved run."""
    hwms = (1, 2, 4, 8, 16)
    grid = [Hop(transport=t, hwm=h, buffer_bytes=b) for t in ("ipc", "tcp") for h in hwms
            for b in (0, 1 << 20, 4 << 20)]
    grid += [Hop(transport=t, hwm=h, keep_heap=True) for t in ("ipc", "tcp") for h in hwms]
    grid += [replace(Hop(transport=t), **knob) for t in ("ipc", "tcp")
             for knob in ({"io_threads": 2}, {"send_copy": True}, {"recv_copy": True})]
    grid += [Hop(transport="inproc", hwm=h) for h in (1, 2, 4, 16, 64)]
    return grid + [Hop("imagezmq", "ipc"), Hop("imagezmq", "tcp")]


def measure(hops: list[Hop], frames: int, repeats: int, desc: str) -> dict[str, list[dict]]:
    """Run every hop `repeats` times, interleaved (repetition by repetition); raw results per hop."""
    from tqdm import tqdm

    raw: dict[str, list[dict]] = {hop.sweep_name() if desc == "sweep" else hop.name: [] for hop in hops}
    with tqdm(total=repeats * len(hops), desc=desc, unit="run", file=sys.stderr, leave=False) as bar:
        for repeat in range(repeats):
            for index, (name, hop) in enumerate(zip(raw, hops)):
                raw[name].append(run_hop(hop, frames, f"{desc}-{repeat}-{index}"))
                bar.update()
    return raw


# --- decoding -------------------------------------------------------------------------------

def _count_pyav(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(frame.to_ndarray(format="bgr24").ndim == 3 for frame in container.decode(stream))


def _count_opencv(path: Path) -> int:
    import cv2

    capture, count = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def _count_source(path: Path) -> int:
    from stages.sources.video import VideoFileSource

    return sum(message.kind == "video" for message in VideoFileSource(path))


def decoders() -> tuple[dict[str, Callable[[Path], int]], str]:
    """The decoders to time, and a note on what is missing."""
    found = {"PyAV threaded": _count_pyav, "OpenCV read": _count_opencv}
    try:
        from stages.sources.video import VideoFileSource  # noqa: F401
    except ImportError as error:
        return found, f"VideoFileSource not timed ({error}); raw PyAV only"
    return {"VideoFileSource": _count_source, **found}, ""


def measure_decode(clips: list[Path], repeats: int) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """(frames, frames/s) per clip, decoder and repetition."""
    from tqdm import tqdm

    timed, _ = decoders()
    raw: dict[str, dict[str, list]] = {clip.name: {name: [] for name in timed} for clip in clips}
    with tqdm(total=repeats * len(clips), desc="decode", unit="run", file=sys.stderr, leave=False) as bar:
        for _ in range(repeats):
            for clip in clips:
                for name, count_frames in timed.items():
                    started = time.perf_counter()
                    count = count_frames(clip)
                    raw[clip.name][name].append((count, count / (time.perf_counter() - started)))
                bar.update()
    return raw


# --- reporting ------------------------------------------------------------------------------

def summarize(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def hop_summary(runs: list[dict]) -> dict:
    """Median/min/max frames/s and MB/s, and the median costs per frame, of one hop's runs."""
    fps = [run["fps"] for run in runs]
    row = {**summarize(fps), "mb_s": statistics.median(fps) * FRAME_BYTES / 1e6}
    for key in ("sender_cpu_us", "receiver_cpu_us", "receiver_faults"):
        row[key] = statistics.median(run[key] for run in runs)
    return row


def ratios(raw: dict[str, list[dict]]) -> dict[str, dict]:
    """Per-repetition ratios ours/imagezmq (and inproc/ipc) and their medians."""
    pairs = {f"{t} ours/imagezmq": (f"ours {t}", f"imagezmq {t}") for t in ("tcp", "ipc")}
    pairs["ours inproc/ipc"] = ("ours inproc", "ours ipc")
    out = {}
    for label, (top, bottom) in pairs.items():
        if top in raw and bottom in raw:
            each = [a["fps"] / b["fps"] for a, b in zip(raw[top], raw[bottom])]
            out[label] = {"median": statistics.median(each), "each": each}
    return out


def print_hops(title: str, summary: dict[str, dict]) -> None:
    print(f"\n{title}")
    print(f"{'configuration':40} {'median':>8} {'min':>8} {'max':>8} {'MB/s':>7} "
          f"{'send µs':>8} {'recv µs':>8} {'faults':>7}")
    for name, row in summary.items():
        print(f"{name:40} {row['median']:8,.0f} {row['min']:8,.0f} {row['max']:8,.0f} {row['mb_s']:7,.0f} "
              f"{row['sender_cpu_us']:8.0f} {row['receiver_cpu_us']:8.0f} {row['receiver_faults']:7.1f}")


def machine_facts() -> dict:
    import av

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version(), "av": av.__version__,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def plot(report: dict, path: Path) -> None:
    """Bars of median frames/s per transport, ours beside imagezmq, with min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for offset, library, colour in ((-0.2, "ours", "tab:blue"), (0.2, "imagezmq", "tab:grey")):
        for x, transport in enumerate(("inproc", "ipc", "tcp")):
            row = report["hop"].get(f"{library} {transport}")
            if row is None:
                continue
            whiskers = [[row["median"] - row["min"]], [row["max"] - row["median"]]]
            axis.bar(x + offset, row["median"], 0.4, yerr=whiskers, capsize=4, color=colour,
                     label=library if x == 1 else None)
            axis.text(x + offset, row["max"], f"{row['median']:,.0f}", ha="center", va="bottom", fontsize=8)
    axis.set_xticks(range(3), ["inproc (threads)", "ipc (processes)", "tcp 127.0.0.1 (processes)"])
    axis.set_yscale("log")
    axis.set_ylabel("frames/s, 640x480x3 uint8 (log scale)")
    axis.set_title(f"One hop: median of {report['repeats']} runs of {report['frames']} frames "
                   f"(whiskers: min-max), {report['machine']['cpus']} CPUs")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write every measurement here, and a PNG plot beside it")
    parser.add_argument("--frames", type=int, help="timed frames per run (default 4000; --quick 400)")
    parser.add_argument("--repeats", type=int, help="repetitions (default 5; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few frames, 2 repeats, one clip")
    parser.add_argument("--sweep", action="store_true", help="also sweep high-water marks, buffers and copies")
    args = parser.parse_args()
    frames = args.frames or (400 if args.quick else 4000)
    repeats = args.repeats or (2 if args.quick else 5)
    report: dict[str, Any] = {"frames": frames, "warmup": WARMUP, "repeats": repeats,
                              "frame_shape": FRAME_SHAPE, "defaults": asdict(Hop()), "machine": machine_facts()}

    hops = [Hop(transport="inproc"), Hop(transport="ipc"), Hop("imagezmq", "ipc"),
            Hop(transport="tcp"), Hop("imagezmq", "tcp")]
    raw = measure(hops, frames, repeats, "one hop")
    report["hop_raw"], report["ratios"] = raw, ratios(raw)
    report["hop"] = {name: hop_summary(runs) for name, runs in raw.items()}
    print_hops(f"One hop, {FRAME_SHAPE} uint8, {frames} frames x {repeats} runs, defaults hwm={Hop().hwm} "
               f"buffer={Hop().buffer_bytes} (frames/s; CPU µs and receiver page faults per frame)",
               report["hop"])
    for label, ratio in report["ratios"].items():
        each = ", ".join(f"{r:.2f}" for r in ratio["each"])
        print(f"  {label:22} {ratio['median']:5.2f}x median  (each run: {each})")

    if args.sweep:
        sweep_raw = measure(sweep_grid(), frames, repeats, "sweep")
        report["sweep_raw"] = sweep_raw
        report["sweep"] = {name: hop_summary(runs) for name, runs in sweep_raw.items()}
        print_hops("Sweep (frames/s; CPU µs and receiver page faults per frame)", report["sweep"])

    clips_dir = assets_dir() / "traffic"
    clips = sorted(p for p in clips_dir.glob("*") if p.suffix in (".mp4", ".avi", ".mkv", ".mov"))
    if not clips:
        report["decode_skipped"] = f"no clips under {clips_dir} (set {ENV_VAR})"
        print(f"\nDecode benchmark skipped: {report['decode_skipped']}")
    else:
        timed, note = decoders()
        decode_raw = measure_decode(clips[:1] if args.quick else clips, repeats)
        report["decode_raw"], report["decode_note"], report["decode"] = decode_raw, note, {}
        print(f"\nDecode to BGR arrays, {repeats} runs (frames/s median [min-max]){'; ' + note if note else ''}")
        for clip, per_decoder in decode_raw.items():
            counts = {count for runs in per_decoder.values() for count, _ in runs}
            report["decode"][clip] = {"frames": sorted(counts), "frames_match": len(counts) == 1, **{
                name: summarize([rate for _, rate in runs]) for name, runs in per_decoder.items()}}
            cells = "  ".join(f"{name} {row['median']:6,.0f} [{row['min']:,.0f}-{row['max']:,.0f}]"
                              for name, row in report["decode"][clip].items() if name in timed)
            match = "" if len(counts) == 1 else "  FRAME COUNTS DIFFER"
            print(f"  {clip:26} {'/'.join(map(str, sorted(counts))):>5} frames  {cells}{match}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        plot(report, args.json.with_suffix(".png"))
        print(f"\nwrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
