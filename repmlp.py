"""RepMLPNet: Hierarchical Vision MLP with Re-parameterized Locality (Ding et al., arXiv 2112.11081).

The network, its locality injection (the re-parameterization that merges the local perceptron's conv
branches and the BNs into the channel perceptron's FC), the folding of every other BN for inference
(`fold_batchnorms`), and `build_repmlp(config)`.

Parameter names and shapes are those of the official PyTorch code with Paddle's BN names (`_mean`,
`_variance`) and Paddle's Linear layout ([in, out]), which is also how PaddleViT's RepMLP saves them, so
that its released `.pdparams` load unchanged. The channel perceptron `fc3` keeps the official grouped-conv
weight shape [S*h*w, h*w, 1, 1] but is computed as a batched matrix product over the S share-sets.
"""

import functools
import math

import numpy as np

import runtime  # noqa: F401  (before paddle: CPU threads and MKL path)
import paddle
import paddle.nn.functional as F
from paddle import nn

from config import PATCH_SIZE
from cpu_ops import batch_norm_add, batch_norm_gelu, depthwise_conv, gated, gated_add, gelu

GLOBAL_PERCEPTRON_REDUCE = 4  # the global perceptron's hidden width is channels / 4 in every variant
FFN_EXPAND = 4  # the FFN's hidden width is 4x the stage channels
DENSE_LOCAL_CONV_MAX_AREA = 400  # local perceptron convs on partitions up to 20x20 run as matrix products
ONE_PRODUCT_MAX_AREA = 256  # FFNs on maps up to 16x16 run each 1x1 conv as one product over the batch


def conv_bn(in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1):
    """Conv2D without bias followed by BatchNorm2D, as a Sequential with sublayers `conv` and `bn`."""
    return nn.Sequential(
        ('conv', nn.Conv2D(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                           groups=groups, bias_attr=False)),
        ('bn', nn.BatchNorm2D(out_channels)))


