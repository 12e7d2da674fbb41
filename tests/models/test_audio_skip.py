"""InFi-Skip on log-mel spectrograms: a tiny network trained on generated windows in seconds,
exported, and run by the runtime policy (LiteRT); the shipped filter on real speech."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models.audio_skip import KIND, SHIPPED, AudioSkipDir, AudioSkipPolicy
from models.audio_skip_train import (AudioSkipOptions, augment_windows, export_audio_skip, random_eq, skip_report,
                                     split_report, threshold_for_accuracy, train_audio_skip)
from models.registry import parse_policy
from pipeline.errors import ConfigError
from pipeline.message import Message
from tests.conftest import asset_or_skip

RATE = 16_000
SAMPLES = RATE // 2          # 0.5 s windows: 24 log-mel frames, a network trained in seconds


def speechy(rng: np.random.Generator) -> np.ndarray:
    """Loud harmonic bursts, syllable-like: the class that 'needs recognition' here."""
    t = np.arange(SAMPLES) / RATE
    pitch = rng.uniform(100, 250)
    tone = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 6))
    envelope = (np.sin(2 * np.pi * rng.uniform(3, 6) * t) > 0).astype(np.float32)
    return (0.3 * tone * envelope).astype(np.float32)


def quiet(rng: np.random.Generator) -> np.ndarray:
    """Faint white noise or silence: nothing to recognise."""
    return (rng.normal(0, rng.choice([0.0, 1e-3]), SAMPLES)).astype(np.float32)


def windows(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    needs = np.arange(count) % 2 == 0
    return np.stack([speechy(rng) if need else quiet(rng) for need in needs]), needs


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny filter directory: 6 epochs on 48 generated windows (a few seconds)."""
    train_x, train_y = windows(48, 0)
    val_x, val_y = windows(16, 1)
    options = AudioSkipOptions(epochs=6, batch=8, learning_rate=5e-3, filters=(4, 8), dense=4, threads=1)
    training = train_audio_skip(train_x, train_y, val_x, val_y, options, beds=quiet_beds(), say=None)
    out = tmp_path_factory.mktemp("audio-skip")
    export_audio_skip(training, out, val_x[:4], {"splits": {"train": 48, "val": 16}, "seed": 0}, options)
    return out


def quiet_beds() -> np.ndarray:
    rng = np.random.default_rng(2)
    return np.stack([rng.normal(0, 0.01, SAMPLES).astype(np.float32) for _ in range(3)])


def audio(window: np.ndarray, seq: int = 0) -> Message:
    return Message("audio", "mic", seq, arrays=(window,))


# ---------------------------------------------------------------------------- the directory

def test_export_writes_a_directory_the_runtime_reads(trained):
    meta = json.loads((trained / "metadata.json").read_text())
    assert meta["kind"] == KIND and meta["task"] == "speech" and meta["words"] == 2
    assert meta["input"]["kind"] == "audio" and meta["input"]["shape"] == [24, 40, 1]
    assert meta["training"]["splits"] == {"train": 48, "val": 16} and meta["training"]["seed"] == 0
    assert {"auc", "at_infi_0.95"} <= set(meta["training"]["validation"])
    assert meta["tflite"]["max_abs_gap"] <= 1e-4 and meta["tflite"]["bytes"] == (trained / "model.tflite").stat().st_size
    directory = AudioSkipDir.open(trained)
    assert directory.settings.shape == (24, 40) and directory.thresholds is None
    assert directory.threshold_for(0.95) == meta["threshold"]["value"]


def test_among_epochs_level_on_val_auc_the_lowest_val_loss_is_kept(trained):
    """The generated val split is easy: AUC 1.0 from the first epoch on. The epoch kept is then
    the one with the lowest val loss, not the first, least trained one."""
    history = json.loads((trained / "metadata.json").read_text())["training"]["history"]
    best_epoch = json.loads((trained / "metadata.json").read_text())["training"]["best_epoch"]
    best_auc = max(h["auc"] for h in history)
    level = [h for h in history if h["auc"] == best_auc]
    assert best_epoch == min(level, key=lambda h: (h["val_loss"], h["epoch"]))["epoch"]
    from models.audio_skip_train import binary_crossentropy
    assert binary_crossentropy([1, 0], [0.9, 0.1]) == pytest.approx(-np.log(0.9))
    assert binary_crossentropy([1], [1.0]) == pytest.approx(-np.log(1 - 1e-7))     # clipped, finite


