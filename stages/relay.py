"""Stages that move frames along: a pass-through and a resizer."""

from __future__ import annotations

import cv2

from pipeline.message import Message
from pipeline.stage import Stage


class Relay(Stage):
    """Forwards every message unchanged: a hop, e.g. to bridge transports or hosts."""

    def process(self, message: Message) -> Message:
        return message


class Resize(Stage):
    """Scales video frames to `width` pixels wide, keeping the aspect ratio; audio passes unchanged.

    Frames already at most `width` wide pass untouched (no copy).
    """

    def __init__(self, width: int = 320):
        if width < 8:
            raise ValueError(f"width must be at least 8 pixels, got {width}")
        self.width = width

    def process(self, message: Message) -> Message:
        if message.kind != "video" or not message.arrays:
            return message
        frame = message.arrays[0]
        height, width = frame.shape[:2]
        if width <= self.width:
            return message
        new_height = max(1, round(height * self.width / width))
        # INTER_AREA averages source pixels: the right filter for shrinking.
        small = cv2.resize(frame, (self.width, new_height), interpolation=cv2.INTER_AREA)
        media = {**message.media, "width": self.width, "height": new_height}
        return Message(message.kind, message.stream, message.seq, pts=message.pts, t_capture=message.t_capture,
                       media=media, arrays=(small, *message.arrays[1:]), decision=message.decision,
                       result=message.result, meta=message.meta)
