"""The generator's layers against independent implementations: the anti-aliased blur
layers against SciPy's filters, the faster CPU convolutions against torch's own."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from exp2sim.gan import fastconv
from exp2sim.gan.layers import (
    BlurDownsample,
    BlurUpsample,
    blur_upsample_conv,
    conv,
    folds_upsampling,
)
from exp2sim.gan.networks import ResnetGenerator

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
SHAPES = [(2, 3, 11), (2, 3, 9, 6), (1, 2, 7, 4, 5), (1, 2, 1, 6)]


def scipy_blur(x: np.ndarray, axis: int, short: bool) -> np.ndarray:
    """[1, 2, 1] / 4 along one axis; 'mirror' is torch's reflection padding (edge sample
    not repeated), 'nearest' its replication."""
    return ndimage.correlate1d(
        x, [0.25, 0.5, 0.25], axis=axis, mode="nearest" if short else "mirror"
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_blur_downsample_is_the_binomial_filter_then_every_second_sample(shape):
    x = np.random.default_rng(0).normal(size=shape)
    short = min(shape[2:]) <= 1
    expected = x
    for axis in range(2, len(shape)):
        expected = scipy_blur(expected, axis, short)
    expected = expected[(slice(None), slice(None), *[slice(None, None, 2)] * (len(shape) - 2))]
    got = BlurDownsample(len(shape) - 2, shape[1])(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_blur_upsample_is_nearest_repeat_then_the_binomial_filter(shape):
    x = np.random.default_rng(1).normal(size=shape)
    expected = x
    for axis in range(2, len(shape)):
        expected = np.repeat(expected, 2, axis=axis)
    for axis in range(2, len(shape)):
        expected = scipy_blur(expected, axis, short=False)
    got = BlurUpsample(len(shape) - 2, shape[1])(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # a constant stays constant and the mean is kept: an interpolation, not a sharpening
    const = torch.full(shape, 3.0, dtype=torch.float64)
    np.testing.assert_allclose(BlurUpsample(len(shape) - 2, shape[1])(const).numpy(), 3.0)


@pytest.mark.parametrize("layer", [BlurDownsample, BlurUpsample])
@pytest.mark.parametrize("shape", SHAPES + [(1, 2, 1, 5), (2, 1, 2), (1, 1, 3, 2, 1)])
def test_blur_layers_backward_is_the_transpose_of_their_forward(layer, shape):
    """The layers are linear maps L with a hand-written backward pass; for any x and g,
    <L x, g> = <x, L^T g>, and autograd's gradient of <L x, g> is L^T g. The forward
    passes are checked against scipy above, so this pins the backward to them (odd, even
    and length-1 axes, reflection and replication)."""
    gen = torch.Generator().manual_seed(5)
    blur = layer(len(shape) - 2, shape[1])
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    y = blur(x)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (transposed,) = torch.autograd.grad((y * g).sum(), x)
    assert transposed.shape == x.shape
    np.testing.assert_allclose((x * transposed).sum().item(), (y * g).sum().item(), rtol=1e-12)
    if shape[0] == 1:  # small enough to compare the whole matrices L^T and transpose(L)
        n_in = x.numel()
        forward = blur(torch.eye(n_in, dtype=torch.float64).reshape(n_in, *shape[1:]))
        rows = []
        for e in torch.eye(y.numel(), dtype=torch.float64).reshape(-1, *y.shape):
            xi = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
            rows.append(torch.autograd.grad((blur(xi) * e).sum(), xi)[0].reshape(-1))
        np.testing.assert_allclose(
            torch.stack(rows).numpy(), forward.reshape(n_in, -1).T.numpy(), atol=1e-14
        )


@pytest.mark.parametrize(
    "spatial,padding", [((13,), 1), ((9, 14), 1), ((9, 14), 0), ((5, 6, 7), 1), ((4, 4), 1)]
)
def test_winograd_convolution_equals_direct_convolution_with_gradients(spatial, padding):
    dim = len(spatial)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, *spatial, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, *[3] * dim, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    got = fastconv.winograd_conv(x, w, b, padding)
    expected = CONV[dim](x, w, b, padding=padding)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    probe = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((got * probe).sum(), (x, w, b))
    expected_grads = torch.autograd.grad((expected * probe).sum(), (x, w, b))
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_winograd_in_float32_keeps_direct_convolutions_accuracy():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 256, 30, 50, generator=gen)
    w = torch.randn(256, 256, 3, 3, generator=gen) * 0.02
    expected = F.conv2d(x.double(), w.double(), padding=1)
    err_fast = (fastconv.winograd_conv(x, w, None, 1).double() - expected).norm() / expected.norm()
    err_direct = (F.conv2d(x, w, padding=1).double() - expected).norm() / expected.norm()
    assert err_fast < 1e-5
    assert err_fast < 20 * err_direct
    # the kernel's gradient, a sum over all 1,500 pixels, by Winograd too (measured here:
    # 2.2e-6 against direct convolution's 6.8e-7)
    probe = torch.randn(expected.shape, generator=gen)
    w64 = w.double().requires_grad_()
    (reference,) = torch.autograd.grad((F.conv2d(x.double(), w64, padding=1) * probe).sum(), w64)
    errors = []
    for convolve in (fastconv.winograd_conv, F.conv2d):
        w32 = w.clone().requires_grad_()
        (grad,) = torch.autograd.grad((convolve(x, w32, None, padding=1) * probe).sum(), w32)
        errors.append(((grad.double() - reference).norm() / reference.norm()).item())
    assert errors[0] < 1e-5
    assert errors[0] < 20 * errors[1]


@pytest.mark.parametrize("spatial,padding", [((20,), 3), ((12, 15), 3), ((9, 8, 10), 0)])
def test_single_output_convolution_equals_direct_convolution(spatial, padding):
    dim = len(spatial)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, *spatial, generator=gen, dtype=torch.float64)
    w = torch.randn(1, 6, *[7 if dim < 3 else 3] * dim, generator=gen, dtype=torch.float64)
    b = torch.randn(1, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        fastconv.single_output_conv(x, w, b, padding), CONV[dim](x, w, b, padding=padding)
    )


def test_routes_are_taken_only_where_they_pay_and_are_exact():
    wide = conv(2, 256, 256, 3, padding=1)
    head = conv(2, 64, 1, 7)
    x_wide = torch.randn(1, 256, 40, 40)
    x_head = torch.randn(1, 64, 20, 20)
    assert fastconv.route(x_wide, wide) is fastconv.winograd_conv
    assert fastconv.route(torch.randn(1, 256, 8, 8), wide) is None  # too few pixels
    assert fastconv.route(torch.randn(1, 64, 40, 40), conv(2, 64, 64, 3, padding=1)) is None
    assert fastconv.route(x_wide, conv(2, 256, 256, 3, stride=2)) is None
    with torch.no_grad():
        assert fastconv.route(x_head, head) is fastconv.single_output_conv
    # with autograd the head runs directly: the tap sums' backward is not faster
    assert fastconv.route(x_head.requires_grad_(), head) is None
    with fastconv.disabled():
        assert fastconv.route(x_wide, wide) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: torch's own
        assert fastconv.route(x_wide, wide) is None
    assert fastconv.route(x_wide.bfloat16(), wide) is None
    assert fastconv.route(x_wide, wide) is fastconv.winograd_conv
    with torch.no_grad():
        expected = F.conv2d(x_wide, wide.weight, wide.bias, padding=1)
        assert (wide(x_wide) - expected).norm() / expected.norm() < 1e-5


@pytest.mark.parametrize("shape", [(17,), (1,), (5, 7), (1, 3), (3, 4, 5)])
def test_folded_upsampling_equals_upsampling_then_convolution(shape):
    """One low-resolution convolution per output phase, edges redone the original way:
    the same values and gradients as BlurUpsample then the zero-padded convolution."""
    dim = len(shape)
    torch.manual_seed(2)
    layer = conv(dim, 6, 5, 3, padding=1).double()
    x = torch.randn(2, 6, *shape, dtype=torch.float64, requires_grad=True)
    params = (x, layer.weight, layer.bias)
    with fastconv.disabled():
        with torch.no_grad():
            assert not folds_upsampling(x, layer)
        expected = layer(BlurUpsample(dim, 6)(x))
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    assert not folds_upsampling(x, layer)  # training keeps the two layers
    with torch.no_grad():
        assert folds_upsampling(x, layer)
        assert not folds_upsampling(x, conv(dim, 6, 5, 3, stride=2, padding=1).double())
        assert not folds_upsampling(x.float().bfloat16(), copy.deepcopy(layer).bfloat16())
    out = blur_upsample_conv(x, layer)
    torch.testing.assert_close(out, expected)
    for got, want in zip(
        torch.autograd.grad(out.square().sum(), params), expected_grads, strict=True
    ):
        torch.testing.assert_close(got, want)


def test_folded_upsampling_with_many_channels_goes_by_winograd(monkeypatch):
    layer = conv(2, 256, 128, 3, padding=1)
    x = torch.randn(1, 256, 34, 40)
    calls = []

    def counted(*args):  # noqa: ANN002, ANN202
        calls.append(args[1].shape)
        return winograd(*args)

    winograd = fastconv.winograd_conv
    monkeypatch.setattr(fastconv, "winograd_conv", counted)
    with torch.no_grad():
        out = blur_upsample_conv(x, layer)
        with fastconv.disabled():
            expected = layer(BlurUpsample(2, 256)(x))
    assert calls == [torch.Size([4 * 128, 256, 3, 3])]  # the phase kernels, once
    assert (out - expected).norm() / expected.norm() < 1e-5


def test_generator_output_does_not_depend_on_the_convolution_route():
    """A paper-width generator (its 128- and 256-channel layers take the Winograd route on
    128 x 128 inputs) is about as accurate with the faster routes as without: translation
    and gradients compared with the same generator in float64. Each Winograd layer adds
    F(4, 3)'s float32 error, a few times direct convolution's (measured: output 7.7e-6
    against 1.3e-6, block-weight gradient 6.3e-4 against 5.1e-4), far below anything a
    spectrum can show."""
    torch.manual_seed(5)
    gen = ResnetGenerator(2, 64, 1)
    x = torch.randn(1, 1, 128, 128)

    def run(network: ResnetGenerator, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        network.zero_grad()
        out = network(inputs)
        out.square().sum().backward()
        return out.detach().double(), network.blocks[0].body[1].weight.grad.double().clone()

    reference = run(copy.deepcopy(gen).double(), x.double())  # the route is float-agnostic
    with fastconv.disabled():
        direct = run(gen, x)
        assert fastconv.route(torch.randn(1, 256, 32, 32), gen.blocks[0].body[1]) is None
    assert fastconv.route(torch.randn(1, 256, 32, 32), gen.blocks[0].body[1]) is not None
    fast = run(gen, x)
    for f, d, r in zip(fast, direct, reference, strict=True):
        err_fast, err_direct = (f - r).norm() / r.norm(), (d - r).norm() / r.norm()
        assert err_fast < 1e-2
        assert err_fast < 10 * err_direct
