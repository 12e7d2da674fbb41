"""``infistream filter ...``: the filter tools, added to the ``infistream`` command as a plugin
(pyproject.toml, entry point group ``infistream.commands``).

    infistream filter label --source CLIP [CLIP ...] [--out DIR] [--max-frames N] [--weights W]

runs the real YOLO worker once per clip and keeps its per-frame detections (models/labels.py),
cached by clip content and detector settings; it prints, per clip, the frames labelled and the
share a filter could answer for: empty frames and frames repeating the previous frame's count.

    infistream filter label --task speech --source FILE|MIXTURES [...] [--window 2 --hop 1] [--words 2]

runs the real speech worker (Whisper tiny.en) over every window of each audio (or video) file, or
of every clip of a mixture directory, and keeps the transcripts and word counts
(models/speech_labels.py), cached by content, recognizer settings, window and hop; it prints, per
file, the windows and the share that needs recognition (more than --words words).

    infistream filter mixtures [--out DIR] [--seed S] [--scale F] [--label --jobs N]

builds the speech training data (models/mixtures.py): espeak-ng and the shared real speech over the
shared noise and music beds, split by speaker, sentence and bed, with a manifest; --label labels it.

    infistream filter train skip|reuse [--clips CLIP ...] [--exclude NAME ...] [--size S] [--epochs N] [--out DIR]

labels every clip first (cached), then trains InFi-Skip or InFi-Reuse on the training parts of
the clips (models/train.py) and writes a filter directory (models/export.py), printing progress
and the validation metrics.

    infistream filter train skip --task speech [--mixtures DIR] [--words 2] [--epochs N] [--seed S] [--out DIR]

trains InFi-Skip on log-mel spectrograms of a labelled mixture directory's train split, picks the
epoch and the default threshold on its val split (models/audio_skip_train.py) and writes the
filter directory (default models/shipped/speech/skip).

    infistream filter calibrate DIR [--target T ...] [--clips CLIP ...] [--lag N]

picks each threshold of a trained filter DIR (or, for a filter set holding skip/ and reuse/, of
both and of their cascade, jointly) for target per-frame count agreements on validation frames
(models/calibrate.py), writing calibration.json (and cascade.json).

    infistream filter calibrate --task speech SPEC [SPEC ...] [--mixtures DIR] [--out FILE] [--ship FILE]

picks each audio policy's threshold (energy, vad:silero, vad:webrtc:3, early-exit, audio-skip, a
filter DIR), or a cascade's (energy+audio-skip: jointly, cheapest gate first), for target InFi
accuracies on a mixture directory's val split (models/speech_eval.py); a learned filter's
directory gets calibration.json, every result goes to --out, and --ship writes the spec to ship
per target (models/shipped/speech/cascade.json).

    infistream filter evaluate [--filters DIR] [--clips CLIP ...] [--out DIR] [--target 0.95]

replays the filter set and the baselines over the test half of each clip (models/evaluate.py):
a PNG of filtering rate vs agreement per clip, a summary PNG and evaluation.json.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.errors import ConfigError
from models.labels import COUNT_CONF, DetectorSettings, cached_labels, count_labels, default_label_dir, label_clip
from models.speech_labels import DEFAULT_WORDS, HOP_S, WINDOW_S


def register(commands: argparse._SubParsersAction) -> None:
    filters = commands.add_parser("filter", help="label, train and evaluate filters")
    tools = filters.add_subparsers(dest="tool", required=True)
    label = tools.add_parser("label", help="run YOLO (or, with --task speech, Whisper) once per clip and keep "
                             "its per-frame detections (per-window transcripts)")
    label.add_argument("--task", choices=("vehicle", "speech"), default="vehicle",
                       help="vehicle: YOLO on video frames (default); speech: Whisper tiny.en on audio windows")
    label.add_argument("--source", nargs="+", required=True, type=Path, metavar="CLIP",
                       help="video files; for --task speech audio or video files, or mixture directories")
    label.add_argument("--out", type=Path, default=None, help=f"label directory (default {default_label_dir()}; "
                       "for --task speech its sibling speech-labels)")
    label.add_argument("--max-frames", type=int, default=None, help="label only the first N frames of each clip")
    label.add_argument("--weights", default="", help="YOLO weights (default: the shared offline YOLOv8n INT8)")
    label.add_argument("--conf", type=float, default=DetectorSettings.conf,
                       help=f"the labels' floor: every detection scoring above it is kept, so counts at any conf "
                       f"from it up come from this one YOLO pass (default {DetectorSettings.conf:g}; the counts "
                       f"printed and scored are at {COUNT_CONF:g} or the floor, whichever is higher)")
    label.add_argument("--refresh", action="store_true", help="label again even when cached")
    label.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    label.add_argument("--jobs", type=int, default=1,
                       help="clips labelled at once (each runs its own YOLO process; 2 on a 2-core machine "
                       "labels ~1.5x faster than 1)")
    speech = label.add_argument_group("--task speech")
    speech.add_argument("--window", type=float, default=WINDOW_S, help=f"window seconds (default {WINDOW_S}, as apps/speech.py)")
    speech.add_argument("--hop", type=float, default=HOP_S, help=f"seconds between windows (default {HOP_S})")
    speech.add_argument("--words", type=int, default=DEFAULT_WORDS,
                        help=f"the rule: a window needs recognition with more than this many words (default {DEFAULT_WORDS})")
    label.set_defaults(handler=run_label)
    add_mixtures(tools)
    add_train(tools)
    add_calibrate(tools)
    add_evaluate(tools)


def run_label(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.task == "speech":
        return run_speech_label(args)
    settings = DetectorSettings(weights=args.weights, conf=args.conf)

    def label(clip: Path) -> Path:
        return label_clip(clip, settings, args.out, max_frames=args.max_frames,
                          progress=args.progress and args.jobs == 1, refresh=args.refresh)

    # Each clip is its own graph of processes, so threads only wait here; results print in order.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for clip, path in zip(args.source, pool.map(label, args.source)):
            labels = count_labels(path, conf=max(COUNT_CONF, settings.conf), floor=settings.conf)
            frames = len(labels.count)
            if frames:
                print(f"{clip.name}: {frames} frames, at conf {labels.conf:g}: empty {labels.empty.mean():.1%}, same "
                      f"count as the previous frame {labels.same_count.mean():.1%}, mean count "
                      f"{labels.count.mean():.2f} -> {path}")
            else:
                print(f"{clip.name}: no frame decoded -> {path}")
    return 0


def _speech_files(sources: list[Path]) -> list[Path]:
    """Files as given; a directory stands for the clips its mixture manifest names."""
    from models.mixtures import clip_files
    files = []
    for source in sources:
        files.extend(clip_files(source) if source.is_dir() else [source])
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"no such file(s): {', '.join(missing)}")
    return files


def run_speech_label(args: argparse.Namespace) -> int:
    from models.speech_labels import RecognizerSettings, label_many, needs_recognition, read_speech_labels
    if args.words < 0:
        raise ConfigError(f"--words must be at least 0, got {args.words}")
    if args.max_frames is not None or args.weights or args.conf != DetectorSettings.conf:
        raise ConfigError("--max-frames, --weights and --conf are YOLO's; --task speech takes --window, --hop, --words")
    settings = RecognizerSettings(window_s=args.window, hop_s=args.hop)
    files = _speech_files(args.source)
    totals = {"windows": 0, "needs": 0, "seconds": 0.0}

    def report(file: Path, path: Path) -> None:
        labels = read_speech_labels(path)
        needs = needs_recognition(labels, args.words)
        totals["windows"] += len(labels)
        totals["needs"] += int(needs.sum())
        totals["seconds"] += float(labels.infer_ms.sum()) / 1000
        share = f"{needs.mean():.1%}" if len(labels) else "-"
        print(f"{file.name}: {len(labels)} windows, more than {args.words} words {share}, "
              f"{labels.words.sum()} words, recognizer {labels.infer_ms.sum() / 1000:.1f} s -> {path}")

    label_many(files, settings, args.out, jobs=args.jobs, refresh=args.refresh, done=report)
    if len(files) > 1 and totals["windows"]:
        print(f"{len(files)} files: {totals['windows']} windows, {totals['needs'] / totals['windows']:.1%} need "
              f"recognition, recognizer {totals['seconds']:.0f} s ({totals['seconds'] * 1000 / totals['windows']:.0f} "
              f"ms per window, as measured when labelled)")
    return 0


def add_mixtures(tools: argparse._SubParsersAction) -> None:
    from models.mixtures import MixtureOptions
    mixtures = tools.add_parser("mixtures", help="build the speech training data: speech over noise and music",
                                description="Write speech mixtures (espeak-ng and the shared real speech over the "
                                "shared noise and music beds, at several SNRs, with speech-free stretches) as 16 kHz "
                                "WAV clips plus manifest.json, split into train/val/test by speaker, sentence and bed; "
                                "the same seed gives the same files. --label then runs the real recognizer over them.")
    mixtures.add_argument("--out", type=Path, default=None, help="directory (default .cache/speech-mixtures/seed-S)")
    mixtures.add_argument("--seed", type=int, default=0)
    mixtures.add_argument("--scale", type=float, default=1.0,
                          help="multiply the clips per split and subset (default 1: ~1,800 windows)")
    mixtures.add_argument("--clip-seconds", type=float, default=MixtureOptions.clip_s, help="seconds per clip (default 30)")
    mixtures.add_argument("--rebuild", action="store_true", help="write the clips again even when up to date")
    mixtures.add_argument("--label", action="store_true", help="then label every clip with the recognizer (cached)")
    mixtures.add_argument("--labels", type=Path, default=None, help="speech label directory (default .cache/speech-labels)")
    mixtures.add_argument("--jobs", type=int, default=1, help="clips labelled at once (each its own recognizer process)")
    mixtures.add_argument("--words", type=int, default=DEFAULT_WORDS, help="the rule's N for the summary (default 2)")
    mixtures.set_defaults(handler=run_mixtures)


def run_mixtures(args: argparse.Namespace) -> int:
    from models.mixtures import MixtureOptions, build_mixtures, clip_files, labelled_windows, read_manifest
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    options = MixtureOptions(seed=args.seed, clip_s=args.clip_seconds, scale=args.scale)
    manifest_path = build_mixtures(args.out, options, rebuild=args.rebuild)
    manifest = read_manifest(manifest_path.parent)
    windows: dict[str, int] = {}
    for clip in manifest["clips"]:
        windows[clip["split"]] = windows.get(clip["split"], 0) + len(clip["windows"])
    print(f"{manifest_path}: {len(manifest['clips'])} clips, "
          + ", ".join(f"{split} {count} windows" for split, count in windows.items()))
    if not args.label:
        return 0
    from models.speech_labels import RecognizerSettings, label_many
    label_many(clip_files(manifest_path.parent), RecognizerSettings(window_s=options.window_s, hop_s=options.hop_s),
               args.labels, jobs=args.jobs)
    rows = labelled_windows(manifest_path.parent, label_dir=args.labels, words=args.words)
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["split"], row["subset"]), []).append(row)
    for (split, subset), group in groups.items():
        needs = sum(row["needs"] for row in group) / len(group)
        print(f"{split}/{subset}: {len(group)} windows, {needs:.1%} more than {args.words} words, recognizer "
              f"{sum(row['infer_ms'] for row in group) / len(group):.0f} ms per window")
    return 0


def add_train(tools: argparse._SubParsersAction) -> None:
    train = tools.add_parser("train", help="train InFi-Skip or InFi-Reuse on labelled clips",
                             description="Label every clip (cached), train a Skip or Reuse filter on the training "
                             "part of each clip's first half, pick the best epoch on the validation part, and write "
                             "the filter directory (model.tflite, head.npz for reuse, metadata.json). "
                             "skip --task speech trains the audio Skip filter on a mixture directory's windows "
                             "instead (log-mel spectrograms; written to models/shipped/speech/skip by default).")
    train.add_argument("kind", choices=("skip", "reuse", "early-exit"))
    train.add_argument("--clips", type=Path, nargs="+", default=None, metavar="CLIP",
                       help="clips to learn from (default: every video under $INFI_ASSETS/traffic)")
    train.add_argument("--exclude", nargs="+", default=[], metavar="NAME",
                       help="clip names to leave out (leave-one-camera-out folds)")
    train.add_argument("--size", type=int, default=None, help="input size S (frames shrink to S x S; default 32, chosen by measurement)")
    train.add_argument("--epochs", type=int, default=None, help="training epochs (default: skip 12, reuse 15, of 3,000 frames each)")
    train.add_argument("--out", type=Path, default=None,
                       help="filter directory to write (default models/shipped/vehicle/KIND)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--needed-conf", type=float, default=COUNT_CONF,
                       help=f"skip: the model is needed when YOLO finds a vehicle scoring above this (default "
                       f"{COUNT_CONF:g}; down to the labels' floor, {DetectorSettings.conf:g}): the lowest worker "
                       f"--conf its skips hold for, recorded in metadata.json")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    from models.early_exit import add_train_arguments
    add_train_arguments(train)          # --task, --mixtures, --words, --rule, --exit-threshold
    # --task unset: skip and reuse train on video, early-exit on speech (run_train); skip
    # --task speech trains the audio Skip filter on a mixture directory (models/audio_skip_train.py)
    train.set_defaults(handler=run_train, task=None)


def _clips(given: list[Path] | None) -> list[Path]:
    """The clips named (each must exist), or every clip under $INFI_ASSETS/traffic."""
    if not given:
        from models.dataset import default_clips
        return default_clips()
    missing = [str(c) for c in given if not c.is_file()]
    if missing:
        raise ConfigError(f"no such clip(s): {', '.join(missing)}")
    return list(given)


def run_train(args: argparse.Namespace) -> int:
    if args.kind == "early-exit":           # the binary early-exit network (models/early_exit.py)
        from models.early_exit import run_train_command
        args.task = args.task or "speech"
        return run_train_command(args)
    if args.task == "speech":
        if args.kind != "skip":
            raise ConfigError(f"--task speech trains skip or early-exit filters; {args.kind} is for video")
        return run_train_speech_skip(args)
    clips = _clips(args.clips)
    if args.size is not None and not 16 <= args.size <= 256:
        raise ConfigError(f"--size takes 16..256 pixels, got {args.size}")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    if args.kind != "skip" and args.needed_conf != COUNT_CONF:
        raise ConfigError(f"--needed-conf is Skip's label; {args.kind} learns from counts at {COUNT_CONF:g}")
    # YOLO labels first, at the floor, unless cached labels hold the conf the filter learns at
    # (a second run reads them; so do labels made at the counting conf, before the floor).
    learns_at = args.needed_conf if args.kind == "skip" else COUNT_CONF
    for clip in clips:
        if clip.stem not in args.exclude and clip.name not in args.exclude and cached_labels(clip, conf=learns_at) is None:
            label_clip(clip, progress=args.progress)
    from models.train import default_options, train_reuse, train_skip
    options = default_options(args.kind, size=args.size, epochs=args.epochs, seed=args.seed,
                              needed_conf=args.needed_conf)
    from models.filterdir import SHIPPED
    out = args.out or SHIPPED / args.kind     # where --filter skip|reuse reads, wherever this runs
    trainer = train_skip if args.kind == "skip" else train_reuse
    result = trainer(clips, args.exclude, options, out, progress=args.progress)
    print(f"{args.kind}: validation {', '.join(f'{k} {v:.3f}' for k, v in result.metrics.items() if isinstance(v, float))}"
          f"; {result.seconds:.0f} s; written to {result.out}")
    return 0


def run_train_speech_skip(args: argparse.Namespace) -> int:
    """``infistream filter train skip --task speech``: InFi-Skip on log-mel spectrograms of a mixture
    directory's windows (models/audio_skip_train.py), written to models/shipped/speech/skip by default."""
    given = [flag for flag, value in (("--clips", args.clips), ("--exclude", args.exclude), ("--size", args.size))
             if value]
    if given:
        raise ConfigError(f"{', '.join(given)} are for video; skip --task speech takes --mixtures, --words, "
                          f"--epochs, --seed, --out")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    if args.words < 0:
        raise ConfigError(f"--words must be at least 0, got {args.words}")
    from models.audio_skip import SHIPPED as SPEECH_SKIP
    from models.audio_skip_train import AudioSkipOptions, train_speech_skip
    from models.mixtures import default_mixture_dir
    mixtures = args.mixtures or default_mixture_dir()
    if not (Path(mixtures) / "manifest.json").exists():
        raise ConfigError(f"no speech mixtures at {mixtures}: build them with `infistream filter mixtures --label` "
                          f"or name them with --mixtures")
    options = AudioSkipOptions(epochs=args.epochs or AudioSkipOptions.epochs, seed=args.seed, words=args.words)
    out = args.out or SPEECH_SKIP
    training = train_speech_skip(mixtures, out, options)
    at = training.validation["at_infi_0.95"]
    print(f"skip (speech): validation AUC {training.validation['auc']:.3f}, skips {at['skip_rate']:.1%} at InFi "
          f"accuracy {at['infi_accuracy']:.3f} (threshold {at['threshold']:.4f}); {training.seconds:.0f} s; "
          f"written to {out}")
    return 0


