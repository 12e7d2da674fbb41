"""A learned filter's network at run time: one .tflite file run by the LiteRT interpreter.

The filter stage never imports TensorFlow: training exports each network to TFLite
(models/export.py) and the policies run it here, one small frame at a time, on one thread (the
filter must cost well under a millisecond beside a 30-40 ms detector, and must not take cores
from it). A model takes one float32 sample with a batch of 1 and gives one float32 row: the
video networks take [1, S, S, 3] raw BGR pixels 0..255 (their normalisation is inside) and give
P(model needed) for Skip or the embedding for Reuse; the audio Skip takes [1, frames, mels, 1]
log-mel features and gives P(recognition needed).

`check_model_file` reads only the file's input and output shapes (well under a millisecond), so the
command line can refuse a wrong or corrupt file before any process starts; `open` builds the
interpreter where the filter runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class ModelShape:
    """What a model file takes and gives: input [1, *sample] float32, output [1, N] float32."""

    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    output_dtype: str

    @property
    def outputs(self) -> int:
        return self.output_shape[-1]


def load_interpreter(model: Path | str | bytes):
    """A one-thread LiteRT interpreter for a .tflite file (or its bytes), tensors not yet
    allocated; a `ConfigError` saying what to do when LiteRT cannot load it."""
    from ai_edge_litert.interpreter import Interpreter
    in_memory = isinstance(model, (bytes, bytearray))
    try:
        if in_memory:
            return Interpreter(model_content=bytes(model), num_threads=1)
        return Interpreter(model_path=str(model), num_threads=1)
    except (ValueError, RuntimeError) as error:
        raise ConfigError(f"{'model' if in_memory else model}: not a model the LiteRT interpreter can load "
                          f"({error}); train and export the filter again") from None


def _shape(details: dict) -> tuple[int, ...]:
    return tuple(int(n) for n in details["shape"])


def sample_shape(size_or_shape: int | tuple[int, ...]) -> tuple[int, ...]:
    """One sample's shape: an int S stands for an S x S BGR frame, (S, S, 3)."""
    if isinstance(size_or_shape, int):
        return (size_or_shape, size_or_shape, 3)
    return tuple(int(n) for n in size_or_shape)


def _describe(sample: tuple[int, ...]) -> str:
    if len(sample) == 3 and sample[0] == sample[1] and sample[2] == 3:
        return f"{sample[0]}x{sample[1]}"
    return "x".join(map(str, sample))


def check_model_file(path: Path | str, sample: int | tuple[int, ...], outputs: int | None = None) -> ModelShape:
    """Check that the file at `path` takes one `sample` (an int S: an S x S BGR frame; else the
    shape, batch dimension left out) and gives one row (of `outputs` values when given); a
    `ConfigError` saying what was expected and what came, else."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"filter model {path} not found")
    interpreter = load_interpreter(path)
    inputs, results = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(results) != 1:
        raise ConfigError(f"{path}: a filter model has one input and one output, this one has "
                          f"{len(inputs)} and {len(results)}")
    shape = ModelShape(_shape(inputs[0]), np.dtype(inputs[0]["dtype"]).name,
                       _shape(results[0]), np.dtype(results[0]["dtype"]).name)
    expected = (1, *sample_shape(sample))
    if shape.input_shape != expected or shape.input_dtype != "float32":
        raise ConfigError(f"filter trained for {_describe(expected[1:])} input (metadata.json), the model file {path} "
                          f"says {list(shape.input_shape)} {shape.input_dtype}; expected {list(expected)} float32")
    if len(shape.output_shape) != 2 or shape.output_shape[0] != 1 or shape.output_dtype != "float32":
        raise ConfigError(f"{path}: a filter model gives one float32 row [1, N], this one gives "
                          f"{list(shape.output_shape)} {shape.output_dtype}")
    if outputs is not None and shape.outputs != outputs:
        per = "frame" if isinstance(sample, int) else "input"
        raise ConfigError(f"{path}: expected {outputs} outputs per {per} (metadata.json), the model file "
                          f"gives {shape.outputs}")
    return shape


class LiteModel:
    """One filter network: `run(sample)` -> its output row for one sample (`size`: an int S for
    an S x S x 3 uint8 frame, else the sample's shape, batch dimension left out).

    Built cheaply (nothing loaded); `open()` loads the interpreter, `close()` drops it.
    """

    def __init__(self, path: Path | str, size: int | tuple[int, ...], outputs: int | None = None):
        self.path = Path(path)
        self.size = size
        self.sample = sample_shape(size)
        self.outputs = outputs
        self._interpreter = None

    def open(self) -> None:
        if self._interpreter is not None:
            return
        check_model_file(self.path, self.size, self.outputs)       # the file may have changed since parsing
        interpreter = load_interpreter(self.path)
        interpreter.allocate_tensors()
        self._input = interpreter.tensor(interpreter.get_input_details()[0]["index"])
        self._output = interpreter.get_output_details()[0]["index"]
        self._interpreter = interpreter

    def close(self) -> None:
        self._interpreter = None
        self._input = None

    def __enter__(self) -> LiteModel:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, sample: np.ndarray) -> np.ndarray:
        """The output row (float32, a fresh array) for one sample (a uint8 frame, float32 features)."""
        if self._interpreter is None:
            raise RuntimeError(f"{self.path}: open() the model before running it")
        if sample.shape != self.sample:
            raise ValueError(f"filter model {self.path} takes {'x'.join(map(str, self.sample))} "
                             f"{'images' if isinstance(self.size, int) else 'samples'}, got {sample.shape}")
        # Convert the values straight into the interpreter's input buffer (one pass, no
        # temporary); the view must be gone before invoke(), which refuses to run while
        # numpy holds its buffers.
        view = self._input()
        np.copyto(view[0], sample, casting="unsafe")
        del view
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output)[0]

    def run_batch(self, images: np.ndarray) -> np.ndarray:
        """Outputs for N samples (e.g. [N, S, S, 3] uint8 frames) as [N, outputs] (one at a time:
        the model's batch is 1; for evaluation, not for the live path)."""
        if not len(images):
            return np.zeros((0, self.outputs or 1), np.float32)
        return np.stack([self.run(image) for image in images])
