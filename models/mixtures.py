"""Speech training data the project makes itself: speech over noise and music, reproducible from a seed.

`build_mixtures(out, seed)` writes clips (16 kHz mono WAV, `clip_s` seconds each) and a
``manifest.json`` saying, per clip and per window (the speech app's window and hop), what is in
it: the bed (a stretch of a shared noise or music recording, or synthetic music, or digital
silence), each speech event (where it came from, its text when known, where it lies, its SNR),
and the split. Speech comes from

* espeak-ng (Debian's package; `ESPEAK` is the command), many voices (accent x variant), rates and
  pitches, saying sentences of 1-20 words (about a third of them 1-2 words) generated from
  `VOCABULARY`;
* the shared real recordings (``audio/librispeech``, ``audio/noisy_vctk``, ``audio/speech_commands``,
  ``audio/speech_long/jfk.flac``), whole or as a random crop (short, cut-off speech is the hard case);

and lies over gaps of speech-free bed. The SNR of an event is the power of its speech over the
power of the bed under it, both measured over the event's own samples (espeak's silent padding
trimmed first); a clip that would clip is scaled as a whole, which keeps every SNR.

Splits hold out what a filter must generalise over (`SPLITS`):

* ``train``: espeak voices of 6 accents x 8 variants, sentences from half the vocabulary, the real
  speakers LibriSpeech 251, VCTK p232 and the Speech Commands clips from the Alif kit; beds: the
  first 75 % of the dishes, exercise bike, pink and white noise recordings, and synthetic music.
* ``val``: the other 2 accents x 5 variants, sentences from the other half of the vocabulary (so
  no sentence is shared), no real speech; beds: the last 25 % of the same recordings, other
  synthetic music.
* ``test``: real recordings only as speech, of speakers in no other split (LibriSpeech 3536, VCTK
  p257, JFK, the tflite-micro Speech Commands clips); beds in no other split (running tap, the
  miaowing cat, Steamboat Willie's soundtrack). Its subsets: ``clean``, ``noise``, ``music``, and
  ``real``: the sound of the shared film and address clips (``speech_video/``, the Hollywood2 clip)
  as recorded, unmixed.

Labels are not the script's words: `infistream filter label --task speech --source DIR` runs the
real recognizer over the clips (models/speech_labels.py), and `labelled_windows` joins its answers
with the manifest. The script text is kept in the manifest for reference only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
import subprocess
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from models.speech_labels import (DEFAULT_WORDS, HOP_S, WINDOW_S, RecognizerSettings, label_speech,
                                  read_speech_labels)
from pipeline.assets import assets_dir, cache_dir
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: Bumped when the same seed would give other audio: a manifest of another format is rebuilt.
MIXTURE_FORMAT = 2
ESPEAK = "espeak-ng"

# Common words for the sentences; train and val get disjoint halves, so no sentence is in both.
_WORDS = """time year people way day man thing woman life child world school state family student
group country problem hand part place case week company system program question work government
number night point home water room mother area money story fact month lot right study book eye job
word business issue side kind head house service friend father power hour game line end member law
car city community name president team minute idea kid body information back parent face others
level office door health person art war history party result change morning reason research girl
guy moment air teacher force education foot boy age policy music market sense nation plan college
interest death experience effect class control care field development role effort rate heart drug
show leader light voice wife police mind price report decision son view relationship town road
arm difference value building action model season society tax director position player record paper
space ground form event""".split()
_VERBS = """go say get make know think take see come want look use find give tell work call try ask
need feel become leave put mean keep let begin seem help talk turn start show hear play run move
like live believe hold bring happen write provide sit stand lose pay meet include continue set learn
lead understand watch follow stop create speak read allow add spend grow open walk win offer remember
love consider appear buy wait serve die send expect build stay fall cut reach kill remain""".split()
_SHORT = """yes no okay hello stop wait go right left up down thanks sorry please wow hey what why
now here there look listen help run come quiet enough maybe sure never always again""".split()


@dataclass(frozen=True)
class SplitPlan:
    """What one split may draw from: speech sources, beds, and how many clips of each subset."""

    voices: tuple[str, ...]                  # espeak-ng voices (accent+variant); empty: no synthetic speech
    real_speech: tuple[str, ...]             # asset paths of real utterances
    noise_beds: tuple[tuple[str, float, float], ...]   # (asset path, start fraction, end fraction)
    music_beds: tuple[tuple[str, float, float], ...]   # same; "synth" = synthetic music
    real_clips: tuple[str, ...]              # recordings taken as they are (the "real" subset)
    clips: dict[str, int] = field(default_factory=dict)   # subset -> clips
    vocabulary: tuple[str, ...] = ()


def _voices(accents: Sequence[str], variants: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{accent}+{variant}" for accent in accents for variant in variants)


# Each word once (some are in two lists), then every other word to train, the rest to val.
_VOCABULARY = tuple(dict.fromkeys(_SHORT + _WORDS + _VERBS))
_TRAIN_NOISE = ("audio/background_noise/doing_the_dishes.wav", "audio/background_noise/exercise_bike.wav",
                "audio/background_noise/pink_noise.wav", "audio/background_noise/white_noise.wav")

#: The default plan: about 1,900 windows of 2 s every 1 s (see docs/speech-data.md for its cost).
SPLITS: dict[str, SplitPlan] = {
    "train": SplitPlan(
        voices=_voices(("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd"),
                       ("m1", "m3", "m4", "m7", "f1", "f2", "f5", "klatt")),
        real_speech=("audio/librispeech/another_engineer.wav", "audio/librispeech/testing_routine.wav",
                     "audio/librispeech/i_tell_you.wav", "audio/noisy_vctk/p232_113.wav",
                     "audio/noisy_vctk/p232_208.wav", "audio/speech_commands/yes.wav",
                     "audio/speech_commands/down.wav", "audio/speech_commands/right_left_up.wav",
                     "audio/speech_commands/yes_no_go_stop.wav"),
        noise_beds=tuple((bed, 0.0, 0.75) for bed in _TRAIN_NOISE),
        music_beds=(("synth", 0.0, 1.0),),
        real_clips=(),
        clips={"clean": 8, "noise": 20, "music": 12},
        vocabulary=_VOCABULARY[0::2]),
    "val": SplitPlan(
        voices=_voices(("en-029", "en-us-nyc"), ("m2", "m5", "m6", "f3", "f4")),
        real_speech=(),
        noise_beds=tuple((bed, 0.75, 1.0) for bed in _TRAIN_NOISE),
        music_beds=(("synth", 0.0, 1.0),),
        real_clips=(),
        clips={"clean": 2, "noise": 5, "music": 3},
        vocabulary=_VOCABULARY[1::2]),
    "test": SplitPlan(
        voices=(),
        real_speech=("audio/librispeech/another_door.wav", "audio/noisy_vctk/p257_031.wav",
                     "audio/speech_long/jfk.flac", "audio/speech_commands/yes_1000ms.wav",
                     "audio/speech_commands/no_1000ms.wav"),
        noise_beds=(("audio/background_noise/running_tap.wav", 0.0, 1.0),
                    ("audio/background_noise/dude_miaowing.wav", 0.0, 1.0)),
        music_beds=(("audio/soundtrack/steamboat_willie_1928.mp4", 0.0, 1.0),),
        real_clips=("speech_video/av_film_mary_poppins_clip.mp4", "speech_video/av_film_iron_man_clip.mp4",
                    "speech_video/av_talking_head_address_hdtf.mp4", "hollywood2/actioncliptrain00001.avi"),
        clips={"clean": 2, "noise": 6, "music": 4, "real": 1}),
}

#: SNRs (dB) a speech event is mixed at over a noise or music bed.
SNRS_DB = (20.0, 10.0, 5.0, 0.0, -5.0)


@dataclass(frozen=True)
class MixtureOptions:
    """What decides the audio, hence the manifest's fingerprint (with `SPLITS` and the assets)."""

    seed: int = 0
    clip_s: float = 30.0
    window_s: float = WINDOW_S
    hop_s: float = HOP_S
    snrs_db: tuple[float, ...] = SNRS_DB
    scale: float = 1.0          # multiplies every split's clip counts (at least one clip per subset)

    def __post_init__(self) -> None:
        if self.clip_s < self.window_s or self.window_s <= 0 or not 0 < self.hop_s <= self.window_s:
            raise ConfigError(f"need 0 < hop <= window <= clip seconds, got hop {self.hop_s}, window "
                              f"{self.window_s}, clip {self.clip_s}")
        if self.scale <= 0:
            raise ConfigError(f"scale must be positive, got {self.scale}")