def conv_bn_relu(in_channels, out_channels, kernel_size, stride=1, padding=0):
    """`conv_bn` followed by ReLU (sublayer `relu`): the stem and the embeddings between stages."""
    block = conv_bn(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
    block.add_sublayer('relu', nn.ReLU())
    return block


def bn_scale_shift(bn, dtype='float64'):
    """The eval-mode BN as y = x * scale + shift, per channel; float64 by default so that fusions lose nothing."""
    scale = bn.weight.astype(dtype) / paddle.sqrt(bn._variance.astype(dtype) + bn._epsilon)
    shift = bn.bias.astype(dtype) - bn._mean.astype(dtype) * scale
    return scale, shift


def per_channel(x, scale=None, shift=None):
    """x * scale + shift with one value per channel of x [N, C, H, W] (either may be None).

    Computed on the view [N, C, H*W] with [C, 1] operands: Paddle's CPU kernels broadcast a [1, C, 1, 1] operand
    over [N, C, H, W] on a slow path, slow enough to make a conv with a bias slower than the same conv followed by
    a BN. Works with a dynamic batch size when traced.
    """
    channels, height, width = x.shape[1:]
    out = x.reshape([-1, channels, height * width])  # [N, C, H, W] -> [N, C, H*W]
    if scale is not None:
        out = out * scale.reshape([channels, 1])
    if shift is not None:
        out = out + shift.reshape([channels, 1])
    return out.reshape([-1, channels, height, width])


class ChannelAffine(nn.Layer):
    """y = x * weight + bias per channel of [N, C, H, W]: an eval-mode BN that no neighbouring layer can absorb."""

    def __init__(self, channels):
        super().__init__()
        self.weight = self.create_parameter([channels], default_initializer=nn.initializer.Constant(1.0))
        self.bias = self.create_parameter([channels], is_bias=True)

    def forward(self, x):
        return per_channel(x, self.weight, self.bias)


class BiasedConv2D(nn.Conv2D):
    """A Conv2D (zero padding) whose bias is added by `per_channel`: the form of a conv with a BN folded in."""

    def forward(self, x):
        out = F.conv2d(x, self.weight, None, self._stride, self._padding, self._dilation, self._groups)
        return per_channel(out, shift=self.bias)


@paddle.no_grad()
def channel_affine_from_bn(bn):
    """The ChannelAffine equal to the eval-mode `bn`."""
    scale, shift = bn_scale_shift(bn)
    affine = ChannelAffine(scale.shape[0])
    affine.weight.set_value(scale.astype(bn.weight.dtype))
    affine.bias.set_value(shift.astype(bn.bias.dtype))
    return affine


@paddle.no_grad()
def fuse_conv_bn(block):
    """In place: the `conv` of a `conv_bn` Sequential takes its `bn` in as a bias; the `bn` is removed. Returns the
    new conv (a BiasedConv2D)."""
    conv, bn = block.conv, block.bn
    scale, shift = bn_scale_shift(bn)
    fused = BiasedConv2D(conv._in_channels, conv._out_channels, conv._kernel_size, stride=conv._stride,
                         padding=conv._padding, dilation=conv._dilation, groups=conv._groups)
    fused.weight.set_value((conv.weight.astype('float64') * scale.reshape([-1, 1, 1, 1])).astype(conv.weight.dtype))
    conv_bias = conv.bias.astype('float64') * scale if conv.bias is not None else 0.0
    fused.bias.set_value((shift + conv_bias).astype(conv.weight.dtype))
    block.conv = fused  # replaces the entry in place, so the Sequential's order is kept
    del block.bn
    return fused


@paddle.no_grad()
def fold_input_affine(conv, scale, shift):
    """In place: a biased 1x1 `conv` applied to x * scale + shift (per input channel, float64) takes the affine in.

    Exact for 1x1 convs without padding: every output sums its inputs' scaled values and a constant.
    """
    weight = conv.weight.astype('float64')  # [out, in, 1, 1]
    bias = conv.bias.astype('float64') + (weight.squeeze([2, 3]) * shift.reshape([1, -1])).sum(axis=1)
    conv.weight.set_value((weight * scale.reshape([1, -1, 1, 1])).astype(conv.weight.dtype))
    conv.bias.set_value(bias.astype(conv.bias.dtype))


def permute(x, shape, order):
    """`x` viewed as `shape` (its batch entry may be -1) and transposed by `order`, as a tensor of merged axes.

    Axes of size 1 are dropped and axes that stay neighbours are merged before transposing, so that Paddle's CPU
    transpose, whose cost grows steeply with the number of axes, runs on three axes instead of seven. The caller
    reshapes the result to the shape it wants; the element order is that of the full transpose.
    """
    kept = [axis for axis in range(len(shape)) if shape[axis] != 1]
    rank = {axis: i for i, axis in enumerate(kept)}
    runs = []  # runs of axes that are consecutive both before and after the transpose
    for axis in (a for a in order if shape[a] != 1):
        if runs and rank[runs[-1][-1]] + 1 == rank[axis]:
            runs[-1].append(axis)
        else:
            runs.append([axis])
    source = sorted(runs)
    sizes = [-1 if any(shape[a] == -1 for a in run) else math.prod(shape[a] for a in run) for run in source]
    x = x.reshape(sizes)
    run_order = [source.index(run) for run in runs]
    return x.transpose(run_order) if run_order != sorted(run_order) else x


@functools.lru_cache(maxsize=None)
def conv_placement(h, w, size, dtype):
    """[size*size, h*w * h*w]: 1 where a tap of a `size` x `size` conv (zero padding size // 2) connects an output
    pixel to an input pixel of an h x w map, at the flat matrix position out * h*w + in. Kept per shape and dtype."""
    pad, area = size // 2, h * w
    placement = np.zeros([size * size, area * area], dtype=np.float32)  # 0 and 1: exact in every dtype
    out_y, out_x = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
    for tap, (dy, dx) in enumerate(np.ndindex(size, size)):
        in_y, in_x = out_y + dy - pad, out_x + dx - pad
        inside = (in_y >= 0) & (in_y < h) & (in_x >= 0) & (in_x < w)
        placement[tap, (out_y * w + out_x)[inside] * area + (in_y * w + in_x)[inside]] = 1
    return paddle.to_tensor(placement).astype(dtype)


def conv_matrices(kernel, h, w):
    """Depthwise conv kernels [S, 1, K, K] (zero padding K // 2) on an h x w map as matrices [S, h*w (out), h*w (in)].

    One product with a 0/1 placement: a single matmul forward and backward, where gathering the taps and scattering
    them into zeros takes several ops each way."""
    sets, size = kernel.shape[0], kernel.shape[-1]
    placement = conv_placement(h, w, size, kernel.dtype)
    return paddle.matmul(kernel.reshape([sets, size * size]), placement).reshape([sets, h * w, h * w])


def spatial_mean(x):
    """The mean of each map of x [N, C, H, W] -> [N, C], as a product with a constant column.

    A product runs on MKL's threads and vector units; Paddle's CPU pooling kernel does not, forward or backward.
    """
    channels, height, width = x.shape[1:]
    column = paddle.full([height * width, 1], 1.0 / (height * width), dtype=x.dtype)
    # [N, C, H, W] -> [N*C, H*W] -> [N*C, 1] -> [N, C]
    return paddle.matmul(x.reshape([-1, height * width]), column).reshape([-1, channels])


@paddle.no_grad()
def init_like_pytorch(layer):
    """PyTorch's default initialisation of a Conv2D or Linear `layer`, which the official model keeps everywhere.

    kaiming_uniform_(a=sqrt(5)) is uniform in +-1/sqrt(fan_in), and so is the bias; fan_in counts the inputs of
    one output: in_channels / groups * k * k for a conv (Paddle's own default ignores the groups), in_features for
    a Linear (Paddle's is Xavier). Drawn from Paddle's generator, so paddle.seed fixes it. BNs keep weight 1 and
    bias 0, the same in both frameworks.
    """
    if isinstance(layer, nn.Conv2D):
        fan_in = math.prod(layer.weight.shape[1:])  # [out, in / groups, k, k]
    elif isinstance(layer, nn.Linear):
        fan_in = layer.weight.shape[0]  # [in, out]
    else:
        return
    bound = fan_in ** -0.5
    for param in (layer.weight, layer.bias):
        if param is not None:
            nn.initializer.Uniform(-bound, bound)(param)


class GlobalPerceptron(nn.Layer):
    """Squeeze-and-excitation style channel gate: pool, fc1, ReLU, fc2, sigmoid -> [N, C, 1, 1]."""

    def __init__(self, channels, hidden_channels):
        super().__init__()
        self.fc1 = nn.Conv2D(channels, hidden_channels, 1)
        self.fc2 = nn.Conv2D(hidden_channels, channels, 1)

    def forward(self, x):
        x = spatial_mean(x).unsqueeze([2, 3])  # [N, C, 1, 1]
        x = F.relu(self.fc1(x))
        return F.sigmoid(self.fc2(x))


class PartitionFC(nn.Layer):
    """The channel perceptron's FC weights: one h*w x h*w matrix per share-set, applied to every partition.

    The weight is stored as the official grouped 1x1 conv weight [S*h*w, h*w, 1, 1]; viewed as
    [S, h*w (out), h*w (in)] it is a batch of S matrices, and RepMLPBlock applies it as one batched matmul,
    which is far faster than a grouped conv over 1x1 maps.
    """

    def __init__(self, num_sharesets, area, bias=False):
        super().__init__()
        self.num_sharesets = num_sharesets
        self.area = area
        size = num_sharesets * area
        # PyTorch's default for a grouped conv with fan-in h*w (see init_like_pytorch)
        init = nn.initializer.Uniform(-area ** -0.5, area ** -0.5)
        self.weight = self.create_parameter([size, area, 1, 1], default_initializer=init)
        self.bias = self.create_parameter([size], is_bias=True, default_initializer=init) if bias else None

    def matrices(self):
        """The weight as [S, h*w (out), h*w (in)] (a free reshape)."""
        return self.weight.reshape([self.num_sharesets, self.area, self.area])


class RepMLPBlock(nn.Layer):
    """Global, channel and local perceptrons over h x w partitions of a [N, C, H, W] map.

    Channel c belongs to share-set c % S (the official grouping), so the C/S channels of a share-set and
    all partitions of all images share one FC. Training-time form: `fc3` (no bias) + `fc3_bn`, plus the
    local perceptron `repconv{k}` (depthwise conv + BN per share-set) for each k in `reparam_conv_k`.
    Deploy form: `fc3` with bias only. In eval mode both forms apply one FC with bias (see `_inference_fc3`).

    `official_order` reproduces the official code, which gathers the rows of partitions in the order
    (image, hp, wp, C/S) but puts them back as if ordered (image, C/S, hp, wp): when a map holds several
    partitions and C > S, its outputs land on other channels and partitions. At the released variants' native
    sizes every map is one partition and both orders give the same outputs.
    """

    def __init__(self, channels, h, w, reparam_conv_k, num_sharesets, deploy=False, official_order=False):
        super().__init__()
        self.channels = channels
        self.official_order = official_order
        self.h, self.w = h, w
        self.num_sharesets = num_sharesets
        self.reparam_conv_k = tuple(reparam_conv_k) if not deploy else ()
        self.deploy = deploy
        self.gp = GlobalPerceptron(channels, channels // GLOBAL_PERCEPTRON_REDUCE)
        self.fc3 = PartitionFC(num_sharesets, h * w, bias=deploy)
        if not deploy:
            self.fc3_bn = nn.BatchNorm2D(num_sharesets)
            for k in self.reparam_conv_k:
                self.add_sublayer(f'repconv{k}', conv_bn(num_sharesets, num_sharesets, k, padding=k // 2,
                                                         groups=num_sharesets))

    def forward(self, x):
        """The block's output for x [N, C, H, W]: the channel perceptron's FC output scaled by the global gate."""
        return gated(*self.gate_terms(x))

    def gate_terms(self, x):
        """(FC output [N, C, H, W], gate [N, C, 1, 1], bias [S, H*W] or None) whose `cpu_ops.gated` is the block's
        output; kept apart so that the unit adds them to its residual in one pass (`cpu_ops.gated_add`)."""
        _, channels, height, width = x.shape
        sets, h, w = self.num_sharesets, self.h, self.w
        channels_per_set, h_parts, w_parts = channels // sets, height // h, width // w
        gate = self.gp(x)
        # x is viewed as [N, C/S, S, hp, h, wp, w]; a partition's rows M are (n, C/S, hp, wp), or in the official
        # gather order (n, hp, wp, C/S). Either way they are put back as (n, C/S, hp, wp) (see the docstring).
        view = [-1, channels_per_set, sets, h_parts, h, w_parts, w]
        rows = [0, 3, 5, 1] if self.official_order else [0, 1, 3, 5]
        # [N, C/S, S, hp, h, wp, w] -> [S, M, h, w] -> [S, M, h*w]
        parts = permute(x, view, [2] + rows + [4, 6]).reshape([sets, -1, h * w])
        if self.training and not self.deploy:
            out, bias = self._training_branches(parts), None
        else:
            matrices, bias = self._inference_fc3()
            out = paddle.matmul(parts, matrices, transpose_y=True)
            # [S, h*w] -> [S, hp, h, wp, w] -> [S, H*W]: the bias at every pixel of a map, added with the gate
            bias = bias.reshape([sets, 1, h, 1, w]).tile([1, h_parts, 1, w_parts, 1]).reshape([sets, -1])
        # [S, N, C/S, hp, wp, h, w] -> [N, C/S, S, hp, h, wp, w]
        out = permute(out, [sets, -1, channels_per_set, h_parts, w_parts, h, w], [1, 2, 0, 3, 5, 4, 6])
        return out.reshape([-1, channels, height, width]), gate, bias

    def _training_branches(self, parts):
        """fc3, its BN and the local perceptron as separate branches with batch statistics: [S, M, h*w] -> same."""
        out = paddle.matmul(parts, self.fc3.matrices(), transpose_y=True)
        # BN over share-sets: [S, M, h*w] as NCHW [1, S, M, h*w] has the official statistics
        out = self.fc3_bn(out.unsqueeze(0)).squeeze(0)
        if self.reparam_conv_k:
            out = out + self._local_perceptron(parts)
        return out

    def _local_perceptron(self, parts):
        """Sum of the conv+BN branches on each partition: [S, M, h*w] -> [S, M, h*w].

        The cheapest exact form of each conv, forward + backward: a 1x1 depthwise conv is a scale per share-set; on
        small partitions a k x k conv is fastest as a product with its (banded) h*w x h*w matrix, whose size grows
        with the square of the partition's area; on large ones as a depthwise conv.
        """
        sets, h, w = self.num_sharesets, self.h, self.w
        outputs = []
        for k in self.reparam_conv_k:
            branch = getattr(self, f'repconv{k}')
            if k == 1:
                out = parts.reshape([sets, -1]) * branch.conv.weight.reshape([sets, 1])
            elif h * w <= DENSE_LOCAL_CONV_MAX_AREA:
                out = paddle.matmul(parts, conv_matrices(branch.conv.weight, h, w), transpose_y=True)
            else:
                # each (share-set, partition) pair is one channel of a depthwise conv with its share-set's kernel
                images = parts.reshape([1, -1, h, w])  # [1, S*M, h, w]
                kernel = paddle.repeat_interleave(branch.conv.weight, images.shape[1] // sets, axis=0)
                out = depthwise_conv(images, kernel)
            # [S, M, h, w] as [1, S, M*h, w]: BN statistics per share-set, as official
            outputs.append(branch.bn(out.reshape([1, sets, -1, w])))
        return paddle.add_n(outputs).reshape([sets, -1, h * w])

    def _inference_fc3(self):
        """(matrices [S, h*w, h*w], bias [S, h*w]) of the FC that the block applies in eval mode.

        The training-time form computes its fused FC on the fly, in float32: the same function as its branches
        with running statistics, at the cost of one product instead of a product and depthwise convs.
        """
        if self.deploy:
            return self.fc3.matrices(), self.fc3.bias.reshape([self.num_sharesets, -1])
        return self.fused_fc3(self.fc3.weight.dtype)

    def fused_fc3(self, dtype):
        """(matrices [S, h*w (out), h*w (in)], bias [S, h*w]) of one FC equal, in eval mode, to fc3 and its BN plus
        every conv branch with its BN; computed in `dtype`."""
        sets, area = self.num_sharesets, self.h * self.w
        scale, shift = bn_scale_shift(self.fc3_bn, dtype)
        matrices = self.fc3.matrices().astype(dtype) * scale.reshape([sets, 1, 1])
        bias = shift.reshape([sets, 1]).expand([sets, area])
        if self.reparam_conv_k:
            kernel, conv_bias = self._fused_local_kernel(dtype)
            matrices = matrices + conv_matrices(kernel, self.h, self.w)
            bias = bias + conv_bias.reshape([sets, 1])
        return matrices, bias

    def _fused_local_kernel(self, dtype):
        """All conv branches with their BNs folded in, as one [S, 1, K, K] kernel (K the largest k) and a bias [S]."""
        largest = max(self.reparam_conv_k)
        kernels, biases = [], []
        for k in self.reparam_conv_k:
            branch = getattr(self, f'repconv{k}')
            scale, shift = bn_scale_shift(branch.bn, dtype)
            pad = (largest - k) // 2
            folded = branch.conv.weight.astype(dtype) * scale.reshape([-1, 1, 1, 1])
            kernels.append(F.pad(folded, [pad, pad, pad, pad]))
            biases.append(shift)
        return paddle.add_n(kernels), paddle.add_n(biases)

    @paddle.no_grad()
    def local_inject(self):
        """Replace fc3, fc3_bn and the conv branches by one equivalent fc3 with bias (the deploy form)."""
        if self.deploy:
            return
        matrices, bias = self.fused_fc3('float64')
        fc3 = PartitionFC(self.num_sharesets, self.h * self.w, bias=True)
        fc3.to(dtype=self.fc3.weight.dtype)
        fc3.weight.set_value(matrices.reshape(fc3.weight.shape).astype(fc3.weight.dtype))
        fc3.bias.set_value(bias.reshape([-1]).astype(fc3.bias.dtype))
        for k in self.reparam_conv_k:
            delattr(self, f'repconv{k}')
        del self.fc3_bn
        self.fc3 = fc3
        self.reparam_conv_k = ()
        self.deploy = True


def on_pixels(pointwise, x):
    """`pointwise` (1x1 convs, per-channel ops) applied to x [N, C, H, W].

    Maps up to ONE_PRODUCT_MAX_AREA pixels go in as one image holding every pixel of the batch, so that each 1x1
    conv is one matrix product instead of one per image; the per-channel ops see the same values either way.
    """
    channels, height, width = x.shape[1:]
    if height * width > ONE_PRODUCT_MAX_AREA:
        return pointwise(x)
    # [N, C, H, W] -> [C, N, H*W] -> [1, C, N*H*W, 1]
    x = x.reshape([-1, channels, height * width]).transpose([1, 0, 2]).reshape([1, channels, -1, 1])
    out = pointwise(x)
    out_channels = out.shape[1]
    # [1, C', N*H*W, 1] -> [C', N, H*W] -> [N, C', H, W]
    out = out.reshape([out_channels, -1, height * width]).transpose([1, 0, 2])
    return out.reshape([-1, out_channels, height, width])


class FFNBlock(nn.Layer):
    """1x1 conv+BN, GELU, 1x1 conv+BN: the per-pixel feed-forward network."""

    def __init__(self, channels, hidden_channels):
        super().__init__()
        self.ffn_fc1 = conv_bn(channels, hidden_channels, 1)
        self.ffn_fc2 = conv_bn(hidden_channels, channels, 1)

    def forward(self, x):
        """FFN(x) for x [N, C, H, W]."""
        out, bn = self.norm_terms(x)
        return bn(out)

    def norm_terms(self, x):
        """(the output before its last BN, that BN): kept apart so that the unit applies the BN and adds its
        residual in one pass (`cpu_ops.batch_norm_add`)."""
        fc1, fc2 = self.ffn_fc1, self.ffn_fc2
        return on_pixels(lambda pixels: fc2.conv(batch_norm_gelu(fc1.conv(pixels), fc1.bn)), x), fc2.bn

    @paddle.no_grad()
    def folded(self, input_bn):
        """The FoldedFFN equal, in eval mode, to this FFN applied after the BN `input_bn` (the unit's prebn2)."""
        fc1, fc2 = fuse_conv_bn(self.ffn_fc1), fuse_conv_bn(self.ffn_fc2)
        fold_input_affine(fc1, *bn_scale_shift(input_bn))
        return FoldedFFN(fc1, fc2)


class FoldedFFN(nn.Layer):
    """The inference form of `FFNBlock` and the BN before it: biased 1x1 conv, GELU, biased 1x1 conv."""

    def __init__(self, ffn_fc1, ffn_fc2):
        super().__init__()
        self.ffn_fc1, self.ffn_fc2 = ffn_fc1, ffn_fc2

    def forward(self, x):
        """FFN(x) for x [N, C, H, W]."""
        return on_pixels(lambda pixels: self.ffn_fc2(gelu(self.ffn_fc1(pixels))), x)

    def norm_terms(self, x):
        """(FFN(x), None): no BN is left to fuse with the unit's residual add."""
        return self(x), None


class RepMLPNetUnit(nn.Layer):
    """Pre-BN residual unit: x + RepMLPBlock(BN(x)), then y + FFN(BN(y))."""

    def __init__(self, channels, h, w, reparam_conv_k, num_sharesets, deploy=False, official_order=False):
        super().__init__()
        self.repmlp_block = RepMLPBlock(channels, h, w, reparam_conv_k, num_sharesets, deploy, official_order)
        self.ffn_block = FFNBlock(channels, channels * FFN_EXPAND)
        self.prebn1 = nn.BatchNorm2D(channels)
        self.prebn2 = nn.BatchNorm2D(channels)

    def forward(self, x):
        # each residual add is fused with its block's last operation where the CPU kernels apply; the blocks are
        # reached through their gate_terms / norm_terms, so forward hooks of the blocks themselves do not fire here
        x = gated_add(x, *self.repmlp_block.gate_terms(self.prebn1(x)))
        return batch_norm_add(x, *self.ffn_block.norm_terms(self.prebn2(x)))

    def fold_batchnorms(self):
        """The inference form of an eval-mode unit, in place: locality injection, the FFN's BNs and prebn2 folded into
        its convs (exact, a FoldedFFN), prebn1 as a ChannelAffine.

        prebn1 cannot fold: fc3 shares one matrix between the C/S channels of a share-set, whose BN scales differ.
        """
        self.repmlp_block.local_inject()
        self.ffn_block = self.ffn_block.folded(self.prebn2)
        self.prebn2 = nn.Identity()
        self.prebn1 = channel_affine_from_bn(self.prebn1)


class RepMLPNet(nn.Layer):
    """Four stages of RepMLPNet units, conv embeddings between them, BN, global pooling and a linear head.

    Args:
        channels, hs, ws, num_blocks, sharesets_nums: one entry per stage (see configs/).
        reparam_conv_k: kernel sizes of the local perceptron branches.
        deploy: build the locality-injected form directly.
        official_partition_order: merge partitions back as the official code does (see RepMLPBlock).
    """

    def __init__(self, in_channels=3, num_classes=1000, channels=(96, 192, 384, 768), hs=(56, 28, 14, 7),
                 ws=(56, 28, 14, 7), num_blocks=(2, 2, 12, 2), reparam_conv_k=(1, 3), sharesets_nums=(1, 4, 32, 128),
                 deploy=False, official_partition_order=False):
        super().__init__()
        self.conv_embedding = conv_bn_relu(in_channels, channels[0], PATCH_SIZE, stride=PATCH_SIZE)
        self.stages = nn.LayerList([
            nn.LayerList([RepMLPNetUnit(channels[i], hs[i], ws[i], reparam_conv_k, sharesets_nums[i], deploy,
                                        official_partition_order)
                          for _ in range(num_blocks[i])])
            for i in range(len(num_blocks))])
        self.embeds = nn.LayerList([
            conv_bn_relu(channels[i], channels[i + 1], 2, stride=2) for i in range(len(num_blocks) - 1)])
        self.head_norm = nn.BatchNorm2D(channels[-1])
        self.head = nn.Linear(channels[-1], num_classes)
        self.apply(init_like_pytorch)

    def forward_features(self, x, out_indices=(0, 1, 2, 3)):
        """Outputs of the stages in `out_indices`, for use as a backbone.

        Stage i gives [N, CHANNELS[i], H / 2**(i+2), W / 2**(i+2)] (strides 4, 8, 16, 32), taken after its last
        unit and before the next embedding; the same before and after `locality_injection()`.
        """
        self._check_input_size(x.shape[2], x.shape[3])
        features = []
        x = self.conv_embedding(x)
        for i, stage in enumerate(self.stages):
            for unit in stage:
                x = unit(x)
            if i in out_indices:
                features.append(x)
            if i < len(self.embeds):
                x = self.embeds[i](x)
        return features

    def forward(self, x):
        x = self.forward_features(x, out_indices=(len(self.stages) - 1,))[0]
        x = spatial_mean(self.head_norm(x))  # [N, C, h, w] -> [N, C]
        return self.head(x)

    def _check_input_size(self, height, width):
        """Fail with the sizes that work instead of a reshape error deep inside a block."""
        for i, stage in enumerate(self.stages):
            block = stage[0].repmlp_block
            stride = PATCH_SIZE * 2 ** i
            if height % stride or width % stride or (height // stride) % block.h or (width // stride) % block.w:
                raise ValueError(f'a {height}x{width} input gives stage {i} a {height / stride:g}x{width / stride:g} '
                                 f'map, which does not split into {block.h}x{block.w} partitions')

    def locality_injection(self):
        """Merge every block's local perceptron and BNs into its fc3, in place (the deploy form)."""
        for layer in self.sublayers():
            if isinstance(layer, RepMLPBlock):
                layer.local_inject()
        return self

    @paddle.no_grad()
    def fold_batchnorms(self):
        """The inference form, in place: locality injection, then every BN folded into a neighbouring conv or
        linear layer (stem, embeddings, FFN, prebn2, head_norm into the head), prebn1 as a ChannelAffine.

        Puts the model in eval mode (the BN statistics become constants); afterwards the model holds no BatchNorm
        and its state dict no longer loads into `build_repmlp`'s model: save it with paddle.jit.save.
        """
        self.eval()
        for block in [self.conv_embedding, *self.embeds]:
            fuse_conv_bn(block)
        for stage in self.stages:
            for unit in stage:
                unit.fold_batchnorms()
        # global average pooling commutes with a per-channel affine, so head_norm folds into the head
        scale, shift = bn_scale_shift(self.head_norm)
        weight = self.head.weight.astype('float64')  # [in, out]
        self.head.bias.set_value((self.head.bias.astype('float64') + (shift.reshape([-1, 1]) * weight).sum(axis=0))
                                 .astype(self.head.bias.dtype))
        self.head.weight.set_value((weight * scale.reshape([-1, 1])).astype(self.head.weight.dtype))
        self.head_norm = nn.Identity()
        return self


RepMLP = RepMLPNet  # PaddleViT's name for the same network


def build_repmlp(config):
    """Build the RepMLPNet described by `config.MODEL` (training-time form, or deploy form if MODEL.DEPLOY)."""
    model = config.MODEL
    return RepMLPNet(num_classes=model.NUM_CLASSES, channels=model.CHANNELS, hs=model.HEIGHTS, ws=model.WIDTHS,
                     num_blocks=model.NUM_BLOCKS, reparam_conv_k=model.REPARAM_CONV_K,
                     sharesets_nums=model.SHARESETS_NUMS, deploy=model.DEPLOY,
                     official_partition_order=model.OFFICIAL_PARTITION_ORDER)
