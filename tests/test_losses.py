"""losses.py against Paddle's own cross entropy."""

import numpy as np
import paddle
import paddle.nn.functional as F

from losses import label_smoothing_cross_entropy, soft_target_cross_entropy


def batch():
    rng = np.random.RandomState(0)
    return paddle.to_tensor(rng.randn(5, 7).astype('float32')), paddle.to_tensor(rng.randint(0, 7, 5))


def test_no_smoothing_is_cross_entropy():
    logits, labels = batch()
    np.testing.assert_allclose(float(label_smoothing_cross_entropy(logits, labels, 0.0)),
                               float(F.cross_entropy(logits, labels)), rtol=1e-6)


def test_smoothing_equals_soft_targets_of_smoothed_one_hot():
    logits, labels = batch()
    smoothing = 0.1
    targets = F.one_hot(labels, 7) * (1 - smoothing) + smoothing / 7
    np.testing.assert_allclose(float(label_smoothing_cross_entropy(logits, labels, smoothing)),
                               float(soft_target_cross_entropy(logits, targets)), rtol=1e-6)
    np.testing.assert_allclose(float(label_smoothing_cross_entropy(logits, labels, smoothing)),
                               float(F.cross_entropy(logits, labels, label_smoothing=smoothing)), rtol=1e-5)


def test_float16_logits_are_computed_in_float32():
    logits, labels = batch()
    loss = soft_target_cross_entropy(logits.astype('float16'), F.one_hot(labels, 7))
    assert loss.dtype == paddle.float32
