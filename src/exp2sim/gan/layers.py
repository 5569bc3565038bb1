"""Building blocks written once for 1D, 2D and 3D: the dimension is a constructor argument.

Tensors are (batch, channels, *spatial) with 1, 2 or 3 spatial axes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from exp2sim.gan import fastconv


class _FastOnCPU:
    """Mixin for nn.Conv{1,2,3}d: on the CPU, a layer that exp2sim.gan.fastconv has a faster
    route for (many-channel 3-wide convolutions, single-output-channel convolutions) runs by
    it; anything else as usual. Weights, state dict and results (to float32 round-off) are
    those of the plain layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        faster = fastconv.route(x, self)
        if faster is None:
            return super().forward(x)
        return faster(x, self.weight, self.bias, self.padding[0])


class _Conv1d(_FastOnCPU, nn.Conv1d):
    pass


class _Conv2d(_FastOnCPU, nn.Conv2d):
    pass


class _Conv3d(_FastOnCPU, nn.Conv3d):
    pass


_CONV = {1: _Conv1d, 2: _Conv2d, 3: _Conv3d}
_NORM = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def conv(
    dim: int, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0
) -> nn.Module:
    """A dim-dimensional convolution (zero padding)."""
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


def _along(x: torch.Tensor, axis: int, index: slice) -> torch.Tensor:
    """x indexed by `index` along `axis`, whole along every other axis."""
    return x[(slice(None),) * axis + (index,)]


def _pad_axis(x: torch.Tensor, axis: int, mode: str) -> torch.Tensor:
    """x padded by one sample at both ends of one axis."""
    pad = [0, 0] * (x.dim() - 2)
    pad[2 * (x.dim() - 1 - axis) : 2 * (x.dim() - axis)] = [1, 1]
    return F.pad(x, pad, mode=mode)


def _pad_end(x: torch.Tensor, axis: int) -> torch.Tensor:
    """x with one zero appended along `axis`."""
    pad = [0, 0] * (x.dim() - 2)
    pad[2 * (x.dim() - 1 - axis) + 1] = 1
    return F.pad(x, pad)


def _down_axis(x: torch.Tensor, axis: int, mode: str) -> torch.Tensor:
    """[1, 2, 1] / 4 low-pass of x along `axis` at every second sample: n -> ceil(n / 2)
    samples, x padded by one sample by `mode` (reflect or replicate)."""
    p = _pad_axis(x, axis, mode)
    m = (x.shape[axis] + 1) // 2
    left = _along(p, axis, slice(0, 2 * m - 1, 2))
    centre = _along(p, axis, slice(1, 2 * m, 2))
    right = _along(p, axis, slice(2, 2 * m + 1, 2))
    return (left + right).add_(centre, alpha=2.0).mul_(0.25)


def _down_axis_adjoint(g: torch.Tensor, axis: int, n: int, mode: str) -> torch.Tensor:
    """The transpose of `_down_axis` (from n samples) applied to g: each output j sends
    1/2 of g[j] to sample 2j and 1/4 to 2j -+ 1; what went to the padding goes back to the
    sample it copied (1 or 0 on the left; on the right, for odd n, n - 2 or n - 1)."""
    m = g.shape[axis]
    following = _along(_pad_end(g, axis), axis, slice(1, m + 1))  # g[j + 1], 0 past the end
    odd = (g + following).mul_(0.25)
    gx = torch.stack((g * 0.5, odd), dim=axis + 1).flatten(axis, axis + 1)
    gx = _along(gx, axis, slice(0, n))
    first = 1 if mode == "reflect" else 0
    _along(gx, axis, slice(first, first + 1)).add_(_along(g, axis, slice(0, 1)), alpha=0.25)
    if n % 2:
        last = n - 2 if mode == "reflect" else n - 1
        _along(gx, axis, slice(last, last + 1)).add_(_along(g, axis, slice(m - 1, m)), alpha=0.25)
        gx = gx.contiguous()
    return gx