def add_calibrate(tools: argparse._SubParsersAction) -> None:
    from models.simulate import DEFAULT_LAG
    calibrate = tools.add_parser("calibrate", help="pick a trained filter's thresholds for target agreements",
                                 description="Pick the threshold of a trained filter directory for each target "
                                 "per-frame count agreement on the validation frames of its training clips; for a "
                                 "filter set (a directory with skip/ and reuse/) also the cascade's thresholds, jointly.")
    calibrate.add_argument("directory", nargs="+", metavar="DIR|SPEC",
                           help="a trained filter, or a filter set (skip/, reuse/); with --task speech, audio "
                           "policies or cascades (energy vad:silero early-exit energy+audio-skip DIR ...)")
    calibrate.add_argument("--task", choices=("vehicle", "speech"), default="vehicle",
                           help="vehicle: per-frame count agreement on video frames (default); speech: InFi "
                           "accuracy on a mixture directory's val windows")
    calibrate.add_argument("--target", type=float, nargs="+", default=[0.9, 0.95, 0.98],
                           help="target agreements (default 0.9 0.95 0.98; for speech, InFi accuracies)")
    calibrate.add_argument("--clips", type=Path, nargs="+", default=None, metavar="CLIP",
                           help="clips whose validation frames to use (default: those the filter was trained on)")
    speech = calibrate.add_argument_group("--task speech")
    speech.add_argument("--mixtures", type=Path, default=None,
                        help="labelled mixture directory (default .cache/speech-mixtures/seed-0)")
    speech.add_argument("--words", type=int, default=DEFAULT_WORDS,
                        help=f"the rule: more than this many words needs recognition (default {DEFAULT_WORDS})")
    speech.add_argument("--out", type=Path, default=Path("bench/results/filters_speech_calibration.json"),
                        help="where every spec's calibration goes (default bench/results/filters_speech_calibration.json)")
    speech.add_argument("--ship", type=Path, default=None, metavar="FILE",
                        help="also write the spec to ship per target, chosen on val (models/shipped/speech/cascade.json)")
    calibrate.add_argument("--reuse-options", default="", metavar="OPTIONS",
                           help="video: calibrate a variant of the Reuse filter (its options, e.g. refer=agree); "
                                "recorded with its thresholds, run it with the same options. Reuse's self-check "
                                "(check=N) is off while calibrating unless named here")
    calibrate.add_argument("--lag", type=int, default=DEFAULT_LAG,
                           help=f"frames between a decision and its feedback (default {DEFAULT_LAG})")
    calibrate.add_argument("--labels", type=Path, default=None, help=f"label directory (default {default_label_dir()})")
    calibrate.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    calibrate.set_defaults(handler=run_calibrate)


