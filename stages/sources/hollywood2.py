"""The Hollywood2 dataset (Marszałek, Laptev, Schmid, CVPR 2009) as a source: picture and sound of each clip.

Layout accepted (the dataset's own, as unpacked from ``Hollywood2.tar.gz``)::

    ROOT/
      AVIClips/actioncliptrain00001.avi ...     the clips, named <clip id>.avi
      ClipSets/AnswerPhone_train.txt ...        list files (optional)

A list file has one clip per line: the clip id (a trailing ``.avi`` is ignored), optionally
followed by whitespace and an integer label, as in the dataset's ``ClipSets/<Class>_<split>.txt``
files (``actioncliptrain00001  1`` for a positive, ``-1`` for a negative). Blank lines and lines
starting with ``#`` are skipped, so a hand-written ``list_*.txt`` with bare ids works too. A list
file is looked up as given, then relative to ROOT, then in ``ROOT/ClipSets``. Without a list
file, every ``AVIClips/*.avi`` is read in name order.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.errors import SourceError, SourceFormatError, SourceNotFoundError
from pipeline.message import Message
from stages.sources.base import MediaSource
from stages.sources.decoding import decode_messages, open_input
from stages.sources.windows import DEFAULT_HOP_S, DEFAULT_WINDOW_S, WindowSpec

logger = logging.getLogger(__name__)

CLIPS_DIR = "AVIClips"
LISTS_DIR = "ClipSets"
_CLIP_ID = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass(frozen=True)
class ClipEntry:
    """One line of a list file: the clip id and its label when the list gives one."""

    clip: str
    label: int | None = None


def read_clip_list(path: Path) -> list[ClipEntry]:
    """Parse a list file (see the module doc). Duplicate ids keep their first line.

    Raises:
        SourceNotFoundError: the file does not exist.
        SourceFormatError: a line is not ``<clip id> [<integer label>]``; names file and line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceNotFoundError(f"Hollywood2 list file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SourceFormatError(f"cannot read Hollywood2 list file {path}: {error}") from None
    entries: dict[str, ClipEntry] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        clip = fields[0].removesuffix(".avi")
        label: int | None = None
        if len(fields) > 2 or not _CLIP_ID.match(clip):
            raise SourceFormatError(f"{path}:{number}: expected '<clip id> [<label>]' with a plain clip "
                                    f"id (letters, digits, _ and -), got {line.strip()!r}")
        if len(fields) == 2:
            try:
                label = int(fields[1])
            except ValueError:
                raise SourceFormatError(f"{path}:{number}: expected an integer label after the clip id, "
                                        f"got {fields[1]!r}") from None
        entries.setdefault(clip, ClipEntry(clip, label))
    return list(entries.values())


class Hollywood2Source(MediaSource):
    """Reads Hollywood2 clips: each clip's frames and sound windows, clip after clip.

    For clip ``<id>`` the source yields stream ``<id>/video`` (BGR frames) and stream
    ``<id>/audio`` (16 kHz mono windows, as `AudioFileSource` cuts them), interleaved in
    file order from a single decoding pass, every data message with ``meta["clip"] = <id>``
    (and ``meta["label"]`` when the list file gives one); then ``eos`` for each of the clip's
    streams. A clip without a sound track has no audio stream (logged). A clip listed but
    absent is logged, skipped and recorded in `missing_clips`; a clip that cannot be decoded
    is logged, skipped and recorded in `failed_clips`. Both are summarised at the end.

    Args:
        root: the dataset root (holding ``AVIClips/``).
        list_file: a list file (see the module doc), or None for every clip.
        positives_only: drop list lines labelled other than 1 (negatives in
            ``ClipSets/<Class>_*.txt``); lines without a label are kept.
        audio: also emit each clip's sound.
        video: emit each clip's picture (False: sound only, for speech tasks).
        window_s: audio window length in seconds.
        hop_s: audio hop in seconds.
        max_frames: per clip, stop after this many frames.
        realtime: pace each clip at its own speed.
        stream: the source's name in logs (stream ids are per clip).

    Raises (from ``open()``):
        SourceNotFoundError: the root, its ``AVIClips`` folder or the list file is missing.
        SourceFormatError: the list file is malformed.
    """

    live = False

    def __init__(self, root: str | os.PathLike[str], list_file: str | os.PathLike[str] | None = None, *,
                 positives_only: bool = False, audio: bool = True, video: bool = True,
                 window_s: float = DEFAULT_WINDOW_S,
                 hop_s: float = DEFAULT_HOP_S, max_frames: int | None = None, realtime: bool = False,
                 stream: str = "hollywood2") -> None:
        super().__init__(stream)
        self.root = Path(root)
        self.list_file = None if list_file is None else Path(list_file)
        self.positives_only = positives_only
        self.audio = audio
        self.video = video
        if not (audio or video):
            raise ValueError("a Hollywood2 source needs the clips' picture, sound, or both")
        self.windows = WindowSpec(window_s, hop_s)
        self.max_frames = max_frames
        self.realtime = realtime
        self.clips: list[ClipEntry] = []
        self.clips_read: list[str] = []
        self.missing_clips: list[str] = []
        self.failed_clips: dict[str, str] = {}

    @property
    def location(self) -> str:
        return str(self.root if self.list_file is None else self.root / self.list_file)

    def _resolve_list(self, list_file: Path) -> Path:
        for candidate in (list_file, self.root / list_file, self.root / LISTS_DIR / list_file):
            if candidate.is_file():
                return candidate
        raise SourceNotFoundError(f"Hollywood2 list file {str(list_file)!r} not found as given, in {self.root} "
                                  f"or in {self.root / LISTS_DIR}")

    def _open(self) -> None:
        clips_dir = self.root / CLIPS_DIR
        if not self.root.is_dir():
            raise SourceNotFoundError(f"Hollywood2 root not found (expected a directory): {self.root}")
        if not clips_dir.is_dir():
            raise SourceNotFoundError(f"expected the Hollywood2 clips folder {CLIPS_DIR}/ in {self.root}, "
                                      f"found {sorted(p.name for p in self.root.iterdir())[:10]}")
        if self.list_file is None:
            self.clips = [ClipEntry(p.stem) for p in sorted(clips_dir.glob("*.avi"))]
        else:
            entries = read_clip_list(self._resolve_list(self.list_file))
            self.clips = [e for e in entries if not self.positives_only or e.label in (1, None)]
        logger.info("Hollywood2 %s: %d clips to read", self.location, len(self.clips))

    def _close(self) -> None:
        pass  # each clip's container is opened and closed by `_clip_messages`

    def _clip_messages(self, entry: ClipEntry, path: Path) -> Iterator[Message]:
        container = open_input(path, "video")
        try:
            if self.audio and not container.streams.audio:
                logger.info("Hollywood2 clip %s has no sound track; emitting video only", entry.clip)
            meta: dict[str, object] = {"clip": entry.clip}
            if entry.label is not None:
                meta["label"] = entry.label
            yield from decode_messages(container, path, video_id=f"{entry.clip}/video" if self.video else None,
                                       audio_id=f"{entry.clip}/audio" if self.audio else None,
                                       windows=self.windows, meta=meta, max_frames=self.max_frames,
                                       realtime=self.realtime)
        finally:
            container.close()

    def _messages(self) -> Iterator[Message]:
        for entry in self.clips:
            path = self.root / CLIPS_DIR / f"{entry.clip}.avi"
            if not path.exists():
                self.missing_clips.append(entry.clip)
                logger.warning("Hollywood2 clip %s is listed but missing: %s", entry.clip, path)
                continue
            try:
                yield from self._clip_messages(entry, path)
            except SourceError as error:
                # Raised before the clip yielded anything (nothing decoded, or it would not
                # open), so skipping it leaves no stream half-open.
                self.failed_clips[entry.clip] = str(error)
                logger.warning("Hollywood2 clip %s skipped: %s", entry.clip, error)
                continue
            self.clips_read.append(entry.clip)
        logger.log(logging.WARNING if self.missing_clips or self.failed_clips else logging.INFO,
                   "Hollywood2 %s: read %d of %d clips; %d missing%s; %d failed%s", self.location,
                   len(self.clips_read), len(self.clips), len(self.missing_clips),
                   f" ({', '.join(self.missing_clips[:10])}{', ...' if len(self.missing_clips) > 10 else ''})"
                   if self.missing_clips else "", len(self.failed_clips),
                   f" ({', '.join(list(self.failed_clips)[:10])})" if self.failed_clips else "")
