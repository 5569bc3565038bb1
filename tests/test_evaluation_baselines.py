"""Classical baselines (Gaussian resolution blur, Richardson-Lucy) and evaluation metrics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import norm

from exp2sim.evaluation import metrics
from exp2sim.evaluation.baselines import (
    ResolutionBlur,
    bin_transfer,
    discrete_gaussian,
    gaussian_convolve,
    richardson_lucy_deconvolve,
)
from exp2sim.instrument.detectors import PCSMO_PSI
from exp2sim.instrument.resolution import FWHM_PER_SIGMA, MAPS_RESOLUTION
from exp2sim.instrument.spectrometer import PCSMO_SETTINGS, Setting
from exp2sim.spectra.calculator import conventional_lattice
from exp2sim.spectra.factory import make_bins_and_mask, make_calculator
from exp2sim.spectra.generate import SimulationConfig
from exp2sim.spectra.layout import CutLayout, MosaicLayout, VolumeLayout
from exp2sim.spinwave import load_model

MOSAIC = SimulationConfig(kind="mosaic")
Q_BIN = 2.0 / 39.0  # mosaic (h, k) bin width (r.l.u.)


@pytest.fixture(scope="module")
def lattice():
    return conventional_lattice(load_model("goodenough"))


@pytest.fixture(scope="module")
def mosaic_blur():
    return ResolutionBlur.for_config(MOSAIC)


@pytest.fixture(scope="module")
def mosaic_mask():
    return make_bins_and_mask(MOSAIC)[1]


def _custom_mosaic_blur() -> ResolutionBlur:
    """Distinct, wide widths per tile: sigma_h grows down, sigma_k across the grid."""
    rows, cols = np.meshgrid(np.arange(6), np.arange(10), indexing="ij")
    sigma = np.stack([1.0 + 0.2 * rows, 0.8 + 0.15 * cols], axis=-1)[:, :, None, :]
    return ResolutionBlur((240, 400), (40, 40), sigma)


def _sparse(shape, density, seed):
    rng = np.random.default_rng(seed)
    return np.where(rng.random(shape) < density, rng.random(shape), 0.0)


# ---- kernels and the blur ---------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.0, 0.3, 1.7])
def test_discrete_gaussian_sums_to_one_with_variance_sigma_squared(sigma):
    n = np.arange(-40, 41)
    w = discrete_gaussian(n, sigma)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.sum(w * n**2) == pytest.approx(sigma**2, abs=1e-12)


@pytest.mark.parametrize("which", ["instrument", "custom"])
def test_delta_spreads_with_the_tile_sigma_and_stays_in_its_tile(which):
    """The in-plane blur alone (energy=False; a custom blur mixes no slices)."""
    blur = ResolutionBlur.for_config(MOSAIC, energy=False)
    if which == "custom":
        blur = _custom_mosaic_blur()
    tile_row, tile_col = 2, 7
    i0, j0 = 40 * tile_row + 20, 40 * tile_col + 20
    image = np.zeros((240, 400))
    image[i0, j0] = 1.0
    out = gaussian_convolve(image, blur)
    inside = np.zeros(image.shape, dtype=bool)
    inside[80:120, 280:320] = True
    assert np.all(out[~inside] == 0.0)  # no other tile receives anything
    assert out.sum() == pytest.approx(1.0, abs=1e-9)
    di, dj = np.meshgrid(np.arange(240) - i0, np.arange(400) - j0, indexing="ij")
    sigma_h, sigma_k = blur.sigma[tile_row, tile_col, 0]
    assert np.sum(out * di) == pytest.approx(0.0, abs=1e-9)
    assert np.sum(out * di**2) == pytest.approx(sigma_h**2, rel=1e-6)
    assert np.sum(out * dj**2) == pytest.approx(sigma_k**2, rel=1e-6)
    assert np.sum(out * di * dj) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.3, 1.2])
def test_bin_transfer_is_a_uniform_bin_under_a_gaussian(sigma):
    """Shares of a uniform bin [0, 1) that land in bin d after a Gaussian of sigma bins,
    against direct integration; they sum to 1 and are symmetric."""
    d = np.arange(-20, 21)
    share = bin_transfer(d, sigma)
    assert share.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(share, share[::-1], atol=1e-14)
    if sigma == 0:
        np.testing.assert_array_equal(share, d == 0)
        return
    if sigma < 0.1:
        assert share[21] == pytest.approx(sigma / np.sqrt(2 * np.pi), rel=1e-6)
    for offset in (0, 1, 2):
        direct, _ = quad(
            lambda x, o=offset: norm.cdf((o + 1 - x) / sigma) - norm.cdf((o - x) / sigma), 0, 1
        )
        assert share[20 + offset] == pytest.approx(direct, abs=1e-10)


def test_mosaic_energy_slices_mix_with_their_row_neighbours(mosaic_blur):
    """A delta in tile (2, 7): the tiles beside it in its row (the neighbouring energy
    slices at the same Ei) receive the shares bin_transfer(+-1, their own width), at the
    same (h, k); other rows nothing; the widths are the energy resolution of the tile over
    the slice width (0.2-0.35 for the PCSMO settings)."""
    assert mosaic_blur.slice_axis == 1
    assert 0.15 < mosaic_blur.slice_sigma.min() and mosaic_blur.slice_sigma.max() < 0.4
    image = np.zeros((240, 400))
    image[100, 300] = 1.0
    out = gaussian_convolve(image, mosaic_blur)
    sums = out.reshape(6, 40, 10, 40).sum(axis=(1, 3))
    s = mosaic_blur.slice_sigma
    np.testing.assert_array_equal(np.delete(sums, 2, axis=0), 0.0)
    for col in range(10):
        # normalised by the shares that exist: the last slice has no right neighbour
        shares = bin_transfer(col - np.arange(10), s[2, col])
        assert sums[2, col] == pytest.approx(shares[7] / shares.sum(), rel=1e-9, abs=1e-15)
    assert 0.08 < sums[2, 6] < 0.15
    assert np.argmax(out[80:120, 320:360]) == np.ravel_multi_index((20, 20), (40, 40))


def test_transposed_blur_is_the_adjoint():
    """<K x, y> = <x, K^T y> (Richardson-Lucy needs K^T) with varying widths and slices."""
    rng = np.random.default_rng(7)
    for blur in (
        ResolutionBlur.for_config(MOSAIC),
        ResolutionBlur.for_config(SimulationConfig(kind="volume", shape=(12, 10, 16))),
    ):
        x = rng.random((2, *blur.grid, *blur.tile))
        y = rng.random(x.shape)
        lhs = np.sum(blur.apply_tiles(x) * y)
        rhs = np.sum(x * blur.apply_tiles(y, transpose=True))
        assert lhs == pytest.approx(rhs, rel=1e-12)


def test_energy_mixing_brings_the_blur_closer_to_the_full_resolution(reference):
    """The Goodenough best fit: the blur with the slices mixed is closer to the simulator's
    Gaussian resolution convolution (every variable of the resolution ellipsoid) and to the
    original data's Tobyfit simulation than the in-plane blur alone. Measured: relative
    r.m.s. difference 0.53 -> 0.36, correlation with Tobyfit 0.609 -> 0.642 (unconvolved
    0.586, the simulator's convolution 0.703)."""
    import scipy.io

    config = SimulationConfig(model="goodenough", kind="mosaic")
    params = load_model("goodenough").best_fit
    plain = make_calculator(config)(params)
    full = make_calculator(replace(config, resolution="gaussian", n_mc=1))(params)
    tobyfit = np.load(reference / "pcsmo_sim" / "simulated_fitpars_goodenough.npy")[0]
    real_mask = np.flipud(
        scipy.io.loadmat(reference / "maps_resolution" / "nanmask.mat")["nan_mask"]
    ).astype(bool)
    ok = np.isfinite(plain) & ~real_mask
    rel, corr = {}, {}
    for energy in (False, True):
        blurred = gaussian_convolve(plain, ResolutionBlur.for_config(config, energy=energy))
        rel[energy] = np.sqrt(np.nanmean((blurred - full) ** 2) / np.nanmean(full**2))
        corr[energy] = np.corrcoef(blurred[ok], tobyfit[ok])[0, 1]
    assert rel[True] < 0.8 * rel[False]
    assert corr[True] > corr[False] + 0.02


@pytest.mark.parametrize("kind", ["mosaic", "volume", "cut"])
def test_normalised_convolution_of_a_constant_with_holes_is_the_constant(kind, mosaic_mask):
    config = SimulationConfig(kind=kind)
    blur = ResolutionBlur.for_config(config)
    rng = np.random.default_rng(1)
    holes = rng.random((2, *blur.shape)) < 0.3
    if kind == "mosaic":
        holes |= mosaic_mask
    spectra = np.where(holes, np.nan, 2.5).astype(np.float32)
    out = gaussian_convolve(spectra, blur)
    assert out.dtype == np.float32 and out.shape == spectra.shape
    assert np.array_equal(np.isnan(out), holes)
    np.testing.assert_allclose(out[~holes], 2.5, rtol=1e-6)


def test_varying_widths_use_the_output_pixel_widths():
    """Volume: every output voxel is the normalised Gaussian average with its own widths."""
    blur = ResolutionBlur.for_config(SimulationConfig(kind="volume"))
    assert blur.vary_axis == 2
    rng = np.random.default_rng(2)
    volume = rng.random(blur.shape)
    volume[rng.random(blur.shape) < 0.2] = np.nan
    out = gaussian_convolve(volume, blur)
    widths = blur.sigma_map()
    grid = np.ogrid[: blur.shape[0], : blur.shape[1], : blur.shape[2]]
    measured = np.isfinite(volume)
    for p in [(30, 30, 30), (0, 5, 59), (10, 50, 0)]:
        if not measured[p]:
            continue
        w = np.ones(blur.shape)
        for axis in range(3):
            w = w * discrete_gaussian(grid[axis] - p[axis], widths[(axis, *p)])
        expected = np.sum(np.where(measured, w * volume, 0)) / np.sum(w * measured)
        assert out[p] == pytest.approx(expected, rel=1e-10)


# ---- widths from the instrument ------------------------------------------------------


def test_mosaic_widths_come_from_the_tile_covariance(lattice):
    blur = ResolutionBlur.for_config(MOSAIC, at="centre", bin_average=False)
    for setting, n_slice in [(0, 0), (4, 6), (5, 9)]:
        s = PCSMO_SETTINGS[setting]
        energy = s.ei * (0.13 + 0.06 * n_slice)  # slice centre
        cov = MAPS_RESOLUTION.covariance(s, 0.0, 0.0, energy, lattice, PCSMO_PSI)[0]
        expected = np.sqrt([cov[0, 0], cov[1, 1]]) / Q_BIN
        np.testing.assert_allclose(blur.sigma[setting, n_slice, 0], expected, rtol=1e-9)
    with_bin = ResolutionBlur.for_config(MOSAIC, at="centre", bin_average=True)
    np.testing.assert_allclose(with_bin.sigma**2, blur.sigma**2 + 1 / 12, rtol=1e-12)


@pytest.mark.parametrize("at", ["centre", "mean"])
def test_mosaic_widths_are_positive_and_coarser_at_higher_ei(at):
    """In r.l.u. the in-plane resolution scales with k_i: wider at higher Ei (25 -> 140 meV,
    top to bottom), in every energy slice."""
    sigma = ResolutionBlur.for_config(MOSAIC, at=at, bin_average=False).sigma[:, :, 0]
    assert np.all(np.isfinite(sigma)) and np.all(sigma > 0)
    assert np.all(np.diff(sigma, axis=0) > 0)
    # resolution FWHM in-plane 0.02-0.05 r.l.u. (Tobyfit tables of the experiment)
    fwhm = FWHM_PER_SIGMA * sigma * Q_BIN
    assert 0.01 < fwhm.min() and fwhm.max() < 0.06


def test_tile_average_and_centre_widths_agree_within_five_percent():
    centre = ResolutionBlur.for_config(MOSAIC, at="centre", bin_average=False).sigma
    mean = ResolutionBlur.for_config(MOSAIC, at="mean", bin_average=False).sigma
    np.testing.assert_allclose(mean, centre, rtol=0.05)


def test_cut_energy_width_matches_the_energy_resolution(lattice):
    layout = CutLayout(Setting(100.0, 300.0), h=0.5, k=0.0)
    blur = ResolutionBlur.for_layout(layout, lattice)
    bins = layout.bins()
    fwhm = FWHM_PER_SIGMA * blur.sigma[0, :, 0] * (bins.e_hi - bins.e_lo)
    np.testing.assert_allclose(fwhm, MAPS_RESOLUTION.energy_fwhm(layout.setting, bins.e), rtol=0.05)
    assert np.all(np.diff(fwhm) < 0)  # direct geometry: sharper at larger energy transfer


# ---- Richardson-Lucy ---------------------------------------------------------------------


def test_richardson_lucy_recovers_a_blurred_sparse_mosaic(mosaic_blur, mosaic_mask):
    truth = _sparse((240, 400), 0.03, seed=3).astype(np.float32)
    truth[mosaic_mask] = np.nan
    blurred = gaussian_convolve(truth, mosaic_blur)
    restored = richardson_lucy_deconvolve(blurred, mosaic_blur, iterations=30)
    assert restored.dtype == np.float32
    assert np.array_equal(np.isnan(restored), mosaic_mask)
    before, after = metrics.psnr(blurred, truth), metrics.psnr(restored, truth)
    assert after > before + 10.0


def test_richardson_lucy_is_affine_equivariant_and_keeps_tiles_apart():
    """Negative data are shifted into RL's range and back: RL(a x + b) = a RL(x) + b."""
    blur = ResolutionBlur((24, 48), (24, 24), np.array([[[[1.0, 1.3]], [[0.7, 0.5]]]]))
    x = gaussian_convolve(_sparse((24, 48), 0.1, seed=4), blur)
    x[3, 5] = x[20, 30] = np.nan
    base = richardson_lucy_deconvolve(x, blur, iterations=20)
    shifted = richardson_lucy_deconvolve(3.0 * x - 5.0, blur, iterations=20)
    np.testing.assert_allclose(shifted, 3.0 * base - 5.0, atol=1e-9)
    assert np.isnan(base[3, 5]) and np.isnan(base[20, 30])
    other = x.copy()
    other[:, 24:] = np.random.default_rng(5).random((24, 24))
    changed = richardson_lucy_deconvolve(other, blur, iterations=20)
    np.testing.assert_array_equal(changed[:, :24], base[:, :24])


def test_richardson_lucy_with_varying_widths_along_energy(lattice):
    layout = VolumeLayout(Setting(140.0, 400.0), n_h=16, n_k=16, n_e=30)
    blur = ResolutionBlur.for_layout(layout, lattice)
    truth = _sparse(blur.shape, 0.02, seed=6)
    blurred = gaussian_convolve(truth, blur)
    restored = richardson_lucy_deconvolve(blurred[None], blur, iterations=30)[0]
    assert metrics.psnr(restored, truth) > metrics.psnr(blurred, truth) + 10.0


def test_bad_input_raises_value_error(mosaic_blur):
    with pytest.raises(ValueError, match="do not match"):
        gaussian_convolve(np.zeros((10, 10)), mosaic_blur)
    with pytest.raises(ValueError, match="iterations"):
        richardson_lucy_deconvolve(np.zeros((240, 400)), mosaic_blur, iterations=0)
    with pytest.raises(ValueError, match="sigma has shape"):
        ResolutionBlur((240, 400), (40, 40), np.ones((6, 10, 2)))
    with pytest.raises(ValueError, match="divide"):
        ResolutionBlur((240, 400), (50, 40), np.ones((4, 10, 1, 2)))
    with pytest.raises(ValueError, match="at must be"):
        ResolutionBlur.for_layout(MosaicLayout(), conventional_lattice(load_model("dimer")), at="x")


# ---- metrics -----------------------------------------------------------------------------


def test_psnr_closed_forms():
    ref = np.random.default_rng(7).random((30, 30)) * 2.0
    ref[0, 0], ref[0, 1] = 0.0, 2.0  # range exactly 2
    assert metrics.psnr(ref, ref) == np.inf
    assert metrics.psnr(ref + 0.1, ref) == pytest.approx(20 * np.log10(2.0 / 0.1))
    assert metrics.psnr(ref + 0.1, ref, data_range=4.0) == pytest.approx(20 * np.log10(40.0))


def test_ssim_closed_forms():
    ref = np.random.default_rng(8).random((32, 32))
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)
    # constant images: only the luminance term (2 a b + C1) / (a^2 + b^2 + C1) remains
    a, b, c1 = 0.3, 0.5, 0.01**2
    got = metrics.ssim(np.full((20, 20), b), np.full((20, 20), a), data_range=1.0)
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))


