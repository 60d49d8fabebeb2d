"""Training and evaluation of RepMLPNet, shared by main_single_gpu.py and main_multi_gpu.py.

- builders: the learning rates scaled to the effective batch, the per-iteration warmup + cosine schedule,
  AdamW without weight decay on BN parameters and biases, the weight EMA, the AMP context;
- the loops: `train_one_epoch(trainer, loader, epoch) -> dict` and `validate(model, loader, config) -> dict`;
- `run(config)`: a whole evaluation (`run_evaluation`) or training run (`run_training`) in this process. When a
  parallel environment is initialised (main_multi_gpu.py) the process is one rank of a data-parallel job;
  otherwise it is alone.

Randomness: every rank reseeds Python, NumPy and Paddle at the start of each epoch from (SEED, epoch, rank),
so the random draws of an epoch do not depend on what ran before it, and a resumed run repeats them exactly.
"""

import contextlib
import dataclasses
import datetime
import math
import os
import random
import shlex
import sys
import time
import warnings

import numpy as np
import yaml
import runtime  # before paddle: CPU threads, MKL path, stop signals
import paddle
import paddle.nn.functional as F
from paddle import nn

import charts
import checkpoint
import cpu_ops
import datasets
import transforms
import utils
from config import ConfigError, UserError
from losses import label_smoothing_cross_entropy, soft_target_cross_entropy
from repmlp import build_repmlp

# Paddle warns on every training-mode BN call that it tracks running statistics, which is what is wanted here.
warnings.filterwarnings('ignore', message='When training, we now always track global mean and variance')
BATCH_NORMS = (nn.BatchNorm1D, nn.BatchNorm2D, nn.BatchNorm3D, nn.SyncBatchNorm)
LOSS_SCALE = 2.0 ** 16  # the float16 GradScaler's first loss scale; it adapts from there
PROGRESS_SECONDS = 30  # a progress line at least this often, also between REPORT_FREQ steps (slow steps on a CPU)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------------- builders

def learning_rates(config, world_size):
    """The derived LR values: BASE_LR, WARMUP_START_LR and END_LR times effective batch / LR_REFERENCE_BATCH."""
    train = config.TRAIN
    effective_batch = config.DATA.BATCH_SIZE * world_size * train.ACCUM_ITER
    scale = effective_batch / train.LR_REFERENCE_BATCH
    return {'effective_batch': effective_batch, 'base_lr': train.BASE_LR * scale,
            'warmup_start_lr': train.WARMUP_START_LR * scale, 'end_lr': train.END_LR * scale}


def half_cosine(start, end, progress):
    """The value `progress` (0 to 1) of the way along a half cosine from `start` down to `end`."""
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(paddle.optimizer.lr.LRScheduler):
    """PaddleViT's shape ('paddlevit'): linear warmup from `warmup_start_lr` to `base_lr` over `warmup_steps`, then
    a half cosine from `base_lr` down to `end_lr` over the steps after warmup (LinearWarmup into
    CosineAnnealingDecay with T_max = NUM_EPOCHS - WARMUP_EPOCHS). `last_epoch` counts optimizer updates.
    """

    def __init__(self, base_lr, warmup_start_lr, end_lr, warmup_steps, total_steps, last_epoch=-1):
        self.warmup_start_lr, self.end_lr = warmup_start_lr, end_lr
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        super().__init__(learning_rate=base_lr, last_epoch=last_epoch)

    def get_lr(self):
        """The LR of update number `self.last_epoch`."""
        step = self.last_epoch
        if step < self.warmup_steps:
            return self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return half_cosine(self.base_lr, self.end_lr, progress)


class OfficialCosineLR(paddle.optimizer.lr.LRScheduler):
    """The official training code's schedule ('official'), as DingXiaoH/RepMLP's main_repmlp.py applies it.

    Its lr_scheduler.py builds timm's CosineLRScheduler (t_in_epochs=False, no warmup prefix) over batches t:
    linear warmup from `warmup_start_lr` for the first warmup batches, then the half cosine at t / (all batches)
    of the whole run, so the first value after warmup is already below `base_lr` (0.9755 x at 10 of 100 epochs).
    main_repmlp.py sets the LR with `step_update(t)` after the update at batch t: update n uses the value of the
    batch of update n - 1, and update 0 the LR set at construction (the warmup start). `last_epoch` counts
    updates, `accum_iter` batches make one update.
    """

    def __init__(self, base_lr, warmup_start_lr, end_lr, warmup_steps, total_steps, accum_iter=1, last_epoch=-1):
        self.warmup_start_lr, self.end_lr = warmup_start_lr, end_lr
        self.accum_iter = accum_iter
        self.warmup_batches, self.total_batches = warmup_steps * accum_iter, total_steps * accum_iter
        super().__init__(learning_rate=base_lr, last_epoch=last_epoch)

    def get_lr(self):
        """The LR of update number `self.last_epoch`."""
        if self.last_epoch == 0:
            return self.warmup_start_lr if self.warmup_batches else self.base_lr
        batch = self.last_epoch * self.accum_iter - 1  # the batch of the previous update
        if batch < self.warmup_batches:
            return self.warmup_start_lr + batch * (self.base_lr - self.warmup_start_lr) / self.warmup_batches
        if batch >= self.total_batches:
            return self.end_lr
        return half_cosine(self.base_lr, self.end_lr, batch / self.total_batches)


