"""Vehicle tracks over time and what crosses a counting line or stands inside a region (numpy only).

The aggregator feeds one `VehicleCounter` per stream, every frame in sequence order:
``update(pts, detections)`` for a fresh observation and ``update(pts, None)`` for a frame without:

- ``infer`` (and an early exit that gives boxes for this very frame): fresh.
- ``reuse``: a gap. Its boxes are an older frame's; fed with this frame's pts they would stop
  every track (zero velocity), then jump at the next real observation.
- ``skip`` and dropped frames: gaps. A skip claims "no vehicles", but a filter calibrated to 95 %
  is wrong on some frames with vehicles, so a skip is "not observed", never "nothing there".

A gap is not evidence that a vehicle left. Tracks age by *time*, never by frames: a track ends
`max_age_s` after its last match however that time passed (the constant-velocity prediction is
not trusted further). A tentative track (a box seen fewer than `min_hits` times, possibly a stray
box) is forgotten sooner, after `tentative_age_s` of *observed* frames without a match; time
spent in gaps does not count there, so a vehicle seen once or twice before a run of filtered
frames can still be linked up after it. And the gate within which a detection may match a
predicted box widens with the time a track spent in gaps (the prediction drifts from a vehicle
that speeds up, slows down or comes towards the camera); with every frame observed it does not
widen. What a crossing needs is unchanged: a confirmed track observed on both sides of the line.
A track lost before it is seen beyond the line is not counted from its prediction alone (a car
that stops at the line would be counted as crossing it).

Anchor point: the *bottom centre* of a box by default, where the vehicle meets the road, so a
line drawn on the road is crossed when the wheels cross it, whatever the vehicle's height in
perspective (the box centre floats above the road). ``anchor="center"`` for the box centre.

Crossings are decided between two consecutive *observations* of a track (the path between them
is a straight segment), so frames filtered between two inferences cannot hide a crossing nor make
one count twice. A track counts at most once, at its first crossing (jitter of a vehicle stopped
on the line does not add counts); a crossing made while the track is still tentative counts when
the track is confirmed, and never if it is not.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stages.results import VEHICLE_CLASSES, Detections

ANCHORS = ("bottom", "center")


class GeometryError(ValueError):
    """A counting line or region that cannot be used (malformed text, degenerate shape)."""


def _numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",")]
    except ValueError:
        raise GeometryError(f"{what} must be comma-separated pixel numbers, got {text!r}") from None
    if not all(np.isfinite(values)):
        raise GeometryError(f"{what} must be finite numbers, got {text!r}")
    return values


def anchor_points(boxes: np.ndarray, anchor: str = "bottom") -> np.ndarray:
    """(n, 2) points of (n, 4) xyxy boxes: bottom centre or centre."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    y = boxes[:, 3] if anchor == "bottom" else (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, y], axis=1)


