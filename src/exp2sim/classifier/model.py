"""The DUQ classifier as an estimator: fit on labelled spectra, then certainties per class.

Spectra are float32 arrays (n, *S) with NaN where masked; S has 1, 2 or 3 axes (e.g. the
240 x 400 MAPS mosaic). Each spectrum is normalised on its own (absolute units do not
matter): z = asinh(x / s) / asinh(q / s), q the 99th percentile of |x| over its finite
non-zero pixels, s = q / 10 (`IntensityScale`). Pixels without data in every training
spectrum (the instrument's mask) are masked in every input too, so values there never count.

    clf = DUQClassifier(ClassifierConfig(epochs=20)).fit(spectra, labels, ["dimer", "goodenough"])
    clf.certainties(x)      # (n, C) in [0, 1]; all low = none of the known models
    clf.known(x)            # (n,) False also where x lies off the training spectra
    clf.save("cls"); DUQClassifier.load("cls")
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exp2sim.classifier.network import DUQNetwork, gradient_penalty
from exp2sim.classifier.subspace import MAX_FIT_SPECTRA, Subspace, calibrated, fold_labels
from exp2sim.fileio import write_text_atomic
from exp2sim.gan.checkpoint import load_state, read_info, save_state
from exp2sim.gan.normalisation import IntensityScale
from exp2sim.gan.train import pick_device
from exp2sim.settings import from_dict
from exp2sim.spectra.noise import with_counting_noise

# out-of-fit residuals for the subspace's limit: folds, and how often the folds are drawn
SUBSPACE_FOLDS, SUBSPACE_REPEATS = 10, 2

WEIGHTS = "classifier.safetensors"
CONFIG = "config.json"
FORMAT = "exp2sim-duq-classifier"


@dataclass
class ClassifierConfig:
    """Every hyper-parameter of a DUQ classifier and its training."""

    # network
    channels: tuple[int, ...] = (16, 32, 64, 64)  # conv stages: the stem, then stride 2
    stem: int = 4  # kernel and stride of the first (patch) stage
    pool: tuple[int, ...] = ()  # pooled grid; () = by dimension: (16,), (6, 10), (4, 4, 4)
    features: int = 128  # feature vector f
    centroid_size: int = 64  # M, rows of each W_c
    sigma: float = 0.1  # RBF length scale
    gamma: float = 0.999  # centroid moving-average factor (1 would freeze the centroids)
    gradient_penalty: float = 0.5  # lambda of the two-sided penalty
    penalty_size: int = 3072  # values per input at which the target norm is 1 (DUQ: 3 x 32 x 32)
    # spectra of each batch (its first ones; batches are drawn at random) on which the
    # penalty is computed; 0: all. Its double backward is most of a step's time (batch 16
    # of the demo's mosaics: 87-95 ms a step with the penalty, 23-26 ms without), and the
    # penalty is a mean over spectra, so a random subset estimates it without bias. With 4
    # of 16 the demo's classifier on unconvolved spectra accepted far more
    # out-of-distribution spectra (docs/measurements.md), so all is the default.
    penalty_batch: int = 0
    # training
    epochs: int = 20  # at least; more when needed for `min_steps` (see `epochs_for`)
    # optimiser steps at least: small sets otherwise collapse. On the demo's 100 unconvolved
    # training mosaics per model, seeds 0-3 reached 92.5 / 77.5 / 63.7 / 58.8 % on the
    # test set after 400 steps, 96.2 / 85.0 / 91.2 / 93.8 % after 1,200 (2,400: no better
    # on seeds 1-2; a cosine decay of the rate over 400 steps: 49-61 %)
    min_steps: int = 1200
    batch_size: int = 16
    lr: float = 1e-3  # AdamW
    weight_decay: float = 1e-4
    val_fraction: float = 0.1  # held out of each class for the reported accuracy
    # Extra copies of each training spectrum with counting noise (Poisson; a level per
    # spectrum and copy drawn log-uniformly from `noise_counts` counts at its 99th
    # percentile, exp2sim.spectra.noise), to teach a classifier of experiment-like spectra
    # that noise is not what tells the models apart. The optimiser steps stay as they are
    # (`min_steps`). 0: none. Held-out spectra get no copies. On the demo's convolved
    # spectra 2 copies made photographs and digits pass as known far more often (55-58 %
    # on average over six seeds; docs/measurements.md): off by default.
    noise_copies: int = 0
    noise_counts: tuple[float, float] = (20.0, 500.0)
    seed: int = 0
    device: str = "auto"  # auto, cpu or cuda
    # inputs and decisions
    percentile: float = 99.0
    compression: float = 10.0
    threshold: float = 0.5  # every certainty below it: none of the known models
    # ... or the input's RMS residual after the training inputs' first
    # `residual_components` principal directions beyond this quantile of residuals measured
    # out of fit (exp2sim.classifier.subspace; 0: not used)
    residual_components: int = 20
    residual_quantile: float = 0.99
    # ... or the features' Mahalanobis distance beyond this quantile of in-distribution
    # distances (0: not used). Off by default: its limit depended on the draw. On the
    # demo's mosaics seed 0's classifiers called only 59-60 % of their own test sets known
    # with it, seed 1's 80-100 % of the digits (docs/measurements.md).
    novelty_quantile: float = 0.0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.noise_counts = tuple(float(c) for c in self.noise_counts)
        self.pool = tuple(int(p) for p in self.pool)
        positive = ("features", "centroid_size", "epochs", "batch_size", "sigma", "lr")
        positive += ("stem", "penalty_size", "residual_components")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive integers, got {self.channels}")
        if self.pool and min(self.pool) < 1:
            raise ValueError(f"pool must be positive integers, got {self.pool}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.gradient_penalty < 0 or self.weight_decay < 0 or self.penalty_batch < 0:
            raise ValueError(
                "gradient_penalty, penalty_batch and weight_decay must not be negative"
            )
        if self.noise_copies < 0:
            raise ValueError(f"noise_copies must not be negative, got {self.noise_copies}")
        low_high = len(self.noise_counts) == 2 and 0 < self.noise_counts[0]
        if not (low_high and self.noise_counts[0] <= self.noise_counts[1]):
            raise ValueError(
                f"noise_counts must be (low, high) with 0 < low <= high, got {self.noise_counts}"
            )
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        for name in ("novelty_quantile", "residual_quantile"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.percentile <= 100 or self.compression <= 0:
            raise ValueError("percentile must be in (0, 100] and compression positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClassifierConfig:
        return from_dict(cls, values, "classifier setting(s)")


def normalise(
    spectra: np.ndarray, percentile: float = 99.0, compression: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-spectrum intensity normalisation of (n, *S) spectra (NaN = masked).

    Returns z (n, *S) float32 (0 where masked) and measured (n, *S) float32 (1 where the
    pixel has data). A spectrum whose measured pixels are all zero stays zero.
    """
    measured = np.isfinite(spectra)
    z = np.zeros(spectra.shape, dtype=np.float32)
    for i, x in enumerate(spectra):
        values = x[measured[i]]
        if np.any(values != 0):
            scale = IntensityScale.fit(values, percentile, compression)
            z[i][measured[i]] = scale.transform(values)
    return z, measured.astype(np.float32)