def build_lr_scheduler(config, lrs, steps_per_epoch):
    """The per-update schedule TRAIN.LR_SCHEDULE for `lrs` (from `learning_rates`), placed after TRAIN.LAST_EPOCH
    epochs. `steps_per_epoch` counts optimizer updates (batches // ACCUM_ITER)."""
    train = config.TRAIN
    steps = {'warmup_steps': train.WARMUP_EPOCHS * steps_per_epoch, 'total_steps': train.NUM_EPOCHS * steps_per_epoch,
             'last_epoch': train.LAST_EPOCH * steps_per_epoch - 1}
    if train.LR_SCHEDULE == 'official':
        return OfficialCosineLR(lrs['base_lr'], lrs['warmup_start_lr'], lrs['end_lr'], accum_iter=train.ACCUM_ITER,
                                **steps)
    return WarmupCosineLR(lrs['base_lr'], lrs['warmup_start_lr'], lrs['end_lr'], **steps)


def no_decay_names(model):
    """Structured names (as in state_dict) of the parameters that must not be decayed: BN's and all biases."""
    names = set()
    for layer_name, layer in model.named_sublayers(include_self=True):
        for param_name, _ in layer.named_parameters(include_sublayers=False):
            if isinstance(layer, BATCH_NORMS) or param_name == 'bias':
                names.add(f'{layer_name}.{param_name}' if layer_name else param_name)
    return names


class GlobalNormClip(nn.ClipGradByGlobalNorm):
    """Paddle's ClipGradByGlobalNorm, with the norm from one pass of cpu_ops.global_norm and no multiply when the
    norm is within the bound, where Paddle's clip still multiplies every gradient by exactly 1: a step that is not
    clipped then reads each gradient once instead of twice, with no writes. Gradients that the kernel does not take
    go through Paddle's own clipping."""

    @paddle.no_grad()
    def _dygraph_clip(self, params_grads):
        clipped = [getattr(param, 'need_clip', True) and grad is not None for param, grad in params_grads]
        norm = cpu_ops.global_norm([grad for (_, grad), clip in zip(params_grads, clipped) if clip])
        if norm is None:
            return super()._dygraph_clip(params_grads)
        if norm <= self.clip_norm:
            return params_grads
        factor = self.clip_norm / norm
        return [(param, grad * factor if clip else grad) for (param, grad), clip in zip(params_grads, clipped)]


def build_optimizer(config, model, lr_scheduler):
    """AdamW on `model`'s trained parameters, decaying all but BN parameters and biases, with global-norm clipping.

    AdamW's `apply_decay_param_fun` is called with each parameter's internal name ('conv2d_3.w_0'), not its
    structured one ('stages.0.0.prebn1.weight'), so the structured choice is turned into internal names here.
    Parameter groups with weight_decay 0 would also work, but Paddle clips each group's norm separately.
    """
    train = config.TRAIN
    skipped = no_decay_names(model)
    decayed = {param.name for name, param in model.named_parameters() if name not in skipped}
    clip = GlobalNormClip(train.GRAD_CLIP) if train.GRAD_CLIP > 0 else None
    return paddle.optimizer.AdamW(
        learning_rate=lr_scheduler, parameters=utils.trained_parameters(model), beta1=train.OPTIMIZER.BETAS[0],
        beta2=train.OPTIMIZER.BETAS[1], epsilon=train.OPTIMIZER.EPS, weight_decay=train.WEIGHT_DECAY,
        apply_decay_param_fun=decayed.__contains__, grad_clip=clip)


def load_pretrained(config, model, logger):
    """Load MODEL.PRETRAINED strictly, or with MODEL.FINETUNE all but the classifier (logging what was left out)."""
    path = config.MODEL.PRETRAINED
    if not config.MODEL.FINETUNE:
        checkpoint.load_weights(model, path)
        return
    left_out = checkpoint.load_weights_except_head(model, path)
    logger.info(f'fine-tuning from {path}: loaded every weight but the classifier; left out '
                + '; '.join(f'{name} ({reason})' for name, reason in left_out))


def frozen_layers(model, num_stages):
    """The layers computing the first `num_stages` stages: the stem, those stages and the embeddings between them.

    Stage i is taken with the embedding into it (the stem for stage 0), so freezing k stages freezes everything
    up to the output of stage k - 1, and nothing after it; head_norm and head always train.
    """
    if num_stages == 0:
        return []
    layers = [model.conv_embedding]
    for i in range(num_stages):
        layers += ([model.embeds[i - 1]] if i > 0 else []) + [model.stages[i]]
    return layers


