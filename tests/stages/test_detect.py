"""The YOLO worker with the real model on real decoded frames: through processes and sockets it
gives what Ultralytics gives directly, a pool of two gives what one gives, only ``infer`` inputs
reach the model, and bad weights fail at setup with a clear message and no network attempt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.graph import GraphRun, parse_graph
from pipeline.message import Message
from pipeline.stage import build_stage
from stages.detect import DEFAULT_WEIGHTS, YoloWorker, offline_environment
from stages.results import VEHICLE_CLASSES
from tests.conftest import asset_or_skip

ROOT = Path(__file__).resolve().parents[2]
CLIP = "traffic/intel_car_detection.mp4"
# Frames 0..101 of the clip: mostly empty road, vehicles at 60-68 (car, truck), 96 (bus, car)
# and 100 (a car at 0.73), so empty and non-empty results are both compared.
FRAMES = 102


@pytest.fixture(scope="module")
def clip(assets) -> Path:
    return asset_or_skip(assets, CLIP)


@pytest.fixture(scope="module")
def weights(assets) -> Path:
    return asset_or_skip(assets, DEFAULT_WEIGHTS)


@pytest.fixture(scope="module")
def frames(clip) -> list[np.ndarray]:
    """The first FRAMES frames decoded with PyAV directly (frame index = the Source's seq), read-only."""
    decoded = []
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            image.flags.writeable = False
            decoded.append(image)
            if len(decoded) == FRAMES:
                break
    return decoded


@pytest.fixture(scope="module")
def reference(weights, frames) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """seq -> (boxes, classes, scores) from Ultralytics itself, not through stages.detect."""
    offline_environment()   # as the worker does, before the import: no download, no writes to $HOME
    from ultralytics import YOLO

    model = YOLO(str(weights), task="detect")
    results = {}
    for seq, frame in enumerate(frames):
        boxes = model.predict(frame, classes=sorted(VEHICLE_CLASSES), verbose=False)[0].boxes
        results[seq] = (boxes.xyxy.numpy(), boxes.cls.numpy().astype(int), boxes.conf.numpy())
    found = {seq: r[1].tolist() for seq, r in results.items() if len(r[1])}
    assert sum(map(len, found.values())) >= 5 and 2 in found[100], found   # the comparison is not vacuous
    return results


def read_records(path: Path) -> tuple[list[dict], list[dict]]:
    """Data records and end-of-stream records of a JSON Lines sink's file."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["kind"] != "eos"], [r for r in records if r["kind"] == "eos"]


def assert_matches_reference(records: list[dict], reference: dict) -> None:
    by_seq: dict[int, dict] = {}
    for record in records:
        assert record["seq"] not in by_seq, f"seq {record['seq']} arrived twice"
        by_seq[record["seq"]] = record
    assert sorted(by_seq) == list(range(FRAMES)), f"missing seqs {sorted(set(range(FRAMES)) - set(by_seq))}"
    for seq, record in by_seq.items():
        boxes, classes, scores = reference[seq]
        result = record["result"]
        assert record["kind"] == "result" and record["decision"] == {"action": "infer"} and record["buffers"] == []
        assert result["task"] == "vehicles" and result["infer_ms"] > 0
        assert result["classes"] == classes.tolist(), f"seq {seq}"
        np.testing.assert_allclose(np.reshape(result["boxes"], (-1, 4)), boxes, atol=0.5, err_msg=f"seq {seq}")
        np.testing.assert_allclose(result["scores"], scores, atol=1e-3, err_msg=f"seq {seq}")


def run_graph(tmp_path: Path, document: dict) -> GraphRun:
    run = GraphRun(parse_graph(document), tmp_path / "run", log_level="WARNING")
    assert run.run() == 0, run.failed
    return run


def source_stage(clip: Path) -> dict:
    return {"name": "source", "stage": "stages.source:Source",
            "params": {"uri": str(clip), "max_frames": FRAMES, "progress": False}}


@pytest.fixture(scope="module")
def one_worker_records(tmp_path_factory, clip, weights) -> list[dict]:
    """source -> detect -> JSON Lines, three processes over ipc."""
    tmp_path = tmp_path_factory.mktemp("one-worker")
    run_graph(tmp_path, {"name": "detect-one", "transport": "ipc", "stages": [
        source_stage(clip),
        {"name": "detect", "stage": "stages.detect:YoloWorker", "inputs": ["source"],
         "params": {"weights": str(weights)}},
        {"name": "sink", "stage": "stages.sinks:JsonlSink", "inputs": ["detect"],
         "params": {"path": str(tmp_path / "out.jsonl")}}]})
    records, ends = read_records(tmp_path / "out.jsonl")
    assert [(e["seq"], e["final"]) for e in ends] == [(FRAMES, True)]
    assert {r["meta"]["worker"] for r in records} == {"detect"}
    return records


@pytest.mark.timeout(120)
def test_detections_through_processes_equal_direct_ultralytics(one_worker_records, reference):
    assert_matches_reference(one_worker_records, reference)


@pytest.mark.timeout(120)
def test_two_workers_sharing_one_source_give_the_same_results_as_one(tmp_path, clip, weights, reference,
                                                                    one_worker_records):
    """Both read the source's PUSH socket over tcp (each frame reaches one); the sink reads both."""
    workers = ["worker-1", "worker-2"]
    run = run_graph(tmp_path, {"name": "detect-pool", "transport": "tcp", "stages": [
        source_stage(clip),
        *({"name": name, "stage": "stages.detect:YoloWorker", "inputs": ["source"], "sources": 0,
           "params": {"weights": str(weights)}} for name in workers),
        {"name": "sink", "stage": "tests.helpers.collect:CollectSink", "inputs": workers, "sources": 1,
         "params": {"path": str(tmp_path / "out.jsonl")}}]})
    records, ends = read_records(tmp_path / "out.jsonl")
    assert [(e["seq"], e["final"]) for e in ends] == [(FRAMES, True)]
    assert_matches_reference(records, reference)
    one = {r["seq"]: r["result"] for r in one_worker_records}
    assert {r["seq"]: {**r["result"], "infer_ms": 0} for r in records} == \
           {seq: {**result, "infer_ms": 0} for seq, result in one.items()}
    served = {name: sum(r["meta"]["worker"] == name for r in records) for name in workers}
    inputs = {name: json.loads(run.metrics_path(name).read_text())["inputs"] for name in workers}
    assert served == inputs and sum(served.values()) == FRAMES
    # A worker that finished loading seconds before the other may serve every frame; say so.
    if min(served.values()) == 0:
        pytest.xfail(f"only one worker was up in time to take frames: {served}")


# ---------------------------------------------------------------------------------------
# Decisions: only `infer` inputs reach the model
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def worker(weights) -> YoloWorker:
    worker = YoloWorker(weights=str(weights))
    worker.name = "detect"
    worker.setup()
    yield worker
    worker.teardown()


def video(frame: np.ndarray, seq: int, decision: dict | None) -> Message:
    return Message("video", "clip", seq, pts=seq / 12.5, media={"pixel_format": "bgr24", "fps": 12.5},
                   arrays=(frame,), decision=decision, meta={"note": "kept"})


@pytest.mark.parametrize("keep_frames", [False, True])
@pytest.mark.parametrize("decision", [
    {"action": "skip", "policy": "stride:2"},
    {"action": "reuse", "ref_seq": 96},
    {"action": "exit", "exit": 1, "result": {"task": "vehicles", "boxes": [], "classes": [], "scores": []}},
])
def test_skip_reuse_and_exit_pass_through_without_the_model(worker, frames, monkeypatch, decision, keep_frames):
    calls = []
    monkeypatch.setattr(worker.detector, "detect", lambda frame: calls.append(frame))
    monkeypatch.setattr(worker, "keep_frames", keep_frames)
    message = video(frames[100], 100, decision)
    out = worker.process(message)
    assert calls == []
    assert out.kind == "video" and out.result is None and out.decision == decision and out.meta == {"note": "kept"}
    assert (out.arrays[0] is frames[100]) if keep_frames else out.arrays == ()


@pytest.mark.parametrize("keep_frames", [False, True])
@pytest.mark.parametrize("decision", [None, {"action": "infer"}])
def test_an_infer_input_gets_the_models_result(worker, frames, reference, monkeypatch, decision, keep_frames):
    monkeypatch.setattr(worker, "keep_frames", keep_frames)
    out = worker.process(video(frames[100], 100, decision))
    boxes, classes, scores = reference[100]
    assert out.kind == "result" and (out.stream, out.seq, out.pts) == ("clip", 100, 100 / 12.5)
    assert out.decision == {"action": "infer"} and out.meta == {"note": "kept", "worker": "detect"}
    assert out.result["classes"] == classes.tolist() == [2]
    np.testing.assert_allclose(out.result["boxes"], boxes, atol=0.5)
    np.testing.assert_allclose(out.result["scores"], scores, atol=1e-3)
    assert (out.arrays[0] is frames[100]) if keep_frames else out.arrays == ()


@pytest.mark.parametrize("change, words", [
    ({"arrays": ()}, "0 arrays"),                                    # an infer decision without its pixels
    ({"media": {"pixel_format": "rgb24"}}, "expects bgr24 frames, got rgb24"),
])
def test_inputs_the_model_cannot_take_are_refused_naming_them(worker, frames, change, words):
    with pytest.raises(ValueError, match=words):
        worker.process(replace(video(frames[0], 7, {"action": "infer"}), **change))


def test_a_grey_frame_is_refused_by_the_detector(worker):
    with pytest.raises(ValueError, match=r"BGR uint8 HxWx3 frame, got uint8 \(48, 64\)"):
        worker.detector.detect(np.zeros((48, 64), np.uint8))


# ---------------------------------------------------------------------------------------
# Parameters and weights
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, expected", [
    ({}, {"conf": 0.25, "iou": 0.7, "imgsz": 640, "classes": (2, 3, 5, 7), "max_det": 300}),
    ({"classes": "all", "conf": "0.5", "imgsz": "320"}, {"classes": None, "conf": 0.5, "imgsz": 320}),
    ({"classes": "7, 2,2"}, {"classes": (7, 2)}),
    ({"classes": 3, "max_det": "10"}, {"classes": (3,), "max_det": 10}),          # YAML gives an int
])
def test_parameters_are_typed_and_checked(params, expected):
    worker = build_stage("stages.detect:YoloWorker", params)
    assert {key: getattr(worker.options, key) for key in expected} == expected and worker.detector is None


