"""The binary early-exit network (models/early_exit.py): really binary blocks, exits trained jointly,
correct exit indices under both rules, multiply-adds counted from the shapes, one TFLite part per
block checked against Keras, and a runtime that stops at the first confident exit, whose
decisions flow through the filter stage into the aggregator. Tiny networks, a few steps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from models.audio_features import LogMel, LogMelSettings, mel_filterbank
from models.early_exit import (CLASSES, Cost, EarlyExitPolicy, ExitModels, confident, exit_indices, exit_report,
                               first_exit, normalised_entropy)
from models.registry import parse_policy
from pipeline.errors import ConfigError
from pipeline.message import Message, eos

SETTINGS = LogMelSettings(window_s=0.25, frame=256, hop=128, n_fft=256, mels=8)   # 30 x 8 per window
RATE = SETTINGS.sample_rate


# ------------------------------------------------------------------- the rule, on made-up numbers

def test_maxprob_exits_when_the_top_class_reaches_the_threshold():
    probs = np.array([[0.6, 0.4], [0.9, 0.1], [0.05, 0.95]])
    assert confident(probs, "maxprob", 0.9).tolist() == [False, True, True]
    assert confident(probs, "maxprob", 0.5).tolist() == [True, True, True]


def test_entropy_is_normalised_and_exits_when_low_enough():
    assert normalised_entropy(np.array([0.5, 0.5])) == pytest.approx(1.0)
    assert normalised_entropy(np.array([1.0, 0.0])) == pytest.approx(0.0, abs=1e-9)
    assert normalised_entropy(np.array([0.25] * 4)) == pytest.approx(1.0)
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)       # 0.469
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.99, 0.01]])
    assert normalised_entropy(probs) == pytest.approx([h, 1.0, normalised_entropy(np.array([0.99, 0.01]))])
    assert confident(probs, "entropy", 0.47).tolist() == [True, False, True]
    assert confident(probs, "entropy", 0.46).tolist() == [False, False, True]


def test_exit_indices_are_zero_based_and_the_last_exit_answers_when_none_is_confident():
    all_probs = np.array([
        [[0.95, 0.05], [0.6, 0.4], [0.5, 0.5]],      # exit 0 confident
        [[0.6, 0.4], [0.2, 0.8], [0.03, 0.97]],      # exit 2 (the last) confident
        [[0.6, 0.4], [0.7, 0.3], [0.4, 0.6]],        # none: the last exit answers, reported as 2
    ])
    exits, fired, predicted = exit_indices(all_probs, "maxprob", 0.9)
    assert exits.tolist() == [0, 2, 2] and fired.tolist() == [True, True, False]
    assert predicted.tolist() == [0, 1, 1]
    assert [first_exit(p, "maxprob", 0.9) for p in all_probs] == [(0, True), (2, True), (2, False)]
    assert max(exits) < all_probs.shape[1]                           # never the notebook's exit K+1


def test_the_report_counts_exits_per_class_and_the_work_saved():
    all_probs = np.array([[[0.95, 0.05], [0.9, 0.1]], [[0.5, 0.5], [0.05, 0.95]], [[0.5, 0.5], [0.7, 0.3]]])
    labels = np.array([0, 1, 1])
    costs = [Cost(100, 1000), Cost(110, 2000)]
    report = exit_report(all_probs, labels, "maxprob", 0.9, costs)
    assert report["exit_counts"] == [1, 2] and report["none_confident"] == 1
    assert report["per_class_exits"] == {CLASSES[0]: [1, 0], CLASSES[1]: [0, 2]}
    assert report["per_exit_accuracy"] == pytest.approx([1 / 3, 2 / 3])
    assert report["accuracy"] == pytest.approx(2 / 3)                # the third is wrong at the last exit
    assert report["mean_binary_ops"] == pytest.approx((1000 + 2000 + 2000) / 3)
    assert report["binary_ops_saved"] == pytest.approx(1 - 5000 / 6000)
    assert report["macs_saved"] == pytest.approx(1 - 320 / 330)
    assert report["multiply_adds_saved"] == pytest.approx(1 - (320 + 5000) / (330 + 6000))
    # as a filter: only input 0 is answered (exit 0, "not needed"), and it did not need the model
    assert report["filtered"] == pytest.approx(1 / 3) and report["infi_accuracy"] == 1.0
    wrong = exit_report(all_probs, np.array([1, 1, 1]), "maxprob", 0.9)
    assert wrong["infi_accuracy"] == pytest.approx(2 / 3)


def test_the_work_target_threshold_and_its_cross_fit_never_pick_for_the_inputs_they_score():
    from models.early_exit import cross_fit_exits, work_target_threshold
    costs, grid = [Cost(0, 100), Cost(0, 200)], [0.7, 0.9, 1.0]
    easy = np.array([[[0.8, 0.2], [0.95, 0.05]]] * 4)                 # exit 0 sure and right (label 0)
    fooled = np.array([[[0.8, 0.2], [0.1, 0.9]]] * 2)                 # exit 0 sure and wrong (label 1)
    zeros, ones = np.zeros(4, int), np.ones(2, int)
    assert work_target_threshold(easy, zeros, costs, grid) == 0.7     # half the binary work saved, no loss
    assert work_target_threshold(easy, zeros, costs, grid, saved=0.6) is None
    assert work_target_threshold(np.concatenate([easy, fooled]), np.r_[zeros, ones], costs, grid) is None
    held_out = np.concatenate([easy[:2], fooled])
    fit = cross_fit_exits(easy, zeros, held_out, np.r_[0, 0, 1, 1], np.array([0, 0, 1, 1]), costs, grid)
    # fold 0 is picked for on the calibration inputs and fold 1, which fail: it runs every block;
    # fold 1 is picked for on inputs exit 0 gets right, and is read at that pick, wrong
    assert [f["threshold"] for f in fit["folds"]] == [None, 0.7]
    assert fit["accuracy"] == 0.5 and fit["last_exit_accuracy"] == 1.0
    assert fit["binary_ops_saved"] == pytest.approx(0.25)


def test_log_mel_is_the_filterbank_of_the_power_spectrum():
    bank = mel_filterbank(SETTINGS)
    assert bank.shape == (SETTINGS.n_fft // 2 + 1, SETTINGS.mels) and bank.max() <= 1.0
    assert (bank.sum(0) > 0).all()                                   # no empty band
    t = np.arange(SETTINGS.samples) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    features = LogMel(SETTINGS)(tone)
    assert features.shape == SETTINGS.shape == (30, 8)
    centres = bank.argmax(0) * RATE / SETTINGS.n_fft
    assert features.mean(0).argmax() == np.abs(centres - 1000).argmin()   # the tone's band is loudest
    silence = LogMel(SETTINGS)(np.zeros(100, np.float32))            # short windows are padded
    assert np.allclose(silence, math.log(SETTINGS.floor), atol=1e-3)


# ---------------------------------------------------------------------- the network (TF + larq)

@pytest.fixture(scope="module")
def tf_ready():
    pytest.importorskip("larq")
    tf = pytest.importorskip("tensorflow")
    from models.train import seed_everything
    seed_everything(0, 1)
    return tf


def test_multiply_adds_match_a_hand_count(tf_ready):
    from models.early_exit_train import ExitArchitecture, build_network, layer_costs
    network = build_network(ExitArchitecture(input_shape=(8, 8, 1), stem=2, stem_stride=1, filters=(4, 4)))
    # stem 3x3, 1 -> 2 channels on 8x8: 8*8*9*1*2; block 0, 2 -> 4 channels on 8x8 (binary):
    # 8*8*9*2*4; pooled to 4x4; block 1, 4 -> 4 on 4x4: 4*4*9*4*4; each head 4 -> 2 dense.
    assert network.costs["stem"] == {"macs": 1152, "binary_ops": 0}
    assert network.costs["blocks"] == [{"macs": 0, "binary_ops": 4608}, {"macs": 0, "binary_ops": 2304}]
    assert network.costs["exits"] == [{"macs": 1152 + 8, "binary_ops": 4608},
                                      {"macs": 1152 + 16, "binary_ops": 4608 + 2304}]
    by_layer = layer_costs(network.model)          # the same, read from the built layers
    assert by_layer["stem_conv"] == Cost(1152, 0)
    assert by_layer["block0_binary_conv"] == Cost(0, 4608) and by_layer["block1_binary_conv"] == Cost(0, 2304)
    assert by_layer["exit0_dense"] == Cost(8, 0)


def windows(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated windows: label 1 "needed" = a tone burst in noise, 0 = noise alone."""
    rng = np.random.default_rng(seed)
    t = np.arange(SETTINGS.samples) / RATE
    samples = (0.01 * rng.standard_normal((count, SETTINGS.samples))).astype(np.float32)
    labels = np.arange(count) % 2
    for i in np.flatnonzero(labels):
        samples[i] += (0.3 * np.sin(2 * np.pi * rng.uniform(300, 2000) * t)).astype(np.float32)
    return samples, labels