def test_the_network_tells_the_generated_classes_apart(trained):
    x, needs = windows(16, 3)
    with AudioSkipPolicy.from_directory(trained) as policy:
        p = np.array([policy.prepare(window)[0] for window in x])
    assert ((0 <= p) & (p <= 1)).all()
    assert p[needs].min() > p[~needs].max()


# ------------------------------------------------------------------------ threshold semantics

@pytest.mark.parametrize("threshold, skipped", [(0.0, 0), (1.0 + 1e-6, 8)])
def test_a_larger_threshold_skips_more(trained, threshold, skipped):
    x, _ = windows(8, 4)
    policy = AudioSkipPolicy(AudioSkipDir.open(trained), threshold=min(threshold, 1.0))
    policy.threshold = threshold
    with policy:
        decisions = [policy.decide(audio(window, seq)) for seq, window in enumerate(x)]
    assert sum(d is not None for d in decisions) == skipped
    assert all(d.action == "skip" and d.policy == KIND for d in decisions if d is not None)


def test_skips_the_quiet_window_and_has_no_opinion_on_the_loud_one(trained):
    rng = np.random.default_rng(5)
    with AudioSkipPolicy.from_directory(trained, "threshold=0.5", name="mine") as policy:
        p_speech, p_quiet = policy.prepare(speechy(rng))[0], policy.prepare(np.zeros(SAMPLES, np.float32))[0]
        threshold = (p_speech + p_quiet) / 2
        policy.threshold = threshold
        assert policy.decide(audio(speechy(rng))) is None
        decision = policy.decide(audio(np.zeros(SAMPLES, np.float32)))
        assert decision is not None and decision.action == "skip" and decision.policy == "mine"
        assert policy.decide(Message("video", "cam", 0, arrays=(np.zeros((8, 8, 3), np.uint8),))) is None


def test_threshold_grid_increases_from_0_to_1(trained):
    grid = AudioSkipPolicy.from_directory(trained).threshold_grid()
    assert grid[0] == 0.0 and grid[-1] == 1.0 and (np.diff(grid) > 0).all()


@pytest.mark.parametrize("needs, p, accuracy, threshold, skip_rate", [
    # 10 windows, 0.9 accuracy: one needed window may be skipped
    ([0, 0, 0, 1, 1, 1, 1, 1, 1, 1], [.1, .2, .3, .05, .6, .7, .8, .9, .95, .99], 0.9, 0.45, 0.4),
    ([0, 0, 0, 1, 1, 1, 1, 1, 1, 1], [.1, .2, .3, .05, .6, .7, .8, .9, .95, .99], 1.0, 0.05, 0.0),
    ([0, 0, 0, 0], [.1, .2, .3, .4], 0.95, np.nextafter(0.4, 1), 1.0),       # nothing needed: skip all
])
def test_threshold_for_accuracy_keeps_infi_accuracy(needs, p, accuracy, threshold, skip_rate):
    needs, p = np.asarray(needs, bool), np.asarray(p)
    found = threshold_for_accuracy(needs, p, accuracy)
    assert found == pytest.approx(threshold)
    report = skip_report(needs, p, found)
    assert report["skip_rate"] == pytest.approx(skip_rate) and report["infi_accuracy"] >= accuracy - 1e-9


def test_skip_report_counts_agreement_with_the_rule():
    report = skip_report(np.array([1, 0, 1, 0], bool), np.array([0.1, 0.2, 0.9, 0.8]), 0.5)
    assert report == {"threshold": 0.5, "skip_rate": 0.5, "infi_accuracy": 0.75, "agreement": 0.5}


