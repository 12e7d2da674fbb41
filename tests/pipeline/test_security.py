"""CurveZMQ: encrypted links deliver; wrong keys, unlisted clients and plaintext peers get nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.message import Message
from pipeline.security import CurveConfig, create_keys, stop_authenticators
from pipeline.transport import Endpoint, Receiver, Sender, SocketOptions
from tests.conftest import free_tcp_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys(tmp_path):
    """Certificates for a server and two clients; only `allowed` is in the server's clients dir."""
    made = {name: create_keys(tmp_path / name, name) for name in ("server", "allowed", "stranger")}
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "allowed.key").write_bytes(made["allowed"][0].read_bytes())
    yield {"clients": clients, **{name: {"public": p, "secret": s} for name, (p, s) in made.items()}}
    stop_authenticators()


def options(curve: CurveConfig | None) -> SocketOptions:
    return SocketOptions(hwm=4, send_timeout_ms=300, recv_timeout_ms=100, linger_ms=0, curve=curve)


def deliver(server_curve: CurveConfig | None, client_curve: CurveConfig | None) -> Message | None:
    url = f"tcp://127.0.0.1:{free_tcp_port()}"
    frame = np.arange(1000, dtype=np.uint8)
    with Receiver([Endpoint(url, True)], options=options(server_curve)) as receiver, \
            Sender([Endpoint(url, False)], options=options(client_curve)) as sender:
        sender.send(Message("video", "cam", 0, arrays=(frame,)))
        return receiver.recv(timeout=1.5)


def test_encrypted_link_delivers_to_an_allowed_client(keys):
    server = CurveConfig(keys["server"]["secret"], clients_dir=keys["clients"])
    client = CurveConfig(keys["allowed"]["secret"], server_public=keys["server"]["public"])
    message = deliver(server, client)
    assert message is not None and message.arrays[0].sum() == np.arange(1000, dtype=np.uint8).sum()


@pytest.mark.parametrize("case", ["unlisted client", "wrong server key", "plaintext client"])
def test_peers_without_the_right_keys_get_nothing_through(keys, case):
    server = CurveConfig(keys["server"]["secret"], clients_dir=keys["clients"])
    client = {
        "unlisted client": CurveConfig(keys["stranger"]["secret"], server_public=keys["server"]["public"]),
        "wrong server key": CurveConfig(keys["allowed"]["secret"], server_public=keys["stranger"]["public"]),
        "plaintext client": None,
    }[case]
    assert deliver(server, client) is None


def test_a_new_zap_handler_waits_for_the_endpoint_a_stopped_one_still_holds(keys, monkeypatch):
    """libzmq releases a closed socket's inproc endpoint only when its reaper gets to it: a ZAP
    handler started right after another stopped could find "Address already in use" (a CI run
    did, once). Here a plain socket holds the endpoint: while it stays, starting a handler is
    still an error, after the wait; released 0.2 s later, the handler starts once it is free."""
    import threading
    import zmq
    from pipeline import security
    context = zmq.Context()
    holder = context.socket(zmq.REP)
    holder.bind("inproc://zeromq.zap.01")
    release = threading.Timer(0.2, holder.close)
    try:
        monkeypatch.setattr(security, "ZAP_BIND_WAIT_S", 0.05, raising=False)
        with pytest.raises(zmq.ZMQError, match="Address already in use"):
            security._authenticator(context, keys["clients"])
        monkeypatch.setattr(security, "ZAP_BIND_WAIT_S", 5.0, raising=False)
        release.start()
        security._authenticator(context, keys["clients"])
        assert id(context) in security._authenticators
    finally:
        release.cancel()
        stop_authenticators()
        context.destroy(linger=0)          # closes whatever a failed start left open


def test_without_a_clients_dir_any_client_knowing_the_server_key_may_connect(keys):
    server = CurveConfig(keys["server"]["secret"])
    client = CurveConfig(keys["stranger"]["secret"], server_public=keys["server"]["public"])
    assert deliver(server, client) is not None


@pytest.mark.parametrize("build, message", [
    (lambda k: CurveConfig(Path("/no/such.key_secret")), "secret certificate not found"),
    (lambda k: CurveConfig(k["server"]["secret"], clients_dir=Path("/no/dir")), "clients directory not found"),
])
def test_missing_certificates_are_configuration_errors(keys, build, message):
    with pytest.raises(ConfigError, match=message):
        build(keys)


def test_public_certificate_given_as_secret_is_refused(keys):
    with pytest.raises(ConfigError, match="is a public certificate"):
        deliver(CurveConfig(keys["server"]["public"]), None)


@pytest.mark.timeout(60)
def test_stages_in_separate_processes_talk_over_an_encrypted_link(keys, tmp_path):
    url = f"tcp://127.0.0.1:{free_tcp_port()}"
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", "stage"]
    sink = subprocess.Popen(command + ["stages.sinks:JsonlSink", "--in", url, "--param", f"path={out}",
                                       "--curve-secret", str(keys["allowed"]["secret"]),
                                       "--curve-server", str(keys["server"]["public"])], cwd=ROOT)
    source = subprocess.run(command + ["tests.helpers.stages:CountingSource", "--out", url, "--param", "count=30",
                                       "--curve-secret", str(keys["server"]["secret"]),
                                       "--curve-clients", str(keys["clients"])], cwd=ROOT, timeout=40)
    assert source.returncode == 0 and sink.wait(timeout=20) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(30)) + [30]


def test_keys_command_writes_the_secret_certificate_readable_by_its_owner_only(tmp_path):
    """`infistream keys` creates NAME.key_secret with mode 0600 from the start (a umask that
    lets others read new files must not matter) and refuses to overwrite an existing pair."""
    import os
    import stat
    previous = os.umask(0o002)          # as permissive as a shared workstation's
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "keys", "edge", "--dir", str(tmp_path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)
    finally:
        os.umask(previous)
    assert done.returncode == 0, done.stderr
    secret, public = tmp_path / "edge.key_secret", tmp_path / "edge.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not stat.S_IMODE(public.stat().st_mode) & 0o022      # public: not writable by others
    # Both are ZeroMQ certificate files that pyzmq reads back, as a pair.
    import zmq.auth
    public_key, secret_key = zmq.auth.load_certificate(str(secret))
    assert secret_key and zmq.auth.load_certificate(str(public)) == (public_key, None)
    assert "secret-key" not in public.read_text()
    with pytest.raises(ConfigError, match="exists"):
        create_keys(tmp_path, "edge")
