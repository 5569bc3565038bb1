"""Spectra and datasets: layouts of (h, k, E) bins, unconvolved and resolution-convolved
spectra from spin-wave models, and dataset files."""
