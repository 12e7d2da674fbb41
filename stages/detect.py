"""The YOLO worker: Ultralytics detection on video frames, the heavy model of vehicle counting.

`YoloWorker` runs only on frames whose decision is ``infer`` (see `stages.inference`) and writes a
`stages.results.Detections` into their ``result``. `load_detector` is the same few lines without
the pipeline, so tests, benchmarks and the line counter call YOLO exactly as the worker does.

Weights: by default the shared offline stand-in ``<assets>/weights/yolov8n_int8.tflite``
(YOLOv8n INT8, run by LiteRT); otherwise any file Ultralytics loads (``.pt``, ``.onnx``,
``.tflite``, ...). Nothing is downloaded unless the user asks: before Ultralytics is imported,
``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=0`` and a project-local ``YOLO_CONFIG_DIR`` are set
where the environment has not set them. A path that does not exist is refused here, before
Ultralytics sees it, because Ultralytics tries GitHub for any missing file named like one of
its releases (``/no/such/yolov8n.pt`` included), even with ``YOLO_OFFLINE=1``.

Ultralytics quirks met here (8.4.190): fixed-shape exports (this TFLite file: 640x640) ignore
`imgsz` and use the export's size; class ids the model lacks give no boxes rather than an
error (checked at load instead); the first ``predict`` takes about 2.5 s (it imports
torchvision and builds the predictor), so `load_detector` warms the model up once. After that a
``predict`` call costs about 0.5 ms more than Ultralytics' own pre/inference/post timings.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.assets import asset_path, cache_dir
from pipeline.errors import ConfigError, InfistreamError
from pipeline.message import Message
from stages.inference import InferenceWorker
from stages.results import VEHICLE_CLASSES, Detections

log = logging.getLogger(__name__)

#: The offline stand-in used when no weights are given (relative to the assets directory).
DEFAULT_WEIGHTS = "weights/yolov8n_int8.tflite"
_TRUE = ("1", "true", "yes", "on", "y", "t")   # what Ultralytics' env_bool reads as true


class WeightsError(InfistreamError, ValueError):
    """YOLO weights that exist but cannot be used (not a model Ultralytics loads, wrong classes)."""


class WeightsNotFoundError(InfistreamError, FileNotFoundError):
    """The weights file does not exist (and will not be downloaded)."""


def parse_classes(value: str | int | Sequence[int]) -> tuple[int, ...] | None:
    """COCO class ids from ``"2,3,5,7"`` (or an int or a list, as YAML gives them); ``"all"``: None."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
    try:
        ids = tuple(int(str(item).strip()) for item in items)
    except ValueError:
        ids = ()
    if not ids or any(i < 0 for i in ids) or isinstance(value, bool):
        raise ConfigError(f"classes must be 'all' or comma-separated class ids >= 0 (vehicles: "
                          f"{','.join(map(str, VEHICLE_CLASSES))}), got {value!r}")
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True)
class DetectorOptions:
    """The arguments of every ``predict`` call, checked when built. `classes` None: every class."""

    conf: float = 0.25
    iou: float = 0.7
    imgsz: int = 640
    classes: tuple[int, ...] | None = tuple(VEHICLE_CLASSES)
    max_det: int = 300

    def __post_init__(self) -> None:
        for name in ("conf", "iou"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a number in 0..1, got {value!r}")
        for name, low in (("imgsz", 32), ("max_det", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.imgsz % 32:
            raise ConfigError(f"imgsz must be a multiple of 32 (YOLO's stride), got {self.imgsz}")
        if self.classes is not None and (not self.classes or any(c < 0 for c in self.classes)):
            raise ConfigError(f"classes must be None (all) or class ids >= 0, got {self.classes!r}")


def offline_environment() -> None:
    """Keep Ultralytics offline and out of $HOME unless the environment says otherwise.

    Must run before ``import ultralytics``, which reads these once (and looks up DNS when online).
    """
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")


def is_offline() -> bool:
    return os.environ.get("YOLO_OFFLINE", "").strip().lower() in _TRUE


def resolve_weights(weights: str) -> str:
    """The weights to hand Ultralytics: a local file, or (online only) a name it may download.

    Raises `WeightsNotFoundError` naming the path, and saying why nothing is downloaded.
    """
    if not weights:
        try:
            return str(asset_path(DEFAULT_WEIGHTS))
        except FileNotFoundError as error:
            raise WeightsNotFoundError(f"no weights given and the offline stand-in is missing: {error}; "
                                       f"pass weights=PATH") from None
    path = Path(weights).expanduser()
    if path.is_file():
        return str(path)
    remote = "://" in weights
    bare = not remote and path.parent == Path(".")
    if bare:  # Ultralytics also looks in its weights_dir before it downloads
        from ultralytics.utils import SETTINGS
        cached = Path(SETTINGS["weights_dir"]) / path.name
        if cached.is_file():
            return str(cached)
    if (bare or remote) and not is_offline():
        return weights  # the user turned downloads on (YOLO_OFFLINE=0): Ultralytics fetches it
    where = weights if remote else f"{path.resolve()}"
    why = (f"; YOLO_OFFLINE=1 (the default here), so Ultralytics may not download {weights!r}: pass the path "
           f"of a local weights file (e.g. the offline stand-in {DEFAULT_WEIGHTS} under the assets directory), "
           f"or set YOLO_OFFLINE=0 on a machine with internet" if bare or remote else "")
    raise WeightsNotFoundError(f"YOLO weights {weights!r}: expected a file, found nothing at {where}{why}")


class Detector:
    """A loaded YOLO model and its predict arguments: ``detect(frame) -> Detections``.

    Build it with `load_detector`. Not thread-safe (Ultralytics keeps per-call state in its
    predictor): one detector per worker.
    """

    def __init__(self, model: Any, weights: str, options: DetectorOptions):
        self.model = model
        self.weights = weights
        self.options = options
        self._kwargs = {"conf": options.conf, "iou": options.iou, "imgsz": options.imgsz,
                        "classes": list(options.classes) if options.classes is not None else None,
                        "max_det": options.max_det, "verbose": False}

    @property
    def names(self) -> dict[int, str]:
        return dict(self.model.names)

    def detect(self, frame: np.ndarray) -> Detections:
        """Boxes in one BGR uint8 HxWx3 frame (a read-only view is fine: YOLO letterboxes a copy)."""
        if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3):
            raise ValueError(f"YOLO expects a BGR uint8 HxWx3 frame, got "
                             f"{getattr(frame, 'dtype', type(frame).__name__)} {getattr(frame, 'shape', '')}")
        started = time.perf_counter()
        boxes = self.model.predict(frame, **self._kwargs)[0].boxes
        return Detections(boxes.xyxy.cpu().numpy(), boxes.cls.cpu().numpy(), boxes.conf.cpu().numpy(),
                          (time.perf_counter() - started) * 1000)

    def close(self) -> None:
        self.model = None

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_detector(weights: str = "", options: DetectorOptions | None = None, warm_up: bool = True) -> Detector:
    """Load YOLO `weights` ("" = the offline stand-in) and, with `warm_up`, run it once on a blank frame.

    Raises `WeightsNotFoundError` (missing file; no download offline) or `WeightsError`
    (Ultralytics cannot load it, or it lacks a requested class).
    """
    options = options or DetectorOptions()
    offline_environment()
    resolved = resolve_weights(weights)
    started = time.perf_counter()
    from ultralytics import YOLO  # heavy (torch): imported only by the process that runs the model
    try:
        model = YOLO(resolved, task="detect")
    except Exception as error:
        raise WeightsError(f"Ultralytics cannot load YOLO weights {resolved}: "
                           f"{type(error).__name__}: {error}") from error
    detector = Detector(model, resolved, options)
    if warm_up:  # first, so that `names` below comes from the predictor instead of a second load
        try:
            detector.detect(np.zeros((options.imgsz, options.imgsz, 3), np.uint8))
        except Exception as error:
            raise WeightsError(f"Ultralytics cannot run YOLO weights {resolved} (warm-up on a blank "
                               f"{options.imgsz}x{options.imgsz} frame): {type(error).__name__}: {error}") from error
        used = getattr(model.predictor, "imgsz", None)
        if used is not None and list(used) != [options.imgsz, options.imgsz]:
            log.warning("%s has a fixed input size %s; imgsz=%d is ignored", resolved, list(used), options.imgsz)
    missing = sorted(set(options.classes or ()) - set(detector.names))
    if missing:
        raise WeightsError(f"classes {missing} are not classes of {resolved}, "
                           f"which has ids 0..{len(detector.names) - 1}")
    log.info("loaded %s (%s) in %.2f s", resolved, type(getattr(model.predictor, "model", model)).__name__,
             time.perf_counter() - started)
    return detector


class YoloWorker(InferenceWorker):
    """Runs YOLO on the frames that need it; see the module docstring.

    weights: weights file ("" = the shared offline stand-in); a hub name such as ``yolov8n.pt``
        is downloaded by Ultralytics only when YOLO_OFFLINE=0 is set.
    conf, iou: confidence and NMS IoU thresholds (0..1). imgsz: input size (multiple of 32).
    classes: COCO ids to keep, comma-separated (default the vehicles 2,3,5,7), or ``all``.
    max_det: most boxes per frame. keep_frames: pass the pixels on with the result.
    """

    def __init__(self, weights: str = "", conf: float = 0.25, iou: float = 0.7, imgsz: int = 640,
                 classes: str = "2,3,5,7", max_det: int = 300, keep_frames: bool = False):
        super().__init__(keep_frames=keep_frames)
        if not isinstance(weights, (str, os.PathLike)):
            raise ConfigError(f"weights must be a path or '', got {weights!r}")
        self.weights = str(weights)
        self.options = DetectorOptions(conf, iou, imgsz, parse_classes(classes), max_det)
        self.detector: Detector | None = None

    def setup(self) -> None:
        self.detector = load_detector(self.weights, self.options)

    def infer(self, message: Message) -> Detections:
        pixel_format = message.media.get("pixel_format", "bgr24")
        if pixel_format != "bgr24":
            raise ValueError(f"YOLO expects bgr24 frames, got {pixel_format} ({message.stream} seq {message.seq})")
        return self.detector.detect(message.arrays[0])

    def teardown(self) -> None:
        if self.detector is not None:
            self.detector.close()
