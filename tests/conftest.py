"""Shared fixtures: endpoints for every transport, and the shared assets (skipped when absent)."""

from __future__ import annotations

import itertools
import signal
from pathlib import Path

import pytest

from pipeline.assets import ENV_VAR, assets_dir
from pipeline.transport import free_tcp_port  # noqa: F401 (tests import it from here)

# A test run that a script starts in the background (`make test &`, some CI runners) inherits
# SIGINT ignored (POSIX: without job control, asynchronous commands ignore SIGINT), and so would
# every app and launcher the tests start: the tests that press Ctrl-C would then press nothing.
# A handled signal is reset to its default in a child process, so this reaches them too.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TRANSPORTS = ("inproc", "ipc", "tcp")
_names = itertools.count()


@pytest.fixture
def make_url(tmp_path: Path):
    """make_url(transport) -> a fresh endpoint URL (no @/> prefix) on that transport."""

    def make(transport: str) -> str:
        name = f"t{next(_names)}"
        if transport == "inproc":
            return f"inproc://{name}"
        if transport == "ipc":
            return f"ipc://{tmp_path / (name + '.sock')}"
        if transport == "tcp":
            return f"tcp://127.0.0.1:{free_tcp_port()}"
        raise ValueError(transport)

    return make


@pytest.fixture(params=TRANSPORTS)
def transport(request) -> str:
    return request.param


@pytest.fixture(params=("ipc", "tcp"))
def process_transport(request) -> str:
    """Transports that cross processes (inproc cannot)."""
    return request.param


@pytest.fixture(scope="session")
def assets() -> Path:
    directory = assets_dir()
    if not directory.is_dir():
        pytest.skip(f"shared assets not found at {directory}; set {ENV_VAR} to run this test")
    return directory


def asset_or_skip(assets: Path, relative: str) -> Path:
    path = assets / relative
    if not path.exists():
        pytest.skip(f"asset {relative} not found under {assets}")
    return path
