"""The miniature VGG-Face: trained on the synthetic source identities, published as Caffe files.

Same 13 convolutions and layer names as VGG-Face, fewer channels, 64x64 input. It is trained
with BatchNorm (plain VGG trains badly from scratch) and the BatchNorm is folded into the
convolution and fc weights before export, so what is published is the plain Caffe topology,
in the release's own V1 formats (``VGG_FACE_deploy.prototxt``, ``VGG_FACE.caffemodel``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..course.fileio import atomic_path, write_text_atomic
from .world import SyntheticConfig, _rng

def build_training_model(n_classes: int, config: SyntheticConfig):
    """The training twin of the mini VGG-Face: Caffe's names, BatchNorm after every conv and fc.

    Input RGB 0-255; the first layer is the same ``VGGFacePreprocess`` the converted model
    uses, so the weights learned here see exactly what they will see after conversion.
    """
    import keras

    from ..vggface import VGGFacePreprocess

    s = config.image_size
    inputs = keras.Input((s, s, 3), name="data")
    x = VGGFacePreprocess(name="preprocess")(inputs)
    for b, (width, n_convs) in enumerate(zip(config.conv_widths, (2, 2, 3, 3, 3)), start=1):
        for i in range(1, n_convs + 1):
            name = f"conv{b}_{i}"
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=name)(x)
            x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
            x = keras.layers.ReLU(name=f"relu{b}_{i}")(x)
        x = keras.layers.MaxPooling2D(2, 2, name=f"pool{b}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for j, width in zip((6, 7), config.fc_widths):
        x = keras.layers.Dense(width, use_bias=False, name=f"fc{j}")(x)
        x = keras.layers.BatchNormalization(name=f"fc{j}_bn")(x)
        x = keras.layers.ReLU(name=f"relu{j}")(x)
        x = keras.layers.Dropout(config.dropout, name=f"drop{j}")(x)
    x = keras.layers.Dense(n_classes, name="fc8")(x)
    outputs = keras.layers.Softmax(name="prob")(x)
    return keras.Model(inputs, outputs, name="mini_vggface_train")


def _augment(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Random horizontal flips and small shifts (edge-padded), in numpy so that they are exactly reproducible."""
    n, h, w, _ = images.shape
    flip = rng.random(n) < 0.5
    out = images.copy()
    out[flip] = out[flip, :, ::-1]
    pad = np.pad(out, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    dy = rng.integers(0, 2 * max_shift + 1, n)
    dx = rng.integers(0, 2 * max_shift + 1, n)
    for i in range(n):
        out[i] = pad[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


def pretrain(source: dict[str, np.ndarray], config: SyntheticConfig, progress: bool = True):
    """Train the BatchNorm twin on the source identities; returns (model, held-out accuracy)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    try:
        train = ~source["heldout"]
        x_train = source["images"][train].astype(np.float32)
        y_train = source["labels"][train]
        x_held = source["images"][~train].astype(np.float32)
        y_held = source["labels"][~train]
        n_classes = len(source["names"])
        model = build_training_model(n_classes, config)
        steps = config.epochs * int(np.ceil(len(x_train) / config.batch_size))
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps, alpha=0.02)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        rng = _rng(config.seed, 9, 0)
        shift = max(1, config.image_size // 16)
        for epoch in range(config.epochs):
            order = rng.permutation(len(x_train))
            xb = _augment(x_train[order], rng, shift)
            t0 = time.time()
            hist = model.fit(xb, y_train[order], batch_size=config.batch_size, epochs=1, shuffle=False, verbose=0)
            if progress:
                print(f"pretraining epoch {epoch + 1}/{config.epochs}: loss {hist.history['loss'][-1]:.3f}, "
                      f"train accuracy {hist.history['accuracy'][-1]:.3f} ({time.time() - t0:.1f} s)", flush=True)
        probs = model.predict(x_held, batch_size=256, verbose=0)
        accuracy = float(np.mean(np.argmax(probs, -1) == y_held))
        if progress:
            print(f"pretraining: identity accuracy on held-out images {accuracy:.3f}", flush=True)
        return model, accuracy
    finally:
        _disable_op_determinism()


def _disable_op_determinism():
    # Determinism costs speed in the notebooks that train later; public TF only offers "enable".
    try:
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
    except (ImportError, AttributeError):
        pass


def netspec_for(config: SyntheticConfig, n_classes: int):
    from ..vggface import vggface_netspec

    return vggface_netspec(conv_widths=config.conv_widths, fc_widths=config.fc_widths, n_classes=n_classes,
                           input_hw=(config.image_size, config.image_size), name="MINI_VGG_FACE_synthetic")


def fold_batchnorm(train_model, config: SyntheticConfig, names: list[str]):
    """The plain (Caffe-topology) Keras model with each BatchNorm folded into the layer before it."""
    from ..caffe.keras_model import build_keras_model

    net = netspec_for(config, len(names))
    plain = build_keras_model(net, class_names=list(names))
    for layer in train_model.layers:
        if not (layer.name.startswith("conv") or layer.name.startswith("fc")) or layer.name.endswith("_bn"):
            continue
        weights = layer.get_weights()
        kernel = weights[0]
        bias = weights[1] if len(weights) > 1 else np.zeros(kernel.shape[-1], np.float32)
        try:
            bn = train_model.get_layer(f"{layer.name}_bn")
        except ValueError:
            bn = None
        if bn is not None:
            gamma, beta, mean, var = bn.get_weights()
            scale = gamma / np.sqrt(var + bn.epsilon)
            kernel = kernel * scale  # scales the output channel (last axis) of conv and dense kernels
            bias = (bias - mean) * scale + beta
        target = plain.get_layer(layer.name)
        expected = [tuple(w.shape) for w in target.get_weights()]
        if expected != [kernel.shape, bias.shape]:
            raise ValueError(f"layer {layer.name!r}: folded weights {[kernel.shape, bias.shape]} do not fit the "
                             f"plain model's {expected}")
        target.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return plain, net


def export_caffe(plain_model, net, folder: str | os.PathLike, names: list[str],
                 sample_image: np.ndarray, sample_identity: str) -> None:
    """Write the tarball layout (prototxt V1, caffemodel V1, names, sample) into ``folder``."""
    from PIL import Image

    from ..caffe.writer import write_caffemodel, write_prototxt
    from ..caffe.weights import keras_to_caffe_blobs

    folder = Path(folder)
    write_prototxt(folder / "VGG_FACE_deploy.prototxt", net, syntax="v1")
    write_caffemodel(folder / "VGG_FACE.caffemodel", keras_to_caffe_blobs(plain_model, net), format="v1")
    write_text_atomic(folder / "names.txt", "".join(f"{n}\n" for n in names))
    with atomic_path(folder / "sample.png") as tmp:
        Image.fromarray(sample_image).save(tmp, format="PNG")
    write_text_atomic(folder / "sample_identity.txt", sample_identity + "\n")
    write_text_atomic(folder / "README.txt",
                      "A MINIATURE VGG-Face trained on SYNTHETIC faces by helpers/synthetic/ (quick mode).\n"
                      "Same topology and layer names as VGG-Face, 1/8 of the channels, 64x64 input.\n"
                      "Not the real network: for the real one run `python -m helpers.assets fetch vgg_face_caffe`.\n")