@pytest.fixture(scope="module")
def trained(tf_ready, tmp_path_factory):
    """A tiny 3-exit BNN trained for a few steps on generated windows, exported."""
    from models.early_exit_train import ExitArchitecture, ExitOptions, audio_metadata, export_early_exit, train_network
    samples, labels = windows(24)
    features = LogMel(SETTINGS).batch(samples)[..., None]
    arch = ExitArchitecture(input_shape=features.shape[1:], input_mean=float(features.mean()),
                            input_std=float(features.std()), stem=4, filters=(4, 8, 8))
    training = train_network(arch, features, labels, features[:8], labels[:8],
                             ExitOptions(epochs=1, batch=8, threads=1), say=None)
    out = tmp_path_factory.mktemp("early-exit")
    gaps = export_early_exit(training.network, out, audio_metadata(SETTINGS, "speech"), features[:4])
    return training, out, features, labels, gaps


def test_the_binary_blocks_are_binary_and_their_latent_kernels_clipped(trained):
    training = trained[0]
    layers = training.network.binary_layers()
    assert len(layers) == 3
    for layer in layers:
        assert layer.input_quantizer is not None and layer.kernel_quantizer is not None
    from models.early_exit_train import quantized_kernels
    for kernel, layer in zip(quantized_kernels(training.network), layers):
        assert set(np.unique(kernel).tolist()) == {-1.0, 1.0}        # what the forward pass multiplies by
        latent = layer.get_weights()[0]
        assert len(np.unique(latent)) > 2 and np.abs(latent).max() <= 1.0   # weight_clip


