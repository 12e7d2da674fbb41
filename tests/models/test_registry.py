"""--filter names: the learned filters (shipped or a directory), options, help, and no TensorFlow."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models import filterdir
from models.base import Policy
from models.cascade import Cascade
from models.registry import POLICIES, ShippedCascade, parse_policy, policy_help
from models.reuse import ReusePolicy
from models.skip import SkipPolicy
from pipeline.errors import ConfigError
from tests.models.fixtures import make_filter_dir, write_calibration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    """Shipped filters (tiny fixtures) where the registry looks for them."""
    monkeypatch.setattr(filterdir, "SHIPPED", tmp_path / "vehicle")
    make_filter_dir(tmp_path / "vehicle", "skip", threshold=0.1)
    make_filter_dir(tmp_path / "vehicle", "reuse", threshold=0.4)
    (tmp_path / "vehicle" / "cascade.json").write_text(json.dumps(
        {"format": 1, "targets": {"0.95": {"skip": 0.2, "reuse": 0.3, "validation": {}}}}))
    return tmp_path / "vehicle"


def test_help_lists_every_policy_the_directory_form_and_cascades():
    text = policy_help()
    for name, entry in POLICIES.items():
        assert entry.usage.startswith(name) and entry.usage in text
    assert {"skip", "reuse", "cascade", "framediff", "motion", "none", "stride"} <= set(POLICIES)
    assert "DIR[:options]" in text and "A+B" in text
    with pytest.raises(ConfigError) as refused:
        parse_policy("magic")
    assert all(entry.usage in str(refused.value) for entry in POLICIES.values())
    assert "DIR[:options]" in str(refused.value)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_table_entry_names_a_policy_class(name):
    module_name, _, class_name = POLICIES[name].target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    assert isinstance(cls, type) and issubclass(cls, Policy)


@pytest.mark.parametrize("spec, missing", [("skip", "skip"), ("reuse:k=3", "reuse"), ("cascade", "skip")])
def test_without_shipped_filters_the_error_says_how_to_make_them(tmp_path, monkeypatch, spec, missing):
    monkeypatch.setattr(filterdir, "SHIPPED", tmp_path / "nothing")
    with pytest.raises(ConfigError, match=f"no shipped {missing} filter .*run `make train`"):
        parse_policy(spec)


def test_shipped_names_build_without_loading_weights(shipped):
    skip = parse_policy("skip")
    assert isinstance(skip, SkipPolicy) and (skip.name, skip.threshold) == ("skip", 0.1)
    assert skip.model._interpreter is None
    reuse = parse_policy("reuse:k=3,replacement=fifo")
    assert isinstance(reuse, ReusePolicy) and reuse.threshold == 0.4 and reuse.cache is None
    assert reuse.settings["k"] == 3 and reuse.settings["replacement"] == "fifo"
    # cascade: the jointly calibrated thresholds, not each filter's own.
    cascade = parse_policy("cascade")
    assert isinstance(cascade, ShippedCascade) and cascade.name == "skip+reuse"
    assert [(type(p), p.threshold) for p in cascade.policies] == [(SkipPolicy, 0.2), (ReusePolicy, 0.3)]
    chain = parse_policy("skip+reuse:threshold=0.25")
    assert isinstance(chain, Cascade) and [p.threshold for p in chain.policies] == [0.1, 0.25]
    with pytest.raises(ConfigError, match="no threshold for target 0.9"):
        parse_policy("cascade:target=0.9")
    with pytest.raises(ConfigError, match="unknown option 'k'; it takes target=0..1"):
        parse_policy("cascade:k=3")
    with pytest.raises(ConfigError, match="names a policy twice"):
        parse_policy("skip+skip")


def test_the_shipped_cascade_takes_reuses_self_check_with_the_budget_of_its_target(shipped):
    reuse = parse_policy("cascade").policies[1]
    assert reuse.check == 20 and reuse.target == 0.95                 # on by default
    assert reuse.threshold == 0.3 and reuse.budget == pytest.approx(0.05)
    assert parse_policy("cascade:check=0").policies[1].check == 0      # off when asked
    table = json.loads((shipped / "cascade.json").read_text())
    table["targets"]["0.9"] = {"skip": 0.25, "reuse": 0.5, "validation": {}}
    (shipped / "cascade.json").write_text(json.dumps(table))
    reuse = parse_policy("cascade:target=0.9,check=20").policies[1]
    assert reuse.threshold == 0.5 and reuse.budget == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="for the vehicle cascade only"):
        parse_policy("cascade:task=speech,check=20")


def test_a_filter_directory_is_a_policy_of_the_kind_its_metadata_says(tmp_path, monkeypatch):
    skip = make_filter_dir(tmp_path, "skip", threshold=0.2)
    reuse = make_filter_dir(tmp_path, "reuse", threshold=None)
    write_calibration(skip, {0.95: 0.2, 0.9: 0.3})
    policy = parse_policy(f"{skip}:target=0.9")
    assert isinstance(policy, SkipPolicy) and policy.threshold == 0.3 and policy.name == f"{skip}:target=0.9"
    with pytest.raises(ConfigError, match="not calibrated"):
        parse_policy(str(reuse))
    chain = parse_policy(f"{skip}+{reuse}:threshold=0.5,k=2")
    assert [type(p) for p in chain.policies] == [SkipPolicy, ReusePolicy] and chain.policies[1].settings["k"] == 2
    # A directory called like a policy is named as a path; the bare name is the policy.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(filterdir, "SHIPPED", tmp_path / "nothing")
    assert isinstance(parse_policy("./skip"), SkipPolicy)
    with pytest.raises(ConfigError, match="no shipped skip filter"):
        parse_policy("skip")
    with pytest.raises(ConfigError, match="filter directory elsewhere/skip not found"):
        parse_policy("elsewhere/skip")
    with pytest.raises(ConfigError, match="unknown option 'k'; it takes target=0..1, threshold=0..1"):
        parse_policy(f"{skip}:k=3")


@pytest.mark.parametrize("argument, message", [
    ("target", "options are key=value pairs"), ("=0.9", "options are key=value pairs"),
    ("target=2", "target must be 0..1, got '2'"), ("target=nan", "target must be 0..1"),
    ("target=0.9,target=0.9", "given twice"), ("threshold=0.1,target=0.9", "not both"),
])
def test_bad_options_are_refused_saying_what_is_accepted(tmp_path, argument, message):
    directory = make_filter_dir(tmp_path, "skip")
    with pytest.raises(ConfigError, match=message):
        parse_policy(f"{directory}:{argument}")


def test_the_filter_stage_runs_learned_filters_without_tensorflow(shipped, tmp_path):
    """`--filter cascade` (and skip, reuse) in the filter stage's process: LiteRT, never TensorFlow."""
    script = f"""
import sys
from pathlib import Path
import numpy as np
import models.filterdir
models.filterdir.SHIPPED = Path({str(shipped)!r})
from pipeline.message import Message
from stages.filter import Filter
stage = Filter("cascade")
stage.setup()
frame = np.full((360, 640, 3), 90, np.uint8)
actions = [stage.process(Message("video", "cam", seq, arrays=(frame,))).decision["action"] for seq in range(2)]
stage.side_input(Message("result", "cam", 0, result={{"decision": "infer", "count": 1}}))
actions.append(stage.process(Message("video", "cam", 2, arrays=(frame,))).decision["action"])
stage.teardown()
print(actions, sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # The fixture skip says ~0.56 for this frame (> 0.2: no skip); reuse learns seq 0 from feedback.
    assert done.stdout.strip().splitlines()[-1] == "['infer', 'infer', 'reuse'] []"


def test_a_speech_app_reads_a_bare_cascade_as_the_speech_cascade():
    from models.registry import task_spec
    assert task_spec("cascade", "speech") == "cascade:task=speech"
    assert task_spec("cascade:target=0.9", "speech") == "cascade:target=0.9,task=speech"
    assert task_spec("cascade:task=vehicles", "speech") == "cascade:task=vehicles"   # named: kept
    assert task_spec("energy+vad:silero", "speech") == "energy+vad:silero"
    assert task_spec("cascade", "vehicles") == "cascade"


def test_the_speech_cascade_is_the_spec_its_file_names_for_the_target(tmp_path, monkeypatch):
    import models.registry as registry
    path = tmp_path / "cascade.json"
    monkeypatch.setattr(registry, "SPEECH_CASCADE", path)
    with pytest.raises(ConfigError, match="no shipped speech cascade"):
        parse_policy("cascade:task=speech")
    path.write_text(json.dumps({"task": "speech", "targets": {"0.95": "energy:threshold=-60+vad:webrtc:3,threshold=0.2",
                                                              "0.9": "energy:threshold=-40"}}))
    cascade = parse_policy("cascade:task=speech")
    assert isinstance(cascade, ShippedCascade)
    assert [p.name for p in cascade.policies] == ["energy:threshold=-60", "vad:webrtc:3,threshold=0.2"]
    assert cascade.policies[0].threshold == -60 and cascade.policies[1].threshold == pytest.approx(0.2)
    assert [p.threshold for p in parse_policy("cascade:target=0.9,task=speech").policies] == [-40]
    with pytest.raises(ConfigError, match="has no threshold for target 0.98 .it has: 0.9, 0.95"):
        parse_policy("cascade:target=0.98,task=speech")
    with pytest.raises(ConfigError, match="task"):
        parse_policy("cascade:task=images")
    path.write_text(json.dumps({"targets": {"0.95": "cascade:task=speech"}}))   # no loops
    with pytest.raises(ConfigError, match="not a spec of audio policies"):
        parse_policy("cascade:task=speech")
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="is not a speech cascade file"):
        parse_policy("cascade:task=speech")