@dataclass(frozen=True)
class CountingLine:
    """A segment from (x1, y1) to (x2, y2) in frame pixels (x right, y down).

    Directions are named in image terms: for a line closer to horizontal, crossings moving down
    the image are ``down`` and the others ``up``; for a line closer to vertical, ``right``/``left``.
    """

    x1: float
    y1: float
    x2: float
    y2: float
    anchor: str = "bottom"

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise GeometryError(f"line anchor must be one of {ANCHORS}, got {self.anchor!r}")
        if np.hypot(self.x2 - self.x1, self.y2 - self.y1) < 1.0:
            raise GeometryError(f"a counting line needs two distinct end points, got {self.points}")

    @classmethod
    def parse(cls, text: str, anchor: str = "bottom") -> "CountingLine":
        values = _numbers(text, "a counting line")
        if len(values) != 4:
            raise GeometryError(f"a counting line is x1,y1,x2,y2 (4 numbers), got {len(values)} in {text!r}")
        return cls(*values, anchor=anchor)

    @property
    def points(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def directions(self) -> tuple[str, str]:
        """(positive, negative) names: positive = moving along +y (or +x for a steep line)."""
        return ("down", "up") if abs(self.x2 - self.x1) >= abs(self.y2 - self.y1) else ("right", "left")

    def side(self, point: np.ndarray) -> float:
        """> 0 on the side the positive direction leads to, < 0 on the other, 0 on the line."""
        dx, dy = self.x2 - self.x1, self.y2 - self.y1
        cross = dx * (point[1] - self.y1) - dy * (point[0] - self.x1)
        horizontal = abs(dx) >= abs(dy)
        # the normal (-dy, dx) points to +y when dx > 0; flip so "positive" means down or right
        flip = (dx < 0) if horizontal else (dy > 0)
        return float(-cross if flip else cross)

    def crossing(self, start: np.ndarray, end: np.ndarray) -> str | None:
        """The direction in which the path start -> end crosses the segment, or None."""
        s0, s1 = self.side(start), self.side(end)
        if s0 == 0 or s1 == 0 or (s0 > 0) == (s1 > 0):
            return None
        hit = start + (end - start) * (s0 / (s0 - s1))
        ax, ay, bx, by = self.points
        t = ((hit[0] - ax) * (bx - ax) + (hit[1] - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2)
        if not 0.0 <= t <= 1.0:
            return None
        return self.directions[0] if s1 > 0 else self.directions[1]


@dataclass(frozen=True)
class Region:
    """A polygon in frame pixels; a box is inside when its anchor point (centre by default) is."""

    polygon: tuple[tuple[float, float], ...]
    anchor: str = "center"

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise GeometryError(f"region anchor must be one of {ANCHORS}, got {self.anchor!r}")
        pts = np.asarray(self.polygon, np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
            raise GeometryError(f"a region needs at least 3 (x, y) points, got {self.polygon!r}")
        area = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], -1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], -1)))
        if area < 1.0:
            raise GeometryError(f"a region must enclose an area (its points are collinear or repeated), "
                                f"got {self.polygon!r}")

    @classmethod
    def parse(cls, text: str, anchor: str = "center") -> "Region":
        """``x1,y1,x2,y2`` (a rectangle, corners) or ``x1,y1,x2,y2,x3,y3,...`` (a polygon)."""
        v = _numbers(text, "a region")
        if len(v) == 4:
            x1, y1, x2, y2 = v
            if x2 <= x1 or y2 <= y1:
                raise GeometryError(f"a rectangle region is x1,y1,x2,y2 with x2 > x1 and y2 > y1, got {text!r}")
            return cls(((x1, y1), (x2, y1), (x2, y2), (x1, y2)), anchor=anchor)
        if len(v) < 6 or len(v) % 2:
            raise GeometryError(f"a region is x1,y1,x2,y2 (rectangle) or an even count >= 6 of polygon "
                                f"coordinates, got {len(v)} numbers in {text!r}")
        return cls(tuple(zip(v[0::2], v[1::2])), anchor=anchor)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(n,) bool: which (n, 2) points lie inside (even-odd rule)."""
        points = np.asarray(points, np.float64).reshape(-1, 2)
        px, py = points[:, :1], points[:, 1:]
        poly = np.asarray(self.polygon, np.float64)
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        straddles = (y0 > py) != (y1 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        return (straddles & (px < x_at)).sum(axis=1) % 2 == 1

    def count(self, detections: Detections) -> int:
        return int(self.contains(anchor_points(detections.boxes, self.anchor)).sum()) if len(detections) else 0


def _sizes(boxes: np.ndarray) -> np.ndarray:
    """sqrt of the area of each xyxy box (at least 1 pixel)."""
    return np.sqrt(np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of xyxy boxes."""
    a, b = a[:, None, :], b[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


@dataclass
class Track:
    id: int
    box: np.ndarray          # last observed box, xyxy
    pts: float               # time of the last observation
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))   # centre, pixels per second
    hits: int = 1
    confirmed: bool = False
    votes: dict[int, float] = field(default_factory=dict)   # class -> summed score (<= 4 keys)
    crossed: str | None = None                               # direction of its counted crossing
    crossed_pts: float | None = None
    reported: bool = False
    anchor_ref: np.ndarray | None = None   # last observed anchor point off the line
    anchor_ref_pts: float = 0.0            # ... and when it was observed
    gap_mark: float = 0.0    # the tracker's `gap_s` when it was last matched (see Tracker.unobserved_s)

    @property
    def cls(self) -> int:
        return max(self.votes, key=self.votes.__getitem__)

    def predict(self, pts: float) -> np.ndarray:
        shift = self.velocity * (pts - self.pts)
        return self.box + np.array([shift[0], shift[1], shift[0], shift[1]])