def test_masked_pixels_do_not_change_the_metrics():
    rng = np.random.default_rng(9)
    ref = rng.random((40, 40))
    holes = rng.random((40, 40)) < 0.2
    ref[holes] = np.nan
    test_a = ref + 0.05 * rng.standard_normal((40, 40))
    test_b = test_a.copy()
    test_b[holes] = rng.random(holes.sum()) * 100  # anything where the reference is masked
    assert metrics.psnr(test_a, ref) == metrics.psnr(test_b, ref)
    assert metrics.ssim(test_a, ref) == metrics.ssim(test_b, ref)
    # a NaN in the test array drops that pixel: the PSNR by hand over the rest
    test_c = test_a.copy()
    test_c[5, 5] = np.nan
    keep = np.isfinite(ref) & np.isfinite(test_c)
    span = np.ptp(ref[keep])
    mse = np.mean((test_c[keep] - ref[keep]) ** 2)
    assert metrics.psnr(test_c, ref) == pytest.approx(10 * np.log10(span**2 / mse))


def test_ssim_of_the_mosaic_is_computed_tile_by_tile():
    rng = np.random.default_rng(10)
    ref = rng.random((240, 400))
    test = ref.copy()
    test[40:80, 80:120] = rng.random((40, 40))  # only tile (1, 2) differs
    span = np.ptp(ref)
    one_tile = metrics.ssim(test[40:80, 80:120], ref[40:80, 80:120], data_range=span)
    expected = (one_tile * 1600 + (ref.size - 1600)) / ref.size
    assert metrics.ssim(test, ref) == pytest.approx(expected, rel=1e-12)
    assert metrics.ssim(test, ref, tile=None) != pytest.approx(expected, rel=1e-6)


