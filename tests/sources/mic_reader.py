"""Reads a MicrophoneSource in a fresh process and saves what it got, for test_microphone.py.

Usage: ``python mic_reader.py OUT.npz DEVICE MAX_SECONDS WINDOW_S HOP_S``. A fresh process,
because PortAudio reads the ALSA configuration (``ALSA_CONFIG_PATH``) once, when sounddevice
is first imported, and the test process must not depend on that. Errors are saved, not raised,
so the test can show them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from pipeline.errors import SourceError  # noqa: E402
from stages.sources import MicrophoneSource  # noqa: E402


def main(out: str, device: str, max_seconds: str, window_s: str, hop_s: str) -> int:
    source = MicrophoneSource(int(device) if device.isdigit() else device, max_seconds=float(max_seconds),
                              window_s=float(window_s), hop_s=float(hop_s))
    try:
        with source:
            messages = list(source)
    except SourceError as error:
        np.savez(out, error=np.array(f"{type(error).__name__}: {error}"))
        return 0
    windows = [m for m in messages if m.kind == "audio"]
    np.savez(
        out,
        samples=np.stack([m.arrays[0] for m in windows]),
        pts=np.array([m.pts for m in windows]),
        seq=np.array([m.seq for m in windows]),
        valid=np.array([m.meta.get("valid_samples", m.arrays[0].size) for m in windows]),
        eos=np.array([m.seq for m in messages if m.kind == "eos"]),
        media=np.array([str(sorted(m.media.items())) for m in windows[:1]]),
        device_name=np.array(source.device_name),
        overflows=np.array(source.overflows),
        live=np.array(source.live),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
