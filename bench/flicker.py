"""How much of a clip's ceiling is YOLO's one-frame flicker, and what looking AHEAD would buy.

The ceiling (models/metrics.py) counts every frame whose count repeats the frame before. On a busy
camera YOLO's exact count flickers: a distant car is found on one frame and lost on the next, then
found again. A frame whose count differs from both neighbours while they agree with each other is
a **flicker**; no filter that looks at pixels for ~1 ms can tell which frames YOLO will flicker
on, and a filter must send to YOLO (or get wrong) every flicker beyond the error budget.

This script measures, per clip's test half (the frames apps/bench_filters.py scores, from the
label cache; no frame is decoded):

- ``change_share``: frames whose count differs from the frame before (1 - repeat share);
- ``flicker_share``: one-frame flickers, as above;
- ``ceiling`` and ``ceiling_smoothed``: the ceiling of the counts as they are, and of the counts
  with every one-frame flicker set to its neighbours' count (what the ceiling would be if YOLO
  did not flicker);
- ``bracket``: a reference no causal filter can beat on these frames, since it looks ahead: run
  YOLO on every k-th frame, and where two consecutive inferred frames give the same count, answer
  every frame between them with it; where they differ, run YOLO on the middle frame and repeat
  on both halves. Its best rate at the target over k = 2..64, as a share of the ceiling.

    python bench/flicker.py [--clips CLIP...] [--target 0.95] [--json bench/results/flicker.json]

It writes the JSON and a PNG beside it (per clip: the ceiling, the flicker-free ceiling, the
bracket reference's rate, the flicker share).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import clip_parser, save_figure  # noqa: E402
from models import metrics  # noqa: E402
from models.dataset import default_clips  # noqa: E402
from models.simulate import WARMUP, labelled_clip, prepare_part  # noqa: E402

STRIDES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def flickers(counts: np.ndarray) -> np.ndarray:
    """bool per frame: its count differs from both neighbours', which agree with each other (the
    first and last frame have one neighbour and are never flickers)."""
    counts = np.asarray(counts)
    out = np.zeros(counts.shape, bool)
    if counts.size >= 3:
        out[1:-1] = (counts[:-2] == counts[2:]) & (counts[1:-1] != counts[:-2])
    return out


def smoothed(counts: np.ndarray) -> np.ndarray:
    """The counts with every one-frame flicker replaced by its neighbours' count."""
    out = np.array(counts, copy=True)
    marked = flickers(out)
    out[marked] = out[np.flatnonzero(marked) - 1]
    return out


