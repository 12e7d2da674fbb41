"""The worked example of docs/stages.md: a stage that holds back dark frames."""

from pipeline.message import Message
from pipeline.stage import Stage


class BrightnessGate(Stage):
    """Forwards video frames whose mean brightness is at least `threshold` (0-255)."""

    def __init__(self, threshold: float = 40.0):
        if not 0 <= threshold <= 255:
            raise ValueError(f"threshold must be in 0..255, got {threshold}")
        self.threshold = threshold
        self.dark = 0

    def process(self, message: Message) -> Message | None:
        if message.kind != "video":
            return message
        brightness = float(message.arrays[0][::4, ::4].mean())   # a strided view: no copy
        if brightness < self.threshold:
            self.dark += 1
            return None
        return message

    def teardown(self) -> None:
        print(f"{self.name}: {self.dark} dark frames held back")
