"""Graphs: a YAML file naming stages and how they connect, launched as one process per stage.

```yaml
name: demo
transport: ipc            # how stages wired by name talk: ipc (default) or tcp (127.0.0.1)
hwm: 4                    # high-water mark of every socket (optional)
stages:
  - name: source
    stage: stages.source:Source
    params: {uri: "${assets}/traffic/intel_car_detection.mp4"}
  - name: resize
    stage: stages.relay:Resize
    inputs: [source]      # stage names (wired automatically) or endpoint URLs
    params: {width: 320}
  - name: stats
    stage: stages.sinks:StatsPrinter
    inputs: [resize]
```

An input ``name[k]`` reads the stage's output number k (from 0; ``name`` is ``name[0]``): a
stage with several outputs sends each message to the one its ``route`` picks (the filter sends
inputs for the model to ``filter[0]`` and the rest straight to ``filter[1]``).

Per stage, optional: ``outputs`` (URLs to bind, when others outside the graph connect),
``in_pattern`` (pull|sub), ``out_pattern`` (push|pub), ``sources`` (final end-of-stream
markers to wait for; by default the number of source stages upstream, 0 = run until the
graph ends), ``restart`` (``on-failure`` (default for non-sources) or ``no``) and
``max_restarts`` (default 3), ``side_inputs`` (stage names or URLs read as side inputs, see
`pipeline.stage`: e.g. the filter reads the aggregator's published results; a stage named
here must publish, ``out_pattern: pub``, and a side input neither counts as a source nor
closes a cycle), ``curve`` (``{secret: FILE, server: FILE, clients: DIR}``: the
stage's ``--curve-*`` options, for its tcp sockets). ``${assets}`` in a string parameter is the
shared assets directory.

Each stage runs as ``infistream stage ...`` in its own process, exactly as a user would run
it by hand on another host. The launcher restarts a stage that crashes (its neighbours keep
running and reconnect), ends the graph when every stage has ended, and on Ctrl-C (or SIGTERM)
stops the sources first so that end-of-stream flows through and every stage finishes its
accounting.

The sources start producing once every other stage is set up (its model loaded, its sockets
open): each stage creates a file in the run directory when it is ready (``--ready-file``), and
each source waits for all of them (``--start-after``). Otherwise a recorded file would flow
through the filter while a worker still loads its model: the inputs the filter answers would
be timed from a start that the model's inputs wait out, and a camera would drop its first
seconds.

When every stage that a stage reads from has ended cleanly, nothing more can come to it: the
launcher tells it so (a file in the run directory, ``--inputs-closed-file``), and the stage
ends once it has handled what is queued (`pipeline.stage.Stage.end_of_inputs`). So a pool
worker ends after the filter, and an aggregator waiting for inputs that were lost with a
killed worker ends as soon as every worker and the filter have, counting them as lost, rather
than after its end-of-stream timeout. A stage with an input from outside the graph (a URL) is
never told.

The run directory (ipc sockets, per-stage metrics) is a temporary directory removed when the
run ends, however it ends (`close`); the metrics are read before. A run directory given by
the caller is kept, less its sockets.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.assets import assets_dir
from pipeline.errors import ConfigError
from pipeline.metrics import format_table
from pipeline.stage import SourceStage, load_stage_class
from pipeline.transport import free_tcp_port, local_url

log = logging.getLogger(__name__)

_STAGE_KEYS = {"name", "stage", "params", "inputs", "outputs", "in_pattern", "out_pattern", "sources",
               "restart", "max_restarts", "curve", "side_inputs"}
#: A stage's ``curve`` key: ``{secret: FILE, server: FILE, clients: DIR}`` -> its --curve-* options.
_CURVE_KEYS = {"secret": "--curve-secret", "server": "--curve-server", "clients": "--curve-clients"}
_GRAPH_KEYS = {"name", "transport", "hwm", "stages"}
# Exit codes of `infistream stage` (see pipeline.cli): a bad configuration or a failed setup
# would fail again, so only crashes and runtime errors are restarted.
EXIT_CONFIG, EXIT_SETUP = 2, 3


@dataclass
class StageSpec:
    """One stage of a graph, as written in the YAML file (inputs not yet resolved)."""

    name: str
    stage: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    in_pattern: str = "pull"
    out_pattern: str = "push"
    sources: int | None = None
    restart: str | None = None
    max_restarts: int = 3
    curve: dict[str, str] | None = None    # CurveZMQ certificates for the stage's tcp sockets
    side_inputs: list[str] = field(default_factory=list)
    is_source: bool = False


@dataclass
class GraphSpec:
    name: str
    stages: list[StageSpec]
    transport: str = "ipc"
    hwm: int | None = None

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(name)


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("${assets}", str(assets_dir()))
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def load_graph(path: Path | str, overrides: dict[str, dict[str, Any]] | None = None) -> GraphSpec:
    """Read and check a graph file; `overrides` maps stage name to parameters to set."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"graph file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"graph file {path} is not valid YAML: {error}") from None
    return parse_graph(document, str(path), overrides or {})


