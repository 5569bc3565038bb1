"""Building blocks written once for 1D, 2D and 3D: the dimension is a constructor argument.

Tensors are (batch, channels, *spatial) with 1, 2 or 3 spatial axes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def conv(
    dim: int, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0
) -> nn.Module:
    """A dim-dimensional convolution."""
    return _CONV[dim](c_in, c_out, kernel, stride=stride, padding=padding)


def instance_norm(dim: int, channels: int) -> nn.Module:
    """Instance normalisation without learned affine terms (as in CUT/DCLGAN)."""
    return _NORM[dim](channels, affine=False, track_running_stats=False)


class Pad(nn.Module):
    """Reflection padding by `width` on both sides of every spatial axis; replication where an
    axis is too short to reflect (reflection needs width < length)."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.dim, self.width = dim, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = min(x.shape[2:]) <= self.width
        return F.pad(x, [self.width] * (2 * self.dim), mode="replicate" if short else "reflect")


def _binomial_kernel(dim: int, taps: tuple[float, ...]) -> torch.Tensor:
    """Separable normalised smoothing kernel, shape (taps,) * dim."""
    k1 = torch.tensor(taps, dtype=torch.float32)
    k1 = k1 / k1.sum()
    kernel = k1
    for _ in range(dim - 1):
        kernel = kernel[..., None] * k1
    return kernel


class _Blur(nn.Module):
    """A per-channel [1, 2, 1] binomial low-pass with reflection padding."""

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        self.dim, self.channels = dim, channels
        kernel = _binomial_kernel(dim, (1.0, 2.0, 1.0))
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).clone(), False)
        self.pad = Pad(dim, 1)

    def blur(self, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        conv_fn = (F.conv1d, F.conv2d, F.conv3d)[self.dim - 1]
        return conv_fn(self.pad(x), self.kernel.to(x.dtype), stride=stride, groups=self.channels)


class BlurDownsample(_Blur):
    """Anti-aliased downsampling by 2 (Zhang 2019, "Making CNNs shift-invariant again"):
    the low-pass, then every second sample."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(x, stride=2)


class BlurUpsample(_Blur):
    """Anti-aliased upsampling by 2: nearest-neighbour repeat, then the low-pass (together
    the [1, 3, 3, 1] interpolation filter of Zhang's up-sampling layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(F.interpolate(x, scale_factor=2, mode="nearest"))


def xavier_init(module: nn.Module, gain: float = 0.02) -> None:
    """Xavier-normal weights and zero biases for every convolution and linear layer (the
    `init_type xavier, init_gain 0.02` of CycleGAN/CUT/DCLGAN)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[slice]]:
    """Pad the spatial axes at their far ends up to a multiple of `multiple` (replicating
    the edge); return the padded tensor and the slices that crop the original back out."""
    sizes = x.shape[2:]
    extra = [(-s) % multiple for s in sizes]
    if not any(extra):
        return x, [slice(None)] * len(sizes)
    pad: list[int] = []
    for e in reversed(extra):
        pad += [0, e]
    crop = [slice(0, s) for s in sizes]
    return F.pad(x, pad, mode="replicate"), crop


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
