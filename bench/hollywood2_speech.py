"""The speech filter on Hollywood2-layout clips: windows skipped, words lost, recognizer time saved.

    python bench/hollywood2_speech.py [--filter cascade|SPEC] [--runs 1] [--json bench/results/filters_speech_hollywood2.json]

Builds a Hollywood2-layout folder under .cache/hollywood2-speech (``AVIClips/<id>.avi`` links to
the shared Hollywood2 clip and the three ``speech_video/`` clips: the source opens them by
content, so an .mp4 behind an .avi name is fine), then runs ``apps/hollywood2.py --task speech``
with ``--filter none`` and with the filter (default ``cascade``: the app reads the shipped speech
spec for 0.95 from models/shipped/speech/cascade.json), alternately, and compares them per clip:

- windows skipped (decided skip or exit) of the windows both runs answered;
- word error rate of the filtered transcript against the unfiltered one (each clip's window
  texts joined in window order, the speech worker's own normalisation and WER);
- recognizer ms spent in each run (the aggregator's summary), the filter's ms, and wall time.

These clips hold speech almost everywhere (film dialogue, a talking head), so they say what the
filter costs in words where there is much to lose; the test split's `real` subset is the same
four recordings cut into mixture windows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAYOUT = ROOT / ".cache" / "hollywood2-speech"
SHIPPED_CASCADE = ROOT / "models" / "shipped" / "speech" / "cascade.json"


def build_layout(assets: Path, root: Path = LAYOUT) -> list[str]:
    """AVIClips/<id>.avi links to the shared clips; returns the clip ids."""
    sources = sorted((assets / "hollywood2").glob("*.avi")) + sorted((assets / "speech_video").glob("*.mp4"))
    if not sources:
        raise SystemExit(f"hollywood2_speech: no clips under {assets}/hollywood2 or {assets}/speech_video")
    clips = root / "AVIClips"
    clips.mkdir(parents=True, exist_ok=True)
    ids = []
    for source in sources:
        link = clips / f"{source.stem}.avi"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
        ids.append(source.stem)
    return ids


def shipped_spec(target: str = "0.95") -> str:
    document = json.loads(SHIPPED_CASCADE.read_text())
    return document["targets"][target]


def run_app(spec: str, out: Path, summary: Path) -> dict[str, Any]:
    command = [sys.executable, str(ROOT / "apps" / "hollywood2.py"), "--root", str(LAYOUT), "--task", "speech",
               "--filter", spec, "--out", str(out), "--summary", str(summary)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    windows: dict[str, dict[int, dict[str, Any]]] = {}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        if "seq" in record and "stream" in record and "decision" in record:
            windows.setdefault(record["stream"].rsplit("/", 1)[0], {})[record["seq"]] = record
    return {"wall_s": round(time.perf_counter() - started, 1), "windows": windows,
            "summary": json.loads(summary.read_text())}


def compare(none: dict[str, Any], filtered: dict[str, Any]) -> dict[str, Any]:
    from stages.speech import word_error_rate, word_errors
    clips: dict[str, Any] = {}
    totals = {"windows": 0, "skipped": 0, "errors": 0, "reference_words": 0}
    for clip in sorted(set(none["windows"]) | set(filtered["windows"])):
        a, b = none["windows"].get(clip, {}), filtered["windows"].get(clip, {})
        common = sorted(set(a) & set(b))
        reference = " ".join(a[s].get("text", "") for s in common)
        hypothesis = " ".join(b[s].get("text", "") for s in common)
        skipped = sum(b[s]["decision"] in ("skip", "exit") for s in common)
        errors, words = word_errors(reference, hypothesis)
        streams_a = none["summary"]["streams"].get(f"{clip}/audio", {})
        streams_b = filtered["summary"]["streams"].get(f"{clip}/audio", {})
        clips[clip] = {"windows_both": len(common), "windows_none": len(a), "windows_filtered": len(b),
                       "skipped": skipped, "skip_rate": round(skipped / len(common), 3) if common else None,
                       "needs_recognition_unfiltered": sum(bool(a[s].get("needs_recognition")) for s in common),
                       "skipped_needing": sum(b[s]["decision"] in ("skip", "exit") and bool(a[s].get("needs_recognition"))
                                              for s in common),
                       "reference_words": words, "word_errors": errors,
                       "wer": round(word_error_rate(reference, hypothesis), 4) if words else None,
                       "recognizer_ms_none": streams_a.get("model_ms_spent"),
                       "recognizer_ms_filtered": streams_b.get("model_ms_spent"),
                       "filter_ms": streams_b.get("filter_ms_spent"),
                       "transcript_none": reference, "transcript_filtered": hypothesis}
        totals["windows"] += len(common)
        totals["skipped"] += skipped
        totals["errors"] += errors
        totals["reference_words"] += words
    spent_a, spent_b = none["summary"]["total"]["model_ms_spent"], filtered["summary"]["total"]["model_ms_spent"]
    filter_ms = filtered["summary"]["total"].get("filter_ms_spent", 0.0)
    return {"clips": clips,
            "total": {**totals, "skip_rate": round(totals["skipped"] / totals["windows"], 3) if totals["windows"] else None,
                      "wer": round(totals["errors"] / totals["reference_words"], 4) if totals["reference_words"] else None,
                      "recognizer_ms_none": spent_a, "recognizer_ms_filtered": spent_b, "filter_ms": filter_ms,
                      "time_saved": round((spent_a - spent_b - filter_ms) / spent_a, 4) if spent_a else None,
                      "wall_s_none": none["wall_s"], "wall_s_filtered": filtered["wall_s"],
                      "dropped_none": none["summary"]["total"].get("dropped"),
                      "dropped_filtered": filtered["summary"]["total"].get("dropped")}}


def main(argv: list[str] | None = None) -> int:
    from pipeline.assets import assets_dir
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter", default="cascade", help="the filter (default cascade: the shipped speech spec for 0.95)")
    parser.add_argument("--runs", type=int, default=1, help="pairs of runs (none, filtered), alternately")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "filters_speech_hollywood2.json")
    args = parser.parse_args(argv)
    ids = build_layout(assets_dir())
    spec = args.filter
    work = ROOT / ".cache" / "hollywood2-speech" / "runs"
    work.mkdir(parents=True, exist_ok=True)
    pairs = []
    for run in range(args.runs):
        none = run_app("none", work / f"none-{run}.jsonl", work / f"none-{run}.json")
        filtered = run_app(spec, work / f"filtered-{run}.jsonl", work / f"filtered-{run}.json")
        pairs.append(compare(none, filtered))
        total = pairs[-1]["total"]
        print(f"run {run + 1}: skipped {total['skipped']}/{total['windows']} windows, WER {total['wer']}, "
              f"recognizer {total['recognizer_ms_none'] / 1000:.1f} s -> {total['recognizer_ms_filtered'] / 1000:.1f} s "
              f"(time saved {total['time_saved']}), wall {total['wall_s_none']} s -> {total['wall_s_filtered']} s",
              file=sys.stderr)
    document = {"filter": spec, "shipped_spec": shipped_spec() if spec.startswith("cascade") else None, "clips": ids, "layout": str(LAYOUT.relative_to(ROOT)), "runs": pairs,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "note": "per clip: windows both runs answered; WER of the filtered clip transcript (window texts "
                        "joined) against the unfiltered one; recognizer ms from each run's summary"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=1) + "\n")
    for clip, row in pairs[-1]["clips"].items():
        print(f"{clip}: {row['skipped']}/{row['windows_both']} windows skipped ({row['skipped_needing']} of them needed "
              f"recognition), WER {row['wer']}, recognizer {row['recognizer_ms_none']} -> {row['recognizer_ms_filtered']} ms")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