def _targets(values: list[float]) -> list[float]:
    bad = [v for v in values if not 0 < v <= 1]
    if bad:
        raise ConfigError(f"--target takes agreements in (0, 1], got {bad}")
    return values


def run_calibrate(args: argparse.Namespace) -> int:
    import json

    from models.calibrate import describe, calibrate_directory
    if args.task == "speech":
        if args.clips:
            raise ConfigError("--clips is for video; --task speech calibrates on --mixtures' val split")
        from models.speech_eval import run_speech_calibrate
        run_speech_calibrate(args.directory, args.mixtures, _targets(args.target), args.words, args.labels,
                             args.out, args.ship)
        return 0
    if len(args.directory) != 1:
        raise ConfigError(f"calibrate takes one filter directory (or, with --task speech, policy specs); "
                          f"got {len(args.directory)}: {' '.join(args.directory)}")
    from models.reuse import checked_reuse_options
    written = calibrate_directory(Path(args.directory[0]), _targets(args.target), args.clips, args.lag, args.labels,
                                  args.progress, reuse_options=checked_reuse_options(args.reuse_options))
    for what, path in written.items():
        document = json.loads(path.read_text())
        print(f"{path}:")
        for line in describe(document, ("skip", "reuse") if what == "cascade" else ("threshold",)):
            print(f"  {line}")
    return 0