@pytest.mark.parametrize("params, words", [
    ({"conf": "1.5"}, "conf must be a number in 0..1, got 1.5"),
    ({"iou": "-0.1"}, "iou must be a number in 0..1"),
    ({"imgsz": "100"}, "imgsz must be a multiple of 32"),
    ({"imgsz": "0"}, "imgsz must be an integer >= 32"),
    ({"max_det": "0"}, "max_det must be an integer >= 1"),
    ({"classes": "car"}, "classes must be 'all' or comma-separated class ids"),
    ({"classes": "2,-1"}, "classes must be"),
    ({"classes": ""}, "classes must be"),
    ({"colour": "red"}, r"no parameter\(s\) \['colour'\]"),
])
def test_bad_parameters_are_refused_before_anything_loads(params, words):
    with pytest.raises(ConfigError, match=words):
        build_stage("stages.detect:YoloWorker", params)


def python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


def test_building_a_worker_imports_no_model_library():
    done = python("""
        import sys
        from pipeline.stage import build_stage
        build_stage("stages.detect:YoloWorker", {"weights": "/no/such/file.pt", "classes": "all"})
        print(sorted(m for m in ("ultralytics", "torch", "torchvision", "tensorflow") if m in sys.modules))
    """)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]


def test_missing_weights_end_the_stage_at_setup_with_exit_3(tmp_path):
    missing = tmp_path / "models" / "yolov8n.pt"   # named like an Ultralytics release: it would try GitHub
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", "stage",
                           "stages.detect:YoloWorker", "--in", f"ipc://{tmp_path}/in.sock",
                           "--param", f"weights={missing}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "failed in setup" in done.stderr and "WeightsNotFoundError" in done.stderr
    assert f"found nothing at {missing}" in done.stderr