def test_accuracy_gap_closed_and_roc_auc_hand_cases():
    assert metrics.accuracy([0, 1, 1, 2], [0, 1, 2, 2]) == 0.75
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert metrics.accuracy(scores, [0, 1, 1]) == pytest.approx(2 / 3)
    # the paper's forward direction: 93.7 % -> 96.0 % with 98.9 % on unconvolved data
    assert metrics.gap_closed(0.989, 0.937, 0.960) == pytest.approx(0.023 / 0.052)
    assert metrics.gap_closed(0.9, 0.6, 0.9) == 1.0
    assert metrics.gap_closed(0.9, 0.6, 0.5) < 0
    assert np.isnan(metrics.gap_closed(0.8, 0.8, 0.9))
    assert np.isnan(metrics.gap_closed(0.55, 0.575, 0.5))  # no gap: truth below before
    assert metrics.roc_auc([0.1, 0.4], [0.35, 0.8]) == 0.75  # 3 of 4 pairs ordered
    assert metrics.roc_auc([0.0, 0.1], [0.5, 0.9]) == 1.0
    assert metrics.roc_auc([0.5, 0.9], [0.0, 0.1]) == 0.0
    assert metrics.roc_auc([1.0, 1.0], [1.0]) == 0.5


def test_order_of_the_applicability_distances():
    """The target's order of the sets (pipeline.APPLICABILITY_ORDER) on two demo runs'
    median distances (demo42's as in the README's table, demo45's from its metrics.json):
    demo42's follow it, demo45's break it twice."""
    from exp2sim.evaluation.pipeline import APPLICABILITY_ORDER
    from exp2sim.evaluation.report import ARTEFACTS_SUBTRACTED, _order

    names = ["training set", "test (convolved)", "test (unconvolved)", "artefacts"]
    names += ["Rb2MnF4", "negative control", "photographs", "digits"]
    demo42 = dict(zip(names, [0.757, 0.779, 2.14, 6.04, 14.3, 7.73, 15.2, 18.8], strict=True))
    demo45 = dict(zip(names, [0.719, 0.787, 2.21, 4.55, 9.42, 4.04, 9.14, 9.51], strict=True))
    # runs of that time had no background-subtracted artefacts: the set is left out
    assert ARTEFACTS_SUBTRACTED in APPLICABILITY_ORDER[1]
    assert metrics.order_violations(demo42, APPLICABILITY_ORDER) == []
    assert metrics.order_violations(demo45, APPLICABILITY_ORDER) == [
        ("artefacts", "negative control"),
        ("Rb2MnF4", "photographs"),
    ]
    # the subtracted artefacts share the unconvolved spectra's tier: above the test sets,
    # below Rb2MnF4 and the negative control
    assert metrics.order_violations(
        {**demo45, ARTEFACTS_SUBTRACTED: 1.88}, APPLICABILITY_ORDER
    ) == [
        ("artefacts", "negative control"),
        ("Rb2MnF4", "photographs"),
    ]
    assert (ARTEFACTS_SUBTRACTED, "negative control") in metrics.order_violations(
        {**demo45, ARTEFACTS_SUBTRACTED: 4.1}, APPLICABILITY_ORDER
    )
    assert ("test (convolved)", ARTEFACTS_SUBTRACTED) in metrics.order_violations(
        {**demo45, ARTEFACTS_SUBTRACTED: 0.7}, APPLICABILITY_ORDER
    )
    # within a tier no order; a tie across tiers is out of order; absent sets are left out
    tiers = [["a", "b"], ["c"]]
    assert metrics.order_violations({"a": 2.0, "b": 1.0, "c": 3.0}, tiers) == []
    assert metrics.order_violations({"a": 3.0, "b": 1.0, "c": 3.0}, tiers) == [("a", "c")]
    assert metrics.order_violations({"b": 5.0, "c": 3.0}, tiers) == [("b", "c")]
    # the report's lines, from what metrics.json holds
    m = {
        "applicability": {k: {"median": v, "mean": 2 * v} for k, v in demo45.items()},
        "applicability_order": {
            "tiers": APPLICABILITY_ORDER,
            "violations_median": metrics.order_violations(demo45, APPLICABILITY_ORDER),
            "violations_mean": [],
        },
    }
    text = "\n".join(_order(m))
    assert "training set ~ test (convolved) < test (unconvolved) ~ artefacts ~ artefacts, " in text
    assert "By median: 2 pair(s) out of order" in text
    assert "Rb2MnF4 (9.42) not below photographs (9.14)" in text
    assert "By mean: the order holds." in text
    assert _order({"applicability": {}}) == []  # a run written before the check