def _up_axis(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Zhang's [1, 3, 3, 1] interpolation along `axis`: n -> 2n samples, outputs 2i and
    2i + 1 being 3/4 x[i] + 1/4 x[i -+ 1], with the edge samples repeated."""
    n = x.shape[axis]
    q = _pad_axis(x, axis, "replicate")
    centre = _along(q, axis, slice(1, n + 1))
    below = torch.lerp(centre, _along(q, axis, slice(0, n)), 0.25)
    above = torch.lerp(centre, _along(q, axis, slice(2, n + 2)), 0.25)
    return torch.stack((below, above), dim=axis + 1).flatten(axis, axis + 1)


def _up_axis_adjoint(g: torch.Tensor, axis: int) -> torch.Tensor:
    """The transpose of `_up_axis` applied to g (2n samples): sample i gathers
    1/4 g[2i - 1] + 3/4 g[2i] + 3/4 g[2i + 1] + 1/4 g[2i + 2], with g's edge samples
    repeated (that is where the repeated edge samples of the forward pass went)."""
    n = g.shape[axis] // 2
    p = _pad_axis(g, axis, "replicate")
    taps = [_along(p, axis, slice(k, 2 * n + k, 2)) for k in range(4)]
    return (taps[0] + taps[3]).mul_(0.25).add_(taps[1] + taps[2], alpha=0.75)


class _BlurDown(torch.autograd.Function):
    """BlurDownsample with its transpose as the backward pass: autograd through the strided
    slices would fill and copy a full-size gradient per slice."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205 (autograd's signature)
        ctx.mode = "replicate" if min(x.shape[2:]) <= 1 else "reflect"
        ctx.sizes = x.shape[2:]
        for axis in range(2, x.dim()):
            x = _down_axis(x, axis, ctx.mode)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # noqa: ANN001, ANN205
        for axis in reversed(range(2, g.dim())):
            g = _down_axis_adjoint(g, axis, ctx.sizes[axis - 2], ctx.mode)
        return g


class _BlurUp(torch.autograd.Function):
    """BlurUpsample with its transpose as the backward pass (see _BlurDown)."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        for axis in range(2, x.dim()):
            x = _up_axis(x, axis)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # noqa: ANN001, ANN205
        for axis in reversed(range(2, g.dim())):
            g = _up_axis_adjoint(g, axis)
        return g


class BlurDownsample(nn.Module):
    """Anti-aliased downsampling by 2 (Zhang 2019, "Making CNNs shift-invariant again"): a
    [1, 2, 1] / 4 binomial low-pass with reflection padding (replication where an axis is
    too short), then every second sample. Done one axis at a time, which gives the same
    result as the separable dim-dimensional filter but touches far less memory; the
    backward pass is the filter's transpose, also one axis at a time. The channel count
    is kept for the layer's signature; the filter is the same for all."""

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        self.dim, self.channels = dim, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BlurDown.apply(x)


class BlurUpsample(nn.Module):
    """Anti-aliased upsampling by 2: nearest-neighbour repeat, then the [1, 2, 1] / 4
    low-pass with reflection padding, which together are Zhang's [1, 3, 3, 1] interpolation
    filter. Per axis and sample i that is 3/4 x[i] + 1/4 x[i -+ 1] for the two outputs it
    makes, with the edge sample repeated; computed that way, one axis at a time (and the
    backward pass as its transpose)."""

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        self.dim, self.channels = dim, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)

    @staticmethod
    def upsample(x: torch.Tensor) -> torch.Tensor:
        """x (B, C, *S) upsampled to (B, C, *2S)."""
        return _BlurUp.apply(x)


# BlurUpsample followed by a 3-wide convolution, per axis and low-resolution sample i: the
# two outputs 2i and 2i + 1 are 3-tap filters of x[i - 1], x[i], x[i + 1] whose taps are
# these mixtures of the convolution's taps (rows: new taps; columns: old taps).
_PHASE_TAPS = torch.tensor(
    [
        [[0.75, 0.25, 0.0], [0.25, 0.75, 0.75], [0.0, 0.0, 0.25]],  # even outputs 2i
        [[0.25, 0.0, 0.0], [0.75, 0.75, 0.25], [0.0, 0.25, 0.75]],  # odd outputs 2i + 1
    ]
)


