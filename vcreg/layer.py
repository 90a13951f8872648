"""The fast VCReg layer: identity forward (or Appendix A's mean removal), regulariser gradient added in backward
(Algorithm 1, Appendix B).

Features are rows of ``d`` channels: a ``[N, C, H, W]`` map gives ``n = N*H*W`` rows of ``d = C`` channels
(every spatial location is a sample, Section 3.2) and a ``[N, L, C]`` token sequence gives ``n = N*L`` rows.
With ``X`` the rows centred over the samples and ``C = X^T X / (n - 1)``, backward returns

    grad_output + s * ( -a / (d (n - 1)) * X * w  +  b * 4 / (d (d - 1)) * X offdiag(C) ),

where ``w_i = rsqrt(C_ii + eps)`` if that exceeds 1 and 0 otherwise (Algorithm 1's ``F.threshold``) and
``s`` is the fp16 loss scale (1 without one). With ``a = alpha`` the first term is ``alpha * grad(l_var)``
(eq. 3); the second is ``b (n - 1) * grad(l_cov)`` (eq. 4). With ``delta`` set, the covariance penalty is
the smooth-L1 of eq. 7, whose gradient clamps ``offdiag(C)`` to ``[-delta, delta]``.

How the strength depends on the batch. Let ``n`` be the rows of one micro-batch on one device, ``K`` the
gradient-accumulation micro-batches of an optimiser step and ``W`` the data-parallel processes. The trainer
back-propagates ``loss / K`` and DDP averages the gradients over ``W``, so a mean-type loss (cross-entropy,
``l_var``) pulls equally hard at any ``n``, ``K`` and ``W``. The layer takes ``K`` and ``W`` from the
``common.backward_scale.BackwardScale`` the trainer attaches (none attached: ``K = W = 1``, scale 1):

- ``normalization="algorithm1"`` (default, the paper's scaling, the one its alpha and beta were tuned in):
  ``a = alpha / K`` and ``b = beta``. The variance term is the gradient of ``alpha * l_var`` averaged over
  the micro-batches like the task loss, so alpha means the same at any ``n``, ``K`` and ``W``. The
  covariance term is Algorithm 1's, which leaves out the ``1/(n - 1)`` of ``dC/dX``: each row's gradient
  is of order one, so the term is a sum over rows. The K micro-batches' rows add up to the ``K n`` rows one
  device sees per optimiser step (images per device per step times locations), DDP averages the devices'
  sums, and the strength is ``beta`` times those rows: it does not depend on ``W``, but the same beta is
  twice as strong at twice the per-device batch (or twice the resolution of a feature map); to keep a
  tuned strength at another per-device batch, scale beta by the ratio of the per-device rows.
- ``normalization="batch_mean"``: ``a = alpha / K`` and ``b = beta / (K (n - 1))``: both terms are the
  gradient of eq. 2's ``alpha l_var + beta l_cov`` of each micro-batch, averaged over the micro-batches and
  the devices like the task loss, so alpha and beta mean the same at any per-device batch, accumulation and
  world size (the statistics themselves, estimated from ``n`` rows, still get less noisy as ``n`` grows).
  Algorithm 1's beta at ``n`` rows per micro-batch equals batch_mean's ``beta * K (n - 1)``.

In both, K micro-batches give one batch's update up to the micro-batch statistics: each micro-batch's
rows get their gradient from that micro-batch's mean and covariance.

Statistics are per device by default: every process regularises the covariance of its own micro-batch
and DDP averages the per-device gradients. ``all_reduce=True`` sums the mean and covariance over the
processes, so ``C`` (and ``n``) are those of the global micro-batch; it changes only the statistics, never
the strength: the mean-type terms (every ``a`` term, and batch_mean's covariance term) are then the
gradient of the global batch's loss and are multiplied by ``W``, because DDP divides the summed gradients
by ``W`` and a loss of the global batch must not be divided; Algorithm 1's covariance term stays a sum over
each device's rows, as without ``all_reduce``.

Two readings of the paper, and what each computes (on one micro-batch of one process, ``K = W = 1``):
``algorithm1`` is Algorithm 1 as printed, the gradient of ``alpha l_var + beta (n - 1) l_cov`` (its
covariance pull is ``n - 1`` times eq. 4's); ``batch_mean`` is eqs. 3-4 as written (``C = X^T X / (n - 1)``),
the gradient of ``alpha l_var + beta l_cov``. There is no third meaning: with accumulation and several
processes ``batch_mean`` stays the gradient of eqs. 3-4 averaged like the task loss, as said above.

Mean removal (Appendix A: "a mean removal layer along the batch preceding the VCReg layer"). The
regulariser always sees centred rows: centring happens inside backward, and the gradient of the
regulariser of centred features has zero mean over the samples, so it is also its gradient with respect
to the uncentred input. ``mean_removal=False`` keeps the forward an exact identity. ``mean_removal=True``
also centres the forward pass, as the paper's layer does: in training the output is the input minus its
mean over the samples of the micro-batch (of the global micro-batch with ``all_reduce``, whose backward then
sums the centring's gradient over the processes, as SyncBatchNorm does), so the next block and, in a
ResNet, the shortcut receive batch-centred features, and the task loss's gradient flows through the
centring. In eval mode the output is the input minus a running mean kept as BatchNorm keeps its
``running_mean`` (momentum 0.1, updated by every training forward): the network then evaluates one image
at a time the way it was trained, on features centred by the training population's mean, where subtracting
nothing would hand every later layer inputs shifted by that mean, which it never saw in training.

Mixed precision: statistics are computed in at least float32 whatever the input dtype. Under fp16 with a
gradient scaler, ``grad_output`` arrives multiplied by the loss scale ``s``, so the added gradient is too:
the layer reads the current scale from its ``backward_scale`` on the device, without a host sync. A layer
with no ``backward_scale`` refuses fp16 autocast, where it cannot know the scale. bf16 needs no scaler.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from common import distributed
from common.backward_scale import BackwardScale

NORMALIZATIONS = ("algorithm1", "batch_mean")
RUNNING_MEAN_MOMENTUM = 0.1  # BatchNorm's default: the mean-removal layer keeps its running mean the same way


def channels_last_view(x: Tensor) -> Tensor:
    """``[N, C, H, W]`` -> ``[N, H, W, C]``; token ``[N, L, C]`` and vector ``[N, C]`` inputs are returned as is."""
    return x.movedim(1, -1) if x.dim() == 4 else x


def statistics_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision features (their squared sums overflow fp16), else the input's dtype."""
    return torch.promote_types(x.dtype, torch.float32)


