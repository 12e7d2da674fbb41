"""What the per-clip reference scripts in bench/ share: their command line and how they save a figure."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clip_parser(doc: str, json_name: str) -> argparse.ArgumentParser:
    """``--clips`` (default: every shared traffic clip), ``--target`` and ``--json`` (under
    bench/results/), described by the first paragraph of the script's docstring."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, nargs="+", default=None, help="default: every clip under $INFI_ASSETS/traffic")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / json_name)
    return parser


def save_figure(fig, out: Path) -> Path:
    """Writes `fig` as a PNG at `out` and frees it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