def test_augmentation_keeps_shapes_and_silence_gets_only_quiet_noise():
    x = np.stack([speechy(np.random.default_rng(0)), np.zeros(SAMPLES, np.float32)])
    out = augment_windows(x, quiet_beds(), AudioSkipOptions(mix_share=1.0), np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.float32
    assert 0 < np.sqrt(np.mean(out[1] ** 2)) < 10 ** (-20 / 20)      # at most -30 dBFS, +10 dB of gain


def test_random_eq_colours_sound_and_leaves_digital_silence_at_the_floor():
    floor = float(np.log(1e-6))
    log_mels = np.stack([np.full((5, 40), floor, np.float32), np.full((5, 40), 2.0, np.float32)])
    out = random_eq(log_mels, floor, 6.0, np.random.default_rng(0))
    assert np.allclose(out[0], floor)
    shift_db = (out[1] - 2.0) * 10 / np.log(10)
    assert np.abs(shift_db).max() <= 6.0 + 1e-3 and np.ptp(shift_db) > 0.5
    assert np.allclose(shift_db, shift_db[0])          # one curve per window, the same in every frame


def test_split_report_judges_each_subset_at_the_given_threshold():
    needs = np.array([1, 0, 1, 0, 1, 0], bool)
    p = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.3])
    report = split_report(needs, p, ["clean", "clean", "music", "music", "noise", "noise"], 0.5)
    assert set(report) == {"all", "clean", "music", "noise"}
    assert report["clean"]["at_threshold"]["skip_rate"] == 0.5 and report["clean"]["auc"] == 1.0
    assert report["music"]["at_threshold"]["skip_rate"] == 0.0
    assert report["noise"]["at_threshold"] == {"threshold": 0.5, "skip_rate": 1.0, "infi_accuracy": 0.5,
                                               "agreement": 0.5}
    assert report["all"]["best_at_infi_0.95"]["infi_accuracy"] == 1.0      # 5 % of 6 windows: none may be lost


# ------------------------------------------------------------------------ options and errors

def test_a_directory_spec_builds_the_audio_skip_policy(trained):
    policy = parse_policy(f"{trained}:threshold=0.3")
    assert isinstance(policy, AudioSkipPolicy) and policy.threshold == 0.3 and policy.input_kind == "audio"
    default = parse_policy(str(trained))
    assert default.threshold == json.loads((trained / "metadata.json").read_text())["threshold"]["value"]


@pytest.mark.parametrize("argument, message", [
    ("target=0.9", "threshold for target 0.95 only"),
    ("threshold=0.2,target=0.95", "not both"),
    ("k=3", "unknown option"),
    ("threshold=2", "threshold must be 0..1"),
])
def test_bad_options_are_refused(trained, argument, message):
    with pytest.raises(ConfigError, match=message):
        AudioSkipPolicy.from_directory(trained, argument)


def test_calibration_json_takes_precedence(trained, tmp_path):
    copy = tmp_path / "filter"
    shutil.copytree(trained, copy)
    (copy / "calibration.json").write_text(json.dumps({"format": 1, "targets": {"0.9": {"threshold": 0.42}}}))
    assert AudioSkipPolicy.from_directory(copy, "target=0.9").threshold == 0.42
    with pytest.raises(ConfigError, match="no threshold for target 0.95"):
        AudioSkipPolicy.from_directory(copy)


@pytest.mark.parametrize("window, message", [
    (np.zeros(SAMPLES, np.int16), "1-D float32"),
    (np.zeros((2, SAMPLES), np.float32), "1-D float32"),
    (np.zeros(SAMPLES, np.float64), "1-D float32"),
])
def test_a_bad_window_is_refused_saying_what_was_expected(trained, window, message):
    with AudioSkipPolicy.from_directory(trained) as policy:
        with pytest.raises(ValueError, match=message):
            policy.prepare(window)


def test_deciding_before_open_is_an_error(trained):
    with pytest.raises(RuntimeError, match="open"):
        AudioSkipPolicy.from_directory(trained).prepare(np.zeros(SAMPLES, np.float32))