def freeze(layers):
    """Exclude the parameters of `layers` from training (stop_gradient) and put their BNs in eval mode."""
    for layer in layers:
        for param in layer.parameters():
            param.stop_gradient = True
    keep_in_eval_mode(layers)


def keep_in_eval_mode(layers):
    """Put `layers` and their sublayers back in eval mode after `model.train()`: frozen BNs keep their running
    statistics and normalise with them. The flag is set directly, since Layer.eval() also switches Paddle's
    global tracer to eval mode."""
    for layer in layers:
        for sublayer in [layer] + layer.sublayers():
            sublayer.training = False


def set_backbone_lr_scale(model, scale):
    """Give every trained parameter but the classifier's an LR of `scale` x the scheduled one.

    Paddle's optimizers multiply a parameter's optimize_attr['learning_rate'] with the scheduler's LR at every
    step (AdamW's decoupled weight decay too), so one schedule drives both LRs.
    """
    for name, param in model.named_parameters():
        if not param.stop_gradient and not name.startswith(checkpoint.CLASSIFIER_PREFIX):
            param.optimize_attr['learning_rate'] = scale


class ModelEma:
    """An exponential moving average of a model's weights and BN statistics, kept as a float32 copy in eval mode."""

    def __init__(self, config, model):
        self.decay = config.TRAIN.MODEL_EMA_DECAY
        self.model = build_repmlp(config)
        self.model.set_state_dict(model.state_dict())
        self.model.eval()
        for param in self.model.parameters():
            param.stop_gradient = True

    @paddle.no_grad()
    def update(self, model):
        """average <- decay * average + (1 - decay) * current, for every entry of the state dict."""
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            value = current[name].astype(average.dtype)
            average.set_value(average * self.decay + value * (1.0 - self.decay))


def amp_enabled(config):
    """Whether AMP is on: AMP asked for and the process runs on a GPU (Paddle's AMP does nothing on a CPU)."""
    return config.AMP and paddle.get_device().startswith('gpu')


def autocast(config):
    """The AMP context for forward passes (a no-op context when AMP is off)."""
    if not amp_enabled(config):
        return contextlib.nullcontext()
    return paddle.amp.auto_cast(level=config.AMP_LEVEL, dtype=config.AMP_DTYPE)


def build_criterion(config, mixup):
    """Soft-target cross entropy when Mixup/CutMix makes the targets (smoothing is in them), else label smoothing."""
    if mixup is not None:
        return soft_target_cross_entropy
    smoothing = config.AUG.SMOOTHING
    return lambda logits, labels: label_smoothing_cross_entropy(logits, labels, smoothing)