def test_self_distillation_teaches_the_early_exits_and_leaves_the_last_one_to_the_labels(tf_ready):
    import tensorflow as tf
    from models.early_exit_train import distill_loss
    labels = tf.constant([0, 1])
    weights = tf.constant([1.0, 3.0])
    early = tf.constant([[0.6, 0.4], [0.3, 0.7]])
    last = tf.constant([[0.9, 0.1], [0.2, 0.8]])

    def cross_entropy(probs):
        return float(tf.reduce_sum(-tf.math.log(tf.gather(probs, labels, batch_dims=1)) * weights) / 2)

    plain = distill_loss([early, last], labels, weights, [1.0, 1.0], 0.0, 2.0)
    assert float(plain) == pytest.approx(cross_entropy(early) + cross_entropy(last), rel=1e-5)
    # an early exit that already answers as the last one does owes nothing to the teacher
    same = distill_loss([last, last], labels, weights, [1.0, 1.0], 0.5, 2.0)
    assert float(same) == pytest.approx(0.5 * cross_entropy(last) + cross_entropy(last), rel=1e-5)
    # otherwise it pays T^2 KL, and the gradient reaches the last exit through its labels only
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(last)
        taught = distill_loss([early, last], labels, weights, [1.0, 1.0], 0.5, 2.0)
        alone = distill_loss([early, last], labels, weights, [1.0, 1.0], 0.0, 2.0)
    assert float(taught) > 0.5 * cross_entropy(early) + cross_entropy(last)
    assert np.allclose(tape.gradient(taught, last), tape.gradient(alone, last))


