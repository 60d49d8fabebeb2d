"""The training losses: cross entropy with label smoothing, and cross entropy against soft targets (Mixup/CutMix).

Both take logits [N, num_classes] and return the mean over the batch, computed in float32 whatever the
logits' precision, because a log-softmax in float16 loses the small probabilities the losses depend on.
"""

import paddle.nn.functional as F


def label_smoothing_cross_entropy(logits, labels, smoothing):
    """Cross entropy against (1 - smoothing) on the label plus smoothing spread evenly over all classes.

    `labels` are class indices [N]; smoothing 0 gives the plain cross entropy.
    """
    log_probs = F.log_softmax(logits.astype('float32'), axis=-1)
    nll = -log_probs.take_along_axis(labels.reshape([-1, 1]).astype('int64'), axis=-1).squeeze(-1)
    uniform = -log_probs.mean(axis=-1)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean()


def soft_target_cross_entropy(logits, soft_targets):
    """Cross entropy against a probability distribution per image (`soft_targets` [N, num_classes])."""
    log_probs = F.log_softmax(logits.astype('float32'), axis=-1)
    return -(soft_targets.astype('float32') * log_probs).sum(axis=-1).mean()