def _centred(features: Tensor, sample_dims: tuple[int, ...], all_reduce: bool) -> tuple[Tensor, int, bool]:
    """``features`` minus its mean over ``sample_dims`` (over all ranks with ``all_reduce``), the number of
    rows the statistics cover, and whether they were summed over ranks."""
    d = features.shape[1]
    n_local = features.numel() // d
    if all_reduce and distributed.is_distributed():
        stats = torch.cat([features.sum(sample_dims), features.new_tensor([n_local])])
        dist.all_reduce(stats)
        n = int(stats[-1].item())
        shape = [d if i == 1 else 1 for i in range(features.dim())]
        return features - (stats[:-1] / n).view(shape), n, True
    return features - features.mean(sample_dims, keepdim=True), n_local, False


def _channel_shape(x: Tensor) -> list[int]:
    """The shape that broadcasts a per-channel ``[C]`` vector over ``x`` (channels at dim 1 of a map, else last)."""
    channel_dim = 1 if x.dim() == 4 else x.dim() - 1
    return [x.shape[i] if i == channel_dim else 1 for i in range(x.dim())]


class GlobalMean(torch.autograd.Function):
    """The per-channel mean over every process's samples; backward sums the incoming gradient over the
    processes, because every process's loss depends on every sample through that mean (as in SyncBatchNorm)."""

    @staticmethod
    def forward(ctx, x: Tensor, sample_dims: tuple[int, ...]) -> Tensor:
        d = x.shape[1] if x.dim() == 4 else x.shape[-1]
        sums = x.to(statistics_dtype(x)).sum(sample_dims).flatten()  # float32 at least, as the statistics
        stats = torch.cat([sums, sums.new_tensor([x.numel() // d])])
        dist.all_reduce(stats)
        ctx.n, ctx.input_shape = stats[-1], x.shape
        return (stats[:-1] / stats[-1]).view(_channel_shape(x)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_mean: Tensor):
        summed = grad_mean.to(ctx.n.dtype).contiguous()
        dist.all_reduce(summed)
        return (summed / ctx.n).to(grad_mean.dtype).expand(ctx.input_shape), None


class VCRegFunction(torch.autograd.Function):
    """Identity whose backward adds Algorithm 1's variance-covariance gradient (see the module docstring).

    The rows are never materialised in a new layout: a contiguous ``[N, C, H, W]`` map is read as
    ``[N, C, H*W]`` (covariance ``sum_N X X^T``, added gradient ``M^T X`` fused with the add of
    ``grad_output``), and a channels-last map, a ``[N, L, C]`` sequence or ``[N, C]`` vectors as ``[n, C]`` rows.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float, beta: float, eps: float, delta: float | None,
                all_reduce: bool, normalization: str, scale: BackwardScale | None) -> Tensor:
        ctx.save_for_backward(x)
        ctx.hyper = (alpha, beta, eps, delta, all_reduce, normalization, scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (x,) = ctx.saved_tensors
        alpha, beta, eps, delta, all_reduce, normalization, scale = ctx.hyper
        channel_first = x.dim() == 4 and x.is_contiguous()
        dtype = statistics_dtype(x)
        if channel_first:
            features, sample_dims = x.flatten(2).to(dtype), (0, 2)                  # [N, C, H*W]
        else:
            rows = channels_last_view(x)                                            # a view when channels last
            features, sample_dims = rows.reshape(-1, rows.shape[-1]).to(dtype), (0,)  # [n, C]
        centred, n, reduced = _centred(features, sample_dims, all_reduce)
        d = centred.shape[1]
        if n < 2 or d < 2:
            raise ValueError(f"VCReg needs at least 2 samples and 2 channels, got n={n}, d={d}")
        gram = (centred @ centred.mT).sum(0) if channel_first else centred.T @ centred
        cov = gram / (n - 1)
        if reduced:
            dist.all_reduce(cov)  # local sums over (n_global - 1) add up to the global covariance
        scale = scale or BackwardScale()
        # a mean-type loss's gradient: divided by K like the task loss, and by nothing over the ranks
        # (DDP averages), unless it is the global batch's loss, which DDP's average must not divide
        mean_type = (scale.world_size if reduced else 1) / scale.accumulation_steps
        variance_weight = torch.rsqrt(cov.diagonal() + eps)
        variance_weight = torch.where(variance_weight > 1.0, variance_weight, torch.zeros_like(variance_weight))
        off_diagonal = cov if delta is None else cov.clamp(-delta, delta)
        covariance_factor = 1.0 if normalization == "algorithm1" else mean_type / (n - 1)
        # One (d, d) matrix carries both terms, so the added gradient costs a single n x d x d product.
        mixing = off_diagonal * (4.0 * beta * covariance_factor / (d * (d - 1)))
        mixing.diagonal().copy_(variance_weight * (-alpha * mean_type / (d * (n - 1))))
        mixing = mixing * scale.loss_scale()
        if channel_first:  # grad[k] + M^T X[k] for every image k, one fused kernel when the dtypes agree
            grad = grad_output.flatten(2)
            if grad.dtype == dtype:
                grad_input = torch.baddbmm(grad, mixing.T.expand(x.shape[0], d, d), centred)
            else:
                grad_input = grad + (mixing.T @ centred).to(grad.dtype)
            grad_input = grad_input.view_as(grad_output)
        else:
            grad_rows = channels_last_view(grad_output)
            grad_input = grad_rows + (centred @ mixing).view(grad_rows.shape).to(grad_output.dtype)
            if x.dim() == 4:
                grad_input = grad_input.movedim(-1, 1)
        return grad_input, None, None, None, None, None, None, None


class VCReg(nn.Module):
    """Variance-covariance regularisation layer: forward is the identity (or Appendix A's mean removal),
    backward adds the gradient.

    Args:
        alpha: weight of the variance hinge (eq. 3).
        beta: weight of the covariance penalty, in the scaling ``normalization`` names (module docstring).
        eps: added to the variances before the square root.
        delta: smooth-L1 threshold of eq. 7 for the covariance penalty; ``None`` is the squared penalty.
        all_reduce: compute the statistics (and the mean removal's mean) over all ranks instead of per rank.
        normalization: ``"algorithm1"`` (Algorithm 1 as printed: beta's strength grows with the rows per
            device) or ``"batch_mean"`` (eqs. 3-4 as written: alpha and beta mean the same at any batch,
            accumulation and world size).
        mean_removal: centre the forward pass over the samples (Appendix A), with a running mean in eval mode.

    ``backward_scale`` is the trainer's ``BackwardScale`` (loss scale, accumulation steps, world size),
    set by ``common.backward_scale.attach_backward_scale``; ``None`` means scale 1, one step, one process.
    With ``mean_removal`` the layer holds a ``running_mean`` buffer, empty until the first training forward
    gives it the channel count (a state dict's own size is taken on loading); an empty one subtracts nothing.
    """

    def __init__(self, alpha: float, beta: float, eps: float = 1e-5, delta: float | None = None,
                 all_reduce: bool = False, normalization: str = "algorithm1", mean_removal: bool = False) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"VCReg alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if delta is not None and delta <= 0:
            raise ValueError(f"VCReg delta must be > 0 or None, got {delta}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"VCReg normalization must be one of {', '.join(NORMALIZATIONS)}, "
                             f"not {normalization!r}")
        self.alpha, self.beta, self.eps, self.delta, self.all_reduce = alpha, beta, eps, delta, all_reduce
        self.normalization, self.mean_removal = normalization, mean_removal
        self.backward_scale: BackwardScale | None = None
        if mean_removal:
            self.register_buffer("running_mean", torch.zeros(0))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"VCReg expects [N, C], [N, L, C] or [N, C, H, W] features, got shape {tuple(x.shape)}")
        if self.mean_removal:
            x = self.remove_mean(x)
        if not (self.training and torch.is_grad_enabled() and x.requires_grad):
            return x
        if (self.backward_scale is None and torch.is_autocast_enabled(x.device.type)
                and torch.get_autocast_dtype(x.device.type) == torch.float16):
            raise ValueError("VCReg under fp16 autocast needs the loss scale: call common.backward_scale."
                             "attach_backward_scale(model, BackwardScale(grad_scaler, ...)) first "
                             "(grad_scaler=None if the loss is not scaled)")
        return VCRegFunction.apply(x, self.alpha, self.beta, self.eps, self.delta, self.all_reduce,
                                   self.normalization, self.backward_scale)

    def remove_mean(self, x: Tensor) -> Tensor:
        """Training: ``x`` minus its mean over the samples (all ranks' with ``all_reduce``), which also updates
        the running mean; eval: ``x`` minus the running mean."""
        shape = _channel_shape(x)
        if not self.training:
            if self.running_mean.numel() == 0:
                return x
            return x - self.running_mean.to(x.dtype).view(shape)
        channel_dim = 1 if x.dim() == 4 else x.dim() - 1
        sample_dims = tuple(i for i in range(x.dim()) if i != channel_dim)
        if self.all_reduce and distributed.is_distributed():
            mean = GlobalMean.apply(x, sample_dims)
        else:
            mean = x.to(statistics_dtype(x)).mean(sample_dims, keepdim=True).to(x.dtype)
        with torch.no_grad():
            if self.running_mean.numel() == 0:
                self.running_mean.resize_(mean.numel()).zero_()
            self.running_mean.lerp_(mean.flatten().to(self.running_mean.dtype), RUNNING_MEAN_MOMENTUM)
        return x - mean

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "running_mean")
        if self.mean_removal and saved is not None:  # the channel count comes with the saved running mean
            self.running_mean.resize_(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, eps={self.eps}, delta={self.delta}, "
                f"all_reduce={self.all_reduce}, normalization={self.normalization}, "
                f"mean_removal={self.mean_removal}")