# ---------------------------------------------------------------------------------------
# Audio in and out
# ---------------------------------------------------------------------------------------

def load_audio(source: Path | str | bytes) -> np.ndarray:
    """A file's (or WAV bytes') first audio track as 16 kHz mono float32 (PyAV resampling)."""
    import av   # a dependency of the project; imported here so the module loads without it

    container = av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    try:
        if not container.streams.audio:
            raise ConfigError(f"{source if not isinstance(source, bytes) else 'audio bytes'} has no audio track")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        blocks = []
        for frame in container.decode(container.streams.audio[0]):
            blocks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        blocks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    finally:
        container.close()
    return np.concatenate(blocks).astype(np.float32) if blocks else np.zeros(0, np.float32)


def write_wav(path: Path, samples: np.ndarray) -> None:
    """16-bit PCM mono WAV at 16 kHz (what every audio source here reads)."""
    pcm = np.clip(np.round(np.asarray(samples, np.float64) * 32767), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())


def espeak(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """`text` spoken by espeak-ng (16 kHz mono float32, silent ends trimmed)."""
    if shutil.which(ESPEAK) is None:
        raise ConfigError(f"{ESPEAK} is not installed (Debian: apt-get install -y espeak-ng; scripts/setup.sh does it)")
    done = subprocess.run([ESPEAK, "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
                          capture_output=True, check=False, timeout=60)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"{ESPEAK} -v {voice} failed ({done.returncode}): {done.stderr.decode(errors='replace')[:200]}")
    return trim_silence(load_audio(done.stdout))


def trim_silence(samples: np.ndarray, floor_db: float = -50.0) -> np.ndarray:
    """Without the leading and trailing samples quieter than `floor_db` below the peak (10 ms frames)."""
    frame = SAMPLE_RATE // 100
    if samples.size < frame:
        return samples
    frames = samples[: samples.size // frame * frame].reshape(-1, frame)
    level = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-12
    loud = np.flatnonzero(20 * np.log10(level / level.max()) > floor_db)
    return samples[loud[0] * frame:(loud[-1] + 1) * frame] if loud.size else samples[:0]


def power(samples: np.ndarray) -> float:
    return float(np.mean(np.asarray(samples, np.float64) ** 2)) if samples.size else 0.0


def synthetic_music(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Music-like sound: a random chord progression of harmonic notes with decaying envelopes, a bass
    line, a kick and hi-hats at a random tempo (the training splits have no real music to spare)."""
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, np.float64)
    beat = 60.0 / rng.uniform(70, 160)
    root = rng.uniform(110, 220)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    t_note = np.arange(int(beat * 2 * SAMPLE_RATE)) / SAMPLE_RATE
    timbre = rng.uniform(0.2, 0.8, 6) ** np.arange(1, 7)     # harmonic weights: bright to dull
    for start in np.arange(0, seconds, beat * 2):
        chord = root * 2 ** (scale[rng.choice(8, 3, replace=False)] / 12)
        note = sum(w * np.sin(2 * np.pi * f * h * t_note) for f in chord for h, w in enumerate(timbre, 1))
        note = note * np.exp(-t_note * rng.uniform(1.5, 5)) / len(chord)
        i = int(start * SAMPLE_RATE)
        out[i:i + note.size] += note[: n - i]
    t_hit = np.arange(int(0.15 * SAMPLE_RATE)) / SAMPLE_RATE
    kick = np.sin(2 * np.pi * (60 + 80 * np.exp(-t_hit * 30)) * t_hit) * np.exp(-t_hit * 20)
    for start in np.arange(0, seconds, beat):
        i = int(start * SAMPLE_RATE)
        out[i:i + kick.size] += 0.8 * kick[: n - i]
        j = int((start + beat / 2) * SAMPLE_RATE)
        if j < n:
            hat = rng.normal(0, 0.15, min(800, n - j)) * np.exp(-np.arange(min(800, n - j)) / 150)
            out[j:j + hat.size] += hat
    return (out / (np.abs(out).max() + 1e-9)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Building clips
# ---------------------------------------------------------------------------------------

class _Assets:
    """Decoded shared recordings, each loaded once."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, np.ndarray] = {}

    def audio(self, relative: str) -> np.ndarray:
        if relative not in self._cache:
            path = self.root / relative
            if not path.is_file():
                raise ConfigError(f"asset {relative} not found under {self.root}; set INFI_ASSETS")
            self._cache[relative] = load_audio(path)
        return self._cache[relative]


def sentence(rng: np.random.Generator, vocabulary: Sequence[str]) -> str:
    """1-20 words from `vocabulary`: 1 word a fifth of the time, 2 words a seventh, else 3-20."""
    draw = rng.random()
    count = 1 if draw < 0.2 else 2 if draw < 0.34 else int(rng.integers(3, 21))
    words = [vocabulary[i] for i in rng.integers(0, len(vocabulary), count)]
    text = " ".join(words)
    return text[0].upper() + text[1:] + ("?" if rng.random() < 0.15 else ".")


def _speech_event(rng: np.random.Generator, plan: SplitPlan, assets: _Assets) -> tuple[np.ndarray, dict]:
    """One utterance to place: espeak-ng (3 in 4 when a split has both) or a real recording or crop."""
    synthetic = bool(plan.voices) and (not plan.real_speech or rng.random() < 0.75)
    if synthetic:
        text = sentence(rng, plan.vocabulary)
        voice = str(plan.voices[rng.integers(len(plan.voices))])
        rate, pitch = int(rng.integers(120, 241)), int(rng.integers(15, 86))
        return espeak(text, voice, rate, pitch), {"kind": "espeak", "voice": voice, "rate": rate, "pitch": pitch,
                                                  "text": text}
    source = str(plan.real_speech[rng.integers(len(plan.real_speech))])
    samples = trim_silence(assets.audio(source))
    start = 0
    if samples.size > SAMPLE_RATE and rng.random() < 0.5:        # a crop: short or cut-off speech
        length = int(rng.uniform(0.3, min(3.0, samples.size / SAMPLE_RATE)) * SAMPLE_RATE)
        start = int(rng.integers(0, samples.size - length + 1))
        samples = samples[start:start + length]
    return samples, {"kind": "real", "source": source, "source_start_s": round(start / SAMPLE_RATE, 4),
                     "speaker": speaker_of(source)}


def speaker_of(source: str) -> str:
    """Who speaks in a shared recording, as far as its name says (LibriSpeech and VCTK ids; else the set)."""
    name = Path(source).stem
    if "librispeech" in source:
        return {"another_door": "librispeech-3536"}.get(name, "librispeech-251")
    if "vctk" in source:
        return "vctk-" + name.split("_")[0]
    if "speech_commands" in source:
        return "speech-commands-tflite-micro" if name.endswith("_1000ms") else "speech-commands-alif"
    return name


def _bed(rng: np.random.Generator, beds: Sequence[tuple[str, float, float]], samples: int,
         assets: _Assets) -> tuple[np.ndarray, dict]:
    name, lo, hi = beds[rng.integers(len(beds))]
    if name == "synth":
        return synthetic_music(rng, samples / SAMPLE_RATE), {"name": "synth-music", "file": None}
    audio = assets.audio(name)
    first, last = int(lo * audio.size), int(hi * audio.size)
    stretch = audio[first:last]
    start = int(rng.integers(0, max(1, stretch.size - samples)))
    piece = stretch[start:start + samples]
    while piece.size < samples:              # a range shorter than the clip loops
        piece = np.concatenate([piece, stretch[: samples - piece.size]])
    return piece.astype(np.float32), {"name": Path(name).stem, "file": name, "range": [lo, hi],
                                      "start_s": round((first + start) / SAMPLE_RATE, 4)}


@dataclass
class Clip:
    """One built clip: the mix and its parts (kept for checking SNRs), and its manifest record."""

    mix: np.ndarray
    speech: np.ndarray
    bed: np.ndarray
    record: dict[str, Any]


def build_clip(rng: np.random.Generator, plan: SplitPlan, subset: str, options: MixtureOptions,
               assets: _Assets) -> Clip:
    """A clip of `subset` (clean, noise or music): speech events with speech-free gaps over a bed."""
    n = int(round(options.clip_s * SAMPLE_RATE))
    if subset == "clean":
        bed, bed_record = np.zeros(n, np.float32), None
    else:
        bed, bed_record = _bed(rng, plan.noise_beds if subset == "noise" else plan.music_beds, n, assets)
        level_db = rng.uniform(-35, -20)      # the bed's RMS level, dBFS
        bed = bed * np.float32(10 ** (level_db / 20) / math.sqrt(max(power(bed), 1e-12)))
        bed_record["level_dbfs"] = round(level_db, 2)
    speech = np.zeros(n, np.float32)
    events, at = [], int(rng.uniform(0, 3) * SAMPLE_RATE)
    while True:
        samples, event = _speech_event(rng, plan, assets)
        if samples.size == 0 or at + samples.size > n:
            break
        if subset == "clean":
            gain = 10 ** (rng.uniform(-30, -15) / 20) / math.sqrt(max(power(samples), 1e-12))
            event["snr_db"] = None
        else:
            snr = float(options.snrs_db[rng.integers(len(options.snrs_db))])
            gain = math.sqrt(power(bed[at:at + samples.size]) * 10 ** (snr / 10) / max(power(samples), 1e-12))
            event["snr_db"] = snr
        speech[at:at + samples.size] += (samples * gain).astype(np.float32)
        events.append({**event, "start_s": round(at / SAMPLE_RATE, 4), "end_s": round((at + samples.size) / SAMPLE_RATE, 4)})
        # Speech-free stretches: mostly short pauses, a third of the time 3-8 s of bed alone.
        at += samples.size + int((rng.uniform(3, 8) if rng.random() < 0.33 else rng.uniform(0.3, 2.5)) * SAMPLE_RATE)
    mix = speech + bed
    peak = float(np.abs(mix).max()) if mix.size else 0.0
    if peak > 0.99:                           # scale the whole clip: every SNR stays as it was
        speech, bed, mix = (x * np.float32(0.99 / peak) for x in (speech, bed, mix))
    return Clip(mix, speech, bed, {"subset": subset, "bed": bed_record, "events": events})


def window_records(samples: int, events: Sequence[dict], options: MixtureOptions) -> list[dict]:
    """Per window (as the audio sources cut them, stages/sources/windows.py): start, the events it
    holds and how many seconds of speech."""
    window, hop = int(round(options.window_s * SAMPLE_RATE)), int(round(options.hop_s * SAMPLE_RATE))
    count = 0 if samples <= 0 else 1 if samples <= window else math.ceil((samples - window) / hop) + 1
    records = []
    for seq in range(count):
        lo, hi = seq * options.hop_s, seq * options.hop_s + options.window_s
        inside = [(i, min(hi, e["end_s"]) - max(lo, e["start_s"])) for i, e in enumerate(events)]
        inside = [(i, overlap) for i, overlap in inside if overlap > 0]
        snrs = [events[i]["snr_db"] for i, _ in inside if events[i].get("snr_db") is not None]
        records.append({"seq": seq, "start_s": round(lo, 4), "events": [i for i, _ in inside],
                        "speech_s": round(sum(overlap for _, overlap in inside), 4),
                        "min_snr_db": min(snrs) if snrs else None})
    return records


def _clip_rng(seed: int, split: str, subset: str, index: int) -> np.random.Generator:
    """Each clip its own stream of random numbers: a clip does not change when others are added."""
    words = [seed, *hashlib.sha256(f"{split}/{subset}".encode()).digest()[:4], index]
    return np.random.default_rng(np.random.SeedSequence(words))


def fingerprint(options: MixtureOptions, splits: dict[str, SplitPlan]) -> str:
    identity = {"format": MIXTURE_FORMAT, "options": asdict(options),
                "splits": {name: asdict(plan) for name, plan in splits.items()}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_mixture_dir(seed: int = 0) -> Path:
    return cache_dir() / "speech-mixtures" / f"seed-{seed}"


def build_mixtures(out: Path | None = None, options: MixtureOptions = MixtureOptions(),
                   splits: dict[str, SplitPlan] | None = None, assets: Path | None = None,
                   rebuild: bool = False, say=None) -> Path:
    """Write every split's clips and ``manifest.json`` under `out`; returns the manifest's path.

    A manifest already there with the same fingerprint (format, options, plan) and every clip
    present is kept: the same seed gives the same bytes, so the labels' cache stays valid.
    """
    splits = SPLITS if splits is None else splits
    out = Path(out or default_mixture_dir(options.seed))
    manifest_path = out / "manifest.json"
    key = fingerprint(options, splits)
    if manifest_path.is_file() and not rebuild:
        existing = json.loads(manifest_path.read_text())
        if existing.get("fingerprint") == key and all((out / c["file"]).is_file() for c in existing["clips"]):
            log.info("mixtures in %s are up to date (fingerprint %s)", out, key)
            return manifest_path
    store = _Assets(Path(assets or assets_dir()))
    clips = []
    for split, plan in splits.items():
        for subset, wanted in plan.clips.items():
            if subset == "real":
                clips.extend(_real_clips(plan, split, out, store, options))
                continue
            for index in range(max(1, round(wanted * options.scale))):
                name = f"{split}/{subset}-{index:03d}.wav"
                clip = build_clip(_clip_rng(options.seed, split, subset, index), plan, subset, options, store)
                write_wav(out / name, clip.mix)
                clips.append({"file": name, "split": split, **clip.record, "seconds": options.clip_s,
                              "samples": int(clip.mix.size),
                              "windows": window_records(clip.mix.size, clip.record["events"], options)})
                if say:
                    say(f"{name}: {len(clip.record['events'])} speech events")
    manifest = {"format": MIXTURE_FORMAT, "fingerprint": key, "seed": options.seed, "sample_rate": SAMPLE_RATE,
                "options": asdict(options), "splits": {name: asdict(plan) for name, plan in splits.items()},
                "clips": clips}
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest_path


def _real_clips(plan: SplitPlan, split: str, out: Path, store: _Assets, options: MixtureOptions) -> list[dict]:
    """The "real" subset: each recording's sound as it is, decoded to 16 kHz mono."""
    records = []
    for source in plan.real_clips:
        audio = store.audio(source)
        name = f"{split}/real-{Path(source).stem}.wav"
        write_wav(out / name, audio)
        # Where speech lies in a recording is not known: its windows say None, not 0 s.
        windows = [{**window, "speech_s": None} for window in window_records(audio.size, [], options)]
        records.append({"file": name, "split": split, "subset": "real", "bed": None, "source": source,
                        "events": [], "seconds": round(audio.size / SAMPLE_RATE, 4), "samples": int(audio.size),
                        "windows": windows})
    return records


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{directory} holds no manifest.json: build it with `infistream filter mixtures`")
    return json.loads(path.read_text())


def clip_files(directory: Path) -> list[Path]:
    """The audio files a mixture directory's manifest names, in its order."""
    return [Path(directory) / clip["file"] for clip in read_manifest(directory)["clips"]]


def labelled_windows(directory: Path, settings: RecognizerSettings | None = None, label_dir: Path | None = None,
                     words: int = DEFAULT_WORDS, split: str | None = None) -> list[dict]:
    """Every window of a mixture directory (of its `split` only, when given) with the
    recognizer's answer (labelling what is not cached): split, subset, clip, seq, bed, events,
    speech seconds, words, text, recognizer ms and ``needs`` (InFi's rule: more than `words`
    words). Clips of other splits are neither read nor labelled."""
    manifest = read_manifest(directory)
    options = manifest["options"]
    settings = settings or RecognizerSettings(window_s=options["window_s"], hop_s=options["hop_s"])
    if (settings.window_s, settings.hop_s) != (options["window_s"], options["hop_s"]):
        raise ConfigError(f"the manifest's windows are {options['window_s']} s every {options['hop_s']} s, "
                          f"the labels' {settings.window_s} s every {settings.hop_s} s")
    rows = []
    for clip in manifest["clips"]:
        if split is not None and clip["split"] != split:
            continue
        labels = read_speech_labels(label_speech(Path(directory) / clip["file"], settings, label_dir))
        if len(labels) != len(clip["windows"]):
            raise RuntimeError(f"{clip['file']}: {len(labels)} labelled windows, the manifest names "
                               f"{len(clip['windows'])}")
        for window, count, text, ms in zip(clip["windows"], labels.words, labels.text, labels.infer_ms):
            rows.append({"split": clip["split"], "subset": clip["subset"], "clip": clip["file"],
                         "bed": (clip["bed"] or {}).get("name"), **window, "words": int(count), "text": text,
                         "infer_ms": float(ms), "needs": bool(count > words)})
    return rows


def window_samples(directory: Path, clip: dict, window_s: float, hop_s: float) -> Iterator[np.ndarray]:
    """The windows of one clip as the audio sources cut them (the last one zero-padded)."""
    audio = load_audio(Path(directory) / clip["file"])
    window, hop = int(round(window_s * SAMPLE_RATE)), int(round(hop_s * SAMPLE_RATE))
    for record in clip["windows"]:
        start = record["seq"] * hop
        piece = np.zeros(window, np.float32)
        part = audio[start:start + window]
        piece[:part.size] = part
        yield piece


def load_split(directory: Path, split: str, settings: RecognizerSettings | None = None, label_dir: Path | None = None,
               words: int = DEFAULT_WORDS) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One split's windows for training or evaluating a filter: (samples float32 [windows, window
    samples], needs bool [windows], the `labelled_windows` rows), labelling what is not cached."""
    manifest = read_manifest(directory)
    options = manifest["options"]
    rows = labelled_windows(directory, settings, label_dir, words, split=split)
    if not rows:
        raise ConfigError(f"{directory} has no window in split {split!r} (splits: "
                          f"{sorted({clip['split'] for clip in manifest['clips']})})")
    arrays = []
    for clip in manifest["clips"]:
        if clip["split"] == split:
            arrays.extend(window_samples(directory, clip, options["window_s"], options["hop_s"]))
    return np.stack(arrays), np.asarray([row["needs"] for row in rows], bool), rows