def bracket(counts: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The look-ahead reference at one stride: (answers, inferred) per frame. YOLO's count is
    known on the inferred frames; a gap between two equal counts takes that count; a gap between
    two different ones is split at its middle frame, which is inferred."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    counts = np.asarray(counts)
    n = counts.size
    answers, inferred = counts.copy(), np.zeros(n, bool)
    if n == 0:
        return answers, inferred
    inferred[0] = True
    stack = []
    for start in range(0, n - 1, stride):
        end = min(start + stride, n - 1)
        inferred[end] = True
        stack.append((start, end))
    while stack:
        start, end = stack.pop()
        if end - start <= 1:
            continue
        if counts[start] == counts[end]:
            answers[start + 1:end] = counts[start]
        else:
            middle = (start + end) // 2
            inferred[middle] = True
            stack += [(start, middle), (middle, end)]
    return answers, inferred


def clip_row(name: str, truth: np.ndarray, target: float) -> dict[str, Any]:
    budget = 1 - target
    ceiling = metrics.ceiling(truth, budget)
    points = []
    for stride in STRIDES:
        answers, inferred = bracket(truth, stride)
        points.append({"stride": stride, "agreement": round(metrics.agreement(answers, truth), 4),
                       "filtered": round(1 - float(inferred.mean()), 4)})
    meeting = [p for p in points if p["agreement"] >= target - 1e-12]
    best = max(meeting, key=lambda p: p["filtered"]) if meeting else {"stride": None, "filtered": 0.0}
    return {"clip": name, "frames": int(truth.size),
            "change_share": round(1 - metrics.repeat_share(truth), 4),
            "flicker_share": round(float(flickers(truth).mean()), 4),
            "ceiling": round(ceiling, 4), "ceiling_smoothed": round(metrics.ceiling(smoothed(truth), budget), 4),
            "bracket": {"best_stride": best["stride"], "filtered": best["filtered"],
                        "fraction_of_ceiling": round(best["filtered"] / ceiling, 4) if ceiling > 0 else None,
                        "curve": points}}


def scored_truth(path: Path) -> np.ndarray:
    """The counts apps/bench_filters.py scores on the clip's test half (after its warm-up)."""
    return prepare_part(labelled_clip(path), "test", [], warmup=WARMUP).scored_truth


def plot(rows: Sequence[dict[str, Any]], target: float, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.6))
    series = [(lambda r: r["ceiling_smoothed"], "ceiling if YOLO did not flicker", "#c7c7c7"),
              (lambda r: r["ceiling"], "ceiling", "#7f7f7f"),
              (lambda r: r["bracket"]["filtered"], "look-ahead bracket reference", "#2ca02c"),
              (lambda r: r["flicker_share"], "share of frames that flicker", "#d62728")]
    for k, (value, label, colour) in enumerate(series):
        ax.barh(y + (k - 1.5) * 0.2, [value(r) for r in rows], height=0.2, label=label, color=colour)
    ax.axvline(1 - target, color="black", lw=0.6, ls=":")
    ax.set_yticks(y, [r["clip"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel(f"share of the test half's frames (dotted: the {1 - target:.0%} error budget)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"YOLO's one-frame flicker against the ceiling at {target:.0%} agreement", fontsize=10)
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    parser = clip_parser(__doc__, "flicker.json")
    args = parser.parse_args(argv)
    from tqdm import tqdm
    rows = [clip_row(path.stem, scored_truth(path), args.target)
            for path in tqdm(args.clips or default_clips(), desc="flicker", unit="clip")]
    fractions = [r["bracket"]["fraction_of_ceiling"] for r in rows if r["bracket"]["fraction_of_ceiling"] is not None]
    busy = [r for r in rows if r["flicker_share"] > 1 - args.target]
    summary = {"clips": len(rows),
               "bracket_mean_fraction_of_ceiling": round(float(np.mean(fractions)), 4) if fractions else None,
               "bracket_at_0.8_of_ceiling": sum(f >= 0.8 for f in fractions),
               "clips_flickering_beyond_the_budget": [r["clip"] for r in busy],
               "mean_flicker_share_there": round(float(np.mean([r["flicker_share"] for r in busy])), 4) if busy else None}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    png = plot(rows, args.target, args.json.with_suffix(".png"))
    args.json.write_text(json.dumps({"target": args.target, "warmup": WARMUP, "strides": list(STRIDES),
                                     "summary": summary, "clips": rows}, indent=1) + "\n")
    for r in rows:
        fraction = r["bracket"]["fraction_of_ceiling"]
        print(f"{r['clip']:>36}: flicker {r['flicker_share']:.3f}, changes {r['change_share']:.3f}, ceiling "
              f"{r['ceiling']:.3f} ({r['ceiling_smoothed']:.3f} without flicker), bracket keeps {r['bracket']['filtered']:.3f}"
              f" ({'-' if fraction is None else f'{fraction:.2f}'} of the ceiling, stride {r['bracket']['best_stride']})")
    print(f"bracket reference: {summary['bracket_mean_fraction_of_ceiling']} of the ceiling on average, >= 0.8 on "
          f"{summary['bracket_at_0.8_of_ceiling']} of {len(rows)} clips; {len(busy)} clips flicker on more frames than "
          f"the error budget (mean {summary['mean_flicker_share_there']})")
    print(f"wrote {args.json} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
