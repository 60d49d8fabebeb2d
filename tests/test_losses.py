"""losses.py against values worked out by hand and against numpy (float64), per quantity: the loss and its
gradient with respect to the logits, with label smoothing and with soft targets, in float32 and from float16."""

import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from losses import label_smoothing_cross_entropy, soft_target_cross_entropy

# Two rows worked out by hand. Row 0: logits (0, ln 2, 0) give probabilities (1/4, 1/2, 1/4); row 1: equal logits
# give 1/3 each, so its cross entropy is ln 3 against any target.
HAND_LOGITS = [[0.0, math.log(2.0), 0.0], [0.0, 0.0, 0.0]]
HAND_PROBS = np.array([[0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]])


def loss_and_grad(loss_fn, logits, *args):
    """(loss as a float, d loss / d logits as numpy) of `loss_fn(logits, *args)`."""
    logits = paddle.to_tensor(logits, dtype='float32', stop_gradient=False)
    loss = loss_fn(logits, *args)
    loss.backward()
    return float(loss), logits.grad.numpy()


def test_label_smoothing_by_hand():
    """Labels (1, 0), smoothing 0.3 over 3 classes: the target is 0.7 on the label plus 0.1 on every class.
    Row 0: 0.7 ln 2 + 0.3 * mean(ln 4, ln 2, ln 4) = 1.2 ln 2; row 1: ln 3; the loss is their mean. The gradient is
    (probabilities - target) / 2 per row."""
    loss, grad = loss_and_grad(label_smoothing_cross_entropy, HAND_LOGITS, paddle.to_tensor([1, 0]), 0.3)
    np.testing.assert_allclose(loss, (1.2 * math.log(2) + math.log(3)) / 2, rtol=1e-6)
    targets = np.array([[0.1, 0.8, 0.1], [0.8, 0.1, 0.1]])
    np.testing.assert_allclose(grad, (HAND_PROBS - targets) / 2, rtol=1e-5, atol=1e-7)


def test_label_smoothing_zero_is_the_negative_log_likelihood_by_hand():
    loss, _ = loss_and_grad(label_smoothing_cross_entropy, HAND_LOGITS, paddle.to_tensor([1, 2]), 0.0)
    np.testing.assert_allclose(loss, (math.log(2) + math.log(3)) / 2, rtol=1e-6)


def test_soft_targets_by_hand():
    """Row 0 against (1/2, 0, 1/2): ln 4; row 1 against (0.2, 0.3, 0.5): ln 3; gradient (probabilities - target) / 2."""
    targets = np.array([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])
    loss, grad = loss_and_grad(soft_target_cross_entropy, HAND_LOGITS, paddle.to_tensor(targets, dtype='float32'))
    np.testing.assert_allclose(loss, (math.log(4) + math.log(3)) / 2, rtol=1e-6)
    np.testing.assert_allclose(grad, (HAND_PROBS - targets) / 2, rtol=1e-5, atol=1e-7)


def numpy_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def numpy_soft_target_loss(logits, targets):
    """(loss, gradient) in float64: the batch mean of -sum_c t_c log p_c, and (softmax - t) / N."""
    log_probs = numpy_log_softmax(logits)
    return -(targets * log_probs).sum(axis=-1).mean(), (np.exp(log_probs) - targets) / len(logits)


def smoothed(labels, num_classes, smoothing):
    targets = np.full((len(labels), num_classes), smoothing / num_classes)
    targets[np.arange(len(labels)), labels] += 1 - smoothing
    return targets


def random_batch(scale):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((6, 9)) * scale).astype(np.float32), rng.integers(0, 9, 6)


# Paddle's CPU log-softmax floors its values at -64, so the loss values are compared where every row's logits lie
# within 64 of each other: scale 15 spreads them up to about 48 (probabilities down to e^-48).
SCALES = [1.0, 15.0]


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.5])
def test_label_smoothing_against_numpy(scale, smoothing):
    logits, labels = random_batch(scale)
    assert np.ptp(logits, axis=1).max() < 64
    loss, grad = loss_and_grad(label_smoothing_cross_entropy, logits, paddle.to_tensor(labels), smoothing)
    expected_loss, expected_grad = numpy_soft_target_loss(logits.astype(np.float64), smoothed(labels, 9, smoothing))
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7 * np.abs(expected_grad).max())


@pytest.mark.parametrize('scale', SCALES)
def test_soft_targets_against_numpy(scale):
    logits, _ = random_batch(scale)
    assert np.ptp(logits, axis=1).max() < 64
    targets = np.random.default_rng(1).dirichlet(np.ones(9), size=6)
    loss, grad = loss_and_grad(soft_target_cross_entropy, logits, paddle.to_tensor(targets, dtype='float32'))
    expected_loss, expected_grad = numpy_soft_target_loss(logits.astype(np.float64), targets)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7 * np.abs(expected_grad).max())


def test_far_apart_logits_keep_an_exact_gradient():
    """Logits up to ~130 apart: where Paddle's log-softmax floor (-64) caps the loss of an image (its value is
    then low by a few units), the gradient is still (softmax - target) / N, since the probabilities that are
    floored are below e^-64 anyway."""
    logits, labels = random_batch(30.0)
    _, grad = loss_and_grad(label_smoothing_cross_entropy, logits, paddle.to_tensor(labels), 0.1)
    expected = numpy_soft_target_loss(logits.astype(np.float64), smoothed(labels, 9, 0.1))[1]
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7 * np.abs(expected).max())


def test_smoothing_agrees_with_paddle():
    logits, labels = random_batch(1.0)
    ours = label_smoothing_cross_entropy(paddle.to_tensor(logits), paddle.to_tensor(labels), 0.1)
    theirs = F.cross_entropy(paddle.to_tensor(logits), paddle.to_tensor(labels), label_smoothing=0.1)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


@pytest.mark.parametrize('loss_fn', ['smoothing', 'soft'])
def test_float16_logits_are_computed_in_float32(loss_fn):
    """The float16 values' own loss to float32 precision (a float16 log-softmax is off by about 1e-3)."""
    logits, labels = random_batch(4.0)
    half = paddle.to_tensor(logits).astype('float16')
    exact = logits.astype(np.float16).astype(np.float64)
    targets = smoothed(labels, 9, 0.1)
    if loss_fn == 'smoothing':
        loss = label_smoothing_cross_entropy(half, paddle.to_tensor(labels), 0.1)
    else:
        loss = soft_target_cross_entropy(half, paddle.to_tensor(targets, dtype='float16'))
        targets = targets.astype(np.float16).astype(np.float64)
    assert loss.dtype == paddle.float32
    np.testing.assert_allclose(float(loss), numpy_soft_target_loss(exact, targets)[0], rtol=2e-6)
