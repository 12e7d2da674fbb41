"""scripts/setup.sh stops when pip fails, and not when pip succeeds quietly.

The pip step's output goes through a filter (grep -v), whose own exit status once hid pip's: a
pip that ran out of disk half way left a partial environment and setup said "ready". Here the
environment's python is a stand-in that answers `-m pip` as told and runs this interpreter for
everything else, so no package is installed. Needs the system packages setup checks first (on a
machine where setup has run, they are there; it would otherwise try apt-get), so it skips when
one is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_setup(tmp_path: Path, pip_exit: int, pip_says: str) -> subprocess.CompletedProcess:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/usr/bin/env bash\n"
                      f'if [ "$1 $2" = "-m pip" ]; then printf "%s" "{pip_says}"; exit {pip_exit}; fi\n'
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "VENV": str(venv), "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT)}
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(autouse=True)
def system_packages_present():
    for tool in ("Xvfb", "xwininfo", "espeak-ng"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing: setup.sh would try to install system packages first")
    if not Path("/usr/include/zmq.h").exists():
        pytest.skip("libzmq3-dev is missing: setup.sh would try to install system packages first")


def test_a_failed_pip_install_stops_setup(tmp_path):
    done = run_setup(tmp_path, 1, "ERROR: Could not install packages due to an OSError: [Errno 28] No space left")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "setup: pip install failed (exit 1)" in done.stderr
    assert "setup: ready" not in done.stdout


def test_a_quiet_successful_pip_install_goes_on(tmp_path):
    done = run_setup(tmp_path, 0, "")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "setup: ready" in done.stdout
