"""`make demo`: decode a sample clip through a real multi-stage graph and print statistics.

Until vehicle counting lands, the main job shows the runtime itself: a source process decodes
the clip, a second process shrinks every frame, a third counts what arrived per stream, and
the launcher prints per-stage statistics (inputs/s, latency, drops, restarts).

    python apps/demo.py [--source PATH_OR_URL]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.assets import ENV_VAR, assets_dir
from pipeline.graph import GraphRun, load_graph, stage_table

GRAPH = Path(__file__).with_name("graphs") / "decode_demo.yaml"
SAMPLE = "traffic/intel_car_detection.mp4"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help=f"video file or URL (default: the shared {SAMPLE})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    source = args.source
    if source is None:
        sample = assets_dir() / SAMPLE
        if not sample.exists():
            print(f"demo: the sample clip {sample} is not here. Point {ENV_VAR} at the shared assets "
                  f"directory, or pass your own media: make demo SOURCE=/path/to/video.mp4", file=sys.stderr)
            return 2
        source = str(sample)
    graph = load_graph(GRAPH, {"source": {"uri": source}})
    print(f"demo: decoding {source} through {len(graph.stages)} processes "
          f"({' -> '.join(s.name for s in graph.stages)}) over {graph.transport}")
    run = GraphRun(graph, log_level="WARNING")
    code = run.run()
    print(f"\nper-stage statistics:\n{stage_table(run.stage_metrics())}")
    return code


if __name__ == "__main__":
    sys.exit(main())
