"""Run vehicle counting or speech recognition over recorded clips in the Hollywood2 layout.

    python apps/hollywood2.py --root DIR [--list list_test.txt] --task speech|vehicles
        [--filter cascade|audio-skip|early-exit|vad:silero|vad:webrtc:MODE|energy|stride:N|none|A+B] [--workers N] [--out hollywood2.jsonl]

DIR holds ``AVIClips/<clip>.avi`` (and optionally ``ClipSets/``); --list names the clips to
read (a dataset ``ClipSets/<Class>_test.txt`` file or a plain list of clip ids), else every
clip is read. The task picks each clip's picture (vehicles) or sound (speech). A progress bar
counts clips as their results are complete, with one line of results per clip; the savings
summary over all clips comes at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from common import add_run_options, consumer_graph, run_graph
from models.registry import task_spec
from stages.sources.hollywood2 import CLIPS_DIR, Hollywood2Source


class ClipProgress:
    """Follows the aggregator's JSON Lines file: a bar over clips, a line per finished clip."""

    def __init__(self, path: Path, clips: int, task: str):
        self.path, self.task = path, task
        self.bar = tqdm(total=clips, unit="clip", desc="clips", file=sys.stderr, dynamic_ncols=True)
        self._file = None
        self._partial = ""

    def __call__(self) -> None:
        if self._file is None:
            if not self.path.exists():
                return
            self._file = self.path.open("r", encoding="utf-8")
        chunk = self._file.read()
        if not chunk:
            return
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()          # a line still being written
        for line in lines:
            record = json.loads(line)
            if record.get("end"):
                self.bar.write(self.describe(record["stream"], record["summary"]), file=sys.stdout)
                self.bar.update(1)

    def describe(self, stream: str, summary: dict) -> str:
        clip = stream.rsplit("/", 1)[0]
        decided = f"inferred {summary['inferred']}/{summary['produced']}"
        if self.task == "speech":
            return (f"{clip}: {summary.get('windows', 0)} windows, {summary.get('windows_needing_recognition', 0)} "
                    f"with speech (> N words), {summary.get('words', 0)} words; {decided}")
        crossing = f", {summary['crossings']} crossings" if "crossings" in summary else ""
        return (f"{clip}: {summary.get('frames', 0)} frames, {summary.get('frames_with_vehicles', 0)} with vehicles"
                f"{crossing}; {decided}")

    def close(self) -> None:
        self.bar.close()
        if self._file is not None:
            self._file.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help=f"the dataset folder (holding {CLIPS_DIR}/)")
    parser.add_argument("--list", default=None, help="clip list file (as given, under ROOT, or in ROOT/ClipSets)")
    parser.add_argument("--task", choices=("speech", "vehicles"), required=True)
    parser.add_argument("--weights", default="", help="YOLO weights for --task vehicles (default: the shared file)")
    parser.add_argument("--line", default="", help="vehicles: counting line x1,y1,x2,y2")
    parser.add_argument("--words", type=int, default=2, help="speech: the 'more than N words' rule's N")
    parser.add_argument("--window", type=float, default=2.0, help="speech: window length in seconds (default 2)")
    parser.add_argument("--hop", type=float, default=1.0, help="speech: seconds between windows (default 1)")
    add_run_options(parser, default_out="hollywood2.jsonl")
    args = parser.parse_args(argv)
    args.filter = task_spec(args.filter, args.task)   # --filter cascade: the shipped cascade of the task

    clips = Hollywood2Source(args.root, args.list)
    try:
        clips.open()   # checks the layout and the list now, with a clear message
        count = len(clips.clips)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    finally:
        clips.close()
    uri = f"hollywood2:{args.root}" + (f":{args.list}" if args.list else "")
    media = "audio" if args.task == "speech" else "video"
    source = {"uri": uri, "media": media, "window_s": args.window, "hop_s": args.hop, "progress": False}
    if args.task == "speech":
        worker, worker_params, aggregator = "stages.speech:SpeechWorker", {}, {"task": "speech", "words": args.words}
    else:
        worker, worker_params = "stages.detect:YoloWorker", {"weights": args.weights}
        aggregator = {"task": "vehicles", "line": args.line}
    document = consumer_graph("hollywood2", args, source, worker, worker_params, aggregator)
    Path(args.out).unlink(missing_ok=True)   # the progress follows this file: never a stale one
    progress = ClipProgress(Path(args.out), count, args.task)
    try:
        return run_graph(document, args, watch=progress)
    finally:
        progress.close()


if __name__ == "__main__":
    sys.exit(main())
