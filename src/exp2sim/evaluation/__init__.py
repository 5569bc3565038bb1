"""Evaluation of exp2sim: classical baselines (Gaussian resolution blur, Richardson-Lucy
deconvolution), fidelity and classification metrics, and the end-to-end evaluation."""
