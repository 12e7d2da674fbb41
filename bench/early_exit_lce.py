"""What Larq Compute Engine (LCE) gives the early-exit network on this x86 CPU, against the float
TFLite parts the project runs with LiteRT (models/early_exit.py).

LCE is not a project dependency. Its wheel (0.16.0, cp311 x86_64) needs only flatbuffers and tqdm
beside TensorFlow 2.15.1 (``pip install --dry-run`` in the project's environment would add it
alone), but nothing here needs it at run time, so measure it from a scratch install:

    .venv/bin/pip install --no-deps --target /tmp/lce_target larq-compute-engine==0.16.0
    PYTHONPATH=/tmp/lce_target .venv/bin/python bench/early_exit_lce.py [--out FILE]

Per part of two untrained networks of the early-exit architecture on the audio input (99 x 40
log-mel): the file sizes, the median ms of one run (input set, invoke, outputs read; one thread;
200 runs after 10), LCE's interpreter with its defaults and with XNNPACK, whether the stock LiteRT
interpreter loads LCE's file, and the largest gap between the two outputs. Timings of untrained
weights are those of trained ones: no kernel looks at the values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def median_ms(run, repeats: int = 200) -> float:
    for _ in range(10):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/early_exit_lce.json"))
    args = parser.parse_args()

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import larq_compute_engine as lce
    from larq_compute_engine.tflite.python.interpreter import Interpreter as LceInterpreter
    from ai_edge_litert.interpreter import Interpreter

    from models.audio_features import LogMelSettings
    from models.early_exit_train import ExitArchitecture, build_network, part_tflite

    shape = (*LogMelSettings().shape, 1)
    networks = {"default (stem 8; 16, 32, 64, 128)": ExitArchitecture(input_shape=shape),
                "wide (stem 32; 64, 128, 256, 512)": ExitArchitecture(input_shape=shape, stem=32,
                                                                      filters=(64, 128, 256, 512))}
    rng = np.random.default_rng(0)
    results: dict = {"tensorflow": tf.__version__, "machine": os.uname().machine, "networks": {}}
    for name, arch in networks.items():
        network = build_network(arch)
        rows = []
        for k, part in enumerate(network.parts):
            in_shape = tuple(int(d) for d in part.inputs[0].shape[1:])
            x = rng.standard_normal((1, *in_shape)).astype(np.float32)
            flat = part_tflite(part, in_shape)
            packed = lce.convert_keras_model(part)          # target "arm" (the only CPU target it has)
            lite = Interpreter(model_content=flat, num_threads=1)
            lite.allocate_tensors()
            inp, outs = lite.get_input_details()[0]["index"], [d["index"] for d in lite.get_output_details()]

            def run_lite():
                lite.set_tensor(inp, x)
                lite.invoke()
                return [lite.get_tensor(o) for o in outs]

            row = {"part": k, "costs": network.costs["blocks"][k], "float_tflite_bytes": len(flat),
                   "lce_bytes": len(packed), "litert_float_ms": median_ms(run_lite)}
            for label, xnnpack in (("lce_ms", False), ("lce_xnnpack_ms", True)):
                runner = LceInterpreter(packed, num_threads=1, use_xnnpack=xnnpack)
                row[label] = median_ms(lambda: runner.predict(x))
            got = runner.predict(x)
            got = got if isinstance(got, list) else [got]
            want = run_lite()
            probs = [next(o for o in outputs if o.ndim == 2) for outputs in (got, want)]
            row["probs_max_gap"] = float(np.max(np.abs(probs[0] - probs[1])))
            try:
                Interpreter(model_content=packed, num_threads=1).allocate_tensors()
                row["stock_litert_loads_lce_file"] = True
            except RuntimeError as error:
                row["stock_litert_loads_lce_file"] = f"no: {str(error).splitlines()[0]}"
            rows.append(row)
            print(name, json.dumps(row), flush=True)
        results["networks"][name] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
