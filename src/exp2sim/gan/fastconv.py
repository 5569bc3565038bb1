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
   pays only where there are many channels per pixel. The input's transform runs as a
   stride-4 convolution with fixed kernels, without copying out the overlapping windows
   (a paper training step 6.91 s instead of 7.58 s, medians of 5 alternating steps). The
   kernel's gradient goes by the same transforms (7.5-7.9 s per step instead of 8.2-8.6 s
   with mkldnn's, in separate runs). The transforms use the interpolation
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
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

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


# Where F(4, 3) beat mkldnn's direct convolution on a 2-core Xeon: forward + backward
# (both gradients by Winograd) of 256 -> 256 channels on 64 x 64 pixels 1.50x / 1.61x
# (batch 2 / 1) with the windows copied out, 1.95x (batch 1) with the input transform as a
# convolution; forward alone 1.77x on 60 x 100 and 1.31x for 128 -> 256 on 120 x 200, but
# 0.64-0.73x between 64 and 128 channels on 240 x 400. At 16 x 16 pixels, in 1D and in 3D
# it was no faster or slower. Routing the paper generator's 128-channel layers too (rather
# than only its 256-channel blocks): a training step 6.71 s instead of 6.97 s, a 240 x 400
# translation 0.465 s instead of 0.503 s (medians of 5 and 16 alternating runs in one
# process).
MIN_CHANNELS = 128
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
    kernel, zero padding) by Winograd F(4, 3), differentiable by Winograd too: the input's
    gradient is the convolution of the output's gradient with the flipped kernel, and the
    kernel's gradient is the product of the transformed input and the transformed output
    gradient, summed over tiles (the transpose of the forward product), so both cost a
    quarter of the direct products as well. (Autograd through the transforms' overlapping
    windows would cost more than it saves.)

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
        if ctx.needs_input_grad[1]:
            grad_w = _winograd_kernel_grad(x, grad_out, p)
        if ctx.needs_input_grad[2] and ctx.has_bias:
            grad_b = grad_out.sum([0] + list(range(2, 2 + dim)))
        return grad_x, grad_w, grad_b, None


def _tiles(x: torch.Tensor, padding: int) -> tuple[list[int], list[int]]:
    """Output sizes S' and tiles per axis (ceil(S'/4)) for x (B, C, *S)."""
    out_sizes = [s + 2 * padding - 2 for s in x.shape[2:]]
    return out_sizes, [-(-s // TILE) for s in out_sizes]


def _input_transform(x: torch.Tensor, padding: int) -> torch.Tensor:
    """The 6^d transform points of every input window: (B, 6^d, C, T), T = tiles, a strided
    view. The transform of the overlapping windows (6 every 4) is a stride-4 convolution of
    each channel with 6^d fixed 6 x .. x 6 kernels, which reads the input once instead of
    first copying out its windows (2.25 times its size in 2D)."""
    dim = x.dim() - 2
    batch, c_in = x.shape[:2]
    _, tiles = _tiles(x, padding)
    # zero padding, plus enough at the far ends for the tiles to cover the output exactly
    pad: list[int] = []
    for s, t in zip(reversed(x.shape[2:]), reversed(tiles), strict=True):
        pad += [padding, t * TILE + 2 - s - padding]
    if any(pad):
        x = F.pad(x, pad)
    kernels = _transforms(dim)[0].to(x.dtype).view(-1, 1, *[WINDOW] * dim)
    v = _CONV[dim](x.reshape(batch * c_in, 1, *x.shape[2:]), kernels, stride=TILE)
    return v.view(batch, c_in, WINDOW**dim, -1).transpose(1, 2)


def _winograd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """winograd_conv's forward pass, one batch item at a time (the products then read the
    transformed input where the convolution left it)."""
    dim = x.dim() - 2
    batch = x.shape[0]
    c_out, c_in = weight.shape[:2]
    out_sizes, tiles = _tiles(x, padding)
    window_size = WINDOW**dim
    _, kernel_t, out_t = (m.to(x.dtype) for m in _transforms(dim))
    v = _input_transform(x, padding)
    u = (kernel_t @ weight.reshape(c_out * c_in, 3**dim).T).view(window_size, c_out, c_in)
    y = x.new_empty([batch, c_out] + [t * TILE for t in tiles])
    # (4, .., 4, O, t1, .., td) -> (O, t1, 4, .., td, 4)
    order = [dim] + [i for a in range(dim) for i in (dim + 1 + a, a)]
    for b in range(batch):
        m = torch.bmm(u, v[b])  # the product per transform point: (6^d, O, T)
        out = (out_t @ m.view(window_size, -1)).view([TILE] * dim + [c_out] + tiles)
        y[b].view([c_out] + [n for t in tiles for n in (t, TILE)]).copy_(out.permute(order))
    y = y[(slice(None), slice(None), *(slice(0, s) for s in out_sizes))]
    if bias is not None:
        y = y.add_(bias.view([c_out] + [1] * dim))
    return y


def _winograd_kernel_grad(x: torch.Tensor, grad_out: torch.Tensor, padding: int) -> torch.Tensor:
    """The kernel's gradient (O, C, 3, .., 3) of winograd_conv(x, ., padding) for the output
    gradient grad_out (B, O, *S'): the forward's steps transposed. Each 4^d tile of grad_out
    goes to the 6^d transform points (out_t^T), meets the same tile's transformed input in
    one product per point summed over tiles, and the sum goes back to the 3^d taps
    (kernel_t^T)."""
    dim = x.dim() - 2
    batch, c_out = grad_out.shape[:2]
    c_in = x.shape[1]
    _, tiles = _tiles(x, padding)
    window_size = WINDOW**dim
    _, kernel_t, out_t = (m.to(x.dtype) for m in _transforms(dim))
    # the cropped outputs had no gradient: pad with zeros to whole tiles
    pad: list[int] = []
    for s, t in zip(reversed(grad_out.shape[2:]), reversed(tiles), strict=True):
        pad += [0, t * TILE - s]
    if any(pad):
        grad_out = F.pad(grad_out, pad)
    v = _input_transform(x, padding)  # recomputed: cheaper than keeping it (2.25x x)
    # (O, t1, 4, .., td, 4) -> (4, .., 4, O, t1, .., td)
    split = [c_out] + [n for t in tiles for n in (t, TILE)]
    order = [2 + 2 * a for a in range(dim)] + [0] + [1 + 2 * a for a in range(dim)]
    du = grad_out.new_zeros(window_size, c_out, c_in)
    for b in range(batch):
        dy = grad_out[b].reshape(split).permute(order).reshape(TILE**dim, -1)
        dm = (out_t.T @ dy).view(window_size, c_out, -1)  # (6^d, O, T)
        du.baddbmm_(dm, v[b].transpose(1, 2))  # (6^d, O, C), summed over tiles and items
    return (kernel_t.T @ du.view(window_size, -1)).T.reshape(c_out, c_in, *[3] * dim)


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