def seed_everything(*keys):
    """Seed Python, NumPy and Paddle from a tuple of integers (e.g. SEED, epoch, rank)."""
    seed = int(np.random.SeedSequence([int(key) for key in keys]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


# ------------------------------------------------------------------------------------------------- loops

@dataclasses.dataclass
class Trainer:
    """What a training step needs. `model` may be the DataParallel wrapper of `raw_model` (NCCL); with
    `average_gradients`, the step averages the gradients over the ranks itself (gloo, see `data_parallel`)."""
    config: object
    model: nn.Layer
    raw_model: nn.Layer
    optimizer: paddle.optimizer.Optimizer
    lr_scheduler: paddle.optimizer.lr.LRScheduler
    scaler: paddle.amp.GradScaler
    ema: ModelEma
    mixup: object
    criterion: object
    logger: object
    average_gradients: bool = False
    best_acc1: dict = dataclasses.field(default_factory=dict)  # 'val' and, with EMA, 'ema' -> best top-1
    frozen: list = dataclasses.field(default_factory=list)  # layers kept in eval mode (TRAIN.FREEZE_STAGES)


def train_one_epoch(trainer, loader, epoch):
    """One pass over `loader` with gradient accumulation; returns the mean loss over all ranks, LR and speed.

    Only whole accumulation groups are used (a tail of fewer than ACCUM_ITER batches is skipped), so every
    optimizer step sees the same number of images. Raises TrainingDiverged at the first non-finite loss.
    """
    config, logger = trainer.config, trainer.logger
    accum_iter = config.TRAIN.ACCUM_ITER
    num_batches = len(loader) // accum_iter * accum_iter
    trainer.model.train()
    keep_in_eval_mode(trainer.frozen)
    loss_meter, start, images_seen, skipped_steps = utils.AverageMeter(), time.time(), 0, 0
    logged = start
    for index, (images, labels) in enumerate(loader):
        if index == num_batches:
            break
        images = transforms.normalize(images, config)
        targets = labels
        if trainer.mixup is not None:
            images, targets = trainer.mixup(images, labels)
        is_update = (index + 1) % accum_iter == 0
        loss = _forward_backward(trainer, images, targets, is_update)
        if not math.isfinite(loss):
            raise _diverged(config, epoch, index, loss)
        if is_update:
            skipped_steps += _optimizer_step(trainer)
        loss_meter.update(loss, len(labels))
        images_seen += len(labels)
        every_rank_reports = (index + 1) % config.REPORT_FREQ == 0 or index + 1 == num_batches
        if every_rank_reports or time.time() - logged > PROGRESS_SECONDS:
            logged = time.time()
            _log_progress(logger, f'Epoch {epoch + 1}/{config.TRAIN.NUM_EPOCHS}', index + 1, num_batches,
                          images_seen, start, f'{_progress_loss(loss_meter, every_rank_reports)} '
                                              f'lr {trainer.optimizer.get_lr():.3e}')
    steps = (epoch, skipped_steps, num_batches // accum_iter)
    return _epoch_stats(trainer, loss_meter, images_seen, time.time() - start, steps)


def _diverged(config, epoch, index, loss):
    """The TrainingDiverged error for a non-finite `loss` at batch `index`, naming the checkpoint to go back to."""
    found = checkpoint.newest_checkpoint(config.SAVE)
    last_good = f'the last good checkpoint is {found}' if found else f'no checkpoint yet in {config.SAVE}'
    return TrainingDiverged(f'epoch {epoch + 1}, batch {index + 1}: the loss is {loss}; stopped before the update, '
                            f'{last_good}. Lower TRAIN.BASE_LR or set TRAIN.GRAD_CLIP')


def _progress_loss(loss_meter, every_rank_reports):
    """The loss of a progress line: the mean over all ranks at the steps where every rank reports (a collective);
    on a line due to PROGRESS_SECONDS alone, this rank's mean: the ranks' clocks differ, so a collective there
    could meet another rank's gradient all-reduce instead of its own."""
    if every_rank_reports:
        return f'loss {loss_meter.global_avg():.4f}'
    rank = f' (rank {utils.get_rank()})' if utils.get_world_size() > 1 else ''
    return f'loss {loss_meter.local_avg():.4f}{rank}'


def _epoch_stats(trainer, loss_meter, images_seen, elapsed, steps):
    """The epoch's metrics dict (loss over all ranks, LR, speed; the AMP steps skipped), logging skipped steps;
    `steps` is (epoch, optimizer steps the GradScaler skipped, optimizer steps)."""
    epoch, skipped_steps, num_steps = steps
    stats = {'train_loss': loss_meter.global_avg(), 'lr': trainer.optimizer.get_lr(),
             'train_images_per_sec': images_seen * utils.get_world_size() / elapsed, 'train_time': elapsed}
    if trainer.scaler.is_enable():
        # the gradients are all-reduced before the scaler looks at them, so every rank skips the same steps
        stats['amp_skipped_steps'] = skipped_steps
        if skipped_steps:
            trainer.logger.info(f'Epoch {epoch + 1}: the float16 GradScaler skipped {skipped_steps} of {num_steps} '
                                'optimizer steps (inf/NaN gradients; the loss scale was lowered)')
    return stats


def _forward_backward(trainer, images, targets, is_update):
    """Forward and backward one batch (its loss divided by ACCUM_ITER); returns the undivided loss as a float.

    Between updates, DataParallel's gradient all-reduce is skipped (no_sync): the summed gradients are
    reduced once, at the batch that completes the group.
    """
    sync = contextlib.nullcontext()
    if not is_update and isinstance(trainer.model, paddle.DataParallel):
        sync = trainer.model.no_sync()
    with sync:
        with autocast(trainer.config):
            logits = trainer.model(images)
        loss = trainer.criterion(logits, targets)
        value = float(loss)
        if math.isfinite(value):
            trainer.scaler.scale(loss / trainer.config.TRAIN.ACCUM_ITER).backward()
    return value


def _optimizer_step(trainer):
    """Average the gradients over the ranks (gloo), unscale, clip and apply them, then advance the LR schedule and
    the EMA.

    Returns True when the float16 GradScaler skipped the update because a gradient was inf or NaN (normal now and
    then while the loss scale adapts; counted per epoch, not fatal).
    """
    if trainer.average_gradients:
        utils.average_gradients(utils.trained_parameters(trainer.raw_model))
    trainer.scaler.step(trainer.optimizer)
    skipped = trainer.scaler.is_enable() and bool(getattr(trainer.scaler, '_cache_found_inf', False))
    trainer.scaler.update()
    # release the gradients rather than zero-fill them: the next backward writes new ones, a fill would be a pass
    # over every gradient for nothing
    trainer.optimizer.clear_grad(set_to_zero=False)
    trainer.lr_scheduler.step()
    if trainer.ema is not None:
        trainer.ema.update(trainer.raw_model)
    return skipped


def _log_progress(logger, title, done, total, images_seen, start, details):
    """One progress line: position, this rank's images/s times the world size, ETA, and `details`."""
    elapsed = time.time() - start
    speed = images_seen * utils.get_world_size() / max(elapsed, 1e-9)
    eta = datetime.timedelta(seconds=int(elapsed / done * (total - done)))
    logger.info(f'{title} [{done}/{total}] {details} {speed:.1f} img/s eta {eta}')


@paddle.no_grad()
def validate(model, loader, config, logger):
    """Top-1, top-5 (fractions) and mean cross entropy over every image of `loader` on every rank, exactly once.

    Each rank counts its own images; the counts and loss sums are added over ranks once, at the end, so
    ranks with different numbers of batches never wait for each other. Returns acc1, acc5, loss,
    num_images and images_per_sec.
    """
    model.eval()
    correct1 = correct5 = loss_sum = 0.0
    count, start = 0, time.time()
    logged = start
    for index, (images, labels) in enumerate(loader):
        images = transforms.normalize(images, config)
        with autocast(config):
            logits = model(images)
        logits = logits.astype('float32')
        labels = labels.reshape([-1, 1]).astype('int64')
        # summed in float64 per image, so that the total does not depend on how images are split into batches
        loss_sum = loss_sum + F.cross_entropy(logits, labels, reduction='none').astype('float64').sum()
        top = paddle.topk(logits, k=min(5, logits.shape[1]), axis=1)[1]
        hits = (top == labels).astype('float64')
        correct1 = correct1 + hits[:, 0].sum()
        correct5 = correct5 + hits.sum(axis=1).sum()
        count += len(labels)
        if (index + 1) % config.REPORT_FREQ == 0 or time.time() - logged > PROGRESS_SECONDS:
            logged = time.time()
            _log_progress(logger, 'Eval (this rank)', index + 1, len(loader), count, start,
                          f'acc1 {float(correct1) / count:.4f}')
    totals = utils.all_reduce_sum([float(correct1), float(correct5), float(loss_sum), count])
    elapsed = time.time() - start
    num_images = int(round(totals[3]))
    if num_images == 0:
        raise UserError(f'the validation set of {config.DATA.DATASET} at {config.DATA.DATA_PATH!r} has no images')
    return {'acc1': totals[0] / num_images, 'acc5': totals[1] / num_images, 'loss': totals[2] / num_images,
            'num_images': num_images, 'images_per_sec': num_images / elapsed}


# -------------------------------------------------------------------------------------------------- runs

def run(config):
    """Evaluate (EVAL) or train as `config` says, in this process; returns the final metrics dict."""
    paddle.set_device('gpu' if paddle.device.cuda.device_count() > 0 else 'cpu')
    cpu_ops.kernels_switched_on()  # a bad REPMLP_CPU_KERNELS is refused here, before anything is written
    check_configs_agree(config)
    utils.on_main_process(lambda: refuse_to_overwrite(config))  # before anything is written into SAVE
    logger = utils.setup_logger(config.SAVE)
    amp = 'on' if amp_enabled(config) else 'off (Paddle has no AMP on a CPU)' if config.AMP else 'off'
    logger.info(f'rank {utils.get_rank()} of {utils.get_world_size()} (pid {os.getpid()}) on {paddle.get_device()}, '
                f'AMP {amp}; resolved config in {os.path.join(config.SAVE, "config.yaml")}')
    try:
        return run_evaluation(config, logger) if config.EVAL else run_training(config, logger)
    except runtime.StopRequested as stop:
        if not config.EVAL:
            stop.message += f'; {how_to_continue(config)}'
        logger.info(stop.message)
        raise


def how_to_continue(config):
    """Where the last checkpoint is and the command that continues from it (this one with -resume auto)."""
    found = checkpoint.newest_checkpoint(config.SAVE)
    last = f'the last checkpoint is {found}' if found else f'no checkpoint in {config.SAVE} yet'
    words = list(sys.argv)
    if '-resume' not in words:
        at = words.index('-opts') if '-opts' in words else len(words)
        words[at:at] = ['-resume', 'auto']
    return f'{last}; continue with: python {shlex.join(words)}'


# Keys that may differ between the nodes of one job: where each node keeps its files and how many loader workers
# it runs; the weights and checkpoints that MODEL.PRETRAINED and MODEL.RESUME name are read on rank 0 only.
NODE_LOCAL_KEYS = ('SAVE', 'DATA.DATA_PATH', 'DATA.NUM_WORKERS', 'MODEL.PRETRAINED', 'MODEL.RESUME')


def check_configs_agree(config):
    """RanksDisagree on every rank when a rank's resolved config differs from rank 0's outside NODE_LOCAL_KEYS
    (e.g. another -opts typed on one node)."""
    values = {key: value for key, value in flatten(config).items() if key not in NODE_LOCAL_KEYS}
    per_rank = utils.gather_objects(values)
    for rank, other in enumerate(per_rank[1:], start=1):
        differing = sorted(key for key in values if other.get(key) != per_rank[0].get(key))
        if differing:
            key = differing[0]
            raise utils.RanksDisagree(f'rank {rank} runs another config than rank 0: {key} is {other[key]!r} there '
                                      f'and {per_rank[0][key]!r} on rank 0 ({len(differing)} key(s) differ); '
                                      'give every node the same command')


def flatten(node, separator='.', prefix=''):
    """Every leaf of nested dicts under its joined key: {'DATA.BATCH_SIZE': 32, ...} for a yacs config; checkpoints,
    whose parameter names hold dots, are flattened with another separator."""
    flat = {}
    for name, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, separator, f'{prefix}{name}{separator}'))
        else:
            flat[f'{prefix}{name}'] = value
    return flat


def warn_on_class_count(config, logger):
    """Log a warning when the dataset's classes.txt names another number of classes than MODEL.NUM_CLASSES.

    Labels below NUM_CLASSES load fine either way, so forgetting `-opts MODEL.NUM_CLASSES K` when fine-tuning would
    otherwise go unnoticed (a 1000-way classifier trained on K classes).
    """
    names = datasets.read_class_names(datasets.resolve_data_path(config))
    if names is not None and len(names) != config.MODEL.NUM_CLASSES:
        logger.warning(f'the dataset\'s classes.txt names {len(names)} classes but MODEL.NUM_CLASSES is '
                       f'{config.MODEL.NUM_CLASSES}; to train a classifier for exactly these classes, add '
                       f'-opts MODEL.NUM_CLASSES {len(names)}')


def build_loader(config, is_train):
    """The train or validation DataLoader, split over the ranks when there are several."""
    dataset = datasets.get_dataset(config, is_train)
    return datasets.get_dataloader(config, dataset, is_train, distributed=utils.get_world_size() > 1)


def save_resolved_config(config):
    """Rank 0 writes the run's resolved config as SAVE/config.yaml."""
    if utils.is_main_process():
        checkpoint.write_text_atomically(os.path.join(config.SAVE, 'config.yaml'), config.dump())


def run_evaluation(config, logger):
    """Evaluate MODEL.PRETRAINED; rank 0 writes SAVE/metrics.json. Returns the metrics."""
    save_resolved_config(config)
    seed_everything(config.SEED)
    model = build_repmlp(config)
    checkpoint.load_weights(model, config.MODEL.PRETRAINED)
    metrics = validate(model, build_loader(config, is_train=False), config, logger)
    if utils.is_main_process():
        checkpoint.write_json(metrics, os.path.join(config.SAVE, 'metrics.json'))
    logger.info(f'{config.MODEL.PRETRAINED}: acc1 {metrics["acc1"]:.5f} acc5 {metrics["acc5"]:.5f} '
                f'loss {metrics["loss"]:.5f} on {metrics["num_images"]} images, {metrics["images_per_sec"]:.1f} img/s')
    return metrics


def build_trainer(config, logger, steps_per_epoch):
    """Model (from PRETRAINED if given), EMA, LR schedule, optimizer, scaler, AMP O2 casting, DataParallel."""
    world_size = utils.get_world_size()
    seed_everything(config.SEED)  # the same initial weights on every rank
    model = build_repmlp(config)
    if config.MODEL.PRETRAINED:
        load_pretrained(config, model, logger)
    frozen = frozen_layers(model, config.TRAIN.FREEZE_STAGES)
    freeze(frozen)
    set_backbone_lr_scale(model, config.TRAIN.BACKBONE_LR_SCALE)
    if frozen or config.TRAIN.BACKBONE_LR_SCALE != 1.0:
        what = f'the stem and {config.TRAIN.FREEZE_STAGES} stage(s)' if frozen else 'nothing'
        logger.info(f'fine-tuning: {what} frozen, '
                    f'{sum(p.size for p in utils.trained_parameters(model))} parameters trained, '
                    f'backbone LR x {config.TRAIN.BACKBONE_LR_SCALE:g}')
    ema = ModelEma(config, model) if config.TRAIN.MODEL_EMA else None
    lrs = learning_rates(config, world_size)
    logger.info('derived: ' + ', '.join(f'{key} {value:g}' for key, value in lrs.items())
                + f', {steps_per_epoch} optimizer steps per epoch')
    lr_scheduler = build_lr_scheduler(config, lrs, steps_per_epoch)
    optimizer = build_optimizer(config, model, lr_scheduler)
    use_scaler = amp_enabled(config) and config.AMP_DTYPE == 'float16'
    scaler = paddle.amp.GradScaler(enable=use_scaler, init_loss_scaling=LOSS_SCALE)
    if amp_enabled(config) and config.AMP_LEVEL == 'O2':
        model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level='O2',
                                               dtype=config.AMP_DTYPE, save_dtype='float32')
    mixup = transforms.build_mixup(config)
    wrap = data_parallel(world_size)
    return Trainer(config=config, model=paddle.DataParallel(model) if wrap else model, raw_model=model,
                   optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler, ema=ema, mixup=mixup,
                   criterion=build_criterion(config, mixup), logger=logger, frozen=frozen,
                   average_gradients=world_size > 1 and not wrap)