def test_a_mismatched_or_incomplete_directory_is_refused(trained, tmp_path):
    copy = tmp_path / "filter"
    shutil.copytree(trained, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["input"]["features"]["mels"] = 32
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="says \\[1, 24, 40, 1\\]"):
        parse_policy(str(copy))
    (copy / "model.tflite").unlink()
    with pytest.raises(ConfigError, match="not found"):
        AudioSkipDir.open(copy)
    with pytest.raises(ConfigError, match="not a skip filter"):
        from models.filterdir import open_filter_dir
        open_filter_dir(trained, "skip")


# ------------------------------------------------------------------------------ the command

def test_train_skip_task_speech_dispatches_to_the_audio_trainer(monkeypatch, tmp_path):
    import argparse

    from models import audio_skip_train, cli
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    assert parser.parse_args(["filter", "train", "skip"]).task is None          # video, as before
    (tmp_path / "manifest.json").write_text("{}")
    calls = []
    monkeypatch.setattr(audio_skip_train, "train_speech_skip", lambda mixtures, out, options: calls.append(
        (mixtures, out, options)) or SimpleNamespace(validation={"auc": 0.9, "at_infi_0.95": {
            "skip_rate": 0.4, "infi_accuracy": 0.95, "threshold": 0.3}}, seconds=1.0))
    args = parser.parse_args(["filter", "train", "skip", "--task", "speech", "--mixtures", str(tmp_path),
                              "--epochs", "3", "--seed", "7", "--out", str(tmp_path / "out")])
    assert args.handler(args) == 0
    (mixtures, out, options), = calls
    assert (mixtures, out, options.epochs, options.seed, options.words) == (tmp_path, tmp_path / "out", 3, 7, 2)
    for extra, message in ((["--size", "32"], "--size are for video"), ([], "no speech mixtures")):
        bad = parser.parse_args(["filter", "train", "skip", "--task", "speech", *extra, "--mixtures",
                                 str(tmp_path / ("x" if not extra else ""))])
        with pytest.raises(ConfigError, match=message):
            bad.handler(bad)
    reuse = parser.parse_args(["filter", "train", "reuse", "--task", "speech"])
    with pytest.raises(ConfigError, match="reuse is for video"):
        reuse.handler(reuse)


@pytest.mark.parametrize("argv, path", [
    (["skip"], "video"), (["skip", "--task", "vehicles"], "video"), (["reuse"], "video"),
    (["early-exit"], "early-exit speech"), (["early-exit", "--task", "vehicles"], "early-exit vehicles"),
])
def test_train_without_task_speech_keeps_its_old_meaning(monkeypatch, argv, path):
    import argparse

    from models import cli, early_exit

    class Taken(Exception):
        pass

    def video(_clips):
        raise Taken("video")

    def exits(args):
        raise Taken(f"early-exit {args.task}")

    monkeypatch.setattr(cli, "_clips", video)
    monkeypatch.setattr(early_exit, "run_train_command", exits)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["filter", "train", *argv])
    with pytest.raises(Taken, match=f"^{path}$"):
        args.handler(args)


# ------------------------------------------------------------------------------ the shipped one

def test_the_shipped_filter_hears_speech_and_skips_digital_silence(assets):
    if not (SHIPPED / "metadata.json").exists():
        pytest.skip(f"no shipped audio skip filter at {SHIPPED}")
    from models.mixtures import load_audio
    # read speech by a speaker held out of training (the mixtures' test split), and JFK's
    # "And so, my fellow Americans" (the first 2 s of jfk.flac): more than 2 words in every window
    reading = load_audio(asset_or_skip(assets, "audio/librispeech/another_door.wav"))
    jfk = load_audio(asset_or_skip(assets, "audio/speech_long/jfk.flac"))
    policy = parse_policy("audio-skip")
    assert isinstance(policy, AudioSkipPolicy) and policy.name == "audio-skip"
    samples = policy.directory.settings.samples
    spoken = [reading[start:start + samples] for start in range(0, len(reading) - samples + 1, RATE)] + [jfk[:samples]]
    with policy:
        heard = [policy.decide(audio(window, seq)) for seq, window in enumerate(spoken)]
        silent = policy.decide(audio(np.zeros(samples, np.float32), 99))
    assert len(spoken) == 3 and heard == [None] * 3
    assert silent is not None and silent.action == "skip" and silent.policy == "audio-skip"
