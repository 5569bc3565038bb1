"""Faster CPU routes for two kinds of convolution in the generator, 1D to 3D.

On the CPU, mkldnn's direct convolution already runs near the machine's matrix-product speed
for layers with many channels, and far below it for layers with a single output channel.
benchmarks/bench_gan.py measures both routes against it.

1. **Winograd F(4, 3)** for 3-wide stride-1 convolutions with many channels (the paper
   generator's residual blocks, 256 channels). Winograd's minimal filtering (Lavin & Gray 2016,
   "Fast algorithms for convolutional neural networks") computes a tile of 4 outputs per axis
   from 6 inputs with 6 instead of 12 multiplications per axis: in 2D, 36 products per 16
   outputs instead of 144, so the channel-mixing matrix products (the costly part) shrink
   four-fold. The price is three small fixed linear transforms, which are memory-bound, so it
   pays only where there are many channels per pixel. The transforms use the interpolation
   points 0, 1, -1, 2, -2 and infinity; in float32 the result matches direct convolution to a
   relative error of about 1e-6.
2. **Per-tap products** for a convolution to a single output channel (the generator's 7-wide
   head): one matrix product gives every tap's channel sum at every pixel, and the output is
   the sum of those maps shifted by their taps. Used without autograd (translation) only:
   its backward through many shifted slices is no faster than mkldnn's.

GPUs' cuDNN chooses its own algorithms, so these routes are used on the CPU only. (A third
CPU route, used when translating, folds an upsampling into the convolution after it and
lives with the upsampling layer: `exp2sim.gan.layers.blur_upsample_conv`.)
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

TILE = 4  # outputs per tile and axis
WINDOW = TILE + 2  # inputs per tile and axis for a 3-wide kernel

# y = A^T [(G g) * (B^T d)] per axis, d a window of 6 inputs, g the 3 kernel taps
_BT = [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
]
_G = [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
]
_AT = [
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1],
]


# Where F(4, 3) beat mkldnn's direct convolution on a 2-core Xeon: forward 1.5-1.8x and
# forward + backward 1.2-1.5x at 256 channels on 64 x 64 or 60 x 100 pixels. At 128
# channels forward gained 1.1-1.3x but forward + backward 0.9-1.1x; at 16 x 16 pixels, in
# 1D (256 channels) and in 3D it was no faster or slower.
MIN_CHANNELS = 256
MIN_PIXELS = 32 * 32
_enabled = True


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this context every convolution runs through mkldnn/cuDNN directly."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def route(x: torch.Tensor, layer: torch.nn.Module) -> Callable[..., torch.Tensor] | None:
    """The faster function for `layer` (an nn.Conv*d) applied to x (B, C, *S), called as
    f(x, weight, bias, padding); None where mkldnn's own convolution is the better choice."""
    if not route_enabled(x):
        return None
    dim = x.dim() - 2
    plain = (
        layer.stride == (1,) * dim
        and layer.dilation == (1,) * dim
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and len(set(layer.padding)) == 1
    )
    if not plain:
        return None
    if layer.kernel_size == (3,) * dim and _winograd_pays(x, layer.out_channels):
        return winograd_conv
    cubic = len(set(layer.kernel_size)) == 1
    if cubic and layer.out_channels == 1 and not (torch.is_grad_enabled() and x.requires_grad):
        return single_output_conv
    return None


def route_enabled(x: torch.Tensor) -> bool:
    """Whether these routes may run on x: on the CPU, in float32/64, outside autocast (the
    transforms' products lose too much in bfloat16), unless `disabled()`."""
    return (
        _enabled
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
    )


def many_channel_route(x: torch.Tensor, c_out: int) -> Callable[..., torch.Tensor] | None:
    """winograd_conv where it beats mkldnn for a 3-wide stride-1 convolution of x
    (B, C, *S) to c_out channels, else None."""
    return winograd_conv if route_enabled(x) and _winograd_pays(x, c_out) else None


def _winograd_pays(x: torch.Tensor, c_out: int) -> bool:
    """2D, many channels in and out, many pixels (see MIN_CHANNELS)."""
    return (
        x.dim() == 4
        and min(x.shape[1], c_out) >= MIN_CHANNELS
        and x.shape[2:].numel() >= MIN_PIXELS
    )


