"""The ``infistream`` command: run a whole graph, or one stage by itself.

    infistream run graph.yaml [--transport tcp] [--set stage.param=value ...]
    infistream stage MODULE:CLASS --in URL --out URL [--param k=v ...]
    infistream keys NAME [--dir certificates]

``stage`` is how a custom stage joins a graph, and how a stage runs on another host. Its
exit code tells the launcher what happened: 0 ended cleanly, 1 failed while running,
2 bad configuration, 3 setup failed (a missing file or camera, say).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml
import zmq

from pipeline.errors import ConfigError, EndpointError, InfistreamError, StageError
from pipeline.graph import EXIT_CONFIG, EXIT_SETUP, GraphRun, load_graph, stage_table
from pipeline.message import DEFAULT_MAX_MESSAGE_BYTES
from pipeline.security import CurveConfig, create_keys, stop_authenticators
from pipeline.stage import RunOptions, StopRequest, build_stage, install_stop_signals, run_stage
from pipeline.transport import SocketOptions, endpoints, keep_freed_buffers

log = logging.getLogger("infistream")


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infistream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run every stage of a YAML graph as processes")
    run.add_argument("graph", type=Path)
    run.add_argument("--transport", choices=["ipc", "tcp"], help="override the graph's transport")
    run.add_argument("--set", dest="overrides", action="append", default=[], type=_key_value,
                     metavar="STAGE.PARAM=VALUE", help="set a stage parameter (repeatable)")
    run.add_argument("--run-dir", type=Path, help="where sockets and per-stage metrics go (default: a temp dir)")
    run.add_argument("--metrics-interval", type=float, default=10.0, help="seconds between progress logs")

    stage = commands.add_parser("stage", help="run one stage by itself")
    stage.add_argument("target", help="the stage class, as module.path:ClassName")
    stage.add_argument("--name", help="the stage's name in logs and metrics (default: the class name)")
    stage.add_argument("--in", dest="inputs", action="append", default=[], metavar="URL",
                       help="endpoint to read from (connects unless prefixed with @; repeatable)")
    stage.add_argument("--side-in", dest="side_inputs", action="append", default=[], metavar="URL",
                       help="a side input: a PUB endpoint read between messages without blocking, e.g. results "
                            "fed back to a filter (connects unless prefixed with @; repeatable)")
    stage.add_argument("--out", dest="outputs", action="append", default=[], metavar="URL",
                       help="endpoint to write to (binds unless prefixed with >; repeatable)")
    stage.add_argument("--param", dest="params", action="append", default=[], type=_key_value, metavar="K=V")
    stage.add_argument("--params-json", default="{}", help="parameters as a JSON object (merged under --param)")
    stage.add_argument("--in-pattern", choices=["pull", "sub"], default="pull")
    stage.add_argument("--out-pattern", choices=["push", "pub"], default="push")
    stage.add_argument("--hwm", type=int, default=SocketOptions.hwm, help="high-water mark of every socket")
    stage.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    stage.add_argument("--sources", type=int, default=1,
                       help="final end-of-stream markers to wait for before ending; 0 runs until stopped")
    stage.add_argument("--curve-secret", type=Path, metavar="FILE",
                       help="encrypt every link with CurveZMQ using this stage's NAME.key_secret (infistream keys)")
    stage.add_argument("--curve-server", type=Path, metavar="FILE",
                       help="public NAME.key of the stage this one connects to (with --curve-secret)")
    stage.add_argument("--curve-clients", type=Path, metavar="DIR",
                       help="accept only clients whose public .key is in DIR (with --curve-secret)")
    stage.add_argument("--end-wait", type=float, default=RunOptions.end_wait_s, metavar="SECONDS",
                       help="after the final end-of-stream, how long to wait for readers where it cannot be told "
                            "whether they have read everything (none ever connected; not Linux)")
    stage.add_argument("--inputs-closed-file", type=Path, metavar="FILE",
                       help="once FILE exists (the launcher creates it when every stage this one reads from "
                            "has ended), handle what is queued and end")
    stage.add_argument("--ready-file", type=Path, metavar="FILE",
                       help="create FILE once the stage is set up and its sockets are open (the launcher "
                            "starts the sources when every other stage has)")
    stage.add_argument("--start-after", dest="start_after", action="append", default=[], type=Path,
                       metavar="FILE", help="a source: once set up, wait until FILE exists before producing "
                                            "(repeatable: the ready files of the graph's other stages)")
    stage.add_argument("--start-wait", type=float, default=RunOptions.start_wait_s, metavar="SECONDS",
                       help="the longest a source waits for --start-after files before producing anyway")
    stage.add_argument("--metrics-json", type=Path, help="write the stage's metrics here at the end")
    stage.add_argument("--metrics-interval", type=float, default=10.0, help="seconds between progress logs")
    _add_plugin_commands(commands)
    keys = commands.add_parser("keys", help="create a CurveZMQ certificate pair for a stage")
    keys.add_argument("name", help="certificate name, e.g. the stage's or host's name")
    keys.add_argument("--dir", type=Path, default=Path("certificates"), help="where to write them")
    return parser


#: Entry-point group through which installed packages add subcommands (the filter tools in
#: models/cli.py add ``infistream filter``): the runtime names none of them, so it depends on none.
PLUGIN_GROUP = "infistream.commands"


def _add_plugin_commands(commands: argparse._SubParsersAction) -> None:
    """Let each installed plugin add its subcommand: ``register(commands)`` adds a parser whose
    defaults include ``handler`` (called with the parsed arguments, returning the exit code)."""
    from importlib.metadata import entry_points
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()(commands)
        except Exception as error:   # a broken plugin must not take the runtime's commands down
            print(f"infistream: command plugin {entry.name} ({entry.value}) failed to load: {error}", file=sys.stderr)


def _configure_logging(level: str, name: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s {name} %(levelname)s %(message)s", datefmt="%H:%M:%S")


def _curve(args: argparse.Namespace) -> CurveConfig | None:
    if args.curve_secret is None:
        if args.curve_server or args.curve_clients:
            raise ConfigError("--curve-server and --curve-clients need --curve-secret (this stage's own key)")
        return None
    return CurveConfig(args.curve_secret, args.curve_server, args.curve_clients)


def make_keys(args: argparse.Namespace) -> int:
    public, secret = create_keys(args.dir, args.name)
    print(f"public certificate (copy to the stages that connect to this one): {public}")
    print(f"secret certificate (keep on this host, pass as --curve-secret):     {secret}")
    return 0


def run_one_stage(args: argparse.Namespace) -> int:
    keep_freed_buffers()  # before the first frame: no page faults per received frame
    params = json.loads(args.params_json)
    if not isinstance(params, dict):
        raise ConfigError(f"--params-json must be a JSON object, got {args.params_json!r}")
    params.update(dict(args.params))
    stage = build_stage(args.target, params)
    options = RunOptions(
        name=args.name or args.target.rpartition(":")[2],
        inputs=endpoints(args.inputs, bind_default=False),
        outputs=endpoints(args.outputs, bind_default=True),
        in_pattern=args.in_pattern,
        out_pattern=args.out_pattern,
        socket=SocketOptions(hwm=args.hwm, max_message_bytes=args.max_message_bytes, curve=_curve(args)),
        sources=args.sources,
        end_wait_s=args.end_wait,
        metrics_interval_s=args.metrics_interval,
        metrics_path=args.metrics_json,
        inputs_closed=args.inputs_closed_file,
        ready_file=args.ready_file,
        start_after=args.start_after,
        start_wait_s=args.start_wait,
        side_inputs=endpoints(args.side_inputs, bind_default=False),
    )
    stop = StopRequest()   # SIGINT: finish the streams; SIGTERM: stop now
    install_stop_signals(stop)
    context = zmq.Context.instance()
    try:
        run_stage(stage, options, stop=stop, context=context)
    finally:
        stop_authenticators()
        # Terminating the context waits (up to LINGER) until ZeroMQ has sent what is queued
        # and released the zero-copy frame buffers; exiting before that loses the tail.
        context.term()
    return 0


def run_graph(args: argparse.Namespace) -> int:
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in args.overrides:
        stage_name, sep, param = key.partition(".")
        if not sep:
            raise ConfigError(f"--set needs STAGE.PARAM=VALUE, got {key}={value}")
        overrides.setdefault(stage_name, {})[param] = yaml.safe_load(value)
    graph = load_graph(args.graph, overrides)
    if args.transport:
        graph.transport = args.transport
    run = GraphRun(graph, args.run_dir, log_level=args.log_level, metrics_interval_s=args.metrics_interval)
    code = run.run()
    print(f"\nper-stage statistics ({graph.name}):")
    print(stage_table(run.stage_metrics()), flush=True)
    if run.failed:
        print(f"graph {graph.name} failed: stage(s) {run.failed} ended with errors (see the log above)",
              file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Custom stages are named module:Class relative to where the user runs the command,
    # as with gunicorn or uvicorn; a console script does not put the directory on sys.path.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    handler = getattr(args, "handler", None)
    name = ({"run": "launcher", "keys": "keys"}.get(args.command) or (args.command if handler else None)
            or args.name or args.target.rpartition(":")[2])
    _configure_logging(args.log_level, name)
    try:
        commands = {"run": run_graph, "stage": run_one_stage, "keys": make_keys}
        return (handler or commands[args.command])(args)
    except (ConfigError, EndpointError) as error:
        log.error("configuration error: %s", error)
        return EXIT_CONFIG
    except StageError as error:
        log.error("%s", error)
        return EXIT_SETUP if error.step == "setup" else 1
    except InfistreamError as error:
        log.error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