@pytest.mark.parametrize("distill", [0.0, 0.5])
def test_all_exits_train_jointly(tf_ready, distill):
    """One step moves the weights of every exit head and every block (with or without
    self-distillation), and the binary kernels stay clipped."""
    from models.early_exit_train import ExitArchitecture, ExitOptions, train_network
    samples, labels = windows(8, seed=1)
    features = LogMel(SETTINGS).batch(samples)[..., None]
    arch = ExitArchitecture(input_shape=features.shape[1:], stem=4, filters=(4, 4))
    from models.early_exit_train import build_network
    from models.train import seed_everything
    seed_everything(3, 1)
    initial = {layer.name: [w.copy() for w in layer.get_weights()] for layer in build_network(arch).model.layers}
    seed_everything(3, 1)
    trained_net = train_network(arch, features, labels, features[:0], labels[:0],
                                ExitOptions(epochs=1, batch=8, threads=1, distill=distill), say=None).network
    for name in ("exit0_dense", "exit1_dense", "block0_binary_conv", "block1_binary_conv", "stem_conv"):
        now = trained_net.model.get_layer(name).get_weights()[0]
        assert not np.allclose(now, initial[name][0]), name
    assert all(np.abs(layer.get_weights()[0]).max() <= 1.0 for layer in trained_net.binary_layers())
    with pytest.raises(ValueError, match="distill"):
        train_network(arch, features, labels, features[:0], labels[:0], ExitOptions(epochs=1, distill=1.0), say=None)


def test_export_writes_one_part_per_exit_checked_against_keras(trained):
    _, out, features, _, gaps = trained
    assert sorted(p.name for p in out.iterdir()) == ["exit_0.tflite", "exit_1.tflite", "exit_2.tflite", "metadata.json"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["kind"] == "early-exit" and meta["exits"] == 3 and meta["task"] == "speech"
    assert len(gaps["parts"]) == 3 and gaps["chain"] <= 1e-3
    from models.early_exit_train import predict_exits
    runner = ExitModels([out / f"exit_{k}.tflite" for k in range(3)])
    runner.open()
    keras_probs = predict_exits(trained[0].network, features[:6])
    lite_probs = np.stack([runner.run_all(x) for x in features[:6]])
    assert np.allclose(lite_probs, keras_probs, atol=1e-3)
    assert runner.invocations == [6, 6, 6]


def set_heads(training, biases):
    """Make each exit's answer fixed: kernel 0 and the given bias (None: leave the head)."""
    for k, bias in enumerate(biases):
        if bias is not None:
            dense = training.network.model.get_layer(f"exit{k}_dense")
            kernel, _ = dense.get_weights()
            dense.set_weights([np.zeros_like(kernel), np.asarray(bias, np.float32)])


@pytest.fixture(scope="module")
def rigged(trained, tmp_path_factory):
    """The trained network with fixed heads, exported: exit 0 uniform (never confident), exit 1
    sure the model is not needed (p = 0.999), exit 2 sure it is needed."""
    from models.early_exit_train import audio_metadata, export_early_exit
    training, _, features, _, _ = trained
    set_heads(training, [[0.0, 0.0], [3.5, -3.5], [-3.5, 3.5]])
    out = tmp_path_factory.mktemp("rigged")
    export_early_exit(training.network, out, audio_metadata(SETTINGS, "speech"), features[:2])
    return out


def counting(policy):
    """Wrap each part's interpreter so the test counts invokes itself (not the runtime's counter)."""
    calls = [0] * policy.model.exits
    for k, entry in enumerate(policy.model._runners):
        runner = entry[0]
        original = runner.invoke

        def invoke(k=k, original=original):
            calls[k] += 1
            return original()
        runner.invoke = invoke
    return calls


def test_the_runtime_stops_at_the_first_confident_exit_and_never_computes_later_blocks(rigged):
    samples, _ = windows(4, seed=2)
    policy = parse_policy(f"{rigged}:threshold=0.99")
    assert isinstance(policy, EarlyExitPolicy) and policy.rule == "maxprob"
    with policy:
        calls = counting(policy)
        decisions = [policy.decide(Message("audio", "mic", seq, arrays=(w,))) for seq, w in enumerate(samples)]
    assert [(d.action, d.exit, d.result) for d in decisions] == [("exit", 1, {"needs_recognition": False})] * 4
    assert calls == [4, 4, 0] and policy.model.invocations == [4, 4, 0]      # block 2 never ran
    assert policy.stats.exited == [0, 4, 0]


def test_no_confident_exit_runs_every_block_and_has_no_opinion(rigged):
    samples, _ = windows(3, seed=3)
    policy = parse_policy(f"{rigged}:threshold=1.0")                 # 0.999 is not sure enough
    with policy:
        calls = counting(policy)
        decisions = [policy.decide(Message("audio", "mic", seq, arrays=(w,))) for seq, w in enumerate(samples)]
        assert decisions == [None] * 3 and calls == [3, 3, 3]
        probs = policy.prepare(samples[0]).reshape(3, 2)          # evaluation's path: every exit
    assert policy.stats.none_confident == 3
    assert first_exit(probs, "maxprob", 1.0) == (2, False)            # reported as the last exit, 2


def test_a_confident_needed_is_no_opinion_and_entropy_rule_works_alike(rigged):
    samples, _ = windows(2, seed=4)
    # Entropy of (0.999, 0.001) is 0.011: exit 1 fires at 0.05; at 0.005 none does.
    policy = parse_policy(f"{rigged}:rule=entropy,threshold=0.05")
    with policy:
        decision = policy.decide(Message("audio", "mic", 0, arrays=(samples[0],)))
    assert decision.action == "exit" and decision.exit == 1
    policy = parse_policy(f"{rigged}:rule=entropy,threshold=0.005")
    with policy:
        assert policy.decide(Message("audio", "mic", 0, arrays=(samples[0],))) is None
        assert policy.model.invocations == [1, 1, 1]
    # Exit 2 says "needed" for sure; with exit 1 not confident (uniform too), the policy stays silent.
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.001, 0.999]])
    assert policy.decide_prepared("mic", 0, probs.ravel()) is None
    policy.rule, policy.threshold = "maxprob", 0.99
    assert policy.decide_prepared("mic", 1, probs.ravel()) is None and policy.stats.needed[2] == 1


