"""The line guard: every frame in which something moves across the counting line goes to the model.

Per-frame filters are judged on per-frame counts, and a count that stays the same while a car
drives through the scene is a count Reuse may answer. A line counter needs more: the tracker
counts a crossing only from boxes it observes on both sides of the line (stages/tracking.py),
so a car whose every frame near the line was answered by a filter is never counted, however
right the per-frame counts were. Measured on tests/data/ground_truth/highway_topdown.json: the
shipped cascade answers every one of the 21 frames in which YOLO sees the first car (the count
did not change while it drove), and that crossing is lost.

The guard looks only where the counter looks. It keeps a band of `band` pixels on each side of
the line segment, shrunk so that its longer side is at most `SIDE` pixels, in grey; a frame in
which more than `threshold` of the band's pixels moved by more than 21 grey levels since the
stream's previous frame (framediff's `pixel_change`, Reducto's pixel feature) is sent to the
model (decision ``infer``); any other frame gets no opinion, so the policies after it decide.
First in a cascade (``line:420,30,420,300+cascade``) it makes sure the tracker observes whatever
moves at the line, and leaves the rest of the scene (parked cars, the far lanes, an empty road)
to the filters.
`apps/vehicle_count.py` puts it in front of the filter whenever it is given a ``--line``.

Comparing with the previous frame, not with the last inferred one, is the point: a car standing
on the line (a queue at a light) stops triggering it, a moving one keeps triggering it for as
long as it moves in the band.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import cv2
import numpy as np

from pipeline.errors import ConfigError
from models.base import Decision, FramePolicy
from models.baselines.framediff import pixel_change
from models.options import number, parse_options, whole

log = logging.getLogger(__name__)

#: The band's crop is shrunk so that its longer side is at most SIDE pixels, and the band stays at
#: least MIN_BAND_PIXELS across, before it is compared: well under a millisecond per frame (0.2 ms for
#: a 270 px line in a 640x360 frame, 0.5 ms for one across a 1080p frame, on this CPU), and a car
#: 30 px long in the frame still covers several pixels of it.
SIDE = 128
MIN_BAND_PIXELS = 6
#: Streams whose previous band is kept; past it the least recently seen stream is forgotten.
MAX_STREAMS = 1024

#: Defaults, measured on the ground-truth clips (tests/models/test_line_guard.py,
#: docs/filters.md "Counting lines"): a band of 24 px on each side and 1 % of its pixels.
DEFAULT_BAND = 24
DEFAULT_THRESHOLD = 0.01
DEFAULT_HOLD = 5


def parse_line(text: str) -> tuple[float, float, float, float]:
    """``x1,y1,x2,y2`` in frame pixels, two distinct points."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)) or values[:2] == values[2:]:
        raise ConfigError(f"a counting line is x1,y1,x2,y2 in frame pixels (two distinct points), got {text!r:.80}")
    return values   # type: ignore[return-value]