def folds_upsampling(x: torch.Tensor, layer: nn.Module) -> bool:
    """Whether `blur_upsample_conv` should replace BlurUpsample then `layer` on x: on the
    CPU in float32/64, without autograd (translation), for exp2sim's own 3-wide stride-1
    convolutions with padding 1. Training keeps the two layers: there the fold gained
    nothing measurable (a paper training step 8.18 s against 8.24 s), although its
    gradients are exact."""
    return (
        not torch.is_grad_enabled()
        and isinstance(layer, _FastOnCPU)
        and fastconv.route_enabled(x)
        and set(layer.kernel_size) == {3}
        and set(layer.stride) == {1}
        and set(layer.padding) == {1}
        and set(layer.dilation) == {1}
        and layer.groups == 1
        and layer.padding_mode == "zeros"
    )


def blur_upsample_conv(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """`layer(BlurUpsample(x))` (a 3-wide convolution with zero padding 1) without making
    the upsampled tensor: each of the 2^d output phases is a 3-wide convolution of x itself,
    with taps mixed from the layer's (`_PHASE_TAPS`), so one convolution at the low
    resolution with 2^d times the output channels gives them all (the same products, but
    many-channel layers run faster, and 256 input channels go by Winograd). That equals
    the original with the upsampling's edge replication carried on past the ends; the
    first and last outputs along each axis, where the original's zero padding differs,
    are computed again from thin slabs the original way.

    x: (B, C, *S); returns (B, O, *2S)."""
    dim = x.dim() - 2
    weight, bias = layer.weight, layer.bias
    c_out = weight.shape[0]
    # phase kernels (O, 2, .., 2, C, 3, .., 3) -> (O * 2^d, C, 3, .., 3), phases innermost
    old, new, phase = "xyz"[:dim], "XYZ"[:dim], "pqr"[:dim]
    spec = f"oc{old}," + ",".join(f"{phase[a]}{new[a]}{old[a]}" for a in range(dim))
    taps = _PHASE_TAPS.to(weight)
    kernels = torch.einsum(f"{spec}->o{phase}c{new}", weight, *[taps] * dim)
    kernels = kernels.reshape(c_out * 2**dim, *weight.shape[1:])
    phase_bias = None if bias is None else bias.repeat_interleave(2**dim)
    padded = F.pad(x, [1] * (2 * dim), mode="replicate")
    route = fastconv.many_channel_route(padded, c_out * 2**dim) or _direct_conv
    y = route(padded, kernels, phase_bias, 0)  # (B, O * 2^d, *S)
    # interleave the phases: (B, O, 2, .., 2, *S) -> (B, O, S1, 2, .., Sd, 2)
    sizes = x.shape[2:]
    y = y.reshape(x.shape[0], c_out, *[2] * dim, *sizes)
    order = [0, 1] + [i for a in range(dim) for i in (2 + dim + a, 2 + a)]
    y = y.permute(order).reshape(x.shape[0], c_out, *[2 * s for s in sizes])
    for axis in range(2, 2 + dim):
        n = x.shape[axis]
        for end in (0, 1):
            # two low-resolution samples make the two upsampled ones the edge output needs
            slab = x.narrow(axis, 0 if end == 0 else max(n - 2, 0), min(n, 2))
            up = BlurUpsample.upsample(slab)
            up = up.narrow(axis, 0 if end == 0 else up.shape[axis] - 2, 2)
            edge = _direct_conv(up, weight, bias, 1).narrow(axis, end, 1)
            y.narrow(axis, 0 if end == 0 else 2 * n - 1, 1).copy_(edge)
    return y


def _direct_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """torch's own convolution of x (B, C, *S), called like the fastconv routes."""
    return (F.conv1d, F.conv2d, F.conv3d)[x.dim() - 3](x, weight, bias, padding=padding)


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
