"""The InFi feature network and the two filters built on it (Keras; imported only to train and export).

The feature network follows the InFi paper (MobiCom'22, section 4; seeds.md lists where the
public code departs from it): residual blocks of two "conv steps" (ReLU -> 3x3 SeparableConv2D
-> normalisation), a 3x3 max-pool of stride 2, and a 1x1 conv step of stride 2 as the shortcut;
filters double per block; a global max-pool ends it. The paper normalises with LayerNorm;
BatchNorm is the default here because TFLite folds it into the convolution: one invoke at 48 px
took 0.18 ms against 0.40 ms with LayerNorm (LiteRT, one thread, this machine; the accuracy of
a LayerNorm variant was not compared).

Inputs are raw pixels, float32 0..255 in BGR order, [S, S, 3] as `models.frames.reduce_frame`
gives them: the scaling to 0..1 is the model's first layer, so the runtime (models/lite.py)
feeds frames as they are.

- Skip: features -> Dense(n_dense, ReLU) -> Dropout -> Dense(1, sigmoid) = P(YOLO needed), i.e.
  P(the frame holds a vehicle).
- Reuse: a siamese pair sharing one embedding network (features -> Dense(E)); the learned
  distance head reads |e1 - e2|: Dense(H, ReLU) -> Dense(1, sigmoid) = P(the two frames' counts
  differ) (the paper's distance label 1(y_i != y_j); the public code reversed it). Only the
  embedding network is exported to TFLite; the head is two small matrices the runtime applies
  in numpy against every cached embedding at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

keras = tf.keras
layers = tf.keras.layers


@dataclass(frozen=True)
class Architecture:
    """What shapes a filter network; stored in metadata.json (``architecture``)."""

    size: int = 48                       # input is size x size x 3
    filters: tuple[int, ...] = (16, 32, 64)
    norm: str = "batch"                  # "batch" or "layer"
    dense: int = 32                      # skip: hidden units of the classifier
    dropout: float = 0.3
    embedding: int = 16                  # reuse: E
    head: int = 16                       # reuse: H (0 = a single linear layer on |e1 - e2|)
    pool: str = "max"                    # "max" (the paper), "avg", or "maxavg" (both, concatenated)

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "filters": list(self.filters), "norm": self.norm, "dense": self.dense,
                "dropout": self.dropout, "embedding": self.embedding, "head": self.head, "pool": self.pool}


def _norm(kind: str, name: str) -> layers.Layer:
    if kind == "batch":
        return layers.BatchNormalization(momentum=0.9, name=name)   # few steps: moving stats must settle fast
    if kind == "layer":
        return layers.LayerNormalization(name=name)
    raise ValueError(f"norm must be 'batch' or 'layer', got {kind!r}")


def _conv_step(x, filters: int, kernel: int, stride: int, norm: str, name: str):
    x = layers.ReLU(name=f"{name}_relu")(x)
    x = layers.SeparableConv2D(filters, kernel, strides=stride, padding="same", name=f"{name}_sepconv")(x)
    return _norm(norm, f"{name}_norm")(x)


def _residual_block(x, filters: int, norm: str, name: str):
    shortcut = _conv_step(x, filters, 1, 2, norm, f"{name}_short")
    x = _conv_step(x, filters, 3, 1, norm, f"{name}_a")
    x = _conv_step(x, filters, 3, 1, norm, f"{name}_b")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    return layers.Add(name=f"{name}_add")([x, shortcut])


def feature_network(arch: Architecture, name: str = "features") -> keras.Model:
    """Raw BGR pixels [S, S, 3] (0..255) -> a feature vector (filters[-1] values)."""
    pixels = keras.Input((arch.size, arch.size, 3), dtype="float32", name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(pixels)
    for index, filters in enumerate(arch.filters):
        x = _residual_block(x, filters, arch.norm, f"block{index + 1}")
    if arch.pool == "max":
        x = layers.GlobalMaxPooling2D(name="global_max")(x)
    elif arch.pool == "avg":
        x = layers.GlobalAveragePooling2D(name="global_avg")(x)
    elif arch.pool == "maxavg":
        x = layers.Concatenate(name="global_maxavg")([layers.GlobalMaxPooling2D(name="global_max")(x),
                                                      layers.GlobalAveragePooling2D(name="global_avg")(x)])
    else:
        raise ValueError(f"pool must be 'max', 'avg' or 'maxavg', got {arch.pool!r}")
    return keras.Model(pixels, x, name=name)


def skip_model(arch: Architecture) -> keras.Model:
    """P(YOLO needed) = P(frame not empty), from raw pixels."""
    features = feature_network(arch)
    x = layers.Dense(arch.dense, activation="relu", name="skip_dense")(features.output)
    x = layers.Dropout(arch.dropout, name="skip_dropout")(x)
    needed = layers.Dense(1, activation="sigmoid", name="needed")(x)
    return keras.Model(features.input, needed, name="infi_skip")


def embedding_model(arch: Architecture) -> keras.Model:
    """Raw pixels -> the reuse embedding (E values); what the runtime runs per frame."""
    features = feature_network(arch)
    embedding = layers.Dense(arch.embedding, name="embedding")(features.output)
    return keras.Model(features.input, embedding, name="infi_reuse_embedding")


@dataclass
class Siamese:
    """The reuse networks: `embed` (exported), `head` (|e1 - e2| -> p_differ, exported as numpy),
    and `pair` = both on two frames, the model trained (outputs p_differ and the Euclidean
    distance of the embeddings, for an optional contrastive loss)."""

    embed: keras.Model
    head: keras.Model
    pair: keras.Model
    head_layers: list = field(default_factory=list)


def head_model(arch: Architecture) -> tuple[keras.Model, list]:
    gap = keras.Input((arch.embedding,), name="abs_difference")
    dense = []
    x = gap
    if arch.head:
        dense.append(layers.Dense(arch.head, activation="relu", name="head_hidden"))
        x = dense[-1](x)
    dense.append(layers.Dense(1, activation="sigmoid", name="differ"))
    return keras.Model(gap, dense[-1](x), name="infi_reuse_head"), dense


def siamese(arch: Architecture) -> Siamese:
    embed = embedding_model(arch)
    head, dense = head_model(arch)
    first = keras.Input((arch.size, arch.size, 3), dtype="float32", name="first")
    second = keras.Input((arch.size, arch.size, 3), dtype="float32", name="second")
    e1, e2 = embed(first), embed(second)
    gap = layers.Lambda(lambda pair: tf.abs(pair[0] - pair[1]), name="abs_gap")([e1, e2])
    differ = layers.Activation("linear", name="differ")(head(gap))
    distance = layers.Lambda(lambda g: tf.sqrt(tf.reduce_sum(tf.square(g), axis=-1, keepdims=True) + 1e-9),
                             name="distance")(gap)
    pair = keras.Model([first, second], {"differ": differ, "distance": distance}, name="infi_reuse_pair")
    return Siamese(embed, head, pair, dense)


def contrastive_loss(margin: float = 1.0):
    """Hadsell et al.: same pairs pulled together, differing pairs pushed beyond `margin`
    (label 1 = counts differ, the paper's distance label)."""

    def loss(y_true, distance):
        y = tf.cast(y_true, distance.dtype)
        return tf.reduce_mean((1.0 - y) * tf.square(distance) + y * tf.square(tf.maximum(margin - distance, 0.0)))

    return loss
