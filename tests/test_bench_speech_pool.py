"""apps/bench_speech.py --more-test: other draws of the mixtures pooled into the test windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import mixtures
from models.mixtures import MixtureOptions, window_records
from pipeline.errors import ConfigError
from tests.helpers.scripts import load_script


def load_bench():
    return load_script("apps/bench_speech.py")


def draw(directory: Path, words: list[int], level: float) -> Path:
    """A mixture directory with one unlabelled train clip, one test clip of 4 s (3 windows) whose
    sound depends on `level`, and one test recording that every draw holds as it is."""
    options = MixtureOptions(clip_s=4.0)
    clips = []
    for split, name, value in (("train", "music-000", level), ("test", "music-000", level), ("test", "real-000", 0.5)):
        mixtures.write_wav(directory / split / f"{name}.wav", np.full(4 * 16000, value, np.float32))
        clips.append({"file": f"{split}/{name}.wav", "split": split, "subset": name[:-4], "seconds": 4.0,
                      "bed": None, "events": [], "windows": window_records(4 * 16000, [], options)})
    (directory / "manifest.json").write_text(json.dumps({"options": {"window_s": 2.0, "hop_s": 1.0}, "clips": clips}))
    (directory / "words.json").write_text(json.dumps(words))
    return directory


def test_other_draws_join_the_test_windows_under_their_own_names(tmp_path, monkeypatch):
    bench = load_bench()
    labelled = []

    def label(path, settings, label_dir):          # the recognizer's answers, made up per directory
        labelled.append(path.relative_to(tmp_path).as_posix())
        words = json.loads((path.parent.parent / "words.json").read_text())
        out = tmp_path / f"labels-{len(labelled)}.jsonl"
        with out.open("w") as file:
            for seq, count in enumerate(words):
                file.write(json.dumps({"seq": seq, "pts": float(seq), "text": "a " * count, "words": count,
                                       "infer_ms": 100.0}) + "\n")
            file.write(json.dumps({"end": True, "windows": 3, "labelled": 3, "window_s": 2.0, "hop_s": 1.0}) + "\n")
        return out

    monkeypatch.setattr(mixtures, "label_speech", label)
    seed0, seed1 = draw(tmp_path / "seed-0", [0, 5, 0], 0.01), draw(tmp_path / "seed-1", [3, 3, 3], 0.02)
    test, draws = bench.pooled_test(seed0, [seed1], words=2)
    # The recording both draws hold is counted once; the other draw's mixture joins, renamed.
    assert test.clips.tolist() == ["test/music-000.wav"] * 3 + ["test/real-000.wav"] * 3 + \
        ["seed-1/test/music-000.wav"] * 3
    assert test.needs.tolist() == [False, True, False] * 2 + [True] * 3 and test.subsets.tolist()[-3:] == ["music"] * 3
    assert draws == {str(seed0): 6, str(seed1): 3}
    assert "seed-0/train/music-000.wav" not in labelled and "seed-1/train/music-000.wav" not in labelled
    with pytest.raises(ConfigError, match="already in the test windows"):
        bench.pooled_test(seed0, [seed0], words=2)
    with pytest.raises(ConfigError, match="run it without --more-test"):
        bench.run(seed0, tmp_path / "out.json", None, tmp_path / "cascade.json", 0, 1, more_test=[seed1])