def test_true_model_certainty_and_margin_hand_cases():
    # DUQ certainties need not sum to 1: both models can be certain at once
    k = np.array([[0.9, 0.2, 0.1], [0.3, 0.6, 0.5], [0.8, 0.7, 0.75], [0.1, 0.1, 0.1]])
    true, margin = metrics.true_model_certainty(k, np.array([0, 0, 1, 2]))
    np.testing.assert_allclose(true, [0.9, 0.3, 0.7, 0.1])
    np.testing.assert_allclose(margin, [0.7, -0.3, -0.1, 0.0])  # against the best other
    # raising every model's certainty raises the true one's, not the margin
    t2, m2 = metrics.true_model_certainty(np.array([[0.6, 0.3], [0.9, 0.8]]), np.array([0, 0]))
    np.testing.assert_allclose([t2[1] - t2[0], m2[1] - m2[0]], [0.3, -0.2])


def test_metric_input_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="no pixel"):
        metrics.psnr(np.full(3, np.nan), np.zeros(3))
    with pytest.raises(ValueError, match="constant"):
        metrics.ssim(np.ones((8, 8)), np.ones((8, 8)))
    noise = np.random.default_rng(11).random((2, 8, 8))
    with pytest.raises(ValueError, match="tile"):
        metrics.ssim(noise[0], noise[1], tile=(3, 3))
    with pytest.raises(ValueError, match="at least one"):
        metrics.roc_auc([], [1.0])
    with pytest.raises(ValueError, match="accuracy of no"):
        metrics.accuracy([], [])


