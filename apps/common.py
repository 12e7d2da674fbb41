"""What the consumer apps share: the graph they run and the options every one of them takes.

Every app runs the same shape of graph, one process per stage (pipeline/graph.py):

    source -> filter -> worker-1 .. worker-N -> aggregate
                |                                  ^
                +----------------------------------+   inputs the filter answered, end of stream

The workers share the filter's first output (PUSH: each input for the model reaches one of
them); the filter's second output takes everything else straight to the aggregator, which
reads all of them, restores the order, resolves decisions, counts and accounts.

With ``--remote-workers`` the filter's jobs and the aggregator's results are also offered on
two tcp endpoints that workers on other hosts connect to. With ``--curve-secret`` those two
endpoints are CurveZMQ servers (encrypted; with ``--curve-clients`` only the listed workers'
keys may connect), each behind a small relay stage, so that the app's own links stay plain ipc:

    filter[0] -> jobs-gate (@JOBS_URL, CURVE) -> remote workers -> (@RESULTS_URL, CURVE) results-gate -> aggregate

In every run the filter tags what it sends and the aggregator takes only tagged results, each
input once (a per-run job key in $INFISTREAM_JOB_KEY; stages/ledger.py), and the aggregator
is given a run id so that a restart of it appends to --out (docs/results.md, "Restarts").
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shlex
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

from pipeline.assets import cache_dir
from pipeline.errors import ConfigError
from pipeline.graph import GraphRun, parse_graph, stage_table
from pipeline.transport import local_url
from models.registry import POLICIES
from stages.detect import offline_environment
from stages.filter import Filter


def add_run_options(parser: argparse.ArgumentParser, default_out: str, default_filter: str = "none") -> None:
    parser.add_argument("--filter", default=default_filter, metavar="POLICY",
                        # argparse formats help with %: a summary's "1 %" would print its whole dict
                        help=(f"which inputs skip the heavy model (default {default_filter}): "
                              + "; ".join(f"{e.usage}: {e.summary}" for e in POLICIES.values())
                              + "; A+B: a cascade, the first policy that decides answers").replace("%", "%%"))
    parser.add_argument("--audit", type=float, default=0.0, metavar="SHARE",
                        help="live accuracy audit: send this random share (e.g. 0.02) of the inputs the filter "
                             "answered to the model as well; the summary and the results estimate the live "
                             "agreement with a 95 %% interval (audited inputs count as inferred; default 0: off)")
    parser.add_argument("--audit-seed", type=int, default=None, metavar="N",
                        help="seed of the audit's random draws, for a repeatable run (default: a fresh one)")
    parser.add_argument("--hold-target", type=float, default=0.0, metavar="T",
                        help="with --audit: lower the filter's thresholds when the estimated agreement's upper "
                             "bound falls below T (e.g. 0.95); needs a policy with thresholds (default 0: off)")
    parser.add_argument("--workers", type=int, default=1,
                        help="heavy-model worker processes on this host (default 1; 0 with --remote-workers)")
    parser.add_argument("--remote-workers", default=None, metavar="JOBS_URL,RESULTS_URL",
                        help="also bind these two endpoints (e.g. tcp://0.0.0.0:5551,tcp://0.0.0.0:5552) so that "
                             "workers on other hosts can join: `infistream stage stages.detect:YoloWorker "
                             "--in tcp://THIS_HOST:5551 --out tcp://THIS_HOST:5552 --sources 0`")
    parser.add_argument("--curve-secret", default=None, metavar="FILE",
                        help="with --remote-workers: encrypt the jobs and results endpoints with CurveZMQ, using "
                             "this host's NAME.key_secret (`infistream keys NAME`); NAME.key beside it is what "
                             "remote workers pass as --curve-server")
    parser.add_argument("--curve-clients", default=None, metavar="DIR",
                        help="with --curve-secret: accept only workers whose public .key is in DIR "
                             "(without it, any worker that has this host's public key may join)")
    parser.add_argument("--out", default=default_out, help=f"per-input results, JSON Lines (default {default_out})")
    parser.add_argument("--summary", default=None, help="also write the savings summary as JSON here")
    parser.add_argument("--publish", default=None, metavar="URL",
                        help="publish every result on a PUB socket bound here, e.g. tcp://127.0.0.1:5560")
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc",
                        help="how the stages talk (default ipc; tcp for stages on other hosts)")
    parser.add_argument("--realtime", action="store_true", help="pace a recorded file at its own rate, as if live")
    parser.add_argument("--stats", action="store_true", help="print per-stage statistics at the end")
    parser.add_argument("--log-level", default="WARNING", help="log level of every stage (default WARNING)")


def consumer_graph(name: str, args: argparse.Namespace, source: dict[str, Any], worker: str,
                   worker_params: dict[str, Any], aggregator: dict[str, Any], keep_frames: bool = False) -> dict:
    """The graph document (as a graph YAML file would hold it) for one consumer app run."""
    audit = {key: value for key, value in (("audit", getattr(args, "audit", 0.0)),
                                           ("audit_seed", getattr(args, "audit_seed", None)),
                                           ("hold_target", getattr(args, "hold_target", 0.0)))
             if value or (key == "audit_seed" and value is not None)}
    if "audit_seed" in audit and "audit" not in audit:
        raise SystemExit(f"{name}: --audit-seed seeds the audit; give --audit SHARE too")
    try:   # a bad --filter or audit is refused here, before any process starts (building loads no weights)
        Filter(args.filter, job_key="", **audit)
    except ConfigError as error:
        raise SystemExit(f"{name}: {error}") from None
    remote = getattr(args, "remote_workers", None)
    if args.workers < (0 if remote else 1):
        raise SystemExit(f"{name}: --workers must be at least {0 if remote else 1}, got {args.workers}")
    curve = _curve_options(name, args)
    source = {"realtime": args.realtime, **source}
    stages: list[dict[str, Any]] = [
        {"name": "source", "stage": "stages.source:Source", "params": source},
        # The aggregator's results come back to the filter (a side input): its policies learn
        # the final answers of the inputs they let through.
        {"name": "filter", "stage": "stages.filter:Filter", "inputs": ["source"], "side_inputs": ["aggregate"],
         "params": {"policy": args.filter, "keep_frames": keep_frames, **audit}},
    ]
    workers = [f"worker-{i + 1}" for i in range(args.workers)]
    if remote and curve:
        # Two relays hold the CURVE endpoints; the app's own workers read the filter directly
        # (the filter's PUSH shares the jobs between them and the jobs gate).
        jobs, results = _remote_endpoints(name, remote)
        stages += [{"name": "jobs-gate", "stage": "stages.relay:Relay", "inputs": ["filter"], "outputs": ["@" + jobs],
                    "sources": 0, "curve": curve},
                   {"name": "results-gate", "stage": "stages.relay:Relay", "inputs": ["@" + results],
                    "sources": 0, "curve": curve}]
        worker_io = {"inputs": ["filter"]}
        aggregate_inputs = [*[f"worker-{i + 1}" for i in range(args.workers)], "results-gate", "filter[1]"]
    elif remote:
        # The filter binds the jobs endpoint and the aggregator the results endpoint; every
        # worker, local or on another host, connects to both.
        jobs, results = _remote_endpoints(name, remote)
        stages[1]["outputs"] = ["@" + jobs]
        worker_io = {"inputs": [">" + local_url(jobs)], "outputs": [">" + local_url(results)]}
        aggregate_inputs = ["@" + results, "filter[1]"]
    else:
        worker_io = {"inputs": ["filter"]}
        aggregate_inputs = [*workers, "filter[1]"]
    for worker_name in workers:
        # A pool worker runs until the graph ends: the end-of-stream marker reaches only one of them.
        stages.append({"name": worker_name, "stage": worker, "sources": 0, **worker_io,
                       "params": {**worker_params, "keep_frames": keep_frames}})
    aggregate = {"name": "aggregate", "stage": "stages.aggregate:Aggregator", "inputs": aggregate_inputs,
                 "sources": 1, "out_pattern": "pub",
                 # One id per run: a restarted aggregator appends to --out, a new run starts it anew.
                 "params": {"out": args.out, "run_id": uuid.uuid4().hex,
                            **({"summary": args.summary} if args.summary else {}), **aggregator}}
    if args.publish:
        aggregate["outputs"] = [args.publish]
    stages.append(aggregate)
    if remote:
        print(f"{name}: workers on other hosts join with\n  {remote_worker_command(args, worker, worker_params)}",
              file=sys.stderr)
    return {"name": name, "transport": args.transport, "stages": stages}


def remote_worker_command(args: argparse.Namespace, worker: str, worker_params: dict[str, Any]) -> str:
    """The command line that starts a worker on another host for this run (THIS_HOST: this one's
    address as the other host reaches it; WORKER: the worker's own certificate name)."""
    jobs, results = _remote_endpoints("app", args.remote_workers)
    host = lambda url: url.replace("0.0.0.0", "THIS_HOST").replace("*", "THIS_HOST")   # noqa: E731
    command = ["infistream", "stage", worker, "--name", "remote", "--in", host(jobs), "--out", host(results),
               "--sources", "0"]
    for key, value in worker_params.items():
        command += ["--param", f"{key}={value}"]
    curve = _curve_options("app", args)
    if curve:
        command += ["--curve-secret", "WORKER.key_secret", "--curve-server", curve["server"]]
    return shlex.join(command)


def _curve_options(name: str, args: argparse.Namespace) -> dict[str, str] | None:
    """The CURVE certificates of the remote-worker endpoints, or None; refuses what cannot work."""
    secret, clients = getattr(args, "curve_secret", None), getattr(args, "curve_clients", None)
    if secret is None:
        if clients:
            raise SystemExit(f"{name}: --curve-clients needs --curve-secret")
        return None
    if not getattr(args, "remote_workers", None):
        raise SystemExit(f"{name}: --curve-secret secures the --remote-workers endpoints; give those too")
    if getattr(args, "transport", "ipc") != "ipc":
        raise SystemExit(f"{name}: with --curve-secret the app's own links must stay on ipc (--transport ipc)")
    secret_path = Path(secret)
    public = secret_path.with_name(secret_path.name.removesuffix("_secret"))
    from pipeline.security import CurveConfig
    try:
        CurveConfig(secret_path, public, Path(clients) if clients else None)
    except ConfigError as error:
        raise SystemExit(f"{name}: {error}") from None
    if not secret_path.name.endswith(".key_secret"):
        raise SystemExit(f"{name}: --curve-secret must be a NAME.key_secret file (infistream keys NAME)")
    return {"secret": str(secret_path.resolve()), "server": str(public.resolve()),
            **({"clients": str(Path(clients).resolve())} if clients else {})}


def check_source(app: str, uri: str, media: str) -> None:
    """Fail fast, before any process starts, on a source that cannot work: a missing file, a
    file without the wanted media, a camera or microphone that is not there. Network streams
    are not opened here (that would use up a session of some servers): their stage reports."""
    from pipeline.errors import SourceError
    from stages.sources import NetworkStreamSource, open_source
    try:
        source = open_source(uri, media=media)
        if not isinstance(source, NetworkStreamSource):
            source.open()
            source.close()
    except (SourceError, ValueError) as error:
        raise SystemExit(f"{app}: {error}") from None


def _remote_endpoints(name: str, text: str) -> tuple[str, str]:
    urls = [u.strip() for u in text.split(",")]
    if len(urls) != 2 or not all(u.startswith("tcp://") for u in urls):
        raise SystemExit(f"{name}: --remote-workers takes two tcp:// URLs, JOBS_URL,RESULTS_URL; got {text!r}")
    return urls[0], urls[1]


def run_graph(document: dict, args: argparse.Namespace, watch: Callable[[], None] | None = None,
              plot: bool = False) -> int:
    """Run the graph to its end (Ctrl-C stops it gracefully); print per-stage statistics if asked.

    `watch` runs every few tenths of a second while the graph runs (e.g. to follow --out).
    `plot`: draw the results next to --out as a PNG (apps/plot_results.py) when the run ends;
    meant for recorded media (a live run's file can be plotted by hand, any time).
    """
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    # Keep Ultralytics, the Hugging Face hub and matplotlib offline and out of the home directory,
    # in every stage process (they inherit this environment).
    offline_environment()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLCONFIGDIR", str(cache_dir() / "matplotlib"))
    # The filter and the aggregator of this run share a job key (they inherit it; it stays off
    # the command lines): the aggregator takes only results the filter sent out.
    os.environ.setdefault("INFISTREAM_JOB_KEY", secrets.token_hex(16))
    graph = parse_graph(document, document["name"])
    run = GraphRun(graph, log_level=args.log_level.upper())
    code = run.run(watch)
    if args.stats or code:
        print(f"\nper-stage statistics:\n{stage_table(run.stage_metrics())}", file=sys.stderr)
    written = []
    if plot and code == 0 and Path(args.out).exists():
        from plot_results import plot_results
        try:
            written.append(f"plot: {plot_results(Path(args.out), Path(args.out).with_suffix('.png'))}")
        except ValueError as error:   # nothing to plot (no input reached the aggregator)
            written.append(f"no plot ({error})")
    print(", ".join([f"results: {args.out}"] + ([f"summary: {args.summary}"] if args.summary else []) + written),
          file=sys.stderr)
    return code