def test_bad_options_are_refused(rigged):
    with pytest.raises(ConfigError, match="rule"):
        parse_policy(f"{rigged}:rule=median")
    with pytest.raises(ConfigError, match="threshold"):
        parse_policy(f"{rigged}:threshold=2")
    with pytest.raises(ConfigError, match="for speech, not vehicles"):
        parse_policy(f"{rigged}:task=vehicles")


def test_the_shipped_name_says_how_to_train_one_when_none_is_shipped(rigged, tmp_path, monkeypatch):
    import shutil
    import models.early_exit
    monkeypatch.setattr(models.early_exit, "SHIPPED_ROOT", tmp_path)
    with pytest.raises(ConfigError, match="infistream filter train early-exit --task vehicles"):
        parse_policy("early-exit:task=vehicles")
    shutil.copytree(rigged, tmp_path / "speech" / "early-exit")
    policy = parse_policy("early-exit:rule=entropy,threshold=0.2")     # task speech by default
    assert isinstance(policy, EarlyExitPolicy) and policy.name == "early-exit:rule=entropy,threshold=0.2"
    assert (policy.rule, policy.threshold, policy.task) == ("entropy", 0.2, "speech")


def test_exits_flow_through_the_filter_stage_and_the_aggregator_resolves_them(rigged, tmp_path):
    from stages.aggregate import Aggregator
    from stages.filter import Filter
    samples, _ = windows(3, seed=5)
    stage = Filter(f"{rigged}:threshold=0.99")
    stage.setup()
    try:
        filtered = [stage.process(Message("audio", "mic", seq, pts=float(seq), arrays=(w,)))
                    for seq, w in enumerate(samples)]
    finally:
        stage.teardown()
    assert [(m.decision["action"], m.decision["exit"]) for m in filtered] == [("exit", 1)] * 3
    aggregator = Aggregator(task="speech", out=str(tmp_path / "out.jsonl"), summary=str(tmp_path / "summary.json"),
                            print_summary=False)
    aggregator.name = "aggregate"
    aggregator.setup()
    outputs = []
    for message in filtered:
        outputs += aggregator.process(Message("audio", "mic", message.seq, pts=message.pts,
                                              decision=message.decision)) or []
    aggregator.end_of_stream(eos("mic", 3, final=True))
    aggregator.teardown()
    assert [(m.result["words"], m.result["text"], m.result["needs_recognition"]) for m in outputs] == [(0, "", False)] * 3
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line.get("exit") for line in lines if "seq" in line] == [1, 1, 1]
    summary = json.loads((tmp_path / "summary.json").read_text())["total"]
    assert summary["exited"] == 3 and summary["inferred"] == 0