def _split(labels: np.ndarray, n_classes: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean (n,) validation selection: round(fraction * n_c) of each class, at least one
    spectrum of each class left for training."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), dtype=bool)
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(int(round(fraction * len(idx))), len(idx) - 1)
        val[idx[:n_val]] = True
    return val


def _as_spectra(spectra: np.ndarray, what: str) -> np.ndarray:
    """float32 copy of an array of spectra, with one-line errors for non-numeric or Inf."""
    array = np.asarray(spectra)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=True)
    if np.isinf(array).any():
        raise ValueError(f"{what} contain infinite values (use NaN for masked pixels)")
    return array


def _check_not_empty(spectra: np.ndarray, what: str) -> None:
    empty = ~np.isfinite(spectra).reshape(len(spectra), -1).any(1)
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise ValueError(f"{what}: spectrum {i} has no measured pixel (all NaN)")


class DUQClassifier:
    """A DUQ classifier of 1D, 2D or 3D spectra; scikit-learn style fit/predict."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        self.config = config or ClassifierConfig()
        self.network: DUQNetwork | None = None
        self.classes: list[str] = []
        self.input_shape: tuple[int, ...] | None = None
        # bin centres per axis of the training spectra, when known (set before `save`);
        # inputs with other axes are refused (exp2sim.readers.check_compatible)
        self.axes: dict[str, np.ndarray] | None = None
        self.mask: np.ndarray | None = None  # S bool, True = no data in any training spectrum
        self.history: list[dict[str, Any]] = []
        self.device = torch.device("cpu")
        # novelty: the training features' mean (F,) and shrunk precision matrix (F, F) and
        # the largest distance still called known (see `novelty_distance`); None if unset
        self.novelty: dict[str, Any] | None = None
        # the training inputs' principal directions and the largest residual still called
        # known (see `residual`); None if unset
        self.subspace: Subspace | None = None

    # ------------------------------------------------------------------ training
    def epochs_for(self, n_train: int) -> int:
        """Epochs for n_train training spectra: `epochs`, or more to make `min_steps`
        optimiser steps (100 spectra in batches of 16 need 172 epochs for 1,200 steps)."""
        steps = max(1, -(-n_train // self.config.batch_size))
        return max(self.config.epochs, -(-self.config.min_steps // steps))

    def fit(
        self,
        spectra: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> DUQClassifier:
        """Train on spectra (n, *S) with integer labels (n,) indexing `classes`.

        `progress`, if given, is called after every epoch with that epoch's history entry.
        """
        cfg = self.config
        spectra = _as_spectra(spectra, "training spectra")
        if not 2 <= spectra.ndim <= 4:
            raise ValueError(
                f"training spectra must be a stack (n, *S) of 1D, 2D or 3D spectra, "
                f"got shape {spectra.shape}"
            )
        labels = np.asarray(labels)
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes) or not classes:
            raise ValueError(f"classes must be distinct names, got {classes}")
        if labels.shape != (len(spectra),) or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be {len(spectra)} integers, got {labels.shape}")
        if labels.min() < 0 or labels.max() >= len(classes):
            raise ValueError(f"labels must lie in 0..{len(classes) - 1}")
        missing = [c for i, c in enumerate(classes) if not np.any(labels == i)]
        if missing:
            raise ValueError(f"class {missing[0]!r} has no training spectra")
        _check_not_empty(spectra, "training spectra")

        self.classes = classes
        self.input_shape = tuple(spectra.shape[1:])
        self.mask = ~np.isfinite(spectra).any(0)
        self.device = pick_device(cfg.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.network = self._build().to(self.device)
        val = _split(labels, len(classes), cfg.val_fraction, cfg.seed)
        train_idx = np.flatnonzero(~val)
        # rows: the spectra, then `noise_copies` noisy copies of the training ones;
        # origin: the spectrum each row comes from
        noise = np.random.default_rng(cfg.seed + 2)
        copies = [
            with_counting_noise(spectra[train_idx], cfg.noise_counts, noise)
            for _ in range(cfg.noise_copies)
        ]
        origin = np.concatenate([np.arange(len(spectra))] + [train_idx] * cfg.noise_copies)
        train_idx = np.concatenate([train_idx, np.arange(len(spectra), len(origin))])
        val = np.concatenate([val, np.zeros(len(origin) - len(spectra), bool)])
        z, measured = normalise(np.concatenate([spectra, *copies]), cfg.percentile, cfg.compression)
        z_t, m_t = torch.from_numpy(z), torch.from_numpy(measured)
        y_t = torch.from_numpy(labels[origin].astype(np.int64))
        optimiser = torch.optim.AdamW(
            self.network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        rng = np.random.default_rng(cfg.seed + 1)
        self.history = []
        epochs = self.epochs_for(len(train_idx))
        for epoch in range(epochs):
            start = time.perf_counter()
            self.network.train()
            sums = np.zeros(4)  # loss, bce, penalty, correct
            for batch in np.array_split(
                rng.permutation(train_idx), max(1, -(-len(train_idx) // cfg.batch_size))
            ):
                b = torch.from_numpy(batch)
                sums += self._step(optimiser, z_t[b], m_t[b], y_t[b]) * len(batch)
            entry = {
                "epoch": epoch + 1,
                "epochs": epochs,
                "loss": float(sums[0] / len(train_idx)),
                "bce": float(sums[1] / len(train_idx)),
                "penalty": float(sums[2] / len(train_idx)),
                "train_accuracy": float(sums[3] / len(train_idx)),
                "val_accuracy": None,
                "n_train": int(len(train_idx)),
                "n_val": int(val.sum()),
            }
            if val.any():
                k = self._kernel(z_t[val], m_t[val])
                entry["val_accuracy"] = float((k.argmax(1) == labels[origin[val]]).mean())
            entry["seconds"] = time.perf_counter() - start
            self.history.append(entry)
            if progress is not None:
                progress(entry)
        train = np.flatnonzero(~val)
        self.novelty = self._fit_novelty(z_t, m_t, val, train, origin)
        self.subspace = self._fit_subspace(z, measured, train, origin)
        return self

    def _fit_subspace(
        self, z: np.ndarray, measured: np.ndarray, train: np.ndarray, origin: np.ndarray
    ) -> Subspace | None:
        """Principal directions of the training rows' (indices `train`) normalised inputs
        (z, measured: `normalise`'s) and the limit of "known" for the residual they leave:
        the `residual_quantile` of residuals measured out of fit, in SUBSPACE_FOLDS folds,
        SUBSPACE_REPEATS times (`subspace.calibrated`). `origin`: the spectrum each row
        comes from. None with residual_quantile 0 or under 8 training spectra.

        Why: unlike the features, the input cannot collapse. On demo57's mosaics, over
        classifier seeds 1-3, it let 98-99 % of the own test sets through and none of the
        photographs, digits or artefacts; docs/measurements.md."""
        cfg = self.config
        if cfg.residual_quantile == 0 or len(train) < 8:
            return None
        # at most 2 x MAX_FIT_SPECTRA rows (memory: the paper's 5,000 mosaics would be 2 GB)
        rng = np.random.default_rng(cfg.seed + 3)
        rows = train
        if len(train) > 2 * MAX_FIT_SPECTRA:
            rows = np.sort(rng.choice(train, 2 * MAX_FIT_SPECTRA, replace=False))
        # each spectrum with its noisy copies in one fold: a copy lies near its spectrum
        # and must not be measured against directions fitted to it
        folds = fold_labels(origin[rows], SUBSPACE_FOLDS, SUBSPACE_REPEATS, rng)
        x, m = self._pixels(z, rows), self._pixels(measured, rows)  # z: 0 where unmeasured
        return calibrated(x, m, folds, cfg.residual_components, cfg.residual_quantile)

    def _pixels(self, a: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Rows (all, or those indexed by `rows`) of a stack (n, *S), flattened to the P
        pixels that some training spectrum measures (n_rows, P): the subspace's inputs."""
        flat = a.reshape(len(a), -1)
        pixels = np.flatnonzero(~self.mask.ravel())
        return flat[:, pixels] if rows is None else flat[np.ix_(rows, pixels)]

    def _fit_novelty(
        self,
        z: torch.Tensor,
        measured: torch.Tensor,
        val: np.ndarray,
        train: np.ndarray,
        origin: np.ndarray,
    ) -> dict[str, Any] | None:
        """Mean and Ledoit-Wolf-shrunk precision of the training spectra's features, and
        the limit of "known": the `novelty_quantile` of distances measured out of fit (each
        half of the training spectra against statistics of the other half; far more spectra
        than the held-out set), scaled up by the held-out spectra's median distance over
        the out-of-fit median where that is larger. None with novelty_quantile 0 or under 8
        training spectra. `train`, `origin`: as in `_fit_subspace`.

        Why: DUQ's kernels measure distance only along the directions each W_c keeps, and
        on the demo's mosaics they called 100 % of Rb2MnF4 spectra and 60-70 % of digits
        and photographs known. The features themselves keep those inputs apart (Mahalanobis
        distance, as Lee et al. 2018 use for out-of-distribution detection): with this
        distance the demo's two classifiers separate 10 spectra each of artefacts, Rb2MnF4,
        photographs and digits from their 80 test spectra with ROC AUC 0.979-1.000."""
        from sklearn.covariance import LedoitWolf

        if self.config.novelty_quantile == 0 or len(train) < 8:
            return None
        features = self._features(z[train], measured[train])

        def fit(f: np.ndarray) -> dict[str, np.ndarray]:
            shrunk = LedoitWolf().fit(f)
            return {"location": shrunk.location_, "precision": shrunk.precision_}

        half = _halves(train, origin)
        halves = (features[half], features[~half])
        out_of_fit = np.concatenate([_mahalanobis(halves[1 - i], **fit(halves[i])) for i in (0, 1)])
        novelty = fit(features)
        limit = float(np.quantile(out_of_fit, self.config.novelty_quantile))
        if val.any():
            # spectra the network never trained on lie further out than its training
            # spectra, even out of fit (on the demo's test sets 1.3-1.4x in the median):
            # scale the limit by the held-out spectra's median over the out-of-fit one
            held_out = _mahalanobis(self._features(z[val], measured[val]), **novelty)
            limit *= max(1.0, float(np.median(held_out) / np.median(out_of_fit)))
        novelty["limit"] = limit
        return novelty

    def _build(self) -> DUQNetwork:
        cfg = self.config
        return DUQNetwork(
            len(self.input_shape or ()),
            len(self.classes),
            cfg.channels,
            cfg.pool or None,
            cfg.features,
            cfg.centroid_size,
            cfg.sigma,
            cfg.gamma,
            cfg.stem,
        )

    def _step(
        self,
        optimiser: torch.optim.Optimizer,
        z: torch.Tensor,
        measured: torch.Tensor,
        y: torch.Tensor,
    ) -> np.ndarray:
        """One optimisation step and centroid update; returns [loss, bce, penalty, accuracy].

        The gradient penalty is computed on the batch's first `penalty_batch` spectra (all
        with 0), which go through the network in a forward pass of their own that keeps the
        graph to their input; the rest need only first derivatives."""
        lam = self.config.gradient_penalty
        z, measured = z.to(self.device), measured.to(self.device)
        onehot = torch.nn.functional.one_hot(y.to(self.device), len(self.classes)).float()

        def forward(z: torch.Tensor, measured: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.network(torch.stack([z * measured, measured], 1))

        k = 0 if lam == 0 else min(self.config.penalty_batch or len(z), len(z))
        if k:
            zk = z[:k].detach().requires_grad_(True)
            kernel, u = forward(zk, measured[:k])
            penalty = gradient_penalty(kernel, zk, self.config.penalty_size)
            if k < len(z):
                kernel_rest, u_rest = forward(z[k:], measured[k:])
                kernel, u = torch.cat([kernel, kernel_rest]), torch.cat([u, u_rest])
        else:
            kernel, u = forward(z, measured)
            penalty = torch.zeros((), device=self.device)
        bce = torch.nn.functional.binary_cross_entropy(kernel, onehot.to(kernel.dtype))
        loss = bce + lam * penalty
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        self.network.head.update_centroids(u, onehot)
        accuracy = (kernel.argmax(1) == onehot.argmax(1)).float().mean()
        return np.array([loss.item(), bce.item(), penalty.item(), accuracy.item()])

    def _kernel(self, z: torch.Tensor, measured: torch.Tensor) -> np.ndarray:
        """Kernel values (n, C) of normalised inputs."""
        return self._kernel_and_features(z, measured)[0]

    def _features(self, z: torch.Tensor, measured: torch.Tensor) -> np.ndarray:
        """Feature vectors (n, F) of normalised inputs."""
        return self._kernel_and_features(z, measured)[1]

    @torch.no_grad()
    def _kernel_and_features(
        self, z: torch.Tensor, measured: torch.Tensor, batch: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """Kernel values (n, C) and feature vectors (n, F), float64, in batches."""
        self.network.eval()
        kernels, features = [], []
        for i in range(0, len(z), batch):
            zb, mb = z[i : i + batch].to(self.device), measured[i : i + batch].to(self.device)
            f = self.network.features(torch.stack([zb * mb, mb], 1))
            kernels.append(self.network.head.kernel(self.network.head.embed(f)).cpu().numpy())
            features.append(f.cpu().numpy())
        return (
            np.concatenate(kernels).astype(np.float64),
            np.concatenate(features).astype(np.float64),
        )

    # ------------------------------------------------------------------ inference
    def _inputs(self, spectra: np.ndarray) -> np.ndarray:
        """Checked (n, *S) float32 copy of one spectrum S or a stack, training mask applied."""
        if self.network is None or self.input_shape is None:
            raise ValueError("the classifier is not trained yet (fit or load it first)")
        array = _as_spectra(spectra, "input spectra")
        shape = self.input_shape
        if array.shape == shape:
            array = array[None]
        elif array.shape[1:] != shape:
            raise ValueError(
                f"input spectra have shape {array.shape} but the classifier was trained on {shape}"
            )
        array[:, self.mask] = np.nan
        _check_not_empty(array, "input spectra")
        return array

    def certainties(self, spectra: np.ndarray) -> np.ndarray:
        """Kernel values (n, C) in [0, 1] for one spectrum S or a stack (n, *S): the
        certainty that each spectrum comes from each class."""
        return self._assess(spectra, distances=False)[0]

    def novelty_distance(self, spectra: np.ndarray) -> np.ndarray | None:
        """Mahalanobis distance (n,) of each spectrum's features from the training
        spectra's (mean and shrunk covariance); above `novelty["limit"]` a spectrum is
        none of the known models whatever its certainties. None for a classifier without
        novelty statistics (novelty_quantile 0, the default; no held-out spectra; or saved
        before they existed)."""
        return self._assess(spectra)[1].get("novelty")

    def residual(self, spectra: np.ndarray) -> np.ndarray | None:
        """RMS residual (n,) of each spectrum's normalised input after the training
        inputs' principal directions (exp2sim.classifier.subspace); above
        `subspace.limit` a spectrum is none of the known models whatever its certainties.
        None for a classifier without them (residual_quantile 0, under 8 training spectra,
        or saved before they existed)."""
        return self._assess(spectra)[1].get("residual")

    @property
    def limits(self) -> dict[str, float]:
        """The checks of "known" beside the certainties that this classifier has, by the
        name `results` gives their distances: {"residual": limit, "novelty": limit}."""
        out = {}
        if self.subspace is not None:
            out["residual"] = self.subspace.limit
        if self.novelty is not None:
            out["novelty"] = self.novelty["limit"]
        return out

    def _assess(
        self, spectra: np.ndarray, distances: bool = True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Certainties (n, C) and, by the names of `limits`, the distances (n,) that decide
        "known", from one network pass; distances=False: the certainties alone (the
        residuals cost more than the network on the demo's mosaics)."""
        array = self._inputs(spectra)
        z, measured = normalise(array, self.config.percentile, self.config.compression)
        k, f = self._kernel_and_features(torch.from_numpy(z), torch.from_numpy(measured))
        found: dict[str, np.ndarray] = {}
        if distances and self.subspace is not None:
            found["residual"] = self.subspace.residuals(self._pixels(z), self._pixels(measured))
        if distances and self.novelty is not None:
            found["novelty"] = _mahalanobis(f, self.novelty["location"], self.novelty["precision"])
        return k, found

    def _known(self, k: np.ndarray, distances: dict[str, np.ndarray]) -> np.ndarray:
        known = k.max(1) >= self.config.threshold
        for name, limit in self.limits.items():
            known &= distances[name] <= limit
        return known

    def predict(self, spectra: np.ndarray) -> np.ndarray:
        """Index (n,) of the most certain class (see `known` for out-of-distribution)."""
        return self.certainties(spectra).argmax(1)

    def known(self, spectra: np.ndarray) -> np.ndarray:
        """Bool (n,): some certainty reaches the threshold, and each distance of `limits`
        stays within its limit; False: "none of the known models"."""
        return self._known(*self._assess(spectra))

    def results(self, spectra: np.ndarray) -> list[dict[str, Any]]:
        """Per spectrum: {"certainties": {class: value}, "prediction": class, "known": bool,
        and each distance of `limits` by its name ("residual", "novelty")}; see `known`."""
        k, distances = self._assess(spectra)
        known = self._known(k, distances)
        return [
            {
                "certainties": {c: float(v) for c, v in zip(self.classes, row, strict=True)},
                "prediction": self.classes[int(row.argmax())],
                "known": bool(known[i]),
                **{name: float(d[i]) for name, d in distances.items()},
            }
            for i, row in enumerate(k)
        ]

    @property
    def validation_accuracy(self) -> float | None:
        """Held-out accuracy after the last epoch (None without a validation set)."""
        return self.history[-1]["val_accuracy"] if self.history else None

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> None:
        """Write classifier.safetensors (weights, centroid buffers, mask; metadata: classes,
        input shape, history, config) and config.json into `directory`."""
        if self.network is None:
            raise ValueError("the classifier is not trained yet: nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {"network": self.network.state_dict(), "mask": torch.from_numpy(self.mask)}
        if self.novelty is not None:
            state["novelty_location"] = torch.from_numpy(self.novelty["location"])
            state["novelty_precision"] = torch.from_numpy(self.novelty["precision"])
        if self.subspace is not None:
            state["subspace_mean"] = torch.from_numpy(self.subspace.mean.astype(np.float32))
            state["subspace_components"] = torch.from_numpy(
                self.subspace.components.astype(np.float32)
            )
        info = {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "classes": self.classes,
            "input_shape": list(self.input_shape),
            "history": self.history,
            "axes": None if self.axes is None else {k: v.tolist() for k, v in self.axes.items()},
            "novelty_limit": None if self.novelty is None else self.novelty["limit"],
            "subspace_limit": None if self.subspace is None else self.subspace.limit,
        }
        save_state(directory / WEIGHTS, state, info)
        write_text_atomic(directory / CONFIG, json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto") -> DUQClassifier:
        """A classifier written by `save` (no pickle involved)."""
        directory = Path(directory)
        path = directory / WEIGHTS
        if not path.is_file():
            raise ValueError(f"{directory}: not a classifier (no {WEIGHTS})")
        info = read_info(path)
        if info.get("format") != FORMAT:
            raise ValueError(f"{path}: not a classifier checkpoint")
        config = dataclasses.replace(ClassifierConfig.from_dict(info["config"]), device=device)
        clf = cls(config)
        clf.classes = list(info["classes"])
        clf.input_shape = tuple(info["input_shape"])
        clf.history = list(info["history"])
        axes = info.get("axes")
        clf.axes = None if axes is None else {k: np.asarray(v) for k, v in axes.items()}
        state, _ = load_state(path)
        clf.mask = state["mask"].numpy().astype(bool)
        if info.get("novelty_limit") is not None:
            clf.novelty = {
                "location": state["novelty_location"].numpy(),
                "precision": state["novelty_precision"].numpy(),
                "limit": float(info["novelty_limit"]),
            }
        if info.get("subspace_limit") is not None:
            clf.subspace = Subspace(
                state["subspace_mean"].numpy().astype(np.float64),
                state["subspace_components"].numpy().astype(np.float64),
                float(info["subspace_limit"]),
            )
        if clf.mask.shape != clf.input_shape:
            raise ValueError(f"{path}: mask shape {clf.mask.shape} != input shape")
        clf.device = pick_device(device)
        clf.network = clf._build()
        try:
            clf.network.load_state_dict(state["network"])
        except RuntimeError as exc:
            raise ValueError(
                f"{path}: weights do not fit the saved configuration ({exc})"
            ) from None
        clf.network.to(clf.device)
        return clf


def _halves(train: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Boolean (len(train),): which of the training rows (indices `train`) form the first
    half for out-of-fit measurements: alternate spectra, each with its noisy copies
    (`origin`: the spectrum each row comes from), since a copy lies near its spectrum and
    must not be measured against statistics that hold it."""
    originals = train[origin[train] == train]  # rows that are no copy, in order
    parity = np.zeros(len(origin), int)
    parity[originals] = np.arange(len(originals)) % 2
    return parity[origin[train]] == 0


def _mahalanobis(features: np.ndarray, location: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """sqrt((f - mu)^T P (f - mu)) for each row f of features (n, F); mu (F,), P (F, F)."""
    d = features - location
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, precision, d), 0.0))