def parse_graph(document: Any, where: str = "graph", overrides: dict[str, dict[str, Any]] | None = None) -> GraphSpec:
    """Build a `GraphSpec` from a parsed YAML document, checking every key and reference."""
    if not isinstance(document, dict) or not isinstance(document.get("stages"), list) or not document["stages"]:
        raise ConfigError(f"{where}: expected a mapping with a non-empty 'stages' list")
    unknown = set(document) - _GRAPH_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown graph key(s) {sorted(unknown)}; allowed: {sorted(_GRAPH_KEYS)}")
    transport = document.get("transport", "ipc")
    if transport not in ("ipc", "tcp"):
        raise ConfigError(f"{where}: transport must be 'ipc' or 'tcp', got {transport!r}")
    stages: list[StageSpec] = []
    for index, entry in enumerate(document["stages"]):
        if not isinstance(entry, dict) or "name" not in entry or "stage" not in entry:
            raise ConfigError(f"{where}: stages[{index}] must be a mapping with 'name' and 'stage'")
        unknown = set(entry) - _STAGE_KEYS
        if unknown:
            raise ConfigError(f"{where}: stage {entry['name']!r} has unknown key(s) {sorted(unknown)}; "
                              f"allowed: {sorted(_STAGE_KEYS)}")
        spec = StageSpec(**{k: v for k, v in entry.items()})
        spec.params = _expand(dict(spec.params or {}))
        spec.inputs = list(spec.inputs or [])
        spec.outputs = list(spec.outputs or [])
        spec.side_inputs = list(spec.side_inputs or [])
        if any(s.name == spec.name for s in stages):
            raise ConfigError(f"{where}: two stages are named {spec.name!r}")
        spec.is_source = issubclass(load_stage_class(spec.stage), SourceStage)
        if spec.restart is None:
            spec.restart = "no" if spec.is_source else "on-failure"
        if spec.restart not in ("no", "on-failure"):
            raise ConfigError(f"{where}: stage {spec.name!r} restart must be 'no' or 'on-failure', got {spec.restart!r}")
        if spec.curve is not None and (not isinstance(spec.curve, dict) or set(spec.curve) - set(_CURVE_KEYS)
                                       or "secret" not in spec.curve):
            raise ConfigError(f"{where}: stage {spec.name!r} curve must be a mapping with secret (and optionally "
                              f"server, clients), got {spec.curve!r}")
        stages.append(spec)
    graph = GraphSpec(document.get("name", Path(where).stem), stages, transport, document.get("hwm"))
    names = {s.name for s in stages}
    for stage_name, params in (overrides or {}).items():
        if stage_name not in names:
            raise ConfigError(f"{where}: --set names stage {stage_name!r}, which is not in the graph {sorted(names)}")
        graph.stage(stage_name).params.update(params)
    for spec in stages:
        if spec.is_source and spec.inputs:
            raise ConfigError(f"{where}: source stage {spec.name!r} cannot have inputs")
        if not spec.is_source and not spec.inputs:
            raise ConfigError(f"{where}: stage {spec.name!r} needs 'inputs' (stage names or URLs)")
        for reference in spec.inputs:
            if "://" not in reference and split_reference(reference)[0] not in names:
                raise ConfigError(f"{where}: stage {spec.name!r} reads from {reference!r}, which is neither "
                                  f"a stage of this graph {sorted(names)} nor an endpoint URL")
        for reference in spec.side_inputs:
            if "://" in reference:
                continue
            publisher = split_reference(reference)[0]
            if publisher not in names:
                raise ConfigError(f"{where}: stage {spec.name!r} has side input {reference!r}, which is neither "
                                  f"a stage of this graph {sorted(names)} nor an endpoint URL")
            if graph.stage(publisher).out_pattern != "pub":
                raise ConfigError(f"{where}: stage {spec.name!r} has side input {reference!r}, but {publisher!r} "
                                  f"does not publish (give it out_pattern: pub)")
        if spec.sources is None:
            spec.sources = _count_sources(graph, spec, set())
    return graph


