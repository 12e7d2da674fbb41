"""`vehicle_count.py --show` in a real OpenCV window, on a virtual X server (Xvfb).

The app runs as a user runs it; while it runs, the test finds the window named "infistream"
(xwininfo) and reads its pixels straight from Xvfb's framebuffer (`-fbdir` keeps the screen in
a file, in XWD format), so no screenshot tool is needed. Needs the Debian packages xvfb and
x11-utils (scripts/setup.sh installs them); skipped without them.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import asset_or_skip

ROOT = Path(__file__).resolve().parents[2]
VIDEO = "traffic/intel_car_detection.mp4"
FRAME_W, FRAME_H = 768, 432          # the video's frame size: the window shows it unscaled
LINE_Y = 216                         # --line 0,216,768,216
MAGENTA = (255, 80, 255)             # stages/display.py _LINE, BGR

pytestmark = [
    pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed (Debian: xvfb)"),
    pytest.mark.skipif(shutil.which("xwininfo") is None, reason="xwininfo is not installed (Debian: x11-utils)"),
]


@pytest.fixture
def xvfb(tmp_path):
    """A virtual X server on a free display: yields (DISPLAY value, framebuffer file)."""
    fbdir = tmp_path / "fb"
    fbdir.mkdir()
    log = tmp_path / "xvfb.log"
    read_end, write_end = os.pipe()
    # -displayfd: the server picks a free display number itself and writes it there once it
    # accepts connections (no race with other X servers, no polling for its socket).
    with log.open("w") as log_file:
        server = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x720x24",
                                   "-nolisten", "tcp", "-fbdir", str(fbdir)],
                                  pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=log_file)
    os.close(write_end)
    try:
        number = b""
        deadline = time.monotonic() + 30
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.5)
            if ready:
                chunk = os.read(read_end, 16)
                if not chunk:
                    break   # the server exited
                number += chunk
        if not number.strip().isdigit():
            server.kill()
            server.wait(timeout=10)
            pytest.fail(f"Xvfb did not start:\n{log.read_text(errors='replace')[-2000:]}")
        yield f":{number.strip().decode()}", fbdir / "Xvfb_screen0"
    finally:
        os.close(read_end)
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


def window_geometry(display: str, name: str) -> tuple[int, int, int, int] | None:
    """(x, y, width, height) of the viewable window with that name, or None."""
    found = subprocess.run(["xwininfo", "-display", display, "-name", name], capture_output=True, text=True,
                           timeout=10)
    if found.returncode != 0 or "IsViewable" not in found.stdout:
        return None
    field = {key: int(re.search(rf"{key}:\s+(-?\d+)", found.stdout).group(1))
             for key in ("Absolute upper-left X", "Absolute upper-left Y", "Width", "Height")}
    return (field["Absolute upper-left X"], field["Absolute upper-left Y"], field["Width"], field["Height"])


def read_screen(framebuffer: Path) -> np.ndarray:
    """Xvfb's screen as an H x W x 3 BGR array, from its -fbdir file (an XWD image)."""
    data = framebuffer.read_bytes()
    header = np.frombuffer(data, ">u4", count=25)
    (header_size, _, _, _, width, height, _, byte_order, _, _, _, bits_per_pixel, bytes_per_line, _,
     red_mask, green_mask, blue_mask, _, _, ncolors) = (int(v) for v in header[:20])
    assert bits_per_pixel == 32, f"expected a 32-bit framebuffer, got {bits_per_pixel} bits per pixel"
    pixels = np.frombuffer(data, "<u4" if byte_order == 0 else ">u4", count=height * bytes_per_line // 4,
                           offset=header_size + 12 * ncolors).reshape(height, -1)[:, :width]
    shift = {mask: (mask & -mask).bit_length() - 1 for mask in (blue_mask, green_mask, red_mask)}
    return np.stack([(pixels & mask) >> shift[mask] for mask in (blue_mask, green_mask, red_mask)],
                    axis=-1).astype(np.uint8)