def tiny_frame_training():
    """A 2-exit binary network on eight random 16 px frames, trained one epoch: (training, frames)."""
    from models.early_exit_train import ExitArchitecture, ExitOptions, train_network
    rng = np.random.default_rng(6)
    frames = rng.integers(0, 256, (8, 16, 16, 3)).astype(np.float32)
    labels = np.arange(8) % 2
    arch = ExitArchitecture(input_shape=(16, 16, 3), input_mean=127.5, input_std=127.5, stem=4, stem_stride=1,
                            filters=(4, 8))
    training = train_network(arch, frames, labels, frames[:4], labels[:4], ExitOptions(epochs=1, batch=8, threads=1),
                             say=None)
    return training, frames


def test_the_video_variant_exits_on_frames_with_an_empty_count(tf_ready, tmp_path):
    """Same builder on shrunk frames: a frame the network is sure holds no vehicle exits with
    {"count": 0}, which the vehicle task resolves to no detections."""
    from models.early_exit_train import export_early_exit, video_metadata
    from stages.tasks import VehicleTask
    training, frames = tiny_frame_training()
    assert training.network.costs["blocks"][0] == {"macs": 0, "binary_ops": 16 * 16 * 9 * 4 * 4}
    set_heads(training, [[4.0, -4.0], None])
    export_early_exit(training.network, tmp_path, video_metadata(16), frames[:2])
    policy = parse_policy(str(tmp_path))
    assert policy.input_kind == "video"
    camera = np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with policy:
        decision = policy.decide(Message("video", "cam", 0, arrays=(camera,)))
        assert policy.decide(Message("audio", "mic", 0, arrays=(np.zeros(100, np.float32),))) is None
        assert policy.model.invocations == [1, 0]
    assert (decision.action, decision.exit, decision.result) == ("exit", 0, {"count": 0})
    assert len(VehicleTask().parse_exit(decision.result)) == 0


def test_a_broken_early_exit_directory_is_refused_naming_what_is_wrong(rigged, tmp_path):
    import shutil
    from models.filterdir import open_filter_dir
    broken = tmp_path / "broken"
    shutil.copytree(rigged, broken)
    (broken / "exit_2.tflite").unlink()
    with pytest.raises(ConfigError, match="exit_2.tflite not found"):
        parse_policy(str(broken))
    with pytest.raises(ConfigError, match="holds an early-exit filter, not a skip filter"):
        open_filter_dir(rigged, "skip")
    meta = json.loads((rigged / "metadata.json").read_text())
    meta["input"]["features"]["mels"] = 9
    shutil.copytree(rigged, tmp_path / "other", dirs_exist_ok=True)
    (tmp_path / "other" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="takes"):
        parse_policy(str(tmp_path / "other"))


