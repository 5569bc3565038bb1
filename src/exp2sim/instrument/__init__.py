"""Instruments: spectrometer geometry, kinematics, detector coverage and resolution.

Knows nothing of spin waves or networks."""
