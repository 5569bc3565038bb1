"""Background estimated from the spectra: recovered where it is known, left alone where
there is none, masks kept, 1D/2D/3D alike, bad input refused."""

import numpy as np
import pytest

from exp2sim.spectra.background import (
    background_level,
    estimate_background,
    parse_block,
    subtract_background,
)


def _lines(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Sparse non-negative 'spin waves': a thin Gaussian ridge through every 20 x 20 tile
    (about a fifth of its bins), peak 1, elsewhere 0."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    out = np.zeros((n, *shape))
    for i in range(n):
        for r0 in range(0, shape[0], 20):
            for c0 in range(0, shape[1], 20):
                centre = c0 + rng.uniform(6, 14) + rng.uniform(-0.3, 0.3) * (rows - r0)
                inside = (rows >= r0) & (rows < r0 + 20) & (cols >= c0) & (cols < c0 + 20)
                out[i][inside] = np.exp(-0.5 * ((cols - centre) / 1.2) ** 2)[inside]
    return out


def _tile_levels(n: int, tiles: tuple[int, int], seed: int) -> np.ndarray:
    """(n, 40, 60) background: a different constant in each 20 x 20 tile."""
    levels = np.random.default_rng(seed).uniform(0.05, 0.3, (n, *tiles))
    return np.repeat(np.repeat(levels, 20, axis=1), 20, axis=2)


def test_a_constant_per_tile_is_recovered_under_sparse_spin_waves():
    clean = _lines(3, (40, 60), seed=0)
    background = _tile_levels(3, (2, 3), seed=1)
    estimate = estimate_background(clean + background, (20, 20))
    # the lowest 5 % of each tile are background and the ridges' far tails (< 1e-5)
    np.testing.assert_allclose(estimate, background, atol=1e-4)
    np.testing.assert_allclose(subtract_background(clean + background, (20, 20)), clean, atol=1e-4)


def test_counting_noise_biases_the_estimate_by_a_fraction_of_its_width_only():
    clean = _lines(4, (40, 60), seed=2)
    background = _tile_levels(4, (2, 3), seed=3)
    noise = np.random.default_rng(4).normal(0.0, 0.05, clean.shape)
    estimate = estimate_background(clean + background + noise, (20, 20))
    error = estimate - background
    # smoothing over sigma = 1.5 bins cuts the noise about 5-fold, and the 5 % quantile of
    # what is left sits about 1.6 of its widths low: measured -0.011 on average (worst
    # tile 0.020), well below the noise's width (0.05)
    assert np.abs(error).max() < 0.03
    assert error.mean() < 0 and error.mean() > -0.025
    # without smoothing the quantile falls over a noise width below it (measured -0.068)
    raw = estimate_background(clean + background + noise, (20, 20), sigma=0.0) - background
    assert raw.mean() < -0.06


def test_spectra_without_background_are_left_alone():
    clean = _lines(3, (40, 60), seed=5)
    assert np.abs(estimate_background(clean, (20, 20))).max() < 1e-4
    np.testing.assert_allclose(subtract_background(clean, (20, 20)), clean, atol=1e-4)


def test_masked_bins_stay_masked_and_do_not_move_the_estimate():
    clean = _lines(2, (40, 60), seed=6)
    background = _tile_levels(2, (2, 3), seed=7)
    measured = clean + background
    measured[:, :, 25] = np.nan  # a dead detector line
    measured[0, :20, :20] = np.nan  # a whole masked tile
    estimate = estimate_background(measured, (20, 20))
    assert np.isfinite(estimate).all()
    assert np.all(estimate[0, :20, :20] == 0)  # nothing measured: nothing subtracted
    keep = np.ones_like(estimate, dtype=bool)
    keep[0, :20, :20] = False
    np.testing.assert_allclose(estimate[keep], background[keep], atol=1e-4)
    result = subtract_background(measured.astype(np.float32), (20, 20))
    assert result.dtype == np.float32
    assert np.array_equal(np.isnan(result), np.isnan(measured))


def test_what_is_left_below_zero_is_raised_to_the_floor_or_kept():
    spectra = np.full((1, 10, 10), 2.0)
    spectra[0, 0, 0] = 1.0  # below the block's 5 % quantile (2.0 after smoothing)
    assert subtract_background(spectra, (10, 10), sigma=0).min() == 0.0
    assert subtract_background(spectra, (10, 10), sigma=0, floor=None).min() == -1.0


def test_one_rule_for_cuts_and_volumes():
    # a 1D energy cut: one peak on a flat background of 0.2
    energies = np.arange(100)
    cut = np.exp(-0.5 * ((energies - 40) / 3.0) ** 2) + 0.2
    np.testing.assert_allclose(estimate_background(cut[None], (100,)), 0.2, atol=1e-4)
    # an (h, k, E) volume: a ring per energy slice on a background that rises with energy
    h, k = np.meshgrid(np.linspace(-1, 1, 24), np.linspace(-1, 1, 24), indexing="ij")
    level = np.linspace(0.1, 0.5, 6)
    volume = np.stack(
        [np.exp(-0.5 * ((np.hypot(h, k) - 0.1 * (e + 1)) / 0.05) ** 2) for e in range(6)], -1
    )
    estimate = estimate_background((volume + level)[None], (24, 24, 1))
    np.testing.assert_allclose(estimate[0], np.broadcast_to(level, volume.shape), atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "block", "message"),
    [
        ((2, 40, 60), (20,), "has 1 sizes"),
        ((2, 40, 60), (20, 25), "does not divide"),
        ((40,), (40,), "stack"),
        ((0, 40, 60), (20, 20), "stack"),
    ],
)
def test_blocks_that_do_not_fit_are_refused(shape, block, message):
    with pytest.raises(ValueError, match=message):
        estimate_background(np.zeros(shape), block)