def test_the_filter_stage_runs_an_early_exit_filter_without_tensorflow(rigged):
    import subprocess
    import sys
    from pathlib import Path
    script = f"""
import sys
import numpy as np
from pipeline.message import Message
from stages.filter import Filter
stage = Filter({str(rigged) + ':threshold=0.99'!r})
stage.setup()
window = np.zeros({SETTINGS.samples}, np.float32)
print(stage.process(Message("audio", "mic", 0, arrays=(window,))).decision["action"])
stage.teardown()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "larq")))
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-2:] == ["exit", "[]"]


def test_target_reads_the_threshold_calibration_wrote_into_the_directory(rigged, tmp_path):
    import json
    import shutil
    directory = tmp_path / "ee"
    shutil.copytree(rigged, directory)
    with pytest.raises(ConfigError, match="no calibration.json"):
        parse_policy(f"{directory}:target=0.95")
    (directory / "calibration.json").write_text(json.dumps({"format": 1, "targets": {"0.95": {"threshold": 0.72}}}))
    assert parse_policy(f"{directory}:target=0.95").threshold == pytest.approx(0.72)
    with pytest.raises(ConfigError, match="no threshold for target 0.9"):
        parse_policy(f"{directory}:target=0.9")
    with pytest.raises(ConfigError, match="not both"):
        parse_policy(f"{directory}:target=0.95,threshold=0.5")
    with pytest.raises(ConfigError, match="rule=maxprob"):
        parse_policy(f"{directory}:target=0.95,rule=entropy")


# ------------------------------------------------------- on frames, as a video Skip filter

def test_vehicle_training_weighs_clips_and_classes_as_skip_does():
    from models.early_exit_train import clip_balanced_weights
    owner = np.array([0, 0, 0, 0, 1, 1])             # a long clip (3 empty, 1 busy) and a short one
    labels = np.array([0, 0, 0, 1, 0, 1])
    weights = clip_balanced_weights(owner, labels)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[owner == 0].sum() == pytest.approx(weights[owner == 1].sum())      # every clip alike
    assert weights[:3].sum() == pytest.approx(weights[3])                              # both classes alike


def test_training_jitters_training_batches_only_and_uses_the_given_weights(tf_ready):
    from models.early_exit_train import ExitArchitecture, ExitOptions, train_network
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (8, 8, 8, 3)).astype(np.uint8)
    labels = np.arange(8) % 2
    seen = []

    def jitter(batch, generator):
        seen.append(len(batch))
        assert isinstance(generator, np.random.Generator)
        return batch.astype(np.float32)[:, ::-1]
    arch = ExitArchitecture(input_shape=(8, 8, 3), input_mean=127.5, input_std=127.5, stem=2, stem_stride=1,
                            filters=(2, 2))
    options = ExitOptions(epochs=2, batch=4, threads=1)
    train_network(arch, frames, labels, frames[:4].astype(np.float32), labels[:4], options, say=None, augment=jitter)
    assert seen == [4, 4, 4, 4]                       # 2 epochs x 2 batches; validation never jittered
    with pytest.raises(ValueError, match="one weight per input"):
        train_network(arch, frames, labels, frames[:4], labels[:4], options, say=None, sample_weights=np.ones(3))


@pytest.fixture(scope="module")
def frame_exit_dir(tf_ready, tmp_path_factory):
    """A tiny 2-exit network on 16 px frames, its heads fixed: exit 0 sure (p ~ 0.975) that no
    model is needed, exit 1 sure it is; exported as a vehicles filter trained on clip "tiny"."""
    from models.early_exit_train import export_early_exit, video_metadata
    training, frames = tiny_frame_training()
    set_heads(training, [[1.83, -1.83], [-4.0, 4.0]])          # softmax: 0.975 / 0.025
    out = tmp_path_factory.mktemp("frame-exit")
    export_early_exit(training.network, out, {**video_metadata(16), "trained_on": ["tiny"]}, frames[:2])
    return out


def test_video_calibration_picks_the_most_cautious_maxprob_that_filters_as_much(frame_exit_dir, tmp_path,
                                                                                 monkeypatch):
    """`infistream filter calibrate DIR` on an early-exit directory: the replay of its exits over
    the validation frames, as for Skip. Its maxprob grid runs the other way (a smaller threshold
    exits more), so among thresholds doing the same on validation the largest is picked, not 0.5."""
    import shutil

    from models.calibrate import calibrate_directory
    from tests.models.test_evaluate import tiny_clip
    directory = tmp_path / "ee"
    shutil.copytree(frame_exit_dir, directory)
    clip, label_dir = tiny_clip(tmp_path)
    monkeypatch.setenv("INFI_CACHE", str(tmp_path / "cache"))
    written = calibrate_directory(directory, targets=[0.5, 0.95], clips=[clip], label_dir=label_dir)
    assert set(written) == {str(directory)}
    document = json.loads((directory / "calibration.json").read_text())
    assert document["metric"] == "count-agreement" and document["data"][0]["clip"] == "tiny:val"
    policy = parse_policy(f"{directory}:threshold=0.5")
    with policy:
        top = float(policy.prepare(np.zeros((32, 32, 3), np.uint8)).reshape(2, 2)[0].max())
    assert top == pytest.approx(0.975, abs=0.002)
    grid = policy.threshold_grid()
    # 0.5: every validation frame exits at block 0 (half of them hold a vehicle): 0.5 agreement
    entry = document["targets"]["0.5"]
    assert entry["validation"]["filtered"] == 1.0 and entry["validation"]["agreement"] == 0.5
    assert entry["threshold"] == pytest.approx(max(t for t in grid if t <= top))
    # 0.95: only a threshold above the exit's probability keeps every frame for the model
    entry = document["targets"]["0.95"]
    assert entry["validation"]["filtered"] == 0.0 and entry["threshold"] > top
    assert parse_policy(f"{directory}:target=0.95").threshold == pytest.approx(entry["threshold"])


def test_video_calibration_finds_the_clips_and_refuses_a_speech_network(rigged, tmp_path):
    """An early-exit directory written before its metadata had "trained_on" at the top level keeps
    its clips under "training"; a speech network is pointed to --task speech."""
    from models.calibrate import open_filter, training_clips
    from models.dataset import default_clips
    try:
        clip = default_clips()[0]
    except ConfigError as error:
        pytest.skip(f"no shared traffic clips: {error}")
    old = tmp_path / "old"
    old.mkdir()
    (old / "metadata.json").write_text(json.dumps({"format": 1, "kind": "early-exit", "task": "vehicles",
                                                   "training": {"trained_on": [clip.stem]}}))
    assert training_clips([old]) == [clip]
    with pytest.raises(ConfigError, match="calibrate --task speech"):
        open_filter(rigged)


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_train_refuses_a_distillation_weight_outside_0_to_1(value):
    import argparse

    from models import cli
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["filter", "train", "early-exit", "--exit-distill", value])
    with pytest.raises(ConfigError, match="--exit-distill must lie in"):
        args.handler(args)


def test_the_speech_bench_reads_the_exits_target_on_val_on_test_and_cross_fitted(trained, tmp_path, monkeypatch):
    """apps/bench_speech.py early_exit_report on a trained directory: the val pick, its test
    reading and the cross-fit (each half of the test clips read at a pick it took no part in)."""
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "apps"))
    import bench_speech
    from models.speech_eval import Windows
    _, out, _, _, _ = trained

    def split(name, seed):
        samples, labels = windows(16, seed)
        subsets = np.repeat(["noise", "music"], 8)
        clips = np.asarray([f"{name}-{s}-{i % 2}" for i, s in enumerate(subsets)])   # two clips per subset
        return Windows(name, samples, labels.astype(bool), np.full(16, 100.0), subsets, clips, np.arange(16))

    summary = bench_speech.early_exit_report(str(out), split("val", 5), split("test", 6), None, tmp_path / "exits.png")
    json.dumps(summary)                                   # the probabilities were not left in it
    grid = [row["threshold"] for row in summary["val"]["sweep_maxprob"]]
    assert summary["picked_on_val"] is None or summary["picked_on_val"] in grid
    fit = summary["cross_fit"]
    assert [f["fold"] for f in fit["folds"]] == [0, 1] and sum(f["scored"] for f in fit["folds"]) == 16
    assert all(f["threshold"] is None or f["threshold"] in grid for f in fit["folds"])
    assert 0 <= fit["accuracy"] <= 1 and 0 <= fit["binary_ops_saved"] <= 1
    assert fit["last_exit_accuracy"] == pytest.approx(summary["test"]["last_exit_accuracy"], abs=1e-4)
    assert (tmp_path / "exits.png").stat().st_size > 0
