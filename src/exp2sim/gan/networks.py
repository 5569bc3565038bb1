"""The networks of Exp2SimGAN, one implementation for 1D, 2D and 3D spectra.

- `ResnetGenerator`: CycleGAN/CUT ResNet generator with reflection padding, instance norm and
  anti-aliased down/up-sampling. It can return the encoder features PatchNCE needs from the
  same pass that makes the translation, and can stop after the deepest feature layer. With
  `kernel`, its output is a local blur (or unsharp mask) of its input, made by per-pixel
  kernels that the network predicts, instead of an image it draws.
- `PatchDiscriminator`: PatchGAN with two output channels, real/fake (GAN) and the
  auxiliary simulation-vs-experiment class of Exp2SimGAN.
- `ProjectionHeads`: the two-layer MLPs that map sampled encoder features to PatchNCE
  embeddings (L2-normalised).

All take (batch, 1, *spatial) float tensors of any spatial size.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from exp2sim.gan.layers import (
    BlurDownsample,
    BlurUpsample,
    Pad,
    blur_upsample_conv,
    conv,
    folds_upsampling,
    instance_norm,
    pad_to_multiple,
)
from exp2sim.gan.normalisation import IntensityScale


class ResnetBlock(nn.Module):
    """x + (pad, conv3, norm, ReLU, pad, conv3, norm)(x)."""

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Pad(dim, 1),
            conv(dim, channels, channels, 3),
            instance_norm(dim, channels),
            nn.ReLU(inplace=True),
            Pad(dim, 1),
            conv(dim, channels, channels, 3),
            instance_norm(dim, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def encoder_layer_names(n_blocks: int) -> list[str]:
    """Names of the generator's encoder layers whose outputs PatchNCE may use, in order:
    the stem convolution, the two downsampling convolutions and every residual block."""
    return ["stem", "down1", "down2"] + [f"block{i + 1}" for i in range(n_blocks)]


def _intensity(z: torch.Tensor, s: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Normalised values -> intensities, s sinh(gain z) (`IntensityScale.inverse`)."""
    return s * torch.sinh(gain * z)


