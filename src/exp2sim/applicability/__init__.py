"""The applicability domain of a trained Exp2SimGAN generator (paper, Fig. 5b): how far a new
input lies from the training set in the generator's encoder feature space, measured by
Sinkhorn distances to random training subsets, with a calibrated verdict per input:
"trustworthy", "expert opinion" or "untrustworthy".

    domain = ApplicabilityDomain.for_run("run/", "exp2sim")   # calibrates once, then cached
    result = domain.assess_spectra(measured)                    # (n, *S) or one spectrum S
    result.distances    # (n, 1000) dimensionless distances, ~1 for in-distribution inputs
    result.verdicts     # one verdict per input

Modules: features.py (encoder features), sinkhorn.py (batched distances), domain.py
(calibration, verdicts, files), figures.py (ridgeline plot).
"""

from exp2sim.applicability.domain import (
    VERDICTS,
    ApplicabilityDomain,
    Assessment,
    ZoneRule,
)
from exp2sim.applicability.features import FeatureExtractor, FeatureSettings, encoder_features
from exp2sim.applicability.figures import ridgeline
from exp2sim.applicability.sinkhorn import rms_spread, sinkhorn_distances

__all__ = [
    "VERDICTS",
    "ApplicabilityDomain",
    "Assessment",
    "FeatureExtractor",
    "FeatureSettings",
    "ZoneRule",
    "encoder_features",
    "ridgeline",
    "rms_spread",
    "sinkhorn_distances",
]
