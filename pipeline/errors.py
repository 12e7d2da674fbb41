"""The exceptions infistream raises.

Each one subclasses both `InfistreamError` and the built-in it resembles, so callers may
catch either: a missing camera is a `FileNotFoundError`, a malformed message a `ValueError`.
Messages say what was expected, what came, and at which step.
"""

from __future__ import annotations


class InfistreamError(Exception):
    """Base class of every error infistream raises on purpose."""


class MessageError(InfistreamError, ValueError):
    """A message on the wire is malformed, oversized, or of an unknown protocol version.

    `reason` is a short machine-readable tag (e.g. ``"oversize"``) used to count
    rejections by cause; the message text says what was expected and what came.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EndpointError(InfistreamError, ValueError):
    """An endpoint URL cannot be used (unknown scheme, missing port, ...)."""


class ConfigError(InfistreamError, ValueError):
    """A graph file or a stage's parameters do not fit what the stage takes."""


class SourceError(InfistreamError, OSError):
    """A media source failed: it cannot be opened, decoded or read."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The file, camera or capture device does not exist."""


class SourceFormatError(SourceError, ValueError):
    """The input exists but is not media the source can decode (empty, corrupt, wrong kind)."""


class SourceTimeoutError(SourceError, TimeoutError):
    """A network source or device did not answer within its time limit."""


class StageError(InfistreamError, RuntimeError):
    """A stage failed in setup, process or teardown; carries the stage's name."""

    def __init__(self, stage: str, step: str, cause: BaseException):
        super().__init__(f"stage {stage!r} failed in {step}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.step = step
        self.cause = cause