def data_parallel(world_size):
    """Whether the ranks average their gradients through paddle.DataParallel: on GPUs (NCCL), where it overlaps the
    all-reduce with the backward pass. Over gloo (CPU processes) the step averages them itself, in one collective on
    the main thread: gloo's error for a lost rank inside DataParallel's backward hooks aborts the process with a C++
    dump, while on the main thread it is a Python error that names the rank (utils.report_lost_ranks)."""
    return world_size > 1 and paddle.distributed.get_backend() != 'GLOO'


# What shapes the LR schedule: resuming with other values changes the LR of every step from here on.
SCHEDULE_KEYS = ('TRAIN.NUM_EPOCHS', 'TRAIN.WARMUP_EPOCHS', 'TRAIN.LR_SCHEDULE', 'TRAIN.BASE_LR',
                 'TRAIN.WARMUP_START_LR', 'TRAIN.END_LR', 'TRAIN.LR_REFERENCE_BATCH', 'DATA.BATCH_SIZE',
                 'TRAIN.ACCUM_ITER')


def check_schedule_unchanged(config, checkpoint_config, path):
    """ConfigError listing the SCHEDULE_KEYS whose values differ from those `path` was trained with, unless
    MODEL.NEW_SCHEDULE (-new_schedule) says that the change is meant."""
    if config.MODEL.NEW_SCHEDULE or not checkpoint_config:
        return
    old = flatten(yaml.safe_load(checkpoint_config))
    new = flatten(config)
    changed = [f'{key} {old[key]} -> {new[key]}' for key in SCHEDULE_KEYS if key in old and old[key] != new[key]]
    if changed:
        raise ConfigError(f'-resume {path}: the schedule differs from the checkpoint\'s ({", ".join(changed)}); '
                          'resume with the same values, or add -new_schedule if the change is meant')


