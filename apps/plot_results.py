"""Plot a results file of the consumer apps: what was seen over time, and what the filter decided.

    python apps/plot_results.py RESULTS.jsonl [-o RESULTS.png]

Per stream, one panel: vehicles per frame (or words per audio window) against time, the line
crossings as marks, and under it a strip coloured by each input's decision (inferred, reused,
skipped, exited, unanswered), so a glance shows where the filter saved model runs and where the
scene was busy. The apps write it next to their --out file at the end of a recorded run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

DECISION_COLORS = {"infer": "#2b8a3e", "reuse": "#f08c00", "skip": "#adb5bd", "exit": "#1c7ed6",
                   "unanswered": "#e03131"}
MAX_STREAMS = 6   # panels in one figure; a dataset run has thousands of streams: the first few are shown


def read_results(path: Path) -> dict[str, dict[str, list]]:
    """Per stream: pts, value (vehicles or words), decision, and crossing times, in file order."""
    streams: dict[str, dict[str, list]] = defaultdict(lambda: {"pts": [], "value": [], "decision": [],
                                                               "crossings": [], "unit": ["vehicles"]})
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if "seq" not in record:
                continue
            stream = streams[record["stream"]]
            stream["pts"].append(record["pts"])
            stream["value"].append(record.get("count", record.get("words", 0)))
            if "words" in record:
                stream["unit"] = ["words"]
            stream["decision"].append(record.get("decision", "unanswered"))
            stream["crossings"] += [event["pts"] for event in record.get("new_crossings", [])]
    return streams


def plot_results(path: Path, output: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    streams = read_results(path)
    if not streams:
        raise ValueError(f"{path} holds no per-input results to plot")
    names = list(streams)[:MAX_STREAMS]
    figure, axes = plt.subplots(2 * len(names), 1, figsize=(11, 2.6 * len(names)), squeeze=False,
                                gridspec_kw={"height_ratios": [4, 0.6] * len(names)})
    for index, name in enumerate(names):
        data, top, strip = streams[name], axes[2 * index][0], axes[2 * index + 1][0]
        top.step(data["pts"], data["value"], where="post", color="#343a40", lw=1)
        for crossing in data["crossings"]:
            top.axvline(crossing, color="#c2255c", lw=1, ls="--")
        top.set_ylabel(data["unit"][0])
        title = f"{name}: {len(data['pts'])} inputs"
        if data["crossings"]:
            title += f", {len(data['crossings'])} line crossings (dashed)"
        top.set_title(title, fontsize=10, loc="left")
        top.tick_params(labelbottom=False)
        widths = [b - a for a, b in zip(data["pts"], data["pts"][1:])] or [1.0]
        widths.append(widths[-1])
        strip.bar(data["pts"], [1] * len(data["pts"]), width=widths, align="edge",
                  color=[DECISION_COLORS.get(d, "#000") for d in data["decision"]], linewidth=0)
        strip.set_yticks([])
        strip.set_xlim(top.get_xlim())
        strip.set_xlabel("seconds" if index == len(names) - 1 else "")
    used = {d for name in names for d in streams[name]["decision"]}
    figure.legend(handles=[Patch(color=c, label=d) for d, c in DECISION_COLORS.items() if d in used],
                  loc="upper right", ncol=len(used), fontsize=8, title="decision", title_fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a JSON Lines file written by an app's --out")
    parser.add_argument("-o", "--output", type=Path, default=None, help="PNG to write (default: RESULTS.png)")
    args = parser.parse_args(argv)
    try:
        written = plot_results(args.results, args.output or args.results.with_suffix(".png"))
    except (OSError, ValueError) as error:
        print(f"plot_results: {error}", file=sys.stderr)
        return 1
    print(f"plot: {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
