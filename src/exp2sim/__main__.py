"""`python -m exp2sim` (what `torchrun -m exp2sim train ...` runs)."""

from exp2sim.cli import app

app()
