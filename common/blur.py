"""Gaussian blur with one sigma per image, as two 1-D passes, for both augmentation paths.

The kernel is torchvision's: ``exp(-d^2 / (2 sigma^2))`` over the integer offsets d of an odd window, normalised,
with reflect padding; the window is about 10% of the crop side, as in SimCLR (23 taps at 224 px).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian kernel of about 10% of the crop side (SimCLR: 23 for 224), at least 3."""
    k = max(3, int(0.1 * size))
    return k if k % 2 else k + 1


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Gaussian blur of float images ``[n, c, h, w]``, one sigma per image (``[n]``), reflect padding.

    The kernel is torchvision's (``exp(-d^2 / (2 sigma^2))`` over the integer offsets d, normalised), applied as
    two 1-D passes: 2k instead of k^2 multiply-adds per pixel (k = 23 at 224 px: 11x fewer).
    """
    n, c, h, w = images.shape
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma.to(images.dtype)[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [n*c, k]
    flat = F.pad(images.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


class SeparableGaussianBlur(v2.GaussianBlur):
    """``v2.GaussianBlur`` (same random sigma, kernel and padding) on image tensors through ``gaussian_blur``'s
    two 1-D passes; torchvision convolves with the k x k kernel, which made the blur 80% of a 224 px SimCLR
    view's time in a loader worker."""

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, torch.Tensor) or inpt.ndim < 3 or self.kernel_size[0] != self.kernel_size[1]:
            return super().transform(inpt, params)
        image = inpt.as_subclass(torch.Tensor)
        flat = image.reshape(-1, *image.shape[-3:])
        sigma = torch.full((flat.shape[0],), params["sigma"][0])
        out = gaussian_blur(flat if flat.is_floating_point() else flat.float(), sigma, self.kernel_size[0])
        if not image.is_floating_point():
            out = out.round_().to(image.dtype)
        out = out.reshape(image.shape)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out
