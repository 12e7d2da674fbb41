"""CurveZMQ for links that cross hosts: encryption, and optionally client authentication.

Every stage has a certificate pair made once with ``infistream keys NAME`` (``NAME.key`` is
public and may be copied anywhere; ``NAME.key_secret`` stays with the stage). On a secured
stage, sockets that bind are CURVE servers and sockets that connect are CURVE clients:

* a connecting socket must know the public certificate of the stage it connects to
  (``--curve-server``), so it cannot be fooled into talking to another;
* a binding socket accepts only clients whose public certificate is in ``--curve-clients``
  (a directory of ``*.key`` files), when that is given; otherwise any client that knows the
  server's public key may connect, still encrypted.

Authentication runs in ZeroMQ's ZAP handler thread (`zmq.auth.thread.ThreadAuthenticator`),
one per process and context.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class CurveConfig:
    """Certificates for one stage. `secret` is this stage's own ``.key_secret`` file."""

    secret: Path
    server_public: Path | None = None     # for connecting sockets: the peer's public ``.key``
    clients_dir: Path | None = None       # for binding sockets: allowed clients' ``.key`` files

    def __post_init__(self) -> None:
        for name in ("secret", "server_public"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"CurveZMQ {name.replace('_', ' ')} certificate not found: {path}")
        if self.clients_dir is not None and not Path(self.clients_dir).is_dir():
            raise ConfigError(f"CurveZMQ clients directory not found: {self.clients_dir}")


def create_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, mode 0644) and ``NAME.key_secret`` (mode 0600: readable by its
    owner only, from the moment it exists) into `directory`; return both paths.

    The files are ZeroMQ certificate text files, as pyzmq's ``zmq.auth`` writes and reads them.
    An existing pair is not overwritten (a stage's public key may already be copied elsewhere).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} exists; remove it first or choose another name")
    public_key, secret_key = (key.decode("ascii") for key in zmq.curve_keypair())
    made = time.strftime("%Y-%m-%d %H:%M:%S")
    _write_new(secret, 0o600, f"#   ****  Generated on {made} by infistream keys  ****\n"
                              f"#   ZeroMQ CURVE **Secret** Certificate\n"
                              f"#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"
                              f"metadata\ncurve\n    public-key = \"{public_key}\"\n    secret-key = \"{secret_key}\"\n")
    _write_new(public, 0o644, f"#   ****  Generated on {made} by infistream keys  ****\n"
                              f"#   ZeroMQ CURVE Public Certificate\n\n"
                              f"metadata\ncurve\n    public-key = \"{public_key}\"\n")
    return public, secret


def _write_new(path: Path, mode: int, text: str) -> None:
    """Create `path` with `mode` (at most; the umask may remove bits): a secret is never
    readable by others, not even between its creation and a chmod."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(text)


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public_key, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read CurveZMQ certificate {path}: {error}") from None
    if secret and secret_key is None:
        raise ConfigError(f"{path} is a public certificate; this needs the stage's .key_secret file")
    return public_key, secret_key


_authenticators: dict[int, ThreadAuthenticator] = {}
_authenticators_lock = threading.Lock()
#: How long a new ZAP handler waits for the endpoint of a stopped one to be released (see below).
ZAP_BIND_WAIT_S = 2.0


def _authenticator(context: zmq.Context, clients_dir: Path) -> None:
    with _authenticators_lock:
        if id(context) not in _authenticators:
            _authenticators[id(context)] = _started_authenticator(context)
        _authenticators[id(context)].configure_curve(domain="*", location=str(clients_dir))


def _started_authenticator(context: zmq.Context) -> ThreadAuthenticator:
    """A started ZAP handler for `context`. A handler stopped just before (`stop_authenticators`,
    then a new secured socket on the same context) closes its socket, but libzmq releases the
    socket's ``inproc://zeromq.zap.01`` endpoint only when its reaper thread gets to it, so
    binding it again at once can fail with "Address already in use" (a test run met it once in
    1,227 tests). Retry for up to `ZAP_BIND_WAIT_S`; another handler that stays bound is still
    an error."""
    deadline = time.monotonic() + ZAP_BIND_WAIT_S
    while True:
        authenticator = ThreadAuthenticator(context)
        try:
            authenticator.start()
            return authenticator
        except zmq.ZMQError as error:
            authenticator.stop()              # closes its unbound ZAP socket
            if error.errno != zmq.EADDRINUSE or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def secure(socket: zmq.Socket, config: CurveConfig, bind: bool) -> None:
    """Make `socket` a CURVE server (`bind`) or client; call before bind/connect."""
    public_key, secret_key = _load(config.secret, secret=True)
    socket.curve_publickey = public_key
    socket.curve_secretkey = secret_key
    if bind:
        if config.clients_dir is not None:
            _authenticator(socket.context, config.clients_dir)
        socket.curve_server = True
    else:
        if config.server_public is None:
            raise ConfigError("a connecting CurveZMQ socket needs the server's public certificate (--curve-server)")
        socket.curve_serverkey = _load(config.server_public, secret=False)[0]


def stop_authenticators() -> None:
    """Stop every ZAP handler thread (before the context is terminated)."""
    with _authenticators_lock:
        for authenticator in _authenticators.values():
            authenticator.stop()
        _authenticators.clear()
