"""DUQ classifier (deterministic uncertainty quantification, van Amersfoort et al. 2020):
names the spin-wave model behind a spectrum, or says it is none of the known ones."""

from exp2sim.classifier.model import ClassifierConfig, DUQClassifier, normalise
from exp2sim.classifier.network import DUQHead, DUQNetwork, FeatureExtractor, gradient_penalty

__all__ = [
    "ClassifierConfig",
    "DUQClassifier",
    "DUQHead",
    "DUQNetwork",
    "FeatureExtractor",
    "gradient_penalty",
    "normalise",
]
