"""Build the textbook Keras models with real TensorFlow (random weights, no data) and record
TensorFlow's own answers. Runs in the TensorFlow side virtualenv (venvs.TENSORFLOW):

    python make_keras_models.py OUT_DIR

Writes into OUT_DIR:
  mnist.keras, mnist.h5, mnist_savedmodel/   Flatten(28x28) -> Dense(128, relu) -> Dropout(0.2)
                                             -> Dense(10, softmax), Keras 3 as in TensorFlow 2.21
  text.keras, text.h5, text_savedmodel/      Embedding(1000, 32) -> LSTM(64) -> Dense(1, sigmoid)
                                             over 20 int32 token ids
  mnist_k2.h5, text_k2.h5, mnist_k2_savedmodel/  the same two written by Keras 2 (tf-keras,
                                             TF_USE_LEGACY_KERAS=1): the legacy files people have
  dict_io.keras                              inputs and outputs in dicts, keys out of sorted
                                             order and unlike the layers' names
  stateful.keras                             a stateful LSTM (batch 1)
  ops.keras                                  a functional model of keras.ops (sum, mean,
                                             slicing, concatenate, tanh) and a Dense
  custom.keras                               a registered custom layer (not servable)
  lambda.keras                               a Lambda layer (not servable)
  unbuilt.keras                              a Sequential saved before it was built (not
                                             servable: its inputs are unknown)
  words.keras, words_savedmodel/             a string input -> StringLookup -> Embedding -> Dense
                                             (words_x.npy: its words; words_want.npy: answers)
  unsupported_savedmodel/                    a SavedModel with an op tf2onnx cannot convert
                                             (HistogramFixedWidth)
  mnist_x.npy, text_x.npy                    inputs; *_want.npy: model.predict on them
  done                                       marker
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""


def inputs(out: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mnist_x = rng.random((5, 28, 28), dtype=np.float32)
    text_x = rng.integers(0, 1000, (4, 20)).astype(np.int32)
    np.save(out / "mnist_x.npy", mnist_x)
    np.save(out / "text_x.npy", text_x)
    return mnist_x, text_x


def keras3(out: Path) -> None:
    import keras

    mnist_x, text_x = inputs(out)
    keras.utils.set_random_seed(1)
    mnist = keras.Sequential([
        keras.Input((28, 28), name="pixels"), keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"), keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation="softmax")], name="mnist")
    text = keras.Sequential([
        keras.Input((20,), dtype="int32", name="tokens"), keras.layers.Embedding(1000, 32),
        keras.layers.LSTM(64), keras.layers.Dense(1, activation="sigmoid")], name="text")
    for name, model, x in (("mnist", mnist, mnist_x), ("text", text, text_x)):
        model.save(out / f"{name}.keras")
        model.save(out / f"{name}.h5")
        model.export(str(out / f"{name}_savedmodel"), verbose=False)
        np.save(out / f"{name}_want.npy", model.predict(x, verbose=0))

    structured(keras, out)
    words(keras, out)

    @keras.saving.register_keras_serializable(package="demo")
    class Scale(keras.layers.Layer):
        def call(self, x: object) -> object:
            return x * 2.0  # type: ignore[operator]

    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), Scale(name="scale")]).save(
        out / "custom.keras")
    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x + 1, name="plus_one")]
                     ).save(out / "lambda.keras")
    keras.Sequential([keras.layers.Dense(2)]).save(out / "unbuilt.keras")  # no Input, no call
    unsupported(out)


def words(keras: Any, out: Path) -> None:
    """A model of a string input (a StringLookup, which Keras runs only on TensorFlow)."""
    word = keras.Input((1,), dtype="string", name="word")
    x = keras.layers.StringLookup(vocabulary=["cat", "dog", "bird"], name="lookup")(word)
    x = keras.layers.Flatten()(keras.layers.Embedding(4, 3)(x))
    model = keras.Model(word, keras.layers.Dense(2, name="score")(x), name="words")
    x = np.array([["cat"], ["fish"], ["bird"], [""]])
    model.save(out / "words.keras")
    model.export(str(out / "words_savedmodel"), verbose=False)
    np.save(out / "words_x.npy", x)
    import tensorflow as tf  # (predict takes strings as a tf.string tensor)

    np.save(out / "words_want.npy", model.predict(tf.constant(x.tolist()), verbose=0))


def structured(keras: Any, out: Path) -> None:
    """Dict inputs and outputs (keys out of sorted order, unlike the layers' names) and a
    stateful LSTM, with TensorFlow's answers (the stateful one from freshly loaded models)."""
    rng = np.random.default_rng(1)
    zeta, alpha = keras.Input((3,), name="zeta"), keras.Input((2,), name="alpha")
    joined = keras.layers.Concatenate()([zeta, keras.layers.Dense(3)(alpha)])
    model = keras.Model({"zeta": zeta, "alpha": alpha}, {
        "zz_out": keras.layers.Dense(2, name="aa_layer")(joined),
        "aa_out": keras.layers.Dense(5, name="zz_layer")(joined)}, name="dict_io")
    x = {"zeta": rng.random((3, 3), dtype=np.float32),
         "alpha": rng.random((3, 2), dtype=np.float32)}
    model.save(out / "dict_io.keras")
    np.savez(out / "dict_io.npz", **x, **model.predict(x, verbose=0))
    stateful = keras.Sequential([keras.Input((3, 2), batch_size=1, name="steps"),
                                 keras.layers.LSTM(4, stateful=True), keras.layers.Dense(1)])
    stateful.save(out / "stateful.keras")
    steps = rng.random((1, 3, 2), dtype=np.float32)
    np.savez(out / "stateful.npz", steps=steps, want=stateful.predict(steps, verbose=0))
    ops = keras.ops  # a functional model of keras.ops: its configuration names each operation
    v = keras.Input((5,), name="v")
    picked = ops.concatenate([v[:, :2], ops.expand_dims(ops.mean(v, axis=-1), -1)], axis=-1)
    with_ops = keras.Model(v, {"s": ops.sum(v * 2.0, axis=-1, keepdims=True),
                               "w": keras.layers.Dense(2, name="d")(ops.tanh(picked))})
    with_ops.save(out / "ops.keras")
    v_x = rng.random((3, 5), dtype=np.float32)
    np.savez(out / "ops.npz", v=v_x, **with_ops.predict(v_x, verbose=0))


def unsupported(out: Path) -> None:
    import tensorflow as tf

    class Histogram(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def __call__(self, x: object) -> dict[str, object]:
            return {"h": tf.histogram_fixed_width(x, [0.0, 1.0], nbins=5)}

    module = Histogram()
    tf.saved_model.save(module, str(out / "unsupported_savedmodel"),
                        signatures=module.__call__)


def keras2(out: Path) -> None:
    """In a process of its own: TF_USE_LEGACY_KERAS must be set before TensorFlow loads."""
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(2)
    mnist = tf_keras.Sequential([
        tf_keras.layers.Flatten(input_shape=(28, 28)),
        tf_keras.layers.Dense(128, activation="relu"), tf_keras.layers.Dropout(0.2),
        tf_keras.layers.Dense(10, activation="softmax")])
    text = tf_keras.Sequential([
        tf_keras.layers.Embedding(1000, 32, input_length=20), tf_keras.layers.LSTM(64),
        tf_keras.layers.Dense(1, activation="sigmoid")])
    text.build((None, 20))
    for name, model in (("mnist", mnist), ("text", text)):
        model.save(out / f"{name}_k2.h5")
        x = np.load(out / f"{name}_x.npy")
        np.save(out / f"{name}_k2_want.npy", model.predict(x, verbose=0))
    tf.saved_model.save(mnist, str(out / "mnist_k2_savedmodel"))


def main() -> None:
    out = Path(sys.argv[1])
    if len(sys.argv) > 2 and sys.argv[2] == "keras2":
        keras2(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    keras3(out)
    subprocess.run([sys.executable, __file__, str(out), "keras2"], check=True, timeout=300,
                   env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    (out / "done").write_text("ok\n")


if __name__ == "__main__":
    main()