@functools.cache
def _transforms(dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dim-dimensional transforms as Kronecker powers of the 1D ones, float64:
    input (6^d, 6^d), kernel (6^d, 3^d) and output (4^d, 6^d)."""
    mats = []
    for m in (_BT, _G, _AT):
        one = torch.tensor(m, dtype=torch.float64)
        k = one
        for _ in range(dim - 1):
            k = torch.kron(k, one)
        mats.append(k)
    return mats[0], mats[1], mats[2]


def winograd_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int = 0
) -> torch.Tensor:
    """The convolution `F.conv{d}d(x, weight, bias, padding=padding)` (stride 1, 3-wide
    kernel, zero padding) by Winograd F(4, 3). Differentiable: the input's gradient is the
    convolution of the output's gradient with the flipped kernel, by Winograd again; the
    kernel's and bias's gradients come from torch's own convolution backward. (Autograd
    through the transforms' overlapping windows would cost more than it saves.)

    x: (B, C, *S) with d = 1, 2 or 3 spatial axes; weight: (O, C, 3, ..., 3); bias: (O,).
    Returns (B, O, *S') with S' = S + 2 padding - 2.
    """
    return _WinogradConv.apply(x, weight, bias, padding)


class _WinogradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding):  # noqa: ANN001, ANN205 (autograd's signature)
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return _winograd(x, weight, bias, padding)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        dim, p = x.dim() - 2, ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(list(range(2, 2 + dim))).transpose(0, 1)
            grad_x = winograd_conv(grad_out, flipped, None, 2 - p)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out,
                x,
                weight,
                [weight.shape[0]] if ctx.has_bias else None,
                [1] * dim,
                [p] * dim,
                [1] * dim,
                False,
                [0] * dim,
                1,
                [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias],
            )
        return grad_x, grad_w, grad_b, None


def _winograd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """winograd_conv's forward pass."""
    dim = x.dim() - 2
    batch, c_in = x.shape[:2]
    c_out = weight.shape[0]
    # zero padding, plus enough at the far ends for the tiles to cover the output exactly
    out_sizes = [s + 2 * padding - 2 for s in x.shape[2:]]
    tiles = [-(-s // TILE) for s in out_sizes]
    pad: list[int] = []
    for s, t in zip(reversed(x.shape[2:]), reversed(tiles), strict=True):
        pad += [padding, t * TILE + 2 - s - padding]
    if any(pad):
        x = F.pad(x, pad)
    # overlapping windows of 6 every 4: (C, B, *tiles, 6, ..., 6)
    windows = x.transpose(0, 1)
    for axis in range(2, 2 + dim):
        windows = windows.unfold(axis, WINDOW, TILE)
    n = batch * int(torch.Size(tiles).numel())
    window_size = WINDOW**dim
    in_t, kernel_t, out_t = (m.to(x.dtype) for m in _transforms(dim))
    # (6^d, C * n) with one column per channel and tile; then the product per transform point
    v = (in_t @ windows.reshape(c_in * n, window_size).T).view(window_size, c_in, n)
    u = (kernel_t @ weight.reshape(c_out * c_in, 3**dim).T).view(window_size, c_out, c_in)
    m = torch.bmm(u, v)  # (6^d, O, n)
    y = (out_t @ m.view(window_size, c_out * n)).view([TILE] * dim + [c_out, batch] + tiles)
    # (4, .., 4, O, B, t1, .., td) -> (B, O, t1, 4, .., td, 4)
    order = [dim + 1, dim] + [i for a in range(dim) for i in (dim + 2 + a, a)]
    y = y.permute(order).reshape([batch, c_out] + [t * TILE for t in tiles])
    y = y[(slice(None), slice(None), *(slice(0, s) for s in out_sizes))]
    if bias is not None:
        y = y + bias.view([c_out] + [1] * dim)
    return y


def single_output_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int = 0
) -> torch.Tensor:
    """The convolution `F.conv{d}d(x, weight, bias, padding=padding)` (stride 1, zero
    padding) for a cubic kernel, weight (1, C, k, ..., k): one product (k^d, C) @
    (C, pixels) gives each tap's weighted channel sum, and the output adds those maps
    shifted by their taps.

    x: (B, C, *S); returns (B, 1, *S') with S' = S + 2 padding - k + 1.
    """
    dim = x.dim() - 2
    batch, channels = x.shape[:2]
    k = weight.shape[-1]
    if padding:
        x = F.pad(x, [padding] * (2 * dim))
    sizes = x.shape[2:]
    out_sizes = [s - k + 1 for s in sizes]
    taps = weight.reshape(channels, k**dim).T @ x.reshape(batch, channels, -1)
    taps = taps.view(batch, *([k] * dim), *sizes)
    y = None
    for offset in itertools.product(range(k), repeat=dim):
        window = (
            slice(None),
            *offset,
            *(slice(o, o + n) for o, n in zip(offset, out_sizes, strict=True)),
        )
        y = taps[window].clone() if y is None else y.add_(taps[window])
    y = y.unsqueeze(1)
    if bias is not None:
        y = y + bias.view([1] * (dim + 2))
    return y
