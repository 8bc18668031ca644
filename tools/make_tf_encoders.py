"""Three small BERT-style encoders built in TensorFlow/Keras with seeded random weights, exported with tf2onnx: the fixtures of tests/test_tf2onnx.py.

    python3.11 -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0
    /work/tfvenv/bin/python tools/make_tf_encoders.py tests/data/tf2onnx

Writes into DIR:
- bert_tf.onnx: a BERT-like text encoder as TF BERT code writes it (TF-Hub, Hugging Face's
  TFBertModel): int64 input_ids and attention_mask [batch, sequence] (both dims dynamic), word and
  position embeddings, 2 post-norm blocks of 4 heads of 8 dims (hidden 32, FFN 64); Q, K and V are
  keras Dense layers split into heads by tf.reshape to [batch, -1, heads, dims] (batch read from
  tf.shape) and tf.transpose, the scores q k^T / sqrt(d) plus (1 - mask) * -10000, the FFN's Gelu
  in the erf form 0.5 x (1 + erf(x / sqrt 2)), keras LayerNormalization. Output: [batch, sequence, 32].
- vit_tf.onnx: a pre-norm ViT-like encoder: NHWC images [batch, 28, 28, 1], a 7x7 stride-7 Conv2D
  patch embedding (16 patches of 32), a position table, 2 blocks of keras.layers.MultiHeadAttention
  (4 heads of 8, its EinsumDense projections) and a Dense-Gelu-Dense FFN of 64, a final
  LayerNormalization, mean pooling and a 10-way Dense. Output: [batch, 10].
- bert_keras.onnx: a BERT-like text encoder as KerasHub's TransformerEncoder writes it: the inputs,
  embeddings and sizes of bert_tf.onnx, 2 post-norm blocks of keras.layers.MultiHeadAttention
  (4 heads of 8) given the padding mask as attention_mask ([batch, 1, sequence], which keras
  broadcasts over the queries and adds to the scores as (1 - mask) * -1e9 before its Softmax), and
  a Dense-Gelu-Dense FFN of 64. Output: [batch, sequence, 32].

tensorflow and tf2onnx are this tool's own dependencies (not onnxprune's): the tests read the
committed .onnx files only. The export is opset 17; every weight (biases and LayerNorm
parameters included) is drawn from a normal distribution with seed 0, so that no parameter is
a zero or a one that would hide a wrong slice.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf2onnx
from tensorflow import keras

OPSET = 17
KERAS_SEQ = 16  # bert_keras.onnx's sequence length, fixed: with a dynamic one tf2onnx writes EinsumDense otherwise
VOCAB, MAX_SEQ, HIDDEN, HEADS, FFN, LAYERS = 64, 32, 32, 4, 64, 2


def gelu_erf(x):
    """0.5 x (1 + erf(x / sqrt 2)), as TF BERT writes it."""
    return 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0)))


class BertLayer(keras.layers.Layer):
    """A post-norm block: LN(x + Attention(x)), then LN(h + W2 gelu(W1 h))."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.query, self.key, self.value, self.out = (keras.layers.Dense(HIDDEN, name=n)
                                                      for n in ("query", "key", "value", "output"))
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-12, name="attention_norm")
        self.fc1 = keras.layers.Dense(FFN, name="intermediate")
        self.fc2 = keras.layers.Dense(HIDDEN, name="ffn_output")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-12, name="output_norm")

    def split(self, x, batch):
        """[B, S, H*d] -> [B, H, S, d]: TF BERT's transpose_for_scores."""
        return tf.transpose(tf.reshape(x, (batch, -1, HEADS, HIDDEN // HEADS)), perm=[0, 2, 1, 3])

    def call(self, x, mask_bias):
        batch = tf.shape(x)[0]
        q, k, v = (self.split(f(x), batch) for f in (self.query, self.key, self.value))
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(HIDDEN // HEADS) + mask_bias
        context = tf.transpose(tf.matmul(tf.nn.softmax(scores, axis=-1), v), perm=[0, 2, 1, 3])
        h = self.ln1(x + self.out(tf.reshape(context, (batch, -1, HIDDEN))))
        return self.ln2(h + self.fc2(gelu_erf(self.fc1(h))))


class Embedded(keras.Model):
    """BERT's embeddings (words, positions, LayerNorm), then LAYERS blocks of ``block``."""

    def __init__(self, block: type):
        super().__init__()
        self.words = keras.layers.Embedding(VOCAB, HIDDEN, name="word_embeddings")
        self.positions = self.add_weight(shape=(MAX_SEQ, HIDDEN), name="position_embeddings")
        self.ln = keras.layers.LayerNormalization(epsilon=1e-12, name="embeddings_norm")
        self.blocks = [block(name=f"layer_{i}") for i in range(LAYERS)]

    def embed(self, input_ids):
        seq = tf.shape(input_ids)[1]
        return self.ln(self.words(input_ids) + self.positions[:seq])


class Bert(Embedded):
    def __init__(self):
        super().__init__(BertLayer)

    def call(self, input_ids, attention_mask):
        x = self.embed(input_ids)
        mask = tf.cast(attention_mask[:, tf.newaxis, tf.newaxis, :], tf.float32)
        mask_bias = (1.0 - mask) * -10000.0
        for block in self.blocks:
            x = block(x, mask_bias)
        return x


class VitBlock(keras.layers.Layer):
    """A pre-norm block: x + MHA(LN(x)), then h + W2 gelu(W1 LN(h))."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.attention = keras.layers.MultiHeadAttention(HEADS, HIDDEN // HEADS)
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.fc1 = keras.layers.Dense(FFN)
        self.fc2 = keras.layers.Dense(HIDDEN)

    def call(self, x):
        y = self.ln1(x)
        h = x + self.attention(y, y)
        return h + self.fc2(gelu_erf(self.fc1(self.ln2(h))))


class KerasBertLayer(keras.layers.Layer):
    """A post-norm block with keras MultiHeadAttention: LN(x + MHA(x, x, mask)), then LN(h + FFN(h))."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.attention = keras.layers.MultiHeadAttention(HEADS, HIDDEN // HEADS)
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-12)
        self.fc1 = keras.layers.Dense(FFN)
        self.fc2 = keras.layers.Dense(HIDDEN)
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-12)

    def call(self, x, mask):
        h = self.ln1(x + self.attention(x, x, attention_mask=mask))
        return self.ln2(h + self.fc2(gelu_erf(self.fc1(h))))


class KerasBert(Embedded):
    def __init__(self):
        super().__init__(KerasBertLayer)

    def call(self, input_ids, attention_mask):
        x = self.embed(input_ids)
        mask = tf.cast(attention_mask[:, tf.newaxis, :], tf.bool)
        for block in self.blocks:
            x = block(x, mask)
        return x


class Vit(keras.Model):
    def __init__(self):
        super().__init__()
        self.patches = keras.layers.Conv2D(HIDDEN, 7, strides=7)
        self.positions = self.add_weight(shape=(16, HIDDEN), name="position_embeddings")
        self.blocks = [VitBlock() for _ in range(LAYERS)]
        self.ln = keras.layers.LayerNormalization(epsilon=1e-6)
        self.head = keras.layers.Dense(10)

    def call(self, images):
        x = tf.reshape(self.patches(images), (-1, 16, HIDDEN)) + self.positions
        for block in self.blocks:
            x = block(x)
        return self.head(tf.reduce_mean(self.ln(x), axis=1))


def randomize(model: keras.Model, rng: np.random.Generator) -> None:
    """Every weight drawn anew: kernels N(0, 1/fan_in), embeddings N(0, 1), biases and LayerNorm
    shifts N(0, 0.1), LayerNorm scales 1 + N(0, 0.1)."""
    for w in model.weights:
        shape = tuple(w.shape)
        if "gamma" in w.path:
            value = 1 + rng.normal(0, 0.1, shape)
        elif len(shape) == 1:
            value = rng.normal(0, 0.1, shape)
        elif "embeddings" in w.path:
            value = rng.normal(0, 1.0, shape)
        else:  # MultiHeadAttention's query/key/value kernels are [in, heads, dims], its output's [heads, dims, out]
            fan_in = shape[0] if len(shape) == 3 and "attention_output" not in w.path else np.prod(shape[:-1])
            value = rng.normal(0, 1 / math.sqrt(fan_in), shape)
        w.assign(value.astype(np.float32))


def export(fn, signature, path: Path) -> None:
    tf2onnx.convert.from_function(tf.function(fn, input_signature=signature), input_signature=signature,
                                  opset=OPSET, output_path=str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    bert = Bert()
    ids = tf.zeros((1, 4), tf.int64)
    bert(ids, tf.ones((1, 4), tf.int64))
    randomize(bert, rng)
    export(lambda input_ids, attention_mask: bert(input_ids, attention_mask),
           [tf.TensorSpec((None, None), tf.int64, name="input_ids"),
            tf.TensorSpec((None, None), tf.int64, name="attention_mask")], args.out / "bert_tf.onnx")

    vit = Vit()
    vit(tf.zeros((1, 28, 28, 1)))
    randomize(vit, rng)
    export(lambda images: vit(images), [tf.TensorSpec((None, 28, 28, 1), tf.float32, name="images")],
           args.out / "vit_tf.onnx")

    keras_bert = KerasBert()
    keras_bert(ids, tf.ones((1, 4), tf.int64))
    randomize(keras_bert, rng)
    export(lambda input_ids, attention_mask: keras_bert(input_ids, attention_mask),
           [tf.TensorSpec((None, KERAS_SEQ), tf.int64, name="input_ids"),
            tf.TensorSpec((None, KERAS_SEQ), tf.int64, name="attention_mask")], args.out / "bert_keras.onnx")


if __name__ == "__main__":
    main()