def restore(trainer, path):
    """Load a training checkpoint into `trainer` (including its best accuracies); returns the epochs done.

    Only rank 0 reads the file; every rank gets its content (nodes need not share a filesystem)."""
    def read_and_check():
        state = checkpoint.load_checkpoint(path)
        check_schedule_unchanged(trainer.config, state['config'], path)
        if trainer.config.TRAIN.LAST_EPOCH not in (0, state['epoch']):
            raise ConfigError(f'-last_epoch {trainer.config.TRAIN.LAST_EPOCH} contradicts {path}, which is after '
                              f'epoch {state["epoch"]}; drop -last_epoch when resuming')
        if (state['ema'] is None) != (trainer.ema is None):
            raise ConfigError(f'{path} was trained with TRAIN.MODEL_EMA {state["ema"] is not None}; use the same '
                              'setting')
        return state

    state = utils.on_main_process(read_and_check)
    checkpoint.set_state_strictly(trainer.raw_model, state['model'], path)
    trainer.optimizer.set_state_dict(state['optimizer'])
    trainer.lr_scheduler.set_state_dict(state['lr_scheduler'])
    if state['scaler']:
        trainer.scaler.load_state_dict(state['scaler'])
    if trainer.ema is not None:
        trainer.ema.model.set_state_dict(state['ema'])
    trainer.best_acc1.update(state['best_acc1'])
    return state['epoch']


