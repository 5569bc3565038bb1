"""The DUQ network (van Amersfoort et al., ICML 2020): a convolutional feature extractor, one
weight matrix per class and an RBF kernel to each class centroid.

Tensors are (batch, channels, *spatial) with 1, 2 or 3 spatial axes, the same code for all.
The input has two channels: the normalised intensity (0 where masked) and the "measured"
indicator (1 where the pixel has data, 0 where masked).

    f   = features(x)                               (n, F)
    u_c = W_c f                                     (n, C, M)
    K_c = exp(-mean_m (u_c - e_c)^2 / (2 sigma^2))  (n, C), in [0, 1]

The centroids e_c = m_c / N_c are buffers, not parameters: after each optimisation step they
follow the class means of u_c by an exponential moving average with factor gamma
(gamma = 1 would freeze them, the mistake of Butler's original code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from exp2sim.gan.layers import conv

DEFAULT_POOL = {1: (16,), 2: (6, 10), 3: (4, 4, 4)}  # 2D: one cell per tile of the mosaic
_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


class FeatureExtractor(nn.Module):
    """Convolution stages with ReLU: a patch stem (kernel = stride = `stem`, channels[0]),
    then kernel 3, stride 2 for the other channels; an adaptive average pool to a fixed grid
    `pool` (not a global pool: where a feature sits in the mosaic matters), then a linear map
    to `features` values. Input (n, in_channels, *S), output (n, features). The 240 x 400
    mosaic becomes 60 x 100, 30 x 50, 15 x 25, 8 x 13, pooled to 6 x 10 (one cell per tile).
    The stem keeps the costly full-resolution layer (twice differentiated by the gradient
    penalty) small; inputs are zero-padded (= masked) to a multiple of it."""

    def __init__(
        self,
        dim: int,
        in_channels: int = 2,
        channels: tuple[int, ...] = (16, 32, 64, 64),
        pool: tuple[int, ...] | None = None,
        features: int = 128,
        stem: int = 4,
    ) -> None:
        super().__init__()
        if dim not in (1, 2, 3):
            raise ValueError(f"spectra must be 1D, 2D or 3D, got {dim}D")
        pool = tuple(pool) if pool else DEFAULT_POOL[dim]
        if len(pool) != dim:
            raise ValueError(f"pool grid {pool} does not have {dim} axes")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(channels):
            if i == 0:
                layers += [conv(dim, c_in, c_out, stem, stride=stem), nn.ReLU()]
            else:
                layers += [conv(dim, c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c_out
        self.dim, self.stem = dim, stem
        self.convs = nn.Sequential(*layers)
        self.pool = _POOL[dim](pool)
        self.linear = nn.Linear(c_in * math.prod(pool), features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad: list[int] = []
        for size in reversed(x.shape[2:]):
            pad += [0, (-size) % self.stem]
        x = F.pad(x, pad) if any(pad) else x
        return F.relu(self.linear(self.pool(self.convs(x)).flatten(1)))


class DUQHead(nn.Module):
    """Per-class weight matrices W (C, M, F) and RBF kernels to the centroids.

    Buffers: m (C, M) and N (C,), the moving sums whose ratio e = m / N is the centroid.
    """

    def __init__(
        self,
        features: int,
        n_classes: int,
        centroid_size: int = 64,
        sigma: float = 0.1,
        gamma: float = 0.999,
    ) -> None:
        super().__init__()
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma, self.gamma = sigma, gamma
        self.W = nn.Parameter(torch.empty(n_classes, centroid_size, features))
        nn.init.normal_(self.W, std=(2.0 / features) ** 0.5)  # He init per W_c
        # as in DUQ: N starts at 13 "virtual" examples per class around small random centroids
        self.register_buffer("N", torch.full((n_classes,), 13.0))
        self.register_buffer("m", 13.0 * 0.05 * torch.randn(n_classes, centroid_size))

    @property
    def centroids(self) -> torch.Tensor:
        """e (C, M)."""
        return self.m / self.N[:, None]

    def embed(self, f: torch.Tensor) -> torch.Tensor:
        """Features (n, F) -> class embeddings u = W_c f, (n, C, M)."""
        return torch.einsum("cmf,nf->ncm", self.W, f)

    def kernel(self, u: torch.Tensor) -> torch.Tensor:
        """Embeddings (n, C, M) -> kernel values K (n, C) in [0, 1]."""
        d2 = (u - self.centroids).pow(2).mean(-1)
        return torch.exp(-d2 / (2 * self.sigma**2))

    @torch.no_grad()
    def update_centroids(self, u: torch.Tensor, onehot: torch.Tensor) -> None:
        """One moving-average step towards the batch's class embeddings.

        u (n, C, M) embeddings; onehot (n, C) labels. N_c <- gamma N_c + (1 - gamma) n_c,
        m_c <- gamma m_c + (1 - gamma) sum_{i in c} u_ic.
        """
        onehot = onehot.to(u.dtype)
        g = self.gamma
        self.N.mul_(g).add_((1 - g) * onehot.sum(0))
        self.m.mul_(g).add_((1 - g) * torch.einsum("nc,ncm->cm", onehot, u.detach()))


class DUQNetwork(nn.Module):
    """Feature extractor + DUQ head. forward(x) -> (K (n, C), u (n, C, M))."""

    def __init__(
        self,
        dim: int,
        n_classes: int,
        channels: tuple[int, ...] = (16, 32, 64, 64),
        pool: tuple[int, ...] | None = None,
        features: int = 128,
        centroid_size: int = 64,
        sigma: float = 0.1,
        gamma: float = 0.999,
        stem: int = 4,
    ) -> None:
        super().__init__()
        self.features = FeatureExtractor(dim, 2, channels, pool, features, stem)
        self.head = DUQHead(features, n_classes, centroid_size, sigma, gamma)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.head.embed(self.features(x))
        return self.head.kernel(u), u


def gradient_penalty(
    kernel: torch.Tensor, intensity: torch.Tensor, reference_size: int | None = None
) -> torch.Tensor:
    """Two-sided penalty mean_i (||d sum_c K_ic / d x_i||^2 * R / D - 1)^2 over the batch.

    kernel (n, C) computed from `intensity` (n, *S), which must require grad; D = prod(S)
    values per spectrum, R = `reference_size` (None: R = D, DUQ's plain penalty with target
    norm 1). DUQ set its target norm 1 and lambda 0.5 for CIFAR-10 (R = 3 x 32 x 32); a
    240 x 400 mosaic (D = 96,000) pinned to norm 1 does not learn at all. The target norm
    sqrt(D / R) asks for the same root-mean-square sensitivity per pixel at any input size.
    The result is differentiable (create_graph), so it trains the feature extractor.
    """
    (grad,) = torch.autograd.grad(kernel.sum(), intensity, create_graph=True)
    size = grad[0].numel()
    scale = 1.0 if reference_size is None else reference_size / size
    return ((grad.flatten(1).pow(2).sum(1) * scale - 1) ** 2).mean()