class Tracker:
    """Greedy IoU + centre-distance association with a constant-velocity motion model in time.

    min_hits: observations that confirm a track. max_age_s: a confirmed track unmatched this long
    ends; tentative_age_s: the same for a track not yet confirmed (a stray box is soon forgotten).
    min_iou / max_distance: a detection may match a track's predicted box when their IoU is at
    least `min_iou` or their centres are within `max_distance` x the larger of the two boxes'
    sizes (sqrt of area; a vehicle coming towards the camera grows while it is not observed).
    max_speed: for a track seen once (no velocity yet), the gate widens by this many box sizes
    per second since it was seen, so a fast vehicle observed every few frames still links up.
    gap_drift: for a track with a velocity, the gate widens by this many box sizes per second it
    spent in gaps (frames not observed) since its last match. 1.0 was chosen on the clips of
    tests/data/ground_truth thinned by strides, random and bursty gaps: 0.5 links fewer tracks
    across gaps, 1.5 or more lets a second box on the same car chain into a second crossing.
    merge_iou: detections overlapping more than this are one vehicle (the detector's NMS is per
    class: a car seen as both car and truck would otherwise start a second track).
    smoothing: weight of the newest velocity measurement (exponential smoothing).
    """

    def __init__(self, min_hits: int = 3, max_age_s: float = 1.0, tentative_age_s: float = 0.5, min_iou: float = 0.1,
                 max_distance: float = 1.0, max_speed: float = 4.0, gap_drift: float = 1.0, merge_iou: float = 0.7,
                 smoothing: float = 0.5):
        if (min_hits < 1 or min(max_age_s, tentative_age_s) <= 0 or not 0 < smoothing <= 1
                or min(max_distance, max_speed, gap_drift) < 0):
            raise ValueError(f"tracker needs min_hits >= 1, ages > 0 s, 0 < smoothing <= 1, max_distance, "
                             f"max_speed and gap_drift >= 0; got {min_hits=}, {max_age_s=}, {tentative_age_s=}, "
                             f"{smoothing=}, {max_distance=}, {max_speed=}, {gap_drift=}")
        self.min_hits, self.max_age_s, self.min_iou = min_hits, max_age_s, min_iou
        self.tentative_age_s = min(tentative_age_s, max_age_s)
        self.max_distance, self.max_speed, self.gap_drift = max_distance, max_speed, gap_drift
        self.merge_iou, self.smoothing = merge_iou, smoothing
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)
        self.confirmed_total = 0
        # Seconds spent in gaps since the start, summed when each gap frame comes: a track's time
        # in gaps since its last match is then one subtraction, whatever the number of tracks.
        self.gap_s = 0.0
        self.last_pts: float | None = None

    def _merge(self, det: Detections) -> Detections:
        if len(det) < 2:
            return det
        order = np.argsort(-det.scores, kind="stable")
        overlap = iou_matrix(det.boxes[order], det.boxes[order])
        keep: list[int] = []
        for i in range(len(order)):
            if all(overlap[i, j] <= self.merge_iou for j in keep):
                keep.append(i)
        return det.select(np.sort(order[keep]))

    def unobserved_s(self, track: Track) -> float:
        """Seconds of gaps (frames without an observation) since the track's last match."""
        return self.gap_s - track.gap_mark

    def _alive(self, track: Track, pts: float) -> bool:
        elapsed = pts - track.pts
        if track.confirmed:
            return elapsed <= self.max_age_s
        return elapsed <= self.max_age_s and elapsed - self.unobserved_s(track) <= self.tentative_age_s

    def _expire(self, pts: float) -> None:
        self.tracks = [t for t in self.tracks if self._alive(t, pts)]

    def gap(self, pts: float) -> None:
        """A frame without a fresh observation: time passes, and nothing is learnt about any box."""
        if self.last_pts is not None and pts > self.last_pts:
            self.gap_s += pts - self.last_pts
        self.last_pts = pts
        self._expire(pts)

    def observe(self, pts: float, detections: Detections) -> list[Track]:
        """Match a fresh observation; returns the tracks it matched or started."""
        self.last_pts = pts
        self._expire(pts)
        det = self._merge(detections)
        pairs: list[tuple[float, int, int]] = []
        if self.tracks and len(det):
            predicted = np.stack([t.predict(pts) for t in self.tracks])
            iou = iou_matrix(predicted, det.boxes)
            pc = (predicted[:, :2] + predicted[:, 2:]) / 2
            dc = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
            size = np.maximum(_sizes(predicted)[:, None], _sizes(det.boxes)[None, :])
            dist = np.linalg.norm(pc[:, None, :] - dc[None, :, :], axis=2) / size
            gate = np.array([self.max_distance + (self.max_speed * (pts - t.pts) if t.hits == 1
                                                  else self.gap_drift * self.unobserved_s(t))
                             for t in self.tracks])
            ok = (iou >= self.min_iou) | (dist <= gate[:, None])
            cost = (1.0 - iou) + dist
            pairs = sorted((cost[i, j], i, j) for i, j in zip(*np.nonzero(ok)))
        used_t, used_d, out = set(), set(), []
        for _, i, j in pairs:
            if i not in used_t and j not in used_d:
                used_t.add(i), used_d.add(j)
                self._update(self.tracks[i], pts, det, j)
                out.append(self.tracks[i])
        for j in range(len(det)):
            if j not in used_d:
                track = Track(next(self._ids), det.boxes[j].astype(np.float64), pts, gap_mark=self.gap_s)
                track.votes[int(det.classes[j])] = float(det.scores[j])
                self._confirm(track)
                self.tracks.append(track)
                out.append(track)
        return out

    def _update(self, track: Track, pts: float, det: Detections, j: int) -> None:
        box = det.boxes[j].astype(np.float64)
        dt = pts - track.pts
        if dt > 0:
            measured = ((box[:2] + box[2:]) - (track.box[:2] + track.box[2:])) / 2 / dt
            track.velocity = measured if track.hits == 1 else (
                self.smoothing * measured + (1 - self.smoothing) * track.velocity)
        track.box, track.pts, track.gap_mark = box, pts, self.gap_s
        track.hits += 1
        cls = int(det.classes[j])
        track.votes[cls] = track.votes.get(cls, 0.0) + float(det.scores[j])
        self._confirm(track)

    def _confirm(self, track: Track) -> None:
        if not track.confirmed and track.hits >= self.min_hits:
            track.confirmed, self.confirmed_total = True, self.confirmed_total + 1

    def active(self) -> list[Track]:
        return [t for t in self.tracks if t.confirmed]