def test_bad_settings_and_infinite_values_are_refused():
    spectra = np.zeros((1, 20, 20))
    with pytest.raises(ValueError, match="quantile"):
        estimate_background(spectra, (20, 20), quantile=1.5)
    spectra[0, 3, 3] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        estimate_background(spectra, (20, 20))


def test_block_text():
    assert parse_block("40x40") == (40, 40)
    assert parse_block("60X60x1") == (60, 60, 1)
    assert parse_block("100") == (100,)
    for bad in ("40x", "forty", "0x40", "-1x2"):
        with pytest.raises(ValueError, match="background block"):
            parse_block(bad)


def test_each_layout_names_blocks_of_one_energy():
    from exp2sim.spectra.layout import CutLayout, MosaicLayout, VolumeLayout

    mosaic = MosaicLayout()
    bins = mosaic.bins()
    block = mosaic.background_block
    assert all(s % b == 0 for s, b in zip(mosaic.shape, block, strict=True))
    # every tile holds one incident and one transferred energy range
    tiles = bins.e_lo.reshape(6, block[0], 10, block[1]), bins.ei.reshape(6, block[0], 10, block[1])
    for values in tiles:
        assert np.ptp(values, axis=(1, 3)).max() == 0
    assert VolumeLayout(n_h=8, n_k=6, n_e=5).background_block == (8, 6, 1)
    assert CutLayout(n_e=30).background_block == (30,)


def test_background_level_is_a_share_of_the_99th_percentile():
    clean = _lines(3, (40, 60), seed=9)
    assert np.abs(background_level(clean)).max() < 1e-4
    levels = _tile_levels(3, (2, 3), seed=10)  # 0.05-0.3 under ridges of peak 1
    measured = clean + levels
    got = background_level(measured)
    q99 = np.percentile(measured.reshape(3, -1), 99, axis=1)
    # one block for the whole spectrum: at least its lowest tile's level, at most its highest
    assert np.all(got >= levels.min(axis=(1, 2)) / q99 - 1e-4)
    assert np.all(got <= levels.max(axis=(1, 2)) / q99)
    empty = np.zeros((2, 40, 60))
    empty[1] = np.nan
    assert np.array_equal(background_level(empty), [0.0, 0.0])