def refuse_to_overwrite(config):
    """ConfigError when a new training run (no MODEL.RESUME) would write into an SAVE that holds another run's
    checkpoints: its checkpoint-0001 would be pruned at once by the old run's higher epochs (KEEP_LAST), and a
    later -resume auto would continue the old run."""
    found = checkpoint.newest_checkpoint(config.SAVE)
    if found and not config.MODEL.RESUME and not config.EVAL:
        raise ConfigError(f'{config.SAVE} already holds the checkpoints of a run (up to '
                          f'{os.path.basename(found)}): continue it with -resume auto, or give another -output')


def write_checkpoint(trainer, epochs_done):
    """Rank 0 writes the training checkpoint after `epochs_done` epochs (and deletes the older surplus)."""
    config = trainer.config
    path = checkpoint.save_checkpoint(
        config.SAVE, config.KEEP_LAST, model=trainer.raw_model.state_dict(), optimizer=trainer.optimizer.state_dict(),
        lr_scheduler=trainer.lr_scheduler.state_dict(), scaler=trainer.scaler.state_dict(),
        ema=trainer.ema.model.state_dict() if trainer.ema is not None else None, epoch=epochs_done,
        best_acc1=dict(trainer.best_acc1), config=config.dump())
    trainer.logger.info(f'saved {path}')


