"""The applicability domain of one trained generator: is a new input close enough to what the
GAN was trained on for its translation to be trusted?

An input's score is the distribution, over R repeats, of its Sinkhorn distance to `points`
random training examples in the generator's encoder feature space (sinkhorn.py: distances
are dimensionless, about 1 for in-distribution inputs). Its verdict comes from the mean of
that distribution and two thresholds calibrated on held-out in-distribution examples (the
run's own held-out split, never seen in training), by the rule of `ZoneRule`:

    trustworthy      mean <= t1 = the 95th percentile of the held-out examples' means
                     (so 95 % of new in-distribution inputs are trustworthy by construction)
    expert opinion   t1 < mean <= t2
    untrustworthy    mean > t2 = 2 t1

An input k RMS spreads from the training mean scores about (1 + k^2) / 2 and a typical
held-out example about 1 (k ~ 1), so t1 is typically 1.3-1.6 and t2 = 2 t1 is reached about
2 spreads out, twice as far from the training mean as a typical training example. The
paper's zones sit at similar ratios of its baseline (train/test ~75 k trustworthy, 120-160 k
expert opinion, 200-240 k untrustworthy).

The calibration is saved next to the run (`RUN_DIR/applicability-<direction>.safetensors`:
the training feature bank, held-out distances, thresholds, feature settings, direction and
the identity of the checkpoint, including a SHA-256 of the generator's weights).
`ApplicabilityDomain.for_run` reuses it while the weights and settings are unchanged and
recalibrates (saying so through `log`) when they changed, e.g. after more training;
`ApplicabilityDomain.load(path, run=...)` instead refuses a file made for other weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from exp2sim.applicability.features import FeatureExtractor, FeatureSettings
from exp2sim.applicability.sinkhorn import DEFAULT_BLUR, block_scales, sinkhorn_distances
from exp2sim.gan.checkpoint import load_state, read_info, save_state

if TYPE_CHECKING:
    from exp2sim.gan.translate import Translator

VERDICTS = ("trustworthy", "expert opinion", "untrustworthy")
FORMAT = "exp2sim-applicability"
VERSION = 5  # 2: inputs and training features matched to the training intensity level;
# 3: texture blocks at three encoder depths in place of the last block's means and deviations;
# 4: a fourth texture block, the stem's, as log deviations; 5: a volume view's texture
# statistics weigh each volume by its share of the spectrum's intensity


@dataclass(frozen=True)
class ZoneRule:
    """Zone thresholds from the held-out examples' mean distances: t1 = their `quantile`
    quantile (trustworthy up to t1), t2 = `factor` * t1 (untrustworthy beyond t2)."""

    quantile: float = 0.95
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile must lie between 0 and 1, got {self.quantile}")
        if not self.factor > 1:
            raise ValueError(f"factor must be larger than 1, got {self.factor}")

    def thresholds(self, heldout_means: np.ndarray) -> tuple[float, float]:
        """(t1, t2), dimensionless, from the mean distances (n_heldout,)."""
        means = np.asarray(heldout_means, dtype=np.float64)
        if means.size == 0 or not np.isfinite(means).all():
            raise ValueError("need at least one finite held-out distance to calibrate")
        t1 = float(np.quantile(means, self.quantile))
        return t1, self.factor * t1


@dataclass
class Assessment:
    """Distances (n, R) of n inputs (R repeats each) and one verdict per input."""

    distances: np.ndarray
    verdicts: list[str]

    @property
    def means(self) -> np.ndarray:
        """Mean distance of each input (n,)."""
        return self.distances.mean(axis=1)

    def summary(self) -> list[dict]:
        """Per input: mean, std and 5 / 50 / 95 % quantiles of its distances, and verdict."""
        d = self.distances.astype(np.float64)
        q05, q50, q95 = np.quantile(d, [0.05, 0.5, 0.95], axis=1)
        return [
            {
                "mean": float(d[i].mean()),
                "std": float(d[i].std()),
                "q05": float(q05[i]),
                "q50": float(q50[i]),
                "q95": float(q95[i]),
                "verdict": self.verdicts[i],
            }
            for i in range(len(d))
        ]


@dataclass
class ApplicabilityDomain:
    """A calibrated applicability domain.

    bank: (N, D) training feature vectors (feature units). scale: (D,) divisors making
    distances dimensionless (`sinkhorn.block_scales`).
    thresholds: (t1, t2), dimensionless. heldout_distances: (n_heldout, R) calibration
    distances. calibration: points, repeats, seed, blur, quantile, factor and counts.
    settings / direction / checkpoint: how the features were made (None for features
    calibrated directly). extractor: turns spectra into features (attached for a run).
    """

    bank: np.ndarray
    scale: np.ndarray
    thresholds: tuple[float, float]
    heldout_distances: np.ndarray
    calibration: dict
    settings: FeatureSettings | None = None
    direction: str | None = None
    checkpoint: dict | None = None
    extractor: FeatureExtractor | None = field(default=None, repr=False, compare=False)

    # ---- calibration ------------------------------------------------------------------
    @classmethod
    def calibrate(
        cls,
        train_features: np.ndarray,
        heldout_features: np.ndarray,
        *,
        points: int = 20,
        repeats: int = 1000,
        seed: int = 0,
        rule: ZoneRule | None = None,
        blur: float = DEFAULT_BLUR,
        blocks: tuple[int, ...] | None = None,
        settings: FeatureSettings | None = None,
        direction: str | None = None,
        checkpoint: dict | None = None,
        extractor: FeatureExtractor | None = None,
        extra: dict | None = None,
    ) -> ApplicabilityDomain:
        """Distances of each held-out in-distribution example (n_h, D) to the training
        features (N, D), and the zone thresholds from them (`rule`, default ZoneRule()).
        `blocks`: lengths of the feature blocks, each scaled by its own training spread
        (`FeatureExtractor.blocks`; None: one block). With fewer than `points` training
        examples every subset is all of them, here and in `assess` (the mean distance,
        which decides the verdict, does not depend on the subset size)."""
        rule = rule or ZoneRule()
        train = np.asarray(train_features, dtype=np.float32)
        heldout = np.asarray(heldout_features, dtype=np.float32)
        scale = block_scales(train, blocks)
        distances = sinkhorn_distances(
            train, heldout, min(points, len(train)), repeats, seed, scale=scale, blur=blur
        )
        calibration = {
            "points": points,
            "repeats": repeats,
            "seed": seed,
            "blur": blur,
            "blocks": list(blocks) if blocks else [train.shape[1]],
            **asdict(rule),
            "n_train": len(train),
            "n_heldout": len(heldout),
            **(extra or {}),
        }
        return cls(
            bank=train,
            scale=scale,
            thresholds=rule.thresholds(distances.mean(axis=1)),
            heldout_distances=distances,
            calibration=calibration,
            settings=settings,
            direction=direction,
            checkpoint=checkpoint,
            extractor=extractor,
        )

    # ---- assessment -------------------------------------------------------------------
    def verdict(self, mean_distances: np.ndarray) -> list[str]:
        """The verdict for each mean distance (n,)."""
        t1, t2 = self.thresholds
        means = np.asarray(mean_distances, dtype=np.float64).reshape(-1)
        zone = np.where(means <= t1, 0, np.where(means <= t2, 1, 2))
        return [VERDICTS[z] for z in zone]

    def assess(
        self,
        features: np.ndarray,
        repeats: int | None = None,
        points: int | None = None,
        seed: int | None = None,
    ) -> Assessment:
        """Distances (n, R) of feature vectors (n, D) to the training bank and the verdicts.
        repeats, points and seed default to the calibration's (the thresholds hold for
        any R; other `points` change each distribution's spread, not its mean)."""
        c = self.calibration
        distances = sinkhorn_distances(
            self.bank,
            features,
            min(c["points"] if points is None else points, len(self.bank)),
            c["repeats"] if repeats is None else repeats,
            c["seed"] if seed is None else seed,
            scale=self.scale,
            blur=c["blur"],
        )
        return Assessment(distances, self.verdict(distances.mean(axis=1)))

    def assess_spectra(self, spectra: np.ndarray, **kwargs: int | None) -> Assessment:
        """`assess` for spectra (n, *S), or one spectrum S, in the source domain's
        intensity units (NaN = masked); needs the run's generator (`for_run`, or `load`
        with `run=`)."""
        if self.extractor is None:
            raise ValueError("no generator attached: use ApplicabilityDomain.for_run(run_dir)")
        spectra = np.asarray(spectra, dtype=np.float32)
        if spectra.ndim == self.extractor.dim:
            spectra = spectra[None]
        return self.assess(self.extractor(spectra), **kwargs)

    # ---- files ------------------------------------------------------------------------
    def info(self) -> dict:
        """The JSON metadata saved with the arrays."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "thresholds": list(self.thresholds),
            "calibration": self.calibration,
            "settings": None if self.settings is None else self.settings.to_dict(),
            "direction": self.direction,
            "checkpoint": self.checkpoint,
            "verdicts": list(VERDICTS),
        }

    def save(self, path: str | Path) -> None:
        """Write the calibration to a safetensors file (atomically)."""
        state = {
            "bank": torch.from_numpy(np.ascontiguousarray(self.bank, dtype=np.float32)),
            "scale": torch.from_numpy(np.ascontiguousarray(self.scale, dtype=np.float64)),
            "heldout_distances": torch.from_numpy(
                np.ascontiguousarray(self.heldout_distances, dtype=np.float32)
            ),
        }
        save_state(path, state, self.info())

    @classmethod
    def load(
        cls, path: str | Path, run: str | Path | None = None, device: str = "auto"
    ) -> ApplicabilityDomain:
        """Read a saved calibration. With `run`, attach the run's generator for
        `assess_spectra`: a ValueError if its weights are not those calibrated."""
        state, info = load_state(path)
        if info.get("format") != FORMAT:
            raise ValueError(f"{path}: not an exp2sim applicability file")
        if info.get("version") != VERSION:
            raise ValueError(
                f"{path}: applicability file version {info.get('version')}, this exp2sim "
                f"reads version {VERSION}: recalibrate (exp2sim applicability does so)"
            )
        settings = info["settings"]
        domain = cls(
            bank=state["bank"].numpy(),
            scale=state["scale"].numpy(),
            thresholds=tuple(float(t) for t in info["thresholds"]),
            heldout_distances=state["heldout_distances"].numpy(),
            calibration=info["calibration"],
            settings=None if settings is None else FeatureSettings.from_dict(settings),
            direction=info["direction"],
            checkpoint=info["checkpoint"],
        )
        if run is not None:
            domain.attach(run, device)
        return domain

    def attach(self, run: str | Path, device: str = "auto") -> None:
        """Attach the generator of `run` (the calibrated direction and checkpoint) after
        checking that its weights are the calibrated ones."""
        if self.direction is None or self.checkpoint is None or self.settings is None:
            raise ValueError("this applicability domain was not calibrated for a run")
        translator, identity = _load_generator(
            run, self.direction, self.checkpoint["choice"], device
        )
        if identity["weights_sha256"] != self.checkpoint["weights_sha256"]:
            raise ValueError(
                f"{run}: the {self.direction} generator's weights changed since the "
                f"applicability calibration (calibrated: {_describe(self.checkpoint)}; now: "
                f"{_describe(identity)}); recalibrate (ApplicabilityDomain.for_run)"
            )
        self.extractor = _extractor(translator, self.settings)

    @staticmethod
    def path_for(run: str | Path, direction: str) -> Path:
        """Where `for_run` keeps the calibration of a run."""
        return Path(run) / f"applicability-{direction}.safetensors"

    @classmethod
    def for_run(
        cls,
        run: str | Path,
        direction: str = "exp2sim",
        train: np.ndarray | None = None,
        heldout: np.ndarray | None = None,
        *,
        checkpoint: str = "best",
        points: int = 20,
        repeats: int = 1000,
        seed: int = 0,
        max_train: int = 500,
        device: str = "auto",
        log: Callable[[str], None] | None = None,
    ) -> ApplicabilityDomain:
        """The applicability domain of one generator of a training run, ready for
        `assess_spectra`.

        Reuses RUN_DIR/applicability-<direction>.safetensors when it was made for the
        same weights and settings; otherwise calibrates and saves it: training features
        from up to `max_train` training spectra (a seeded random subset), thresholds from
        the held-out spectra. `train` and `heldout` (spectra (n, *S) in the source domain's
        intensity units) replace the run's own split (both or neither; then it always
        recalibrates, and the saved file holds that calibration); by default the split is
        rebuilt from the run's data files exactly as in training. `log` receives one line
        saying what was done."""
        if (train is None) != (heldout is None):
            raise ValueError("give both train and heldout spectra, or neither")
        if max_train < 2:
            raise ValueError("max_train must be at least 2")
        say = log or (lambda message: None)
        run = Path(run)
        path = cls.path_for(run, direction)
        translator, identity = _load_generator(run, direction, checkpoint, device)
        wanted = {
            "points": points,
            "repeats": repeats,
            "seed": seed,
            "max_train": max_train,
            "choice": checkpoint,
        }
        if train is not None:
            reason = "calibrating on the spectra given"
        else:
            reason = _stale(path, identity, wanted)
            if reason is None:
                saved = cls.load(path)
                saved.extractor = _extractor(translator, saved.settings)
                say(f"using the applicability calibration in {path}")
                return saved
        if train is None:
            train_z, heldout_z = _run_split(run, direction, identity["path"])
        else:
            train_z, heldout_z = np.asarray(train), np.asarray(heldout)
        shape = train_z.shape[1:]
        if len(train_z) > max_train:
            keep = np.random.default_rng(seed).choice(len(train_z), max_train, replace=False)
            train_z = train_z[np.sort(keep)]
        dim = translator.dim
        if len(shape) != dim or np.ndim(heldout_z) != dim + 1:
            raise ValueError(
                f"the {direction} generator works on {dim}D spectra; calibration spectra "
                f"have shapes {np.shape(train_z)} and {np.shape(heldout_z)}"
            )
        settings = FeatureSettings.for_shape(shape, fold=translator.fold)
        extractor = _extractor(translator, settings)
        if train is None:  # the run's split is normalised: back to intensities, then matched

            def embed(z: np.ndarray) -> np.ndarray:
                return extractor(translator.source.inverse(z))
        else:
            embed = extractor
        domain = cls.calibrate(
            embed(train_z),
            embed(heldout_z),
            points=points,
            repeats=repeats,
            seed=seed,
            settings=settings,
            direction=direction,
            checkpoint={k: v for k, v in identity.items() if k != "path"},
            extractor=extractor,
            blocks=extractor.blocks,
            extra={"max_train": max_train, "shape": list(shape)},
        )
        domain.save(path)
        t1, t2 = domain.thresholds
        say(
            f"calibrated the applicability domain ({reason}): {len(train_z)} training and "
            f"{len(heldout_z)} held-out spectra"
            + (f" (subsets of all {len(train_z)}, not {points})" if len(train_z) < points else "")
            + f", thresholds {t1:.3g} / {t2:.3g}; saved {path}"
        )
        return domain


def _extractor(translator: Translator, settings: FeatureSettings) -> FeatureExtractor:
    """The feature extractor of a loaded generator; spectra are brought to the training
    intensity level as `translate` does."""
    return FeatureExtractor(
        translator.generator,
        translator.source,
        settings,
        match=translator.match,
        fold=translator.fold,
    )


def _stale(path: Path, identity: dict, wanted: dict) -> str | None:
    """Why the calibration file at `path` cannot serve the generator `identity` with the
    settings `wanted`, or None if it can."""
    if not path.exists():
        return "no calibration yet"
    try:
        saved = ApplicabilityDomain.load(path)
    except ValueError:
        return f"{path.name} could not be read"
    checkpoint = saved.checkpoint or {}
    if checkpoint.get("weights_sha256") != identity["weights_sha256"]:
        return (
            "the generator's weights changed since calibration "
            f"({_describe(checkpoint)} -> {_describe(identity)})"
        )
    have = {k: saved.calibration.get(k) for k in wanted} | {"choice": checkpoint.get("choice")}
    if have != wanted:
        return "the calibration settings changed"
    return None


def _describe(identity: dict) -> str:
    parts = [identity.get("file", "?")]
    if identity.get("epoch") is not None:
        parts.append(f"epoch {identity['epoch']}")
    if identity.get("iteration"):
        parts.append(f"iteration {identity['iteration']}")
    return ", ".join(parts)


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _load_generator(
    run: str | Path, direction: str, checkpoint: str, device: str
) -> tuple[Translator, dict]:
    """(Translator, identity): the generator as `exp2sim translate` loads it, and which
    checkpoint file, epoch and weights it is."""
    from exp2sim.gan.train import BEST, CHECKPOINT
    from exp2sim.gan.translate import Translator

    translator = Translator.from_run(run, direction, checkpoint, device=device)
    run = Path(run)
    path = run / BEST if checkpoint == "best" and (run / BEST).exists() else run / CHECKPOINT
    info = read_info(path)
    identity = {
        "choice": checkpoint,
        "file": path.name,
        "epoch": info.get("epoch"),
        "iteration": info.get("iteration"),
        "weights_sha256": weights_digest(translator.generator),
        "path": str(path),
    }
    return translator, identity


def _run_split(run: Path, direction: str, checkpoint: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's normalised training and held-out spectra of the direction's source domain,
    rebuilt from its data files exactly as in training."""
    from exp2sim.gan.config import TrainConfig
    from exp2sim.gan.train import prepare_data

    info = read_info(checkpoint)
    sources = info.get("sources") or {}
    try:
        config = TrainConfig.from_dict(info["config"])
        data = prepare_data(
            config, sources["domain_a"], sources["domain_b"], info["data"], unfolded=True
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"{run}: cannot rebuild the run's training split ({exc}); pass the training and "
            "held-out spectra explicitly"
        ) from None
    domain = data.a if direction == "exp2sim" else data.b
    return domain.train, domain.val