def add_evaluate(tools: argparse._SubParsersAction) -> None:
    from models.simulate import DEFAULT_LAG
    evaluate = tools.add_parser("evaluate", help="filtering rate vs agreement curves on the clips' test halves",
                                description="Replay a filter set (skip, reuse, their cascade), the baselines "
                                "(framediff, motion, stride:N) and the blind reference (the last inferred count "
                                "reused for a random share of frames) over the test half of each clip: a PNG per "
                                "clip, a summary PNG and evaluation.json under --out.")
    evaluate.add_argument("--filters", type=Path, default=None,
                          help="filter set: a directory with skip/ and reuse/ (default models/shipped/vehicle)")
    evaluate.add_argument("--clips", type=Path, nargs="+", default=None, metavar="CLIP",
                          help="clips (default: every video under $INFI_ASSETS/traffic)")
    evaluate.add_argument("--out", type=Path, default=Path("bench/results/filters"), help="output directory")
    evaluate.add_argument("--target", type=float, default=0.95, help="target per-frame count agreement (default 0.95)")
    evaluate.add_argument("--lag", type=int, default=DEFAULT_LAG,
                          help=f"frames between a decision and its feedback (default {DEFAULT_LAG})")
    evaluate.add_argument("--no-baselines", dest="baselines", action="store_false",
                          help="leave out framediff, motion, stride and the blind reference")
    evaluate.add_argument("--reuse-options", default="", metavar="OPTIONS",
                          help="evaluate a variant of the Reuse filter (e.g. refer=agree); the set must have been "
                               "calibrated with the same options (calibrate --reuse-options), but for check=N "
                               "(Reuse's self-check, on by default, check=0: off), which runs on thresholds "
                               "calibrated without it")
    evaluate.add_argument("--labels", type=Path, default=None, help=f"label directory (default {default_label_dir()})")
    evaluate.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    evaluate.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from models.evaluate import STRIDES, check_filters, describe_summary, evaluate_clips
    from models.filterdir import SHIPPED
    from models.reuse import checked_reuse_options
    filters = args.filters or SHIPPED
    reuse_options = checked_reuse_options(args.reuse_options)
    check_filters(filters, reuse_options)
    _targets([args.target])
    clips = _clips(args.clips)
    table = evaluate_clips(clips, filters, args.out, args.target, args.lag, args.baselines,
                           STRIDES if args.baselines else (), args.labels, args.progress, say=print,
                           reuse_options=reuse_options)
    for line in describe_summary(table["summary"]):
        print(line)
    print(f"wrote {args.out}/evaluation.json, {args.out}/summary.png and one PNG per clip")
    return 0
