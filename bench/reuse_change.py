"""Experiment (issue 9, helper R): a Reuse that predicts a change of the RESULT, judged on VALIDATION data.

The change network reads the current frame and the reference frame (the last frame sent to the
model) as ONE 3-plane image (early fusion): current grey, reference grey, |current - reference|,
at `--size` px, and says p_differ = P(the two frames' YOLO vehicle counts differ). Its policy
(`ChangeReuse`) keeps per stream the last frame it let through, as framediff does, and reuses it
while p_differ < threshold (and max_run allows); `--refs K` scores the K latest instead. It is
trained on (reference, current) pairs 1..50 frames apart (log-uniform) of the 22 clips'
training parts, classes weighed alike per batch, the project's augmentation (one draw per pair).

Judged with the project's replay and calibration search (models/simulate.py, calibrate.py) on the
validation parts (1,447 frames, 150 warm-up frames per clip as calibration does): the POOLED share
kept from YOLO at >= 0.95 agreement (one threshold for all clips: what calibration ships), per clip
the best share at >= 0.95 on that clip as a fraction of its ceiling (ORACLE per clip, mean: the
"best" of docs/filters.md), and pair AUC on fixed validation pairs (offsets 1..50), also WITHIN
each clip (`--within`: does a network notice a count change inside one camera?).

Measured 2026-12-01 (2-core machine, shared), seeds 0 / 1:

    Reuse alone                      pooled kept    oracle frac.   pair AUC      within-clip AUC
    siamese (shipped, seed 0 / 1)    0.303 / 0.279  0.402 / 0.400  0.763 / 0.764 0.606 / 0.601
    framediff (edge, 96 px)          0.203          0.320          -             -
    change 32 px                     0.355 / 0.344  0.350 / 0.361  0.850 / 0.855 0.597 / 0.597
    change 32 px, refs 3             0.356 / 0.307  0.350 / 0.369  (same nets)
    change 32 px + count aux 0.2     0.282 / 0.311  0.395 / 0.336  0.854 / 0.856 0.608 / 0.601
    change 64 px (6 epochs)          0.322 / -      0.356 / -      0.848 / -
    change 32 px, 4 clips per batch,
      classes balanced per clip      0.157 / -      0.293 / -      0.783 / -     0.604 / -
    Skip -> Reuse cascade (16 x 24 grid)
    shipped skip + siamese           0.311 / 0.284  0.314 / 0.309
    shipped skip + change 32 px      0.339 / 0.315  0.259 / 0.300
    siamese then change (seed 0)     0.336          0.324

No variant won: the change network's higher pair AUC comes from telling busy cameras from quiet
ones (within one camera every network ranks pairs at AUC ~0.60), which calibrates one global
threshold better (+5 points pooled alone, +3 behind Skip, about the seed spread there) but keeps
less at each clip's own best threshold (-4.5 points alone, beyond the seed spread).

    .venv/bin/python bench/reuse_change.py --baselines --size 32 --seeds 0 1 --out /tmp/reuse_change
    .venv/bin/python bench/reuse_change.py --seeds --judge /tmp/reuse_change/*.tflite --cascade \
        --siamese models/shipped/vehicle/reuse --out /tmp/reuse_change
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import metrics                                   # noqa: E402
from models.base import REUSE_HORIZON, Decision, FramePolicy  # noqa: E402
from models.calibrate import choose, search                   # noqa: E402
from models.dataset import default_clips, load_clips           # noqa: E402
from models.simulate import WARMUP, labelled_clip, prepare_part  # noqa: E402

TARGET = 0.95
GREY = np.array([0.114, 0.587, 0.299], np.float32)     # BGR -> grey, cv2's weights
MAX_OFFSET = 50


def grey(frames: np.ndarray) -> np.ndarray:
    return np.asarray(frames, np.float32) @ GREY


def pair_planes(current: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """[..., S, S, 3] float32: current grey, reference grey, |current - reference| (grey images in)."""
    return np.stack([current, reference, np.abs(current - reference)], axis=-1)


# ------------------------------------------------------------------------------------ training

def sample_offsets(rng, n, longest=MAX_OFFSET):
    d = np.floor(np.exp(rng.uniform(0, np.log(longest + 1), n))).astype(np.int64)
    return np.clip(d, 1, longest)


def pairs_in(clip, which, n, rng):
    positions = clip.part(which)
    d = np.minimum(sample_offsets(rng, n), len(positions) - 1)
    cur = rng.integers(d, len(positions))
    return positions[cur - d], positions[cur]


def val_pairs(data, per_clip=300, seed=1):
    rng = np.random.default_rng(seed)
    return [pairs_in(clip, "val", per_clip, rng) for clip in data]


def augment_pair(ref, cur, rng):
    from models.train import augment
    both = augment(np.stack([ref, cur]), rng, same=True)
    return both[0], both[1]


def train_change(data, size, seed, epochs=15, epoch_pairs=3000, batch=64, lr=2e-3, filters=(16, 32, 64),
                 pool="maxavg", augment=True, say=print, aux=0.0, groups=0):
    import tensorflow as tf
    from dataclasses import replace
    from models.features import Architecture, skip_model
    from models.train import auc, seed_everything

    seed_everything(seed, 2)
    rng = np.random.default_rng(seed)
    arch = replace(Architecture(size=size), filters=tuple(filters), pool=pool)
    model = skip_model(arch)
    optimizer = tf.keras.optimizers.Adam(lr)
    if aux:
        # auxiliary: log1p of both frames' counts, regressed from the shared features
        features = model.get_layer("global_maxavg").output if pool == "maxavg" else model.layers[-4].output
        counts = tf.keras.layers.Dense(2, name="counts")(features)
        trainer = tf.keras.Model(model.input, {"differ": model.output, "counts": counts})
        trainer.compile(optimizer=optimizer, loss={"differ": "binary_crossentropy", "counts": "mse"},
                        loss_weights={"differ": 1.0, "counts": aux})
    else:
        model.compile(optimizer=optimizer, loss="binary_crossentropy")
    usable = [c for c in data if len(c.part("train")) > 2]
    vpairs = val_pairs(data)
    vx = np.concatenate([pair_planes(grey(c.frames[b]), grey(c.frames[a])) for c, (a, b) in zip(data, vpairs)])
    vy = np.concatenate([c.count[a] != c.count[b] for c, (a, b) in zip(data, vpairs)])
    best, best_weights, history = -1, None, []
    steps = epoch_pairs // batch
    for epoch in range(epochs):
        losses = []
        for _ in range(steps):
            if groups:     # `groups` clips, classes balanced within each clip's pairs
                owners = np.repeat(rng.integers(0, len(usable), groups), batch // groups)
            else:
                owners = rng.integers(0, len(usable), batch)
            xs, ys, cs = [], [], []
            for owner in owners:
                clip = usable[owner]
                a, b = pairs_in(clip, "train", 1, rng)
                ref, cur = clip.frames[a[0]], clip.frames[b[0]]
                if augment:
                    ref, cur = augment_pair(ref, cur, rng)
                xs.append(pair_planes(grey(cur), grey(ref)))
                ys.append(float(clip.count[a[0]] != clip.count[b[0]]))
                cs.append(np.log1p([clip.count[b[0]], clip.count[a[0]]]))
            x, y = np.stack(xs), np.array(ys, np.float32)
            pos = max(y.sum(), 1.0)
            neg = max((1 - y).sum(), 1.0)
            w = np.where(y > 0, 0.5 * batch / pos, 0.5 * batch / neg).astype(np.float32)
            if groups:
                w = np.zeros(len(y), np.float32)
                for g in range(groups):
                    part = slice(g * (batch // groups), (g + 1) * (batch // groups))
                    yg = y[part]
                    npos, nneg = yg.sum(), (1 - yg).sum()
                    if npos and nneg:
                        w[part] = np.where(yg > 0, 0.5 / npos, 0.5 / nneg)
                    else:
                        w[part] = 0.5 / len(yg)
                w *= len(y) / w.sum()
            if aux:
                out = trainer.train_on_batch(x, {"differ": y, "counts": np.array(cs, np.float32)},
                                             sample_weight={"differ": w, "counts": np.ones_like(w)})
                losses.append(float(out[0] if isinstance(out, list) else out))
            else:
                losses.append(float(model.train_on_batch(x, y, sample_weight=w)))
        p = model.predict(vx, batch_size=512, verbose=0)[:, 0]
        score = auc(vy, p)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_auc": score})
        say(f"{time.strftime('%H:%M:%S')} change s{size} seed {seed} epoch {epoch + 1}: loss {np.mean(losses):.4f} val pair AUC {score:.3f}")
        if score > best:
            best, best_weights = score, model.get_weights()
    model.set_weights(best_weights)
    return model, arch, best, history


# ------------------------------------------------------------------------------------ runtime (experimental)

class ChangeReuse(FramePolicy):
    """Reuse the last frame let through while the change network says p_differ < threshold.

    Experimental, for the offline replay only: p_differ is remembered by (stream, reference seq,
    seq), which holds while a stream's frames are the same prepared ones (a replay); live, a
    stream restarted under its name would need that memo cleared."""

    def __init__(self, tflite: bytes, size: int, threshold: float = 0.1, max_run: int = 25, name="change", refs: int = 1):
        from models.export import interpreter
        self.runner = interpreter(tflite)
        self.inp = self.runner.get_input_details()[0]["index"]
        self.out = self.runner.get_output_details()[0]["index"]
        self.size, self.threshold, self.max_run, self.name = size, threshold, max_run, name
        self.refs = refs
        self.references: dict[str, list[tuple[int, np.ndarray]]] = {}     # latest first
        self.runs: dict[str, int] = {}
        self.memo: dict[tuple, float] = {}          # offline replays repeat pairs across thresholds
        self.invokes = 0

    def prepare(self, frame):
        from models.frames import reduce_frame
        return grey(reduce_frame(frame, self.size))

    def p_differ(self, stream, ref_seq, ref, seq, cur):
        key = (stream, ref_seq, seq)
        p = self.memo.get(key)
        if p is None:
            self.runner.set_tensor(self.inp, pair_planes(cur, ref)[None])
            self.runner.invoke()
            p = float(self.runner.get_tensor(self.out)[0, 0])
            self.memo[key] = p
            self.invokes += 1
        return p

    def decide_prepared(self, stream, seq, features):
        run = self.runs.get(stream, 0)
        references = self.references.setdefault(stream, [])
        if not self.max_run or run < self.max_run:
            best, best_p = None, self.threshold
            for ref_seq, ref in references:
                if 0 < seq - ref_seq <= REUSE_HORIZON:
                    p = self.p_differ(stream, ref_seq, ref, seq, features)
                    if p < best_p:
                        best, best_p = ref_seq, p
            if best is not None:
                self.runs[stream] = run + 1
                return Decision("reuse", ref_seq=best, policy=self.name)
        references.insert(0, (seq, features))
        del references[self.refs:]
        self.runs[stream] = 0
        return None

    def feedback(self, stream, seq, result):
        pass

    def end_stream(self, stream):
        self.references.pop(stream, None)
        self.runs.pop(stream, None)

    def threshold_grid(self):
        from models.skip import threshold_grid
        return threshold_grid()


# ------------------------------------------------------------------------------------ judging

def judge(policy, prepared, label):
    """Pooled calibrated share at TARGET and per-clip oracle fraction of ceiling (validation);
    `policy` alone, or a list of policies replayed as a cascade (calibrate.py's cascade grid)."""
    if isinstance(policy, list):
        from models.calibrate import CASCADE_GRID
        points = search(policy, prepared, CASCADE_GRID, [TARGET])
    else:
        points = search([policy], prepared, [201], [TARGET])
    pick = choose(points, TARGET)
    per_clip = {}
    for clip in prepared:
        ceiling = metrics.ceiling(clip.scored_truth, budget=1 - TARGET)
        meeting = [p.per_clip[clip.name][1] for p in points if p.per_clip[clip.name][0] >= TARGET - 1e-12]
        best = max(meeting) if meeting else 0.0
        per_clip[clip.name] = {"ceiling": round(ceiling, 4), "best": round(best, 4),
                               "fraction": round(metrics.fraction_of_ceiling(best, ceiling), 4),
                               "calibrated": [round(v, 4) for v in pick.per_clip[clip.name][:2]] if pick else None}
    fractions = [v["fraction"] for v in per_clip.values()]
    worst = min(per_clip.items(), key=lambda kv: kv[1]["fraction"])
    cal_frac = [metrics.fraction_of_ceiling(v["calibrated"][1], v["ceiling"]) for v in per_clip.values()] if pick else [0]
    result = {"label": label, "pooled_filtered": round(pick.filtered, 4) if pick else 0.0,
              "pooled_agreement": round(pick.agreement, 4) if pick else None,
              "threshold": list(pick.thresholds) if pick else None,
              "calibrated_mean_fraction": round(float(np.mean(cal_frac)), 4),
              "oracle_mean_fraction": round(float(np.mean(fractions)), 4),
              "worst_clip": [worst[0], worst[1]["fraction"]], "per_clip": per_clip}
    print(f"{label}: pooled kept {result['pooled_filtered']:.3f} at agreement {result['pooled_agreement']} "
          f"(calibrated mean fraction of ceiling {result['calibrated_mean_fraction']:.3f}); per-clip oracle mean "
          f"fraction of ceiling {result['oracle_mean_fraction']:.3f}, worst {worst[0]} {worst[1]['fraction']:.3f}", flush=True)
    return result


def prepare_all(labelled, policy, skip=None):
    """Each clip's validation part prepared for `policy` (and Skip first, for a cascade)."""
    out = []
    for clip in labelled:
        policy.end_stream(f"replay:{clip.name}:val")
        out.append(prepare_part(clip, "val", ([skip] if skip is not None else []) + [policy], warmup=WARMUP))
    return out


def judge_cascades(labelled, candidates, results):
    """The shipped Skip followed by each candidate Reuse, as the shipped cascade is calibrated."""
    from models.calibrate import open_filter
    skip = open_filter(Path("models/shipped/vehicle/skip"))
    skip.open()
    for label, reuse in candidates:
        skip.name, reuse.name = "skip", "reuse"
        results.append(judge([skip, reuse], prepare_all(labelled, reuse, skip), f"cascade skip + {label}"))


def siamese_auc(directory, data32, pairs):
    from models.calibrate import open_filter
    from models.train import auc
    policy = open_filter(directory)
    policy.open()
    head = policy.directory.load_head()
    ys, ps = [], []
    for clip, (a, b) in zip(data32, pairs):
        ea = policy.model.run_batch(np.asarray(clip.frames[a]))
        eb = policy.model.run_batch(np.asarray(clip.frames[b]))
        ps.append(head.p_differ(np.abs(ea - eb)))
        ys.append(clip.count[a] != clip.count[b])
    policy.close()
    return auc(np.concatenate(ys), np.concatenate(ps))


def within_clip_auc(data32, pairs, change_models=(), siamese_dirs=()):
    """Pair AUC per clip (clips with both labels), mean over clips: does a network notice a count
    change inside one camera, or only tell busy cameras from quiet ones?"""
    from models.calibrate import open_filter
    from models.export import run_tflite
    from models.train import auc
    scorers = {}
    for path in change_models:
        tflite = path.read_bytes()
        scorers[f"change {path.name}"] = lambda clip, a, b, tflite=tflite: run_tflite(
            tflite, pair_planes(grey(clip.frames[b]), grey(clip.frames[a])))[:, 0]
    for directory in siamese_dirs:
        policy = open_filter(directory)
        policy.open()
        head = policy.directory.load_head()
        scorers[f"siamese {directory}"] = lambda clip, a, b, policy=policy, head=head: head.p_differ(np.abs(
            policy.model.run_batch(np.asarray(clip.frames[a])) - policy.model.run_batch(np.asarray(clip.frames[b]))))
    table = {}
    for label, score in scorers.items():
        per_clip = {clip.name: auc(clip.count[a] != clip.count[b], score(clip, a, b)) for clip, (a, b) in zip(data32, pairs)}
        table[label] = {"mean": round(float(np.nanmean(list(per_clip.values()))), 4),
                        "per_clip": {name: round(v, 4) for name, v in per_clip.items() if np.isfinite(v)}}
        print(f"{label}: within-clip pair AUC, mean over clips {table[label]['mean']:.3f}", flush=True)
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--filters", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--baselines", action="store_true", help="also judge the shipped reuse and framediff")
    parser.add_argument("--siamese", type=Path, nargs="*", default=[], help="judge these siamese reuse directories")
    parser.add_argument("--max-run", type=int, default=25)
    parser.add_argument("--aux", type=float, default=0.0, help="weight of an auxiliary count regression")
    parser.add_argument("--groups", type=int, default=0, help="clips per batch, classes balanced within each (0: pairs from any clip)")
    parser.add_argument("--refs", type=int, default=1, help="references scored per frame (the latest let through)")
    parser.add_argument("--judge", type=Path, nargs="*", default=[], help="judge these exported change models, no training")
    parser.add_argument("--within", action="store_true", help="within-clip pair AUC of --judge and --siamese models")
    parser.add_argument("--cascade", action="store_true", help="judge --siamese/--judge models behind the shipped Skip")
    parser.add_argument("--hybrid", action="store_true",
                        help="judge each --siamese directory followed by the --judge model of the same rank (siamese first)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/reuse_change"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    clips = default_clips()
    labelled = [labelled_clip(path) for path in clips]
    results = []
    siamese = list(args.siamese) + ([Path("models/shipped/vehicle/reuse")] if args.baselines else [])
    if args.within:     # change models at --size, siamese ones at 32 px; the same pairs for all
        data32 = load_clips(clips, 32)
        pairs = val_pairs(data32)
        table = within_clip_auc(data32, pairs, (), siamese)
        table.update(within_clip_auc(load_clips(clips, args.size), pairs, args.judge))
        (args.out / "within_clip_auc.json").write_text(json.dumps(table, indent=1) + "\n")
        return
    if args.hybrid:
        from models.calibrate import open_filter
        for directory, path in zip(siamese, args.judge):
            first = open_filter(directory)
            first.open()
            first.name = "siamese"
            second = ChangeReuse(path.read_bytes(), args.size, max_run=args.max_run, refs=args.refs, name="change")
            prepared = [prepare_part(c, "val", [first, second], warmup=WARMUP) for c in labelled]
            results.append(judge([first, second], prepared, f"hybrid siamese {directory} then change {path.name}"))
        (args.out / "hybrid.json").write_text(json.dumps(results, indent=1) + "\n")
        return
    if args.cascade:
        from models.calibrate import open_filter
        candidates = []
        for directory in siamese:
            policy = open_filter(directory)
            policy.open()
            candidates.append((f"siamese {directory}", policy))
        candidates += [(f"change {path.name}", ChangeReuse(path.read_bytes(), args.size, max_run=args.max_run, refs=args.refs))
                       for path in args.judge]
        judge_cascades(labelled, candidates, results)
        (args.out / "cascades.json").write_text(json.dumps(results, indent=1) + "\n")
        return
    if siamese:
        from models.calibrate import open_filter
        data32 = load_clips(clips, 32)
        pairs = val_pairs(data32)
        for directory in siamese:
            policy = open_filter(directory)
            policy.open()
            result = judge(policy, [prepare_part(c, "val", [policy], warmup=WARMUP) for c in labelled], f"siamese {directory}")
            result["pair_auc"] = round(siamese_auc(directory, data32, pairs), 4)
            print(f"siamese {directory} pair AUC {result['pair_auc']}", flush=True)
            results.append(result)
        if not args.baselines and not args.judge and not args.seeds:
            (args.out / "siamese.json").write_text(json.dumps(results, indent=1) + "\n")
            return
    if args.baselines:
        from models.registry import parse_policy
        framediff = parse_policy("framediff")
        results.append(judge(framediff, prepare_all(labelled, framediff), "framediff"))
    for path in args.judge:
        policy = ChangeReuse(path.read_bytes(), args.size, max_run=args.max_run, refs=args.refs)
        results.append(judge(policy, prepare_all(labelled, policy), f"{path.name} refs {args.refs} max_run {args.max_run}"))
    if args.judge:
        (args.out / f"judged-refs{args.refs}-maxrun{args.max_run}.json").write_text(json.dumps(results, indent=1) + "\n")
        return
    data = load_clips(clips, args.size)
    from models.export import to_tflite
    for seed in args.seeds:
        started = time.monotonic()
        model, arch, best_auc, history = train_change(data, args.size, seed, epochs=args.epochs, filters=args.filters, aux=args.aux, groups=args.groups)
        tflite = to_tflite(model, args.size)
        (args.out / f"change-s{args.size}-f{'-'.join(map(str, args.filters))}-aux{args.aux:g}-g{args.groups}-seed{seed}.tflite").write_bytes(tflite)
        policy = ChangeReuse(tflite, args.size, max_run=args.max_run, refs=args.refs)
        label = f"change s{args.size} filters {args.filters} aux {args.aux} groups {args.groups} seed {seed}"
        result = judge(policy, prepare_all(labelled, policy), label)
        result.update(pair_auc=round(best_auc, 4), params=int(model.count_params()), train_s=round(time.monotonic() - started),
                      history=history, tflite_bytes=len(tflite))
        print(f"{label}: pair AUC {best_auc:.3f}, {len(tflite)} bytes", flush=True)
        results.append(result)
    name = f"change-s{args.size}-f{'-'.join(map(str, args.filters))}-aux{args.aux:g}-g{args.groups}-seeds{'-'.join(map(str, args.seeds))}"
    (args.out / f"{name}{'-baselines' if args.baselines else ''}.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