# Runs in a fresh interpreter, so that importing Ultralytics happens under the guard, with
# YOLO_OFFLINE unset (the worker must default it). Every non-loopback lookup or connect is
# recorded and refused. The last step is a control: Ultralytics' own YOLO() on a missing
# release name does reach for the network, which the guard must see.
GUARDED = """
    import json, os, socket, sys
    attempts = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
    LOCAL = ("localhost", "127.0.0.1", "::1")

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL and host is not None:
            attempts.append(f"getaddrinfo {host}")
            raise OSError("network disabled by the test")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
            attempts.append(f"connect {address}")
            raise OSError("network disabled by the test")
        return real_connect(self, address)

    socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect
    os.environ.pop("YOLO_OFFLINE", None)
    from pipeline.errors import StageError
    from pipeline.stage import RunOptions, run_stage
    from pipeline.transport import Endpoint
    from stages.detect import YoloWorker
    errors = {}
    for weights in sys.argv[1:]:
        try:
            run_stage(YoloWorker(weights=weights), RunOptions("detect", inputs=[Endpoint.parse(
                "ipc:///tmp/infistream-test-none.sock", bind_default=False)]))
        except StageError as error:
            errors[weights] = str(error)
    ours = list(attempts)
    from ultralytics import YOLO
    try:
        YOLO(sys.argv[-1])
    except Exception:
        pass
    print(json.dumps({"errors": errors, "ours": ours, "control": attempts[len(ours):],
                      "offline": os.environ.get("YOLO_OFFLINE")}))
"""