def _normalised(intensity: torch.Tensor, s: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Intensities -> normalised values, asinh(I / s) / gain (`IntensityScale.transform`)."""
    return torch.asinh(intensity / s) / gain


def local_blur(intensity: torch.Tensor, weights: torch.Tensor, kernel: int) -> torch.Tensor:
    """Each pixel's weighted sum of its k^dim neighbourhood: intensity (B, 1, *S), weights
    (B, k^dim, *S), taps in `itertools.product(range(k), repeat=dim)` order, centred ->
    (B, 1, *S). Edges are extended by replication. Linear in `intensity`."""
    dim = intensity.dim() - 2
    padded = F.pad(intensity, [kernel // 2] * (2 * dim), mode="replicate")
    out = torch.zeros_like(intensity)
    for tap, offset in enumerate(itertools.product(range(kernel), repeat=dim)):
        region = tuple(slice(o, o + n) for o, n in zip(offset, intensity.shape[2:], strict=True))
        out = out + weights[:, tap : tap + 1] * padded[(slice(None), slice(None), *region)]
    return out


class ResnetGenerator(nn.Module):
    """ResNet generator: 7-wide stem, two anti-aliased downsamplings (x2 channels each),
    `n_blocks` residual blocks at 1/4 resolution, two anti-aliased upsamplings, a `head`-wide
    last convolution (7 in the paper), tanh. Inputs of any size: they are padded to a
    multiple of 4 and cropped back.

    With ngf 64 and 9 blocks in 2D this is the 11.4 M-parameter generator of the paper.

    With `kernel` = k > 0 (not in the paper) the head predicts, for every pixel, the weights
    of a k^dim-tap kernel (softmax: positive, summing to 1) instead of the output value, and
    the output is the weighted mean of the input's intensity around that pixel, as a
    measured pixel is a resolution-weighted mean of the true spectrum around it: a local blur
    whose widths can change from place to place. Such a generator cannot make up peaks or
    move intensity by more than k // 2 pixels, and a flat spectrum stays flat. With `sharpen`
    (the Exp2Sim direction), an extra channel a >= 0 turns the blur into an unsharp mask,
    (1 + a) x - a blur(x). The kernels act on intensities: the normalised input is mapped
    back with the source domain's scale and the result normalised with the target's
    (`set_scales`), so they do not depend on how the two domains are normalised.

    `shifts` (kernel generators only) adds one tap per offset: the input at that pixel
    offset, given to `forward` as `context` (B, n_shifts, *S), NaN where it does not exist
    (outside the spectrum, masked), taken from the whole spectrum so that crops see it. The
    softmax runs over the k^dim local taps and the shifted ones, so these too move intensity
    rather than make it: in the PCSMO mosaic, the energy resolution moves 8-14 % of a
    slice's intensity into each neighbouring slice, 40 pixels away.

    `nonnegative` (not in the paper) marks the generator whose target is the simulation,
    where S(Q, w) >= 0: its translations are clipped at zero intensity (`translation`).
    """

    def __init__(
        self,
        dim: int,
        ngf: int = 64,
        n_blocks: int = 9,
        kernel: int = 0,
        sharpen: bool = False,
        shifts: tuple[tuple[int, ...], ...] = (),
        nonnegative: bool = False,
        head: int = 7,
    ) -> None:
        super().__init__()
        self.nonnegative = nonnegative
        if kernel < 0 or (kernel and kernel % 2 == 0):
            raise ValueError(f"kernel must be 0 or an odd number of taps, got {kernel}")
        if head < 1 or head % 2 == 0:
            raise ValueError(f"head must be an odd number of pixels, got {head}")
        self.dim, self.ngf, self.n_blocks = dim, ngf, n_blocks
        self.kernel, self.sharpen = kernel, sharpen
        self.shifts = tuple(tuple(int(o) for o in s) for s in shifts)
        if self.shifts and (not kernel or any(len(s) != dim for s in self.shifts)):
            raise ValueError(f"shifts {self.shifts} need a kernel and {dim} offsets each")
        self.stem_conv = nn.Sequential(Pad(dim, 3), conv(dim, 1, ngf, 7))
        self.stem_act = nn.Sequential(instance_norm(dim, ngf), nn.ReLU(inplace=True))
        self.down_convs = nn.ModuleList()
        self.down_acts = nn.ModuleList()
        for i in range(2):
            c = ngf * 2**i
            self.down_convs.append(conv(dim, c, 2 * c, 3, padding=1))
            self.down_acts.append(
                nn.Sequential(
                    instance_norm(dim, 2 * c), nn.ReLU(inplace=True), BlurDownsample(dim, 2 * c)
                )
            )
        self.blocks = nn.ModuleList(ResnetBlock(dim, 4 * ngf) for _ in range(n_blocks))
        up: list[nn.Module] = []
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            up += [
                BlurUpsample(dim, c),
                conv(dim, c, c // 2, 3, padding=1),
                instance_norm(dim, c // 2),
                nn.ReLU(inplace=True),
            ]
        if kernel:
            n_taps = kernel**dim + len(self.shifts)
            up += [Pad(dim, head // 2), conv(dim, ngf, n_taps + int(sharpen), head)]
            offsets = torch.tensor(list(itertools.product(range(kernel), repeat=dim)))
            # log-weights added to the predicted ones so that training starts near the
            # identity: a Gaussian of 0.5 pixels around the centre tap; the shifted taps
            # start as strong as the nearest local ones (about 8 % each: a softmax weight
            # far smaller barely learns, its gradient being proportional to it)
            squared = ((offsets - kernel // 2) ** 2).sum(1).float()
            prior = torch.cat([squared, torch.ones(len(self.shifts))])
            self.register_buffer("prior", -2.0 * prior, persistent=False)
            # s and gain of the source and then the target domain's IntensityScale
            self.register_buffer("scales", torch.ones(4))
        else:
            up += [Pad(dim, head // 2), conv(dim, ngf, 1, head), nn.Tanh()]
        self.decoder = nn.Sequential(*up)

    def layer_channels(self, names: list[str] | tuple[str, ...]) -> list[int]:
        """Channels of the named encoder layers' outputs."""
        c = {"stem": self.ngf, "down1": 2 * self.ngf, "down2": 4 * self.ngf}
        return [c.get(n, 4 * self.ngf) for n in names]

    def forward(
        self,
        x: torch.Tensor,
        layers: list[str] | tuple[str, ...] = (),
        encode_only: bool = False,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Translate x of shape (B, 1, *S). With `layers`, also return those encoder
        layers' outputs (B, C_l, *S_l) as a list: the feature maps of PatchNCE, taken from
        the same pass. With `encode_only`, stop after the deepest requested layer and return
        (None, features). `context`: the shifted taps (B, n_shifts, *S) of a generator with
        `shifts`, NaN where missing (see the class docstring)."""
        names = encoder_layer_names(self.n_blocks)
        unknown = set(layers) - set(names)
        if unknown:
            raise ValueError(f"unknown encoder layers {sorted(unknown)}")
        if encode_only and not layers:
            raise ValueError("encode_only needs at least one encoder layer")
        if not encode_only:
            self._check_context(x, context)
        y, feats = self._pass(x, layers, encode_only)
        if y is None:
            return None, feats
        if self.kernel:
            y = self.apply_kernels(x, y, context)
        if layers:
            return y, feats
        return y

    def _pass(
        self, x: torch.Tensor, layers: list[str] | tuple[str, ...], encode_only: bool
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """The network itself: (head output or None with `encode_only`, the requested
        encoder layers' outputs)."""
        names = encoder_layer_names(self.n_blocks)
        stop = max(names.index(n) for n in layers) if encode_only else len(names)
        # each encoder stage: (name of its output, module making it, module applied after)
        stages = [("stem", self.stem_conv, self.stem_act)]
        stages += [(f"down{i + 1}", self.down_convs[i], self.down_acts[i]) for i in range(2)]
        stages += [(f"block{i + 1}", b, None) for i, b in enumerate(self.blocks)]
        h, crop = pad_to_multiple(x, 4)
        feats: dict[str, torch.Tensor] = {}
        for index, (name, make, after) in enumerate(stages):
            h = make(h)
            if name in layers:
                feats[name] = h
            if index == stop:
                return None, [feats[n] for n in layers]
            if after is not None:
                h = after(h)
        return self.decode(h)[(slice(None), slice(None), *crop)], [feats[n] for n in layers]

    def kernel_weights(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The per-pixel kernels a kernel generator applies to x (B, 1, *S), normalised in
        the source domain: weights (B, k^dim + n_shifts, *S) >= 0, summing to 1 at every
        pixel, in the order of `apply_kernels` (local taps by `itertools.product`, then the
        shifts). For a given x they make the translation a linear map of x's intensities
        (`refine.LearnedBlur`)."""
        if not self.kernel:
            raise ValueError("only a kernel generator has kernel weights")
        self._check_context(x, context)
        logits, _ = self._pass(x, (), False)
        return self._tap_weights(logits, context)

    def _check_context(self, x: torch.Tensor, context: torch.Tensor | None) -> None:
        """A generator with kernel shifts needs their taps (B, n_shifts, *S) for x."""
        if self.shifts:
            want = (x.shape[0], len(self.shifts), *x.shape[2:])
            if context is None or tuple(context.shape) != want:
                got = None if context is None else tuple(context.shape)
                raise ValueError(f"this generator needs context of shape {want}, got {got}")

    def _tap_weights(self, logits: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """Head output (B, taps [+ 1], *S) -> softmax tap weights (B, taps, *S); shifted
        taps missing from `context` (NaN) get none."""
        local = self.kernel**self.dim
        taps = local + len(self.shifts)
        tap_logits = logits[:, :taps].float() + self.prior.view((1, taps) + (1,) * self.dim)
        if self.shifts:
            missing = torch.isnan(context)
            tap_logits = torch.cat(
                [tap_logits[:, :local], tap_logits[:, local:].masked_fill(missing, -torch.inf)],
                dim=1,
            )
        return torch.softmax(tap_logits, dim=1)

    def translation(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        measured: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward`'s output as a translation: for a `nonnegative` generator, clipped at
        zero intensity (normalised 0 is intensity 0 in every domain) and, for a kernel
        generator, whose intensities are known, scaled so that each input of the batch
        keeps the summed intensity of the unclipped output over its `measured` pixels
        (bool, x's shape; None: all; masked pixels' outputs are thrown away, so they must
        not count). The training losses see the unclipped output, so that overshooting
        below zero still costs: clipping in training too made the demo's deconvolutions
        worse (PSNR 29.8 dB against 30.5 dB, clipped afterwards; one run each).

        Why the scaling: clipping cuts the negative half alone of whatever oscillates
        about zero (beside lines, and likely the noise the unsharp mask amplifies in
        empty regions), which adds intensity: clipped only, demo36's GAN-
        deconvolved test spectra held 115.9 % of the true spectra's intensity (101.8 %
        unclipped); scaled back, 101.8 %, PSNR 30.68 dB against 30.48, SSIM 0.901 against
        0.900, the same accuracy."""
        y = self(x, context=context)
        if not self.nonnegative:
            return y
        if not self.kernel:
            return y.clamp_min(0.0)
        s_target, gain_target = self.scales[2], self.scales[3]
        # sinh is odd and increasing: clipping intensities clips the normalised values
        intensity = _intensity(y.double(), s_target, gain_target)
        kept = intensity.clamp_min(0.0)
        weight = 1.0 if measured is None else measured
        before = (intensity * weight).flatten(1).sum(1)
        after = (kept * weight).flatten(1).sum(1)
        factor = torch.where(after > 0, (before / after.clamp_min(1e-300)).clamp(0, 1), 1.0)
        factor = factor.view((-1,) + (1,) * (y.dim() - 1))
        return _normalised(kept * factor, s_target, gain_target).to(y.dtype)

    def set_scales(self, source: IntensityScale, target: IntensityScale) -> None:
        """The source and target domains' intensity normalisations (kernel generators)."""
        if self.kernel:
            values = [source.s, source.gain, target.s, target.gain]
            self.scales.copy_(torch.tensor(values, dtype=self.scales.dtype))

    def apply_kernels(
        self, x: torch.Tensor, logits: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The output of a kernel generator: x (B, 1, *S) normalised in the source domain,
        logits (B, k^dim + n_shifts [+ 1], *S) from the head, context (B, n_shifts, *S) as
        in `forward` -> (B, 1, *S) normalised in the target domain. Edges are extended by
        replication; masked pixels (0) count as empty; missing context taps get no weight."""
        local = self.kernel**self.dim
        taps = local + len(self.shifts)
        # 0-d tensors, not Python floats: no device-to-host copy on a GPU every pass
        s_source, gain_source, s_target, gain_target = self.scales

        def to_intensity(z: torch.Tensor) -> torch.Tensor:
            return _intensity(z.float(), s_source, gain_source)

        intensity = to_intensity(x)
        weights = self._tap_weights(logits, context)
        out = local_blur(intensity, weights[:, :local], self.kernel)
        if self.shifts:
            shifted = to_intensity(context.masked_fill(torch.isnan(context), 0.0))
            out = out + (weights[:, local:] * shifted).sum(1, keepdim=True)
        if self.sharpen:
            amount = F.softplus(logits[:, taps:].float() - 2.0)  # starts near 0.13
            out = (1 + amount) * intensity - amount * out
        return _normalised(out, s_target, gain_target)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """The decoder on the last block's output; when translating on the CPU, each
        upsampling and the convolution after it run as one (`layers.folds_upsampling`,
        `layers.blur_upsample_conv`; same result)."""
        layers = list(self.decoder)
        i = 0
        while i < len(layers):
            if (
                isinstance(layers[i], BlurUpsample)
                and i + 1 < len(layers)
                and folds_upsampling(h, layers[i + 1])
            ):
                h = blur_upsample_conv(h, layers[i + 1])
                i += 2
            else:
                h = layers[i](h)
                i += 1
        return h


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix/CycleGAN) with `n_layers` strided stages and two output channels per
    patch: channel 0 real (1) vs fake (0); channel 1 the auxiliary class, simulation (1) vs
    experiment (0). Output (B, 2, *S_patches)."""

    def __init__(self, dim: int, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        self.dim = dim
        layers: list[nn.Module] = [conv(dim, 1, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = ndf
        for n in range(1, n_layers):
            c_next = ndf * min(2**n, 8)
            layers += [
                conv(dim, c, c_next, 4, stride=2, padding=1),
                instance_norm(dim, c_next),
                nn.LeakyReLU(0.2),
            ]
            c = c_next
        c_next = ndf * min(2**n_layers, 8)
        layers += [
            conv(dim, c, c_next, 4, padding=1),
            instance_norm(dim, c_next),
            nn.LeakyReLU(0.2),
            conv(dim, c_next, 2, 4, padding=1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ProjectionHeads(nn.Module):
    """One two-layer MLP (C_l -> units -> units) per encoder layer, L2-normalised output."""

    def __init__(self, channels: list[int], units: int = 256) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, units), nn.ReLU(inplace=True), nn.Linear(units, units))
            for c in channels
        )

    def forward(self, layer: int, feats: torch.Tensor) -> torch.Tensor:
        """Project sampled features (B, P, C_l) of encoder layer `layer` to (B, P, units)."""
        return F.normalize(self.mlps[layer](feats), dim=-1, eps=1e-7)