_REFERENCE = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?P<index>\d+)\])?$")


def split_reference(reference: str) -> tuple[str, int]:
    """``"filter[1]"`` -> ``("filter", 1)``; ``"filter"`` -> ``("filter", 0)``."""
    match = _REFERENCE.match(reference)
    if not match:
        raise ConfigError(f"expected a stage name or name[k], got {reference!r}")
    return match["name"], int(match["index"] or 0)


def _count_sources(graph: GraphSpec, spec: StageSpec, seen: set[str]) -> int:
    """Source stages upstream of `spec` (an input URL from outside counts as one source)."""
    if spec.is_source:
        return 1
    if spec.name in seen:
        raise ConfigError(f"graph {graph.name!r} has a cycle through stage {spec.name!r}")
    total = 0
    for reference in spec.inputs:
        total += 1 if "://" in reference else \
            _count_sources(graph, graph.stage(split_reference(reference)[0]), seen | {spec.name})
    return total


def wire(graph: GraphSpec, run_dir: Path) -> dict[str, dict[str, list[str]]]:
    """Endpoints per stage: ``{name: {"inputs": [...], "outputs": [...], "side_inputs": [...]}}``,
    URLs with @ or >.

    A stage read by name gets an output endpoint of its own per output read (ipc socket in
    `run_dir`, or a free 127.0.0.1 port), bound by it and connected to by its readers.
    """
    out_urls: dict[str, list[str]] = {}
    wanted: dict[str, int] = {}   # stage -> how many of its outputs are read by name
    for spec in graph.stages:
        for reference in spec.inputs + spec.side_inputs:
            if "://" not in reference:
                name, index = split_reference(reference)
                wanted[name] = max(wanted.get(name, 0), index + 1)
    for spec in graph.stages:
        urls = [u if u[0] in "@>" else "@" + u for u in spec.outputs]
        for index in range(len(urls), wanted.get(spec.name, 0)):
            if graph.transport == "ipc":
                suffix = "" if index == 0 else f".{index}"
                urls.append(f"@ipc://{run_dir / (spec.name + suffix + '.sock')}")
            else:
                urls.append(f"@tcp://127.0.0.1:{free_tcp_port()}")
        out_urls[spec.name] = urls
    def reader_urls(references: list[str]) -> list[str]:
        urls = []
        for reference in references:
            if "://" in reference:
                urls.append(reference if reference[0] in "@>" else ">" + reference)
            else:
                name, index = split_reference(reference)
                upstream = out_urls[name][index]
                bound = upstream[1:] if upstream[0] == "@" else upstream
                urls.append(">" + local_url(bound))
        return urls

    return {spec.name: {"inputs": reader_urls(spec.inputs), "outputs": out_urls[spec.name],
                        "side_inputs": reader_urls(spec.side_inputs)} for spec in graph.stages}


@dataclass
class _Running:
    spec: StageSpec
    command: list[str]
    process: subprocess.Popen
    restarts: int = 0
    exit_code: int | None = None