@pytest.mark.timeout(120)
def test_hub_names_offline_fail_clearly_without_touching_the_network(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "YOLO_OFFLINE"}
    names = ["yolov8n.pt", "yolo11n.pt", "https://example.com/yolov8n.pt", str(tmp_path / "yolov8n.pt")]
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(GUARDED), *names], cwd=tmp_path,
                          capture_output=True, text=True, timeout=110, env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ours"] == [] and report["offline"] == "1"
    assert report["control"], "the guard saw no attempt from Ultralytics itself; it would not catch ours either"
    assert set(report["errors"]) == set(names)
    for name in names[:3]:
        error = report["errors"][name]
        assert "failed in setup" in error and f"YOLO weights {name!r}" in error
        assert "YOLO_OFFLINE=1" in error and "may not download" in error and "pass the path of a local" in error
    assert f"found nothing at {names[3]}" in report["errors"][names[3]]


@pytest.mark.parametrize("weights, words", [
    ("junk.tflite", "Ultralytics cannot run YOLO weights .*junk.tflite"),
    ("junk.pt", "Ultralytics cannot load YOLO weights .*junk.pt"),
])
def test_a_file_that_is_not_a_model_fails_at_setup_naming_it(tmp_path, weights, words):
    (tmp_path / weights).write_bytes(os.urandom(4096))
    worker = YoloWorker(weights=str(tmp_path / weights))
    with pytest.raises(ValueError, match=words):
        worker.setup()


def test_a_class_the_model_lacks_fails_at_setup(weights):
    with pytest.raises(ValueError, match=r"classes \[80\] are not classes of .*ids 0..79"):
        YoloWorker(weights=str(weights), classes="2,80").setup()
