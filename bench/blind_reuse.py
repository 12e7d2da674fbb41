"""A blind reference for the video filters: what spending the error budget without looking buys.

A filter at 95 % per-frame count agreement may answer 5 % of the frames wrong. A policy that never
looks at a frame can still spend that budget: reuse the last inferred frame's count for a random
share q of the frames. Its error rate is about q x (share of frames whose count differs from the
frame before), so on a clip where YOLO's count changes on most frames (dense traffic, where exact
counts jitter on small distant cars) it keeps about 0.05 / (1 - repeat share) of the frames from
the model, which can be a good part of that clip's ceiling. A learned filter is worth its cost
where it keeps more than this; where it keeps less, it spends its budget worse than chance.

For every clip's test half (the protocol of apps/bench_filters.py: labels from the label cache,
the same scored frames and warm-up, replayed through models/simulate.py `replay` like stride),
this script finds, over a grid of q and several seeds, the q with the highest rate whose agreement
averaged over the seeds meets the target (the policy: models/baselines/blind.py; the search:
models/evaluate.py `blind_entry`, which `infistream filter evaluate` and apps/bench_filters.py
also draw beside the baselines), and reports it beside the learned cascade's and framediff's best rate
at the target from an earlier `apps/bench_filters.py` run (--compare), all as fractions of the
clip's ceiling:

    python bench/blind_reuse.py [--clips CLIP...] [--compare bench/results/filters.json]
                                [--json bench/results/blind_reuse.json] [--seeds 8]

It writes the JSON and a PNG beside it (per clip: blind reuse, the cascade, framediff).
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
from models.evaluate import blind_entry  # noqa: E402
from models.simulate import DEFAULT_LAG, WARMUP, PreparedClip, labelled_clip, prepare_part  # noqa: E402


def test_part(path: Path) -> PreparedClip:
    """The clip's test half with the evaluation's warm-up frames before it, as the evaluation
    prepares it; with no policy to prepare, no frame is decoded (the blind policy reads none)."""
    return prepare_part(labelled_clip(path), "test", [], warmup=WARMUP)


def blind_on_clip(prepared: PreparedClip, target: float, seeds: int, lag: int = DEFAULT_LAG) -> dict[str, Any]:
    """The clip's row: the blind reference's best share at the target (models/evaluate.py
    `blind_entry`, as `infistream filter evaluate` draws it), beside the clip's ceiling."""
    truth = prepared.scored_truth
    ceiling = metrics.ceiling(truth, budget=1 - target)
    if ceiling > 0:
        point = blind_entry(prepared, target, lag, seeds)["best"]
        best = {"share": point["at"], "filtered": point["filtered"], "agreement": point["agreement"],
                "worst_seed_agreement": point["worst_draw_agreement"], "fraction_of_ceiling": point["fraction_of_ceiling"]}
    else:                              # no repeats at a 100 % target: no budget, no ceiling to be a fraction of
        best = {"share": 0.0, "filtered": 0.0, "agreement": 1.0, "worst_seed_agreement": 1.0, "fraction_of_ceiling": None}
    return {"clip": prepared.name.split(":")[0], "frames": len(truth), "ceiling": round(ceiling, 4),
            "repeat_share": round(metrics.repeat_share(truth), 4), "blind": best}


def compare(rows: list[dict[str, Any]], filters_json: Path | None) -> None:
    """Adds each clip's cascade and framediff best rate from an apps/bench_filters.py run."""
    if filters_json is None or not filters_json.is_file():
        return
    clips = {c["clip"]: c for c in json.loads(filters_json.read_text())["evaluation"]["clips"]}
    for row in rows:
        other = clips.get(row["clip"])
        if other is None:
            continue
        for name in ("cascade", "framediff"):
            best = other["policies"].get(name, {}).get("best")
            if best:
                row[name] = {"filtered": best["filtered"], "fraction_of_ceiling": best["fraction_of_ceiling"]}


def plot(rows: Sequence[dict[str, Any]], target: float, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [row["clip"] for row in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    series = [("blind", "blind reuse (random share)", "#999999"), ("cascade", "learned cascade", "#1f77b4"),
              ("framediff", "framediff", "#ff7f0e")]
    for k, (key, label, colour) in enumerate(series):
        values = [row.get(key, {}).get("fraction_of_ceiling") for row in rows]
        values = [np.nan if value is None else value for value in values]
        ax.barh(y + (k - 1) * 0.27, values, height=0.27, label=label, color=colour)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel(f"share of the clip's ceiling kept from YOLO at {target:.0%} per-frame agreement (test half, best threshold)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("What looking at the frames buys over spending the error budget blindly", fontsize=10)
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    parser = clip_parser(__doc__, "blind_reuse.json")
    parser.add_argument("--seeds", type=int, default=8, help="random draws per share (default 8)")
    parser.add_argument("--compare", type=Path, default=ROOT / "bench" / "results" / "filters.json")
    args = parser.parse_args(argv)
    from tqdm import tqdm
    rows = [blind_on_clip(test_part(path), args.target, args.seeds) for path in tqdm(args.clips or default_clips(),
                                                                                    desc="blind reuse", unit="clip")]
    compare(rows, args.compare)
    compared = [row for row in rows if "cascade" in row]
    fractions = [r["blind"]["fraction_of_ceiling"] for r in rows if r["blind"]["fraction_of_ceiling"] is not None]
    summary = {"clips": len(rows), "mean_fraction_of_ceiling": round(float(np.mean(fractions)), 4) if fractions else None}
    if compared:
        summary["cascade_mean_fraction_of_ceiling"] = round(float(np.mean([r["cascade"]["fraction_of_ceiling"]
                                                                           for r in compared])), 4)
        summary["cascade_below_blind"] = [r["clip"] for r in compared if r["blind"]["fraction_of_ceiling"] is not None
                                          and r["cascade"]["fraction_of_ceiling"] < r["blind"]["fraction_of_ceiling"]]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    png = plot(rows, args.target, args.json.with_suffix(".png"))
    args.json.write_text(json.dumps({"target": args.target, "seeds": args.seeds, "lag": DEFAULT_LAG,
                                     "compared_with": str(args.compare) if compared else None,
                                     "summary": summary, "clips": rows}, indent=1) + "\n")
    for row in rows:
        fraction = row["blind"]["fraction_of_ceiling"]
        line = (f"{row['clip']:>36}: ceiling {row['ceiling']:.3f}, blind reuse keeps {row['blind']['filtered']:.3f} "
                f"({'-' if fraction is None else f'{fraction:.2f}'} of it, share {row['blind']['share']:g})")
        if "cascade" in row:
            line += f"; cascade {row['cascade']['fraction_of_ceiling']:.2f}"
        print(line)
    print(f"mean of ceiling: blind {summary['mean_fraction_of_ceiling']}"
          + (f", cascade {summary['cascade_mean_fraction_of_ceiling']:.3f}; cascade below blind on "
             f"{len(summary['cascade_below_blind'])} clips: {', '.join(summary['cascade_below_blind'])}" if compared else ""))
    print(f"wrote {args.json} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
