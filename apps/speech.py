"""Transcribe a microphone or an audio/video file window by window, and log what the filter saved.

    python apps/speech.py --source mic|mic:NAME|FILE [--window 2 --hop 1] [--filter cascade|audio-skip|early-exit|vad:silero|vad:webrtc:MODE|energy|stride:N|none|A+B]
        [--words 2] [--workers N] [--out speech.jsonl]

The sound is cut into windows (--window seconds every --hop seconds, 16 kHz mono); windows the
filter sends on are transcribed by Whisper tiny.en (faster-whisper, voice-activity filtered).
Every window gets a JSON line with its transcript and word count, and whether it passes the
InFi rule "more than --words words" (for a file also drawn, as --out with .png); at the end the
aggregator prints the savings summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import add_run_options, check_source, consumer_graph, run_graph
from models.registry import task_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="mic, mic:NAME_OR_INDEX, or an audio or video file")
    parser.add_argument("--window", type=float, default=2.0, help="audio window length in seconds (default 2)")
    parser.add_argument("--hop", type=float, default=1.0, help="seconds between window starts (default 1)")
    parser.add_argument("--words", type=int, default=2,
                        help="a window needs recognition when it yields more than this many words (default 2)")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop the microphone after this long")
    add_run_options(parser, default_out="speech.jsonl")
    args = parser.parse_args(argv)
    args.filter = task_spec(args.filter, "speech")   # --filter cascade: the shipped speech cascade
    check_source("speech", args.source, "audio")

    source = {"uri": args.source, "media": "audio", "window_s": args.window, "hop_s": args.hop,
              **({"max_seconds": args.max_seconds} if args.max_seconds else {})}
    aggregator = {"task": "speech", "words": args.words}
    document = consumer_graph("speech", args, source, "stages.speech:SpeechWorker", {}, aggregator)
    return run_graph(document, args, plot=Path(args.source).is_file())


if __name__ == "__main__":
    sys.exit(main())