class GraphRun:
    """Runs every stage of a graph as a process and watches them until the graph ends."""

    POLL_S = 0.1
    SINKS_DONE_GRACE_S = 2.0
    ENDING_GRACE_S = 10.0
    FAILED_STAGE_GRACE_S = 3.0

    def __init__(self, graph: GraphSpec, run_dir: Path | None = None, log_level: str = "INFO",
                 stop_grace_s: float = 15.0, metrics_interval_s: float = 10.0):
        self.graph = graph
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix=f"infistream-{graph.name}-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_level = log_level
        self.stop_grace_s = stop_grace_s
        self.metrics_interval_s = metrics_interval_s
        self.wiring = wire(graph, self.run_dir)
        self.running: dict[str, _Running] = {}
        self._stop_requested_at: float | None = None
        self._stop_grace_s = stop_grace_s
        self._sinks_done_at: float | None = None
        readers = {split_reference(ref)[0] for spec in graph.stages for ref in spec.inputs if "://" not in ref}
        # Terminal stages: nobody in the graph reads them (they may still publish outside it,
        # as the aggregator's PUB does). Once they end cleanly, every input has arrived.
        self._sinks = {spec.name for spec in graph.stages if spec.name not in readers}
        self.failed: list[str] = []
        # One id for this run, in every stage's environment (restarts included): a restarted
        # aggregator appends to the results file of its own run only (docs/results.md).
        self.run_id = uuid.uuid4().hex
        self._environment = {**os.environ, "INFISTREAM_RUN_ID": self.run_id}
        # Stages the launcher had to end (SIGTERM or SIGKILL) rather than ending by themselves.
        self.terminated: list[str] = []
        # ... of which those ended because every sink had everything (a worker pool waits for
        # more until told to stop): an expected end, shown as such in the stage table.
        self.stopped_when_done: list[str] = []
        # Stage -> the stages it reads from, for stages that read only from the graph: once
        # those have all ended cleanly, the stage is told its inputs are closed.
        self._upstream = {spec.name: {split_reference(ref)[0] for ref in spec.inputs}
                          for spec in graph.stages
                          if not spec.is_source and spec.inputs and all("://" not in ref for ref in spec.inputs)}
        self.inputs_closed: list[str] = []   # stages told so, in order
        self._own_run_dir = run_dir is None
        self._final_metrics: dict[str, dict] = {}

    def inputs_closed_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.inputs-closed"

    def ready_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.ready"

    def metrics_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.metrics.json"

    def command(self, spec: StageSpec) -> list[str]:
        wiring = self.wiring[spec.name]
        command = [sys.executable, "-m", "pipeline.cli", "--log-level", self.log_level, "stage", spec.stage,
                   "--name", spec.name, "--params-json", json.dumps(spec.params),
                   "--in-pattern", spec.in_pattern, "--out-pattern", spec.out_pattern,
                   "--sources", str(spec.sources), "--metrics-json", str(self.metrics_path(spec.name)),
                   "--metrics-interval", str(self.metrics_interval_s)]
        for url in wiring["inputs"]:
            command += ["--in", url]
        for url in wiring["outputs"]:
            command += ["--out", url]
        for url in wiring["side_inputs"]:
            command += ["--side-in", url]
        if self.graph.hwm:
            command += ["--hwm", str(self.graph.hwm)]
        for key, option in _CURVE_KEYS.items():
            if spec.curve and spec.curve.get(key):
                command += [option, str(spec.curve[key])]
        if spec.name in self._upstream:
            command += ["--inputs-closed-file", str(self.inputs_closed_path(spec.name))]
        command += ["--ready-file", str(self.ready_path(spec.name))]
        if spec.is_source:
            for other in self.graph.stages:
                if not other.is_source:
                    command += ["--start-after", str(self.ready_path(other.name))]
        return command

    def start(self) -> None:
        for leftover in self._run_files():   # a reused run directory: nothing of an earlier run may count
            leftover.unlink(missing_ok=True)
        for spec in self.graph.stages:
            command = self.command(spec)
            log.debug("starting %s: %s", spec.name, " ".join(command))
            self.running[spec.name] = _Running(spec, command, subprocess.Popen(command, env=self._environment))
        log.info("graph %s: %d stages started (run dir %s)", self.graph.name, len(self.running), self.run_dir)

    def request_stop(self, grace_s: float | None = None) -> None:
        """Stop gracefully: sources end their streams, everything downstream drains and ends.

        Stages still running `grace_s` seconds later (default `stop_grace_s`) are terminated.
        """
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
            self._stop_grace_s = self.stop_grace_s if grace_s is None else grace_s
            log.info("graph %s: stopping sources", self.graph.name)
            for stage in self.running.values():
                if stage.spec.is_source and stage.exit_code is None:
                    stage.process.send_signal(signal.SIGINT)

    def kill_stage(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one stage's process (used by tests and by operators)."""
        self.running[name].process.send_signal(sig)

    def pid(self, name: str) -> int:
        return self.running[name].process.pid

    def poll(self) -> bool:
        """Check every stage once; returns True while the graph is still running."""
        for stage in self.running.values():
            if stage.exit_code is not None:
                continue
            code = stage.process.poll()
            if code is None:
                continue
            if code == 0:
                stage.exit_code = 0
                continue
            restartable = (stage.spec.restart == "on-failure" and stage.restarts < stage.spec.max_restarts
                           and code not in (EXIT_CONFIG, EXIT_SETUP) and self._stop_requested_at is None)
            if restartable:
                stage.restarts += 1
                log.warning("stage %s exited with %s; restarting (%d of %d)", stage.spec.name, _describe(code),
                            stage.restarts, stage.spec.max_restarts)
                stage.process = subprocess.Popen(stage.command, env=self._environment)
                continue
            stage.exit_code = code
            self.failed.append(stage.spec.name)
            log.error("stage %s exited with %s; stopping the graph", stage.spec.name, _describe(code))
            # Its readers will never see its end of stream: give the rest a short grace only.
            self.request_stop(grace_s=self.FAILED_STAGE_GRACE_S)
        pending = [s for s in self.running.values() if s.exit_code is None]
        if not pending:
            return False
        self._close_inputs(pending)
        # Once every sink has ended cleanly, all data has arrived: what still runs is a
        # service (sources: 0), a stage waiting for such a reader to leave, or a stage ending
        # on its own. Stop them, after a grace.
        sinks = [s for s in self.running.values() if s.spec.name in self._sinks]
        if sinks and all(s.exit_code == 0 for s in sinks) or all(s.spec.sources == 0 for s in pending):
            self._sinks_done_at = self._sinks_done_at or time.monotonic()
            waited = time.monotonic() - self._sinks_done_at
            # A stage told that its inputs are closed is ending by itself, and its process may
            # take a few seconds to exit once it has (sockets linger, a model runtime tears
            # down): it gets ENDING_GRACE_S. The rest get SINKS_DONE_GRACE_S.
            overdue = [s for s in pending if waited > (self.ENDING_GRACE_S if s.spec.name in self.inputs_closed
                                                       else self.SINKS_DONE_GRACE_S)]
            if overdue:
                self.stopped_when_done += [s.spec.name for s in overdue]
                self._terminate(overdue)
                if len(overdue) == len(pending):
                    return False
        if self._stop_requested_at is not None and time.monotonic() - self._stop_requested_at > self._stop_grace_s:
            log.warning("graph %s: stages %s did not finish within %.0f s of the stop; terminating them",
                        self.graph.name, [s.spec.name for s in pending], self._stop_grace_s)
            self._terminate(pending)
            return False
        return True

    def _close_inputs(self, pending: list[_Running]) -> None:
        """Tell each running stage whose upstream stages have all ended cleanly that its inputs are closed."""
        for stage in pending:
            name = stage.spec.name
            upstream = self._upstream.get(name)
            if upstream is None or name in self.inputs_closed:
                continue
            if all(self.running[u].exit_code == 0 for u in upstream):
                self.inputs_closed_path(name).touch()
                self.inputs_closed.append(name)
                log.info("graph %s: every stage %s reads from has ended; it ends once it has handled "
                         "what is queued", self.graph.name, name)

    def _terminate(self, stages: list[_Running]) -> None:
        """SIGTERM `stages` (they stop gracefully), and kill those still running 10 s later."""
        for stage in stages:
            self.terminated.append(stage.spec.name)
            stage.process.send_signal(signal.SIGTERM)
        self._wait_all(stages, 10.0)

    def _wait_all(self, stages: list[_Running], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for stage in stages:
            try:
                stage.exit_code = stage.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stage.process.kill()
                stage.exit_code = stage.process.wait()

    def wait(self, watch: Callable[[], None] | None = None) -> int:
        """Watch the graph until it ends; 0 when every stage ended cleanly.

        `watch` is called between checks (every `POLL_S`) and once at the end, e.g. to follow
        a results file and show progress.
        """
        previous = None
        if threading.current_thread() is threading.main_thread():
            # SIGTERM to the launcher stops the graph as Ctrl-C does, rather than orphaning it.
            previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            try:
                while self.poll():
                    if watch:
                        watch()
                    time.sleep(self.POLL_S)
            except KeyboardInterrupt:
                self._drain_after_interrupt()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if watch:
            watch()
        return 1 if self.failed else 0

    def _drain_after_interrupt(self) -> None:
        """After Ctrl-C: let the streams end and drain. Another Ctrl-C stops every stage now
        (SIGTERM, then SIGKILL 10 s later); one within a second of the first is the same key
        press reaching the launcher twice (terminal and process group) and is not counted."""
        self.request_stop()
        first = time.monotonic()
        while True:
            try:
                while self.poll():
                    time.sleep(self.POLL_S)
                return
            except KeyboardInterrupt:
                if time.monotonic() - first < 1.0:
                    continue
                pending = [s for s in self.running.values() if s.exit_code is None]
                log.warning("graph %s: interrupted again; stopping %s now", self.graph.name,
                            [s.spec.name for s in pending])
                try:
                    self._terminate(pending)
                except KeyboardInterrupt:   # impatient: kill what is left
                    for stage in pending:
                        if stage.process.poll() is None:
                            stage.process.kill()
                        stage.exit_code = stage.process.wait()
                return

    def run(self, watch: Callable[[], None] | None = None) -> int:
        """Start every stage, watch until the graph ends, and clean up; 0 when all ended cleanly."""
        try:
            self.start()
            return self.wait(watch)
        finally:
            self.close()

    def _read_metrics(self, name: str) -> dict:
        if name in self._final_metrics:
            return dict(self._final_metrics[name])
        path = self.metrics_path(name)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):   # not written (yet), or cut short by a kill
            return {"stage": name}

    def stage_metrics(self) -> list[dict]:
        """Each stage's metrics (written when it ended), with its restarts and exit."""
        rows = []
        for name, stage in self.running.items():
            snapshot = self._read_metrics(name)
            snapshot["restarts"] = stage.restarts
            snapshot["exit"] = _describe(stage.exit_code) if stage.exit_code is not None else "running"
            if name in self.stopped_when_done and stage.exit_code not in (0, None):
                snapshot["exit"] = f"stopped when done ({snapshot['exit']})"
            rows.append(snapshot)
        return rows

    def close(self) -> None:
        """Kill what still runs and remove the run directory (keeping the metrics in memory)."""
        try:
            for stage in self.running.values():
                if stage.process.poll() is None:
                    self.terminated.append(stage.spec.name)
                    stage.process.kill()
                    stage.process.wait()
        finally:
            for name in self.running:
                self._final_metrics[name] = self._read_metrics(name)
            if self._own_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            else:
                for leftover in self._run_files():
                    leftover.unlink(missing_ok=True)

    def _run_files(self) -> list[Path]:
        """What a run leaves in its directory besides the metrics: sockets and signal files."""
        return [*self.run_dir.glob("*.sock"), *self.run_dir.glob("*.inputs-closed"), *self.run_dir.glob("*.ready")]


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _describe(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def stage_table(rows: list[dict]) -> str:
    """Per-stage statistics as a table for people."""
    flat = []
    for row in rows:
        process = row.get("process_ms", {})
        flat.append({
            "stage": row.get("stage"), "exit": row.get("exit"), "restarts": row.get("restarts", 0),
            "inputs": row.get("inputs"), "outputs": row.get("outputs"), "in/s": row.get("inputs_per_s"),
            "out/s": row.get("outputs_per_s"), "p50 ms": process.get("p50"), "p95 ms": process.get("p95"),
            "dropped": sum(row.get("dropped", {}).values()), "rejected": sum(row.get("rejected", {}).values()),
            "errors": row.get("errors"),
        })
    return format_table(flat)
