#!/usr/bin/env bash
# Prepare .venv with everything infistream needs; safe to run again (it only adds what is missing).
# System packages: PortAudio for sounddevice (microphone source, needed); the X libraries OpenCV's
# window (--show) loads, and for tests only: libzmq3-dev (the C example stage), Xvfb and xwininfo
# (the --show window test); espeak-ng speaks the synthetic half of the speech training data
# (`infistream filter mixtures`, make train). Installed with apt-get when run as root; otherwise we
# name them, and stop only when a needed one is missing (tests of the others skip with the reason).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
SYSTEM_PACKAGES=(libportaudio2 libzmq3-dev libsm6 libxext6 xvfb x11-utils espeak-ng)
NEEDED_PACKAGES=(libportaudio2)

missing=()
ldconfig -p 2>/dev/null | grep -q "libportaudio.so.2" || missing+=(libportaudio2)
# libzmq3-dev only builds the C example stage (docs/examples); its test skips without it.
[ -e /usr/include/zmq.h ] || missing+=(libzmq3-dev)
# OpenCV's Qt window plugin links libSM and libXext; the window test (tests/apps/test_show_window.py)
# runs it on a virtual X server and skips without Xvfb or xwininfo (about 20 MB installed in all).
ldconfig -p 2>/dev/null | grep -q "libSM.so.6" || missing+=(libsm6)
ldconfig -p 2>/dev/null | grep -q "libXext.so.6" || missing+=(libxext6)
command -v Xvfb >/dev/null || missing+=(xvfb)
command -v xwininfo >/dev/null || missing+=(x11-utils)
# Synthetic speech for the speech filters' training mixtures (models/mixtures.py); ~10 MB.
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: missing system package(s) ${missing[*]}; install them with:" >&2
        echo "    sudo apt-get install -y ${SYSTEM_PACKAGES[*]}" >&2
        for package in "${missing[@]}"; do
            [[ " ${NEEDED_PACKAGES[*]} " == *" $package "* ]] && exit 1
        done
        echo "setup: going on without them (only --show windows, speech mixtures and some tests need them)" >&2
    fi
fi

"$PYTHON" - <<'PY' || { echo "setup: infistream needs Python >= 3.10" >&2; exit 1; }
import sys; sys.exit(sys.version_info < (3, 10))
PY
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
echo "setup: installing Python packages into $VENV (a few minutes the first time)"
# pip's own exit status decides, not the filter's: grep -v exits 1 when it prints nothing, and a
# pip that failed half way (a full disk, a lost connection) must stop setup here, not leave a
# partial environment that a later import check might still pass.
set +e
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[all,test,bench]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory"
pip_status=${PIPESTATUS[0]}
set -e
if [ "$pip_status" -ne 0 ]; then
    echo "setup: pip install failed (exit $pip_status); see its output above" >&2
    exit 1
fi
"$VENV/bin/python" -c "import pipeline, stages, zmq, av, cv2, sounddevice" \
    || { echo "setup: the environment in $VENV does not import; see the pip output above" >&2; exit 1; }
echo "setup: ready ($VENV)"
