"""Exp2SimGAN: the dual contrastive (DCLGAN) setting with the paper's auxiliary loss.

Domain A is experiment-like, domain B simulation. G_A: A -> B (Exp2Sim, removes resolution),
G_B: B -> A (Sim2Exp, adds it). D_A judges domain A, D_B domain B; each has a real/fake
output and an auxiliary output that says "simulation" (1) or "experiment" (0). F_A and F_B
are the projection heads for features of G_A's and G_B's encoders.

One training step (`DCLGAN.train_step`):

1. G_A on [real_A, real_B] in one batch gives fake_B and the identity idt_B, and the
   encoder features of real_A from the same pass; likewise G_B gives fake_A, idt_A and
   real_B's features. (Instance norm is per sample, so batching changes nothing.)
2. Discriminators: D_B on [real_B, real_A, fake_B]: real/fake on real_B vs fake_B, auxiliary
   class on real_B (1) vs real_A (0); D_A likewise.
3. Generators and heads:
   GAN + auxiliary: fake_B should look real to D_B and "simulation"; fake_A real and
   "experiment" to D_A.
   PatchNCE, dual: fake_B goes through the *other* generator's encoder (G_B), its patches
   are the queries (head F_B); the keys are real_A's patches at the same locations from
   G_A's encoder (head F_A). The other direction mirrors it.
   Identity: |idt_B - real_B| and |idt_A - real_A|.
   Intensity (exp2sim's, off in the paper's setting): |smooth(I(fake_B)) - smooth(I(real_A))|
   and the same for fake_A, with I the intensities (the normalisation undone) and smooth a
   Gaussian of intensity_sigma pixels. Resolution moves intensity by a few pixels but
   conserves it; nothing else in the paper's losses asks a translation to keep it, and with
   short training the paper's generators lost 30-60 % of it (evaluation/config.py).
   loss_G = l_gan*mean(GAN) + l_nce*mean(NCE) + l_idt*mean(idt) + l_aux*mean(aux)
            + l_intensity*mean(intensity).

Masked pixels enter as 0, are excluded from every loss (see losses.py), and translations
are set to 0 there, so a mask is never filled in.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from exp2sim.gan.config import TrainConfig
from exp2sim.gan.data import shifted_copies
from exp2sim.gan.layers import xavier_init
from exp2sim.gan.losses import (
    gather_locations,
    gaussian_lowpass,
    masked_l1,
    patch_mse,
    patch_nce,
    sample_locations,
    valid_fraction,
)
from exp2sim.gan.networks import PatchDiscriminator, ProjectionHeads, ResnetGenerator
from exp2sim.gan.normalisation import IntensityScale

SIM, EXP = 1.0, 0.0  # auxiliary class labels


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the network passes when asked for, else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_generator(
    generator: ResnetGenerator,
    z: np.ndarray,
    device: torch.device,
    precision: str,
    context: np.ndarray | None = None,
) -> np.ndarray:
    """Translate one normalised spectrum z (*S, NaN where masked) with `generator`:
    (*S) float32. `context`: the shifted taps (n_shifts, *S) of a generator with kernel
    shifts, NaN where missing; None: taken from z (`data.shifted_copies`), right when z is a
    whole spectrum, not a tile of one."""
    if context is None and generator.shifts:
        context = shifted_copies(z, generator.shifts)
    stacked = None if context is None else context[None]
    return _forward(generator, z[None], device, precision, stacked)[0]


def run_generator_stack(
    generator: ResnetGenerator,
    z: np.ndarray,
    device: torch.device,
    precision: str,
    max_voxels: int = 2**21,
) -> np.ndarray:
    """Translate a stack (n, *S) of normalised spectra (NaN where masked) with a
    generator without kernel shifts, in passes of at most `max_voxels` input voxels: (n, *S)
    float32. Instance norm is per spectrum, so this equals n calls of `run_generator` (to
    float round-off), with less overhead for small spectra (a folded mosaic's volumes: 1.34 s
    for 5 x 6 volumes, 2.22 s one by one)."""
    if generator.shifts:
        raise ValueError("a generator with kernel shifts translates one spectrum at a time")
    step = max(1, max_voxels // math.prod(z.shape[1:]))
    return np.concatenate(
        [_forward(generator, z[i : i + step], device, precision) for i in range(0, len(z), step)]
    )


@torch.no_grad()
def _forward(
    generator: ResnetGenerator,
    z: np.ndarray,
    device: torch.device,
    precision: str,
    context: np.ndarray | None = None,
) -> np.ndarray:
    """One generator pass over a stack z (n, *S) (NaN = masked, passed as 0), with shifted
    taps `context` (n, n_shifts, *S) or None: (n, *S) float32. The finite pixels are the
    measured ones of `ResnetGenerator.translation`."""

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    x = tensor(np.nan_to_num(z, nan=0.0))[:, None]
    measured = None
    if generator.nonnegative:  # only a clipped translation needs them
        measured = torch.from_numpy(np.isfinite(z)).to(device)[:, None]
    ctx = None if context is None else tensor(context)
    with autocast(device, precision):
        return generator.translation(x, ctx, measured).float()[:, 0].cpu().numpy()


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Turn off gradients of `modules` inside the block."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def build_generator(
    config: TrainConfig, dim: int, exp2sim: bool, b_nonnegative: bool = True
) -> ResnetGenerator:
    """A run's Exp2Sim generator (G_A: an unsharp mask for kernel generators, clipped at zero
    where `config.clips(b_nonnegative)`) or its Sim2Exp generator (G_B), for `dim`-dimensional
    spectra: one place for training and `Translator` to build them alike."""
    c = config
    return ResnetGenerator(
        dim,
        c.ngf,
        c.n_blocks,
        c.kernel,
        sharpen=exp2sim,
        shifts=c.kernel_shifts,
        nonnegative=exp2sim and c.clips(b_nonnegative),
        head=c.head,
    )


class DCLGAN(nn.Module):
    """The six networks of Exp2SimGAN for `dim`-dimensional spectra, and one training step.
    `b_nonnegative`: domain B's spectra have no negative values (`TrainConfig.clips`)."""

    def __init__(self, config: TrainConfig, dim: int, b_nonnegative: bool = True) -> None:
        super().__init__()
        self.config, self.dim = config, dim
        c = config
        self.G_A = build_generator(c, dim, exp2sim=True, b_nonnegative=b_nonnegative)
        self.G_B = build_generator(c, dim, exp2sim=False)
        self.D_A = PatchDiscriminator(dim, c.ndf, c.d_layers)
        self.D_B = PatchDiscriminator(dim, c.ndf, c.d_layers)
        channels = self.G_A.layer_channels(c.nce_layers)
        self.F_A = ProjectionHeads(channels, c.nce_units)
        self.F_B = ProjectionHeads(channels, c.nce_units)
        xavier_init(self)
        # the domains' normalisations, for the intensity loss (s = 1 until set_scales)
        self.scales = (IntensityScale(q=10.0), IntensityScale(q=10.0))

    def set_scales(self, scale_a: IntensityScale, scale_b: IntensityScale) -> None:
        """The domains' intensity normalisations (needed for lambda_intensity > 0 and for
        kernel generators)."""
        self.scales = (scale_a, scale_b)
        self.G_A.set_scales(scale_a, scale_b)
        self.G_B.set_scales(scale_b, scale_a)

    def _smoothed_intensity(self, z: torch.Tensor, domain: int) -> torch.Tensor:
        """Normalised values of `domain` (0: A, 1: B) -> intensities (IntensityScale.inverse,
        differentiable) smoothed by a Gaussian of intensity_sigma pixels."""
        scale = self.scales[domain]
        return gaussian_lowpass(scale.s * torch.sinh(z * scale.gain), self.config.intensity_sigma)

    def intensity_loss(
        self, fake_b: torch.Tensor, real_a: torch.Tensor, fake_a: torch.Tensor, real_b: torch.Tensor
    ) -> torch.Tensor:
        """Mean |difference| between the smoothed intensities of each translation and of its
        input, in units of s of the translation's domain, averaged over both directions.
        Masked pixels are zero in both (translations are masked with their input's mask)."""
        i = self._smoothed_intensity
        ab = F.l1_loss(i(fake_b, 1), i(real_a, 0)) / self.scales[1].s
        ba = F.l1_loss(i(fake_a, 0), i(real_b, 1)) / self.scales[0].s
        return 0.5 * (ab + ba)

    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.G_A, self.G_B, self.F_A, self.F_B) for p in m.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.D_A, self.D_B) for p in m.parameters()]

    def optimisers(self) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        """Adam with the configured rate and betas: (generators + heads, discriminators)."""
        c = self.config
        betas = (c.beta1, c.beta2)
        return (
            torch.optim.Adam(self.generator_parameters(), c.lr, betas),
            torch.optim.Adam(self.discriminator_parameters(), c.lr, betas),
        )

    def _nce(
        self,
        keys: list[torch.Tensor],
        key_heads: ProjectionHeads,
        output: torch.Tensor,
        encoder: ResnetGenerator,
        query_heads: ProjectionHeads,
        mask: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """PatchNCE between an input's encoder features `keys` and its translation `output`
        encoded by the other generator, averaged over the layers."""
        _, queries = encoder(output, self.config.nce_layers, encode_only=True)
        total = output.new_zeros((), dtype=torch.float32)
        for layer, (k, q) in enumerate(zip(keys, queries, strict=True)):
            weights = valid_fraction(mask, k.shape[2:]).flatten(1)
            ids = sample_locations(weights, self.config.nce_patches, generator)
            with torch.no_grad():  # keys are not differentiated (as in CUT/DCLGAN)
                k_emb = key_heads(layer, gather_locations(k, ids))
            q_emb = query_heads(layer, gather_locations(q, ids))
            total = total + patch_nce(q_emb, k_emb, self.config.nce_temperature)
        return total / len(keys)

    def train_step(
        self,
        real_a: torch.Tensor,
        mask_a: torch.Tensor,
        real_b: torch.Tensor,
        mask_b: torch.Tensor,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        generator: torch.Generator,
    ) -> dict[str, float]:
        """One discriminator and one generator update on a batch of crops (B, 1, *crop) of
        each domain; with kernel shifts (B, 1 + n_shifts, *crop): the spectra and then
        their shifted taps (`data.CropSampler`). Returns the losses as floats."""
        c, n = self.config, len(real_a)
        amp = autocast(real_a.device, c.precision)
        layers = c.nce_layers
        ctx_a = ctx_b = None  # the shifted taps of G_A's batch [A, B] and G_B's [B, A]
        if c.kernel_shifts:
            ctx_a = torch.cat([real_a[:, 1:], real_b[:, 1:]])
            ctx_b = torch.cat([real_b[:, 1:], real_a[:, 1:]])
            real_a, real_b = real_a[:, :1], real_b[:, :1]
        with amp:
            out_a, feats_a = self.G_A(torch.cat([real_a, real_b]), layers, context=ctx_a)
            out_b, feats_b = self.G_B(torch.cat([real_b, real_a]), layers, context=ctx_b)
        fake_b = out_a[:n].float().masked_fill(mask_a, 0.0)
        idt_b = out_a[n:].float().masked_fill(mask_b, 0.0)
        fake_a = out_b[:n].float().masked_fill(mask_b, 0.0)
        idt_a = out_b[n:].float().masked_fill(mask_a, 0.0)
        keys_a = [f[:n] for f in feats_a]  # real_A through G_A's encoder
        keys_b = [f[:n] for f in feats_b]

        # discriminators
        with amp:
            pred_b = self.D_B(torch.cat([real_b, real_a, fake_b.detach()]))
            pred_a = self.D_A(torch.cat([real_a, real_b, fake_a.detach()]))
        loss_d = 0.0
        for pred, m_own, m_other, own, other in (
            (pred_b, mask_b, mask_a, SIM, EXP),
            (pred_a, mask_a, mask_b, EXP, SIM),
        ):
            real, other_real, fake = pred[:n], pred[n : 2 * n], pred[2 * n :]
            gan = 0.5 * (patch_mse(real[:, :1], 1.0, m_own) + patch_mse(fake[:, :1], 0.0, m_other))
            aux = 0.5 * (
                patch_mse(real[:, 1:], own, m_own) + patch_mse(other_real[:, 1:], other, m_other)
            )
            loss_d = loss_d + gan + c.lambda_aux * aux
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        average_gradients(self.discriminator_parameters())
        opt_d.step()

        # generators and projection heads
        with frozen(self.D_A, self.D_B), amp:
            pred_fb = self.D_B(fake_b)
            pred_fa = self.D_A(fake_a)
            nce_ab = self._nce(keys_a, self.F_A, fake_b, self.G_B, self.F_B, mask_a, generator)
            nce_ba = self._nce(keys_b, self.F_B, fake_a, self.G_A, self.F_A, mask_b, generator)
        gan_g = 0.5 * (
            patch_mse(pred_fb[:, :1], 1.0, mask_a) + patch_mse(pred_fa[:, :1], 1.0, mask_b)
        )
        aux_g = 0.5 * (
            patch_mse(pred_fb[:, 1:], SIM, mask_a) + patch_mse(pred_fa[:, 1:], EXP, mask_b)
        )
        nce = 0.5 * (nce_ab + nce_ba)
        idt = 0.5 * (masked_l1(idt_b, real_b, mask_b) + masked_l1(idt_a, real_a, mask_a))
        loss_g = (
            c.lambda_gan * gan_g + c.lambda_nce * nce + c.lambda_idt * idt + c.lambda_aux * aux_g
        )
        with torch.set_grad_enabled(c.lambda_intensity > 0):  # else only reported
            intensity = self.intensity_loss(fake_b, real_a, fake_a, real_b)
        if c.lambda_intensity:
            loss_g = loss_g + c.lambda_intensity * intensity
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        average_gradients(self.generator_parameters())
        opt_g.step()
        return {
            "D": loss_d.item(),
            "G": loss_g.item(),
            "gan": gan_g.item(),
            "nce": nce.item(),
            "idt": idt.item(),
            "aux": aux_g.item(),
            "intensity": intensity.item(),
        }


def average_gradients(params: list[nn.Parameter]) -> None:
    """Data parallelism across torchrun processes: average every gradient over the ranks
    with one all-reduce of a flat buffer, the algorithm of DistributedDataParallel (whose
    wrapper does not allow a network to run twice per step, as the dual NCE needs)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