def test_gap_closed_interval_brackets_the_estimate_and_narrows_with_more_spectra():
    from exp2sim.evaluation.metrics import gap_closed, gap_closed_interval

    rng = np.random.default_rng(0)

    def draw(n):
        return rng.random(n) < 0.95, rng.random(n) < 0.6, rng.random(n) < 0.85

    small, large = draw(40), draw(4000)
    lo_s, hi_s = gap_closed_interval(*small)
    lo_l, hi_l = gap_closed_interval(*large)
    est = gap_closed(*(x.mean() for x in large))
    assert lo_l < est < hi_l
    assert abs(est - (0.85 - 0.6) / (0.95 - 0.6)) < 0.05  # ~0.71
    assert (hi_s - lo_s) > 4 * (hi_l - lo_l)  # ~1/sqrt(n)
    same = np.ones(10, bool)
    assert np.isnan(gap_closed_interval(same, same, same)[0])  # no gap, ever


def test_gap_closed_interval_of_certainties():
    """Per-spectrum certainties instead of right/wrong: a translation that lifts every
    spectrum's certainty halfway from the untranslated input's to the truth's closes half
    the gap in every resample; the spread of the interval comes from spectra that differ."""
    from exp2sim.evaluation.metrics import gap_closed_interval

    rng = np.random.default_rng(1)
    before = rng.uniform(0.2, 0.6, 50)
    truth = before + rng.uniform(0.1, 0.3, 50)
    lo, hi = gap_closed_interval(truth, before, (truth + before) / 2)
    assert abs(lo - 0.5) < 1e-9 and abs(hi - 0.5) < 1e-9
    noisy = before + (truth - before) * rng.uniform(0.0, 1.0, 50)
    lo, hi = gap_closed_interval(truth, before, noisy)
    assert 0.3 < lo < hi < 0.7 and hi - lo > 0.02