class VehicleCounter:
    """Tracks, line crossings and region counts for one stream, fed every frame in order.

    ``update(pts, detections)`` for a fresh observation, ``update(pts, None)`` for a frame without
    one (see the module's docstring). Returns the frame's fields: ``tracks`` (confirmed tracks
    alive), ``new_crossings`` (list of {track, direction, class, pts}) and, with a region,
    ``in_region`` (boxes of `detections` inside it; pass ``fresh=False`` with a resolved answer
    such as a reused one to count it in the region without feeding the tracker).
    """

    def __init__(self, line: CountingLine | None = None, region: Region | None = None,
                 tracker: Tracker | None = None):
        self.line, self.region = line, region
        self.tracker = tracker or Tracker()
        self.crossings = 0
        self.by_direction: dict[str, int] = {d: 0 for d in (line.directions if line else ())}
        self.by_class: dict[str, int] = {}

    def update(self, pts: float, detections: Detections | None, fresh: bool = True) -> dict[str, Any]:
        """One frame, in order: `detections` None (or `fresh` False) is a gap for the tracker."""
        if detections is not None:   # vehicle classes only
            vehicles = np.isin(detections.classes, list(VEHICLE_CLASSES))
            detections = detections if vehicles.all() else detections.select(vehicles)
        record: dict[str, Any] = {}
        if self.region is not None:
            record["in_region"] = None if detections is None else self.region.count(detections)
        if detections is None or not fresh:
            self.tracker.gap(pts)
        new: list[dict[str, Any]] = []
        for track in [] if detections is None or not fresh else self.tracker.observe(pts, detections):
            if self.line is not None:
                self._check_line(track)
            if track.crossed and track.confirmed and not track.reported:
                track.reported = True
                name = VEHICLE_CLASSES.get(track.cls, str(track.cls))
                new.append({"track": track.id, "direction": track.crossed, "class": name,
                            "pts": round(track.crossed_pts, 4)})
                self.crossings += 1
                self.by_direction[track.crossed] = self.by_direction.get(track.crossed, 0) + 1
                self.by_class[name] = self.by_class.get(name, 0) + 1
        record["tracks"] = len(self.tracker.active())
        if self.line is not None:
            record["new_crossings"] = new
        return record

    def _check_line(self, track: Track) -> None:
        point = anchor_points(track.box, self.line.anchor)[0]
        if self.line.side(point) == 0:
            return   # on the line: wait for the next observation to tell the side
        if track.anchor_ref is not None and track.crossed is None:
            direction = self.line.crossing(track.anchor_ref, point)
            if direction:
                # When it reached the line, not when it was next seen: after frames filtered
                # out, the next observation can come a good part of a second later.
                before, after = self.line.side(track.anchor_ref), self.line.side(point)
                fraction = before / (before - after)
                track.crossed = direction
                track.crossed_pts = track.anchor_ref_pts + fraction * (track.pts - track.anchor_ref_pts)
        track.anchor_ref, track.anchor_ref_pts = point, track.pts

    def totals(self) -> dict[str, Any]:
        totals: dict[str, Any] = {"tracks_confirmed": self.tracker.confirmed_total}
        if self.line is not None:
            totals.update(crossings=self.crossings, crossings_by_direction=dict(self.by_direction),
                          crossings_by_class=dict(self.by_class), line=list(self.line.points))
        return totals
