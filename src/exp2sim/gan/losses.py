"""Losses of Exp2SimGAN with masked (NaN) detector pixels left out of every term.

Masks are boolean tensors (B, 1, *S), True where a pixel has no data. A loss on a coarser
map (discriminator patches, encoder features) weights each cell by the fraction of its
pixels that hold data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def valid_fraction(mask: torch.Tensor, size: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Fraction of unmasked pixels in each cell of a coarser grid `size`: (B, 1, *size)."""
    valid = (~mask).float()
    if tuple(size) == tuple(mask.shape[2:]):
        return valid
    return _POOL[mask.dim() - 2](valid, tuple(size))


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(values * weights) / sum(weights); weights broadcast over channels."""
    weights = weights.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1e-8)


def masked_l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |x - y| over unmasked pixels."""
    return weighted_mean((x.float() - y.float()).abs(), valid_fraction(mask, x.shape[2:]))


def patch_mse(pred: torch.Tensor, target: float, mask: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN / auxiliary loss: mean (pred - target)^2 over the discriminator's
    patches, each weighted by the unmasked fraction of its input cell. pred (B, 1, *P)."""
    weights = valid_fraction(mask, pred.shape[2:])
    return weighted_mean((pred.float() - target) ** 2, weights)


def sample_locations(
    weights: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw up to n distinct feature-map locations per sample, (B, n') int64, with probability
    proportional to `weights` (B, N): the unmasked fraction of each location, plus a tiny
    floor so a mostly masked crop still yields n' = min(n, N) locations."""
    n = min(n, weights.shape[1])
    probs = weights.detach().float().cpu() + 1e-6
    return torch.multinomial(probs, n, replacement=False, generator=generator)


def gather_locations(feats: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Features (B, C, *S) at flat locations ids (B, P): (B, P, C)."""
    flat = feats.flatten(2).transpose(1, 2)
    ids = ids.to(feats.device)
    return torch.gather(flat, 1, ids[..., None].expand(-1, -1, flat.shape[-1]))


def gaussian_lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x (B, C, *S) smoothed along each spatial axis by a Gaussian of standard deviation
    `sigma` pixels (truncated at 3 sigma, zeros beyond the edges); same shape."""
    radius = max(1, round(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    for axis in range(2, x.dim()):
        moved = x.movedim(axis, -1)
        flat = F.conv1d(moved.reshape(-1, 1, moved.shape[-1]), kernel, padding=radius)
        x = flat.view(moved.shape).movedim(-1, axis)
    return x


def patch_nce(query: torch.Tensor, key: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """PatchNCE (InfoNCE over patches of one image; Park et al. 2020).

    query, key: (B, P, D) L2-normalised embeddings of the same P locations in the output and
    the input. For each query patch the positive is the key at the same location, the
    negatives the other P - 1 keys of the same image. Keys are not differentiated (as in
    CUT/DCLGAN). One batched matrix product makes all (P, P) similarities at once.
    Returns the mean cross-entropy over the B * P queries.
    """
    logits = torch.bmm(query.float(), key.detach().float().transpose(1, 2)) / temperature
    b, p, _ = logits.shape
    target = torch.arange(p, device=logits.device).repeat(b)
    return F.cross_entropy(logits.reshape(b * p, p), target)