class LineGuard(FramePolicy):
    """Infer a frame when more than `threshold` of the band around the line moved since the
    stream's previous frame; else no opinion."""

    def __init__(self, line: tuple[float, float, float, float], band: int = DEFAULT_BAND,
                 threshold: float = DEFAULT_THRESHOLD, hold: int = DEFAULT_HOLD):
        self.line = tuple(float(value) for value in line)
        self.band = int(band)
        self.threshold = float(threshold)
        self.hold = int(hold)
        coordinates = ",".join(f"{value:g}" for value in self.line)
        extra = [f"band={self.band}"] if self.band != DEFAULT_BAND else []
        extra += [f"threshold={self.threshold:g}"] if self.threshold != DEFAULT_THRESHOLD else []
        extra += [f"hold={self.hold}"] if self.hold != DEFAULT_HOLD else []
        self.name = "line:" + ",".join([coordinates, *extra])
        self._geometry: dict[tuple[int, int], tuple[tuple[slice, slice], tuple[int, int], np.ndarray]] = {}
        # stream -> (its previous band, frames since the band last moved)
        self._previous: OrderedDict[str, tuple[np.ndarray, int]] = OrderedDict()
        self._warned_outside = False

    OPTIONS = {"band": whole(1, 4096), "threshold": number(0, 1), "hold": whole(0, 1000)}

    @classmethod
    def from_spec(cls, argument: str) -> LineGuard:
        parts = argument.split(",")            # the line's numbers, then key=value options
        first_option = next((i for i, part in enumerate(parts) if "=" in part), len(parts))
        if not first_option or not parts[0].strip():
            raise ConfigError(f"--filter line needs its geometry: line:x1,y1,x2,y2[,band=PX,threshold=S,hold=N], "
                              f"got {argument!r:.80}")
        line = parse_line(",".join(parts[:first_option]))
        return cls(line, **parse_options("line", ",".join(parts[first_option:]), cls.OPTIONS))

    def _band_geometry(self, shape: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[int, int], np.ndarray]:
        """For frames of `shape` (height, width): the crop around the band, the size it is shrunk
        to, and the mask of band pixels in the shrunk crop."""
        found = self._geometry.get(shape)
        if found is not None:
            return found
        height, width = shape
        x1, y1, x2, y2 = self.line
        left = int(np.clip(np.floor(min(x1, x2) - self.band), 0, width))
        right = int(np.clip(np.ceil(max(x1, x2) + self.band) + 1, 0, width))
        top = int(np.clip(np.floor(min(y1, y2) - self.band), 0, height))
        bottom = int(np.clip(np.ceil(max(y1, y2) + self.band) + 1, 0, height))
        crop_w, crop_h = right - left, bottom - top
        if crop_w <= 0 or crop_h <= 0:
            mask = np.zeros((0, 0), bool)
            found = ((slice(0, 0), slice(0, 0)), (0, 0), mask)
        else:
            # Shrunk so its longer side is SIDE, unless that leaves the band thinner than
            # MIN_BAND_PIXELS across (a long line in a large frame).
            scale = min(1.0, max(SIDE / max(crop_w, crop_h), MIN_BAND_PIXELS / (2 * self.band)))
            small = (max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
            # Distance of each shrunk pixel's centre (in frame pixels) to the segment.
            xs = left + (np.arange(small[0]) + 0.5) * crop_w / small[0]
            ys = top + (np.arange(small[1]) + 0.5) * crop_h / small[1]
            px, py = np.meshgrid(xs, ys)
            dx, dy = x2 - x1, y2 - y1
            t = np.clip(((px - x1) * dx + (py - y1) * dy) / (dx * dx + dy * dy), 0, 1)
            distance = np.hypot(px - (x1 + t * dx), py - (y1 + t * dy))
            found = ((slice(top, bottom), slice(left, right)), small, distance <= self.band)
        if len(self._geometry) >= 8:          # frame sizes seen: a handful at most (a stream per camera)
            self._geometry.clear()
        self._geometry[shape] = found
        return found

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """The band's grey pixels (1-D uint8), shrunk; empty when the line is outside the frame."""
        crop, small, mask = self._band_geometry(frame.shape[:2])
        if not mask.any():
            if not self._warned_outside:
                log.warning("%s: the counting line's band lies outside the %dx%d frame; the guard sends nothing",
                            self.name, frame.shape[1], frame.shape[0])
                self._warned_outside = True
            return np.zeros(0, np.uint8)
        region = frame[crop]
        if small != (region.shape[1], region.shape[0]):
            region = cv2.resize(region, small, interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(region, cv2.COLOR_BGR2GRAY) if region.ndim == 3 else region
        return grey[mask]

    def decide_prepared(self, stream: str, seq: int, features: np.ndarray) -> Decision | None:
        previous, still = self._previous.pop(stream, (None, self.hold + 1))
        if previous is not None and previous.shape == features.shape and features.size:
            still = 0 if pixel_change(features, previous) > self.threshold else still + 1
        self._previous[stream] = (features, still)
        if len(self._previous) > MAX_STREAMS:
            self._previous.popitem(last=False)
        return Decision("infer", policy=self.name) if still <= self.hold else None

    def end_stream(self, stream: str) -> None:
        self._previous.pop(stream, None)

    def threshold_grid(self) -> np.ndarray:
        return np.linspace(0.0, 0.2, 81)