def find_frame(window: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The annotated video frame inside the window's pixels, or None and why not.

    OpenCV's Qt window may add a tool bar above and a status bar below the image, so the frame
    is found by its black top bar (stages/display.py: 23 rows, white text on black).
    """
    dark_rows = (window.max(axis=2) < 40).mean(axis=1) > 0.5   # the text covers part of some rows
    run = 0
    for y, dark in enumerate(dark_rows):
        run = run + 1 if dark else 0
        if run == 15:
            top = y - 14
            break
    else:
        return None, "no black top bar (the window is not painted yet?)"
    if top + FRAME_H > window.shape[0]:
        return None, f"the top bar is at row {top}, too low for a {FRAME_H}-row frame"
    return window[top:top + FRAME_H], ""


def check_frame(frame: np.ndarray) -> str:
    """What is wrong with the shown frame, or '' when it looks as drawn."""
    white_text = int((frame[:23].min(axis=2) > 200).sum())
    if white_text < 30:
        return f"the top bar holds {white_text} white pixels: no count text"
    road = frame[30:].astype(float)
    if not (50 < road.mean() < 210 and road.std() > 10):
        return f"the picture looks blank (mean {road.mean():.0f}, std {road.std():.1f})"
    line = np.abs(frame[LINE_Y - 1:LINE_Y + 2].astype(int) - MAGENTA).max(axis=2) < 40
    if line.mean(axis=1).max() < 0.9:
        return f"no magenta counting line at row {LINE_Y} (best row {line.mean(axis=1).max():.0%} magenta)"
    return ""


def run_and_look(display: str, framebuffer: Path, video: Path, out: Path, log: Path):
    """Run the app with --show and sample its window until a good frame shows or the app ends:
    (exit code, window geometry, the last window pixels, the problem of the last sample)."""
    env = {k: v for k, v in os.environ.items() if k != "WAYLAND_DISPLAY"}
    env.update(DISPLAY=display, YOLO_OFFLINE="1", YOLO_AUTOINSTALL="0", HF_HUB_OFFLINE="1",
               YOLO_CONFIG_DIR=str(ROOT / ".cache" / "ultralytics"))
    with log.open("w") as log_file:
        app = subprocess.Popen([sys.executable, str(ROOT / "apps" / "vehicle_count.py"), "--filter", "none",
                                "--source", str(video),
                                # --realtime: the clip's own 12.5 frames/s keeps the window up ~10 s,
                                # time enough for a busy machine to paint it and for us to look
                                "--max-frames", "120", "--realtime", "--line", f"0,{LINE_Y},{FRAME_W},{LINE_Y}", "--show",
                                "--out", str(out)],
                               stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        geometry, window, problem = None, None, "the window never appeared"
        try:
            deadline = time.monotonic() + 240
            while app.poll() is None and time.monotonic() < deadline:
                found = window_geometry(display, "infistream")
                if found is not None:
                    geometry = x, y, width, height = found
                    window = read_screen(framebuffer)[y:y + height, x:x + width]
                    shown, problem = find_frame(window)
                    if shown is not None:
                        problem = check_frame(shown)
                        if not problem:
                            break
                time.sleep(0.1)
            code = app.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if app.poll() is None:
                app.kill()
                app.wait(timeout=30)
    return code, geometry, window, problem


def test_show_opens_a_window_with_the_annotated_frames(assets, tmp_path, xvfb):
    display, framebuffer = xvfb
    video = asset_or_skip(assets, VIDEO)
    out = tmp_path / "out.jsonl"
    log = tmp_path / "app.log"
    code, geometry, window, problem = run_and_look(display, framebuffer, video, out, log)
    if code == 0 and window is not None and (window.max(axis=2) > 0).mean() < 0.01:
        # A window Qt never painted at all (black but for the pointer, not even its tool bar):
        # seen on this Xvfb, with no window manager, about once in ten runs when the machine is
        # heavily loaded; cause not found (the app had shown all 120 frames). One more run, into
        # new files, tells it from a display that never works.
        retry = tmp_path / "retry"
        retry.mkdir()
        out, log = retry / "out.jsonl", retry / "app.log"
        code, geometry, window, problem = run_and_look(display, framebuffer, video, out, log)
    output = log.read_text()
    assert code == 0, output[-3000:]
    if problem and window is not None:
        import cv2
        cv2.imwrite(str(tmp_path / "window.png"), window)   # what the window showed, to look at
    assert geometry is not None, f"no window named 'infistream' appeared on {display}\n{output[-3000:]}"
    width, height = geometry[2:]
    # The image is shown unscaled; OpenCV's Qt window may add a tool bar and a status bar.
    assert width == FRAME_W and FRAME_H <= height <= FRAME_H + 150, geometry
    assert not problem, f"{problem} (window pixels saved to {tmp_path / 'window.png'})"
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    assert [f["seq"] for f in frames if "seq" in f] == list(range(120))
    assert frames[-1]["summary"]["balanced"]