def run_training(config, logger):
    """Train from scratch, PRETRAINED weights or a RESUME checkpoint to TRAIN.NUM_EPOCHS; returns the last stats."""
    train_loader = build_loader(config, is_train=True)
    val_loader = build_loader(config, is_train=False)
    warn_on_class_count(config, logger)
    steps_per_epoch = len(train_loader) // config.TRAIN.ACCUM_ITER
    if steps_per_epoch == 0:
        raise ConfigError(f'the training set gives {len(train_loader)} batches per process, fewer than '
                          f'TRAIN.ACCUM_ITER={config.TRAIN.ACCUM_ITER}: lower -batch_size or -accum_iter')
    trainer = build_trainer(config, logger, steps_per_epoch)
    start_epoch = config.TRAIN.LAST_EPOCH
    resume = checkpoint.checkpoint_to_resume(config)
    if resume:
        start_epoch = restore(trainer, resume)
        logger.info(f'resumed from {resume} after epoch {start_epoch}')
        if utils.is_main_process():
            checkpoint.drop_epochs_after(os.path.join(config.SAVE, 'log.jsonl'), start_epoch)
    elif config.MODEL.RESUME:
        logger.info(f'-resume auto: no checkpoint in {config.SAVE}, starting at epoch {start_epoch + 1}')
    save_resolved_config(config)  # after the checks: a refused run leaves the folder's config.yaml as it was
    utils.check_parameters_agree(trainer.raw_model, f'before epoch {start_epoch + 1}')
    stats = {}
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.TRAIN.NUM_EPOCHS):
            stats = train_and_validate_epoch(trainer, train_loader, val_loader, epoch)
    except runtime.StopRequested as stop:
        stop.message += f' in epoch {epoch + 1}/{config.TRAIN.NUM_EPOCHS}'
        raise
    if stats and utils.is_main_process():
        curves = os.path.join(config.SAVE, 'curves.png')
        charts.plot_training_curves(os.path.join(config.SAVE, 'log.jsonl'), curves)
        logger.info(f'finished {stats["epoch"]} epochs: val top-1 {stats["val_acc1"]:.4f}, top-5 {stats["val_acc5"]:.4f} '
                    f'on {stats["val_num_images"]} images (best top-1 {stats["best_val_acc1"]:.4f}); '
                    f'weights {os.path.join(config.SAVE, "best.pdparams")}, curves {curves}')
    return stats


def train_and_validate_epoch(trainer, train_loader, val_loader, epoch):
    """Train one epoch, sync BN statistics, validate and save as configured; log and return one stats dict."""
    config, logger = trainer.config, trainer.logger
    seed_everything(config.SEED, epoch, utils.get_rank())
    train_loader.batch_sampler.set_epoch(epoch)
    train_loader.dataset.reset_bad_image_count()
    stats = {'epoch': epoch + 1, **train_one_epoch(trainer, train_loader, epoch)}
    stats['skipped_images'] = int(utils.all_reduce_sum([train_loader.dataset.bad_image_count()])[0])
    utils.broadcast_running_statistics(trainer.raw_model)
    if trainer.ema is not None:
        utils.broadcast_running_statistics(trainer.ema.model)
    done = epoch + 1
    utils.check_parameters_agree(trainer.raw_model, f'after epoch {done}')
    last = done == config.TRAIN.NUM_EPOCHS
    if done % config.VALIDATE_FREQ == 0 or last:
        stats.update(_validate_and_keep_best(trainer, trainer.raw_model, val_loader, 'val'))
        if trainer.ema is not None:
            stats.update(_validate_and_keep_best(trainer, trainer.ema.model, val_loader, 'ema'))
    stats.update({f'best_{prefix}_acc1': value for prefix, value in trainer.best_acc1.items()})
    logger.info(f'epoch {done}: ' + ' '.join(f'{key} {value:.5g}' for key, value in stats.items() if key != 'epoch'))
    if utils.is_main_process():
        # logged before the checkpoint: a resumed run drops the lines after its checkpoint and writes them again
        checkpoint.write_json(stats, os.path.join(config.SAVE, 'log.jsonl'), append=True)
    if (done % config.SAVE_FREQ == 0 or last) and utils.is_main_process():
        write_checkpoint(trainer, done)
    return stats


def _validate_and_keep_best(trainer, model, loader, prefix):
    """Validate `model` (the trained one for prefix 'val', the EMA for 'ema'); when its acc1 is a new best, rank 0
    saves its weights as best.pdparams or best_ema.pdparams. Returns the metrics with keys `prefix`_*.
    """
    config = trainer.config
    metrics = validate(model, loader, config, trainer.logger)
    if metrics['acc1'] > trainer.best_acc1.get(prefix, -1.0):
        trainer.best_acc1[prefix] = metrics['acc1']
        if utils.is_main_process():
            name = 'best.pdparams' if prefix == 'val' else f'best_{prefix}.pdparams'
            checkpoint.save_atomically(model.state_dict(), os.path.join(config.SAVE, name))
    return {f'{prefix}_{key}': value for key, value in metrics.items()}
