"""The applicability domain: Sinkhorn distances against closed forms, batching and seeds,
calibrated zones, encoder features in 1D/2D/3D, files, the figure and the command."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_GAN
from typer.testing import CliRunner

from exp2sim.applicability import (
    VERDICTS,
    ApplicabilityDomain,
    FeatureExtractor,
    FeatureSettings,
    encoder_features,
    ridgeline,
    rms_spread,
    sinkhorn_distances,
)
from exp2sim.applicability.features import TEXTURE_FLOOR
from exp2sim.applicability.sinkhorn import (
    DEFAULT_BLUR,
    block_scales,
    sinkhorn_batch,
    subset_indices,
)
from exp2sim.cli import app
from exp2sim.gan.checkpoint import load_state, read_info, save_state
from exp2sim.gan.fold import TileFold
from exp2sim.gan.networks import ResnetGenerator
from exp2sim.gan.normalisation import IntensityScale
from exp2sim.gan.synthetic import blur, sharp_spectra
from exp2sim.gan.train import CHECKPOINT

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(n, d, seed, shift=0.0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    x[:, 0] += shift
    return x.astype(np.float32)


# ---- Sinkhorn ------------------------------------------------------------------------------
def test_identical_points_vs_one_cost_half_the_squared_distance():
    x, y = gaussian(1, 6, 0), gaussian(2, 6, 1)
    train = np.repeat(x, 20, axis=0)
    expected = 0.5 * np.sum((x - y) ** 2, axis=1)
    for debias in (False, True):
        d = sinkhorn_distances(train, y, 20, 5, scale=1.0, debias=debias)
        np.testing.assert_allclose(d, np.repeat(expected[:, None], 5, 1), rtol=1e-4)


def test_one_point_vs_one_point_and_exact_wasserstein_for_a_point_input():
    x, y = gaussian(2, 5, 0), gaussian(1, 5, 1)
    d = sinkhorn_distances(x, y, points=1, repeats=40, scale=1.0)[0]
    each = 0.5 * np.sum((x - y) ** 2, axis=1)
    nearest = np.abs(d[:, None] - each[None]).min(axis=1)
    assert np.all(nearest <= 1e-5 * each.max()) and len(np.unique(d.round(4))) == 2
    # 20 random points vs one: the plan is forced, so the cost is the exact W2^2 / 2
    train, inputs = gaussian(100, 8, 2), gaussian(3, 8, 3)
    d = sinkhorn_distances(train, inputs, 20, 50, seed=4, scale=2.0)
    idx = subset_indices(100, 20, 50, seed=4)
    exact = 0.5 * np.sum((train[idx][None] - inputs[:, None, None]) ** 2, -1).mean(-1) / 4
    np.testing.assert_allclose(d, exact, rtol=1e-4)


def test_distance_grows_with_the_shift_of_a_gaussian_cloud_and_is_dimensionless():
    train = gaussian(400, 16, 0)
    spread = rms_spread(train)
    shifts = [0.0, 1.0, 2.0, 4.0]
    inputs = np.concatenate([gaussian(1, 16, 10 + i, k * spread) for i, k in enumerate(shifts)])
    inputs[0] = train.mean(0)  # at the centre: only the subsets' own spread is left
    means = sinkhorn_distances(train, inputs, repeats=300).mean(axis=1)
    assert np.all(np.diff(means) > 0)
    # averaged over random subsets: half the mean squared distance to all training points,
    # (|y - m|^2 / s^2 + 1) / 2 with s the RMS spread (so 1/2 at the centre m)
    closed = 0.5 * (np.sum((inputs - train.mean(0)) ** 2, axis=1) / spread**2 + 1)
    np.testing.assert_allclose(means, closed, rtol=0.03)
    assert closed[-1] > 8  # 4 spreads away
    # dimensionless: rescaling every feature leaves the distances unchanged
    scaled = sinkhorn_distances(1000 * train, 1000 * inputs, repeats=300).mean(axis=1)
    np.testing.assert_allclose(scaled, means, rtol=1e-4)


def test_batched_equals_a_loop_over_repeats_and_inputs():
    train, inputs = gaussian(60, 12, 0), gaussian(4, 12, 1, shift=2.0)
    d = sinkhorn_distances(train, inputs, 20, 30, seed=3)
    scale = rms_spread(train)
    idx = subset_indices(60, 20, 30, seed=3)
    x_all, y_all = torch.from_numpy(train / scale), torch.from_numpy(inputs / scale)
    for i in range(len(inputs)):
        for r in range(30):
            one = sinkhorn_batch(x_all[idx[r]][None], y_all[i][None, None], DEFAULT_BLUR, 50.0)
            assert float(one) == pytest.approx(d[i, r], rel=1e-5)
    # chunking and the company of other inputs change nothing
    np.testing.assert_allclose(sinkhorn_distances(train, inputs, 20, 30, 3, chunk=7), d, 1e-6)
    alone = np.concatenate(
        [sinkhorn_distances(train, inputs[i : i + 1], 20, 30, 3) for i in [0, 3]]
    )
    np.testing.assert_allclose(alone, d[[0, 3]], rtol=1e-6)


def test_same_seed_same_numbers():
    train, inputs = gaussian(50, 8, 0), gaussian(2, 8, 1)
    a = sinkhorn_distances(train, inputs, 20, 100, seed=7)
    assert np.array_equal(a, sinkhorn_distances(train, inputs, 20, 100, seed=7))
    assert not np.array_equal(a, sinkhorn_distances(train, inputs, 20, 100, seed=8))
    idx = subset_indices(50, 20, 100, seed=7)
    assert all(len(set(row)) == 20 for row in idx)  # without replacement


def test_blocks_are_scaled_to_equal_weight_and_bad_input_is_refused():
    x = np.concatenate([1000 * gaussian(300, 3, 0), gaussian(300, 5, 1)], axis=1)
    scaled = x / block_scales(x, (3, 5))
    assert rms_spread(scaled[:, :3]) == pytest.approx(rms_spread(scaled[:, 3:]))
    assert rms_spread(scaled) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="do not split"):
        block_scales(x, (3, 4))
    with pytest.raises(ValueError, match="same D"):
        sinkhorn_distances(x, x[:, :4])
    with pytest.raises(ValueError, match="points must be between"):
        sinkhorn_distances(x[:10], x[:1], points=20)
    with pytest.raises(ValueError, match="identical"):
        sinkhorn_distances(np.ones((5, 3)), np.zeros((1, 3)), points=2)


# ---- zones -----------------------------------------------------------------------------------
def test_zones_are_ordered_and_calibrated_on_held_out_data():
    train, heldout = gaussian(400, 16, 0), gaussian(100, 16, 1)
    domain = ApplicabilityDomain.calibrate(train, heldout, repeats=200, seed=1)
    t1, t2 = domain.thresholds
    assert 0 < t1 < t2 and t2 == pytest.approx(2 * t1)
    assert domain.verdict([t1, t2, t2 * 1.001]) == list(VERDICTS)
    fresh = domain.assess(gaussian(200, 16, 2), repeats=100)
    assert fresh.distances.shape == (200, 100)
    assert fresh.verdicts.count("trustworthy") >= 0.85 * 200  # 95 % expected
    assert fresh.verdicts.count("untrustworthy") <= 2
    spread = domain.scale[0]
    nearby = domain.assess(gaussian(50, 16, 3, shift=1.5 * spread), repeats=100)
    assert nearby.verdicts.count("expert opinion") >= 35
    far = domain.assess(gaussian(50, 16, 4, shift=4 * spread), repeats=100)
    assert far.verdicts == ["untrustworthy"] * 50
    rows = far.summary()
    assert rows[0]["q05"] <= rows[0]["q50"] <= rows[0]["q95"]
    assert rows[0]["mean"] == pytest.approx(far.distances[0].mean())


def test_save_load_round_trip(tmp_path):
    train, heldout = gaussian(80, 10, 0), gaussian(20, 10, 1)
    domain = ApplicabilityDomain.calibrate(
        train, heldout, repeats=50, blocks=(4, 6), settings=FeatureSettings((3, 5), 10, 2)
    )
    domain.save(tmp_path / "d.safetensors")
    back = ApplicabilityDomain.load(tmp_path / "d.safetensors")
    assert back.thresholds == domain.thresholds and back.settings == domain.settings
    assert back.calibration == domain.calibration
    np.testing.assert_array_equal(back.bank, domain.bank)
    np.testing.assert_array_equal(back.scale, domain.scale)
    np.testing.assert_array_equal(back.heldout_distances, domain.heldout_distances)
    x = gaussian(3, 10, 5, shift=3.0)
    assert np.array_equal(back.assess(x).distances, domain.assess(x).distances)
    with pytest.raises(ValueError, match="no generator attached"):
        back.assess_spectra(np.zeros((1, 8)))
    save_state(tmp_path / "other.safetensors", {"w": torch.zeros(2)}, {"format": "x"})
    with pytest.raises(ValueError, match="not an exp2sim applicability file"):
        ApplicabilityDomain.load(tmp_path / "other.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not an exp2sim checkpoint"):
        ApplicabilityDomain.load(tmp_path / "bad.safetensors")


# ---- features --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(40,), (20, 28), (12, 16, 20)])
def test_features_in_every_dimension(shape):
    torch.manual_seed(0)
    g = ResnetGenerator(len(shape), ngf=4, n_blocks=2)
    x = sharp_spectra(3, shape, seed=0, mask_fraction=0.25)
    settings = FeatureSettings.for_shape(shape, dim=32)
    scale = IntensityScale.fit(x)
    f = encoder_features(g, scale, x, settings)
    extractor = FeatureExtractor(g, scale, settings)
    # texture blocks: 4 (stem), 8 (down1), 16 (down2), 16 (last block) channels, the three
    # longer ones projected to 32 // 5 = 6; layout: 16 channels x cells, projected to 6
    assert extractor.texture_layers == ["stem", "down1", "down2", "block2"]
    assert extractor.blocks == (4, 6, 6, 6, 6) and f.shape == (3, 28) and f.dtype == np.float32
    assert np.isfinite(f).all()
    # the same numbers one by one, from normalised input, and with masked pixels as zeros
    one = np.concatenate([encoder_features(g, scale, x[i : i + 1], settings) for i in range(3)])
    np.testing.assert_allclose(one, f, rtol=1e-4, atol=1e-4)
    z = np.nan_to_num(scale.transform(x), nan=0.0)
    np.testing.assert_allclose(encoder_features(g, None, z, settings), f, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=f"{len(shape)}D spectra"):
        encoder_features(g, scale, x[0], settings)


def test_layout_block_sees_where_features_are_and_texture_blocks_what():
    """A line moved along the spectrum: the layout features change, the texture ones hardly
    (convolutions are translation-equivariant); a wider line changes the texture."""
    torch.manual_seed(1)
    g = ResnetGenerator(1, ngf=4, n_blocks=2)
    x = np.zeros((3, 128), np.float32)
    x[0, 30:34] = x[1, 90:94] = 1.0
    x[2, 28:36] = 1.0
    extractor = FeatureExtractor(g, None, FeatureSettings((8,), dim=512))
    f = extractor.normalised(x)
    n = sum(extractor.blocks[:4])
    texture, layout = f[:, :n], f[:, n:]

    def rel(a, i=1):
        return np.linalg.norm(a[0] - a[i]) / np.linalg.norm(a[0])

    assert rel(texture) < 0.01 and rel(layout) > 0.2
    assert rel(texture, 2) > 0.1


def test_stem_texture_measures_contrast_as_a_ratio_and_deeper_blocks_ignore_it():
    """The stem is a linear convolution of the input: its deviations scale with the input's
    contrast, so the log-deviation block moves by exactly log(a) for a times the input
    (bias and offsets drop out), whatever the spectrum. Deeper layers see the input
    through an instance norm and hardly move. A blank input (no deviation) lies far."""
    torch.manual_seed(2)
    g = ResnetGenerator(2, ngf=4, n_blocks=2)
    extractor = FeatureExtractor(g, None, FeatureSettings((2, 2), dim=40))
    x = blur(sharp_spectra(3, (24, 32), seed=3), 1.0)
    f = extractor.normalised(x)
    stem = slice(0, extractor.blocks[0])  # 4 channels <= 40 // 5: kept as they are
    deeper = slice(extractor.blocks[0], sum(extractor.blocks[:4]))
    for a in (0.25, 3.0):
        fa = extractor.normalised(a * x + 0.5)
        np.testing.assert_allclose(fa[:, stem] - f[:, stem], np.log(a), atol=1e-4)
        assert np.abs(fa[:, deeper] - f[:, deeper]).max() < 0.05 * np.abs(f[:, deeper]).max()
    blank = extractor.normalised(np.zeros((1, 24, 32), np.float32))
    assert np.allclose(blank[0, stem], np.log(TEXTURE_FLOOR))


def test_features_of_a_folded_spectrum_describe_all_its_volumes():
    """A volume-view generator (gan/fold.py) sees a 2 x 8-tile mosaic as 2 volumes: one
    feature vector per mosaic, whose texture statistics are taken over both volumes
    together, each weighing its share of the intensity (the stem block equals the weighted
    log-deviation over both, computed by hand; an empty row of tiles adds nothing: [r; 0]
    has the texture of [r; r]), and whose layout holds each volume's cells in turn
    (swapping the mosaic's two rows of tiles leaves the texture and changes the layout). A
    mosaic of another number of rows is refused."""
    torch.manual_seed(3)
    g = ResnetGenerator(3, ngf=4, n_blocks=2)
    fold = TileFold((16, 16), pad=4)
    x = blur(sharp_spectra(3, (32, 128), seed=4, mask_fraction=0.2), 1.0)
    settings = FeatureSettings.for_shape((32, 128), dim=40, fold=fold)
    assert settings.volumes == 2 and len(settings.grid) == 3
    extractor = FeatureExtractor(g, None, settings, fold=fold)
    f = extractor.normalised(x)
    assert f.shape == (3, extractor.n_features) and np.isfinite(f).all()
    with torch.no_grad():
        volumes = torch.from_numpy(np.nan_to_num(fold.fold(x[:1])))[:, None]
        _, (stem,) = g(volumes, ["stem"], encode_only=True)
    share = np.abs(np.nan_to_num(fold.fold(x[:1]))).reshape(2, -1).sum(1)
    share /= share.sum()
    assert abs(share[0] - share[1]) > 0.05  # unequal weights, or the check below is weak
    values = stem.transpose(0, 1).reshape(stem.shape[1], -1).double().numpy()  # (C, 2 P)
    weights = np.repeat(share, values.shape[1] // 2)
    mean = np.average(values, axis=1, weights=weights)
    by_hand = np.log(np.sqrt(np.average((values - mean[:, None]) ** 2, axis=1, weights=weights)))
    np.testing.assert_allclose(f[0, : extractor.blocks[0]], by_hand, rtol=1e-4)
    n = sum(extractor.blocks[:4])
    row = x[:1, :16]
    half_empty = extractor.normalised(np.concatenate([row, np.zeros_like(row)], axis=1))
    doubled = extractor.normalised(np.concatenate([row, row], axis=1))
    np.testing.assert_allclose(half_empty[:, :n], doubled[:, :n], rtol=1e-4, atol=1e-5)
    swapped = np.concatenate([x[:, 16:], x[:, :16]], axis=1)
    g_swapped = extractor.normalised(swapped)
    np.testing.assert_allclose(g_swapped[:, :n], f[:, :n], rtol=1e-4, atol=1e-5)
    assert np.abs(g_swapped[:, n:] - f[:, n:]).max() > 0.1 * np.abs(f[:, n:]).max()
    with pytest.raises(ValueError, match="fold into 3 volumes each; the features were set up"):
        extractor.normalised(np.zeros((1, 48, 128), np.float32))


def test_grid_follows_the_aspect_ratio():
    assert FeatureSettings.for_shape((240, 400)).grid == (6, 10)  # one cell per MAPS tile
    assert FeatureSettings.for_shape((60, 60, 60)).grid == (4, 4, 4)
    assert FeatureSettings.for_shape((20,)).grid == (5,)  # at most one cell per encoder pixel
    with pytest.raises(ValueError, match="at most 512|between 1 and 512"):
        FeatureSettings((4,), dim=1000)


# ---- figure ----------------------------------------------------------------------------------
def test_ridgeline_figure_is_written(tmp_path):
    rng = np.random.default_rng(0)
    sets = {
        "held-out": rng.normal(1.0, 0.1, (20, 100)),
        "shifted": rng.normal(2.0, 0.2, (5, 100)),
        "far": rng.normal(80.0, 3.0, 100),
    }
    path = ridgeline(sets, (1.2, 2.4), tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    ridgeline({"one": np.full(10, 1.0)}, (1.2, 2.4), tmp_path / "lin.png")  # linear axis
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lin.png", "r.png"]
    with pytest.raises(ValueError, match="thresholds"):
        ridgeline(sets, (2.0, 1.0), tmp_path / "x.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        ridgeline({}, (1.0, 2.0), tmp_path / "x.png")


# ---- a run and the command -------------------------------------------------------------------
TINY = {**TINY_GAN, "nce_layers": list(TINY_GAN["nce_layers"]), "epochs": 1, "epochs_decay": 0}
SHAPE = (48,)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 1D run trained for one iteration by `exp2sim train` (60 spectra per domain, 6 of
    them held out)."""
    root = tmp_path_factory.mktemp("app")
    _train_one_step(root, 60, SHAPE)
    return root


def _applicability(run, *args):
    return runner.invoke(app, ["applicability", "--run", str(run), *map(str, args)])


def test_command_prints_verdicts_and_reuses_its_calibration(tiny_run, tmp_path):
    run = tiny_run / "run"
    np.save(tmp_path / "new.npy", blur(sharp_spectra(8, SHAPE, seed=5, width=1.0), 1.5))
    np.save(tmp_path / "blank.npy", np.zeros(SHAPE, np.float32))  # one spectrum, no stack
    plot = tmp_path / "fig.png"
    res = _applicability(
        run, tmp_path / "new.npy", tmp_path / "blank.npy", "--format", "json", "--plot", plot
    )
    assert res.exit_code == 0, res.output
    assert "calibrated the applicability domain" in res.stderr
    report = json.loads(res.stdout)
    t1, t2 = report["thresholds"]["trustworthy"], report["thresholds"]["untrustworthy"]
    assert 0 < t1 < t2
    rows = report["inputs"]
    assert len(rows) == 9 and {r["verdict"] for r in rows} <= set(VERDICTS)
    new = [r["verdict"] for r in rows[:8]]
    assert new.count("trustworthy") >= 5 and new.count("untrustworthy") == 0
    assert rows[8]["index"] is None and rows[8]["verdict"] == "untrustworthy"
    assert all(r["q05"] <= r["q50"] <= r["q95"] for r in rows)
    assert plot.stat().st_size > 10_000
    assert ApplicabilityDomain.path_for(run, "exp2sim").exists()
    # second use: the saved calibration, same numbers; a table by default
    again = _applicability(run, tmp_path / "new.npy", "--format", "json")
    assert "using the applicability calibration" in again.stderr
    assert json.loads(again.stdout)["inputs"] == rows[:8]
    table = _applicability(run, tmp_path / "blank.npy", "--repeats", "100")
    assert table.exit_code == 0 and "untrustworthy" in table.stdout


def test_command_subtracts_the_background_first(tiny_run, tmp_path):
    """--background 48 (the whole 1D spectrum as one block): a flat background added to
    the run's own kind of spectra moves them away from the training set, and subtracting
    it brings them back, to the distances of `subtract_background`'s output."""
    from exp2sim.spectra.background import subtract_background

    run = tiny_run / "run"
    clean = blur(sharp_spectra(6, SHAPE, seed=5, width=1.0), 1.5)
    measured = clean + 0.5 * clean.max(axis=1, keepdims=True)
    np.save(tmp_path / "measured.npy", measured)
    np.save(tmp_path / "subtracted.npy", subtract_background(measured, SHAPE))
    np.save(tmp_path / "clean.npy", clean)

    def distances(name, *args):
        res = _applicability(run, tmp_path / name, "--format", "json", "--repeats", "200", *args)
        assert res.exit_code == 0, res.output
        return np.array([r["mean"] for r in json.loads(res.stdout)["inputs"]])

    with_option = distances("measured.npy", "--background", "48")
    np.testing.assert_allclose(with_option, distances("subtracted.npy"), rtol=1e-5)
    raw, clean_distances = distances("measured.npy"), distances("clean.npy")
    assert raw.mean() > 1.5 * clean_distances.mean()
    assert with_option.mean() < 0.5 * (raw.mean() + clean_distances.mean())


def test_translate_subtracts_the_background_first(tiny_run, tmp_path):
    from exp2sim.gan.translate import Translator
    from exp2sim.spectra.background import subtract_background

    run = tiny_run / "run"
    clean = blur(sharp_spectra(3, SHAPE, seed=6, width=1.0), 1.5)
    measured = (clean + 0.5 * clean.max(axis=1, keepdims=True)).astype(np.float32)
    np.save(tmp_path / "measured.npy", measured)
    out = tmp_path / "out.npy"
    args = ["translate", str(tmp_path / "measured.npy"), "--run", str(run), "--out", str(out)]
    res = runner.invoke(app, [*args, "--background", "48", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    translator = Translator.from_run(run, "exp2sim", device="cpu")
    expected = translator(subtract_background(measured, SHAPE))
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    assert not np.allclose(np.load(out), translator(measured), atol=1e-3)


def _train_one_step(folder, n, shape, **extra):
    """A run of the tiny GAN (TINY and `extra`) trained for one step by `exp2sim train` on n
    blurred and n sharp spectra of `shape`; returns its directory."""
    np.save(folder / "a.npy", blur(sharp_spectra(n, shape, seed=0, width=1.0), 1.5))
    np.save(folder / "b.npy", sharp_spectra(n, shape, seed=1, width=1.0))
    toml = folder / "tiny.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in {**TINY, **extra}.items()))
    run = folder / "run"
    args = ["train", str(folder / "a.npy"), str(folder / "b.npy"), "--out", str(run)]
    res = runner.invoke(app, [*args, "--preset", str(toml), "--max-iterations", "1"])
    assert res.exit_code == 0, res.output
    return run


def test_a_run_with_fewer_training_spectra_than_points(tmp_path):
    """8 spectra per domain, 1 held out: calibration and assessment use subsets of all 7
    training spectra instead of failing on the default 20 points, and say so; the
    calibration is reused afterwards, not redone because of the smaller subsets."""
    run = _train_one_step(tmp_path, 8, SHAPE)
    np.save(tmp_path / "new.npy", blur(sharp_spectra(3, SHAPE, seed=5, width=1.0), 1.5))
    res = _applicability(run, tmp_path / "new.npy", "--format", "json", "--repeats", "50")
    assert res.exit_code == 0, res.output
    assert "(subsets of all 7, not 20)" in res.stderr
    assert "the run has 7 training spectra" in res.stderr
    report = json.loads(res.stdout)
    assert report["points"] == 7 and len(report["inputs"]) == 3
    again = _applicability(run, tmp_path / "new.npy", "--format", "json", "--repeats", "50")
    assert "using the applicability calibration" in again.stderr
    assert json.loads(again.stdout)["inputs"] == report["inputs"]


def test_command_on_a_folded_run_judges_whole_mosaics(tmp_path):
    """A run trained on 2 x 8-tile mosaics folded into volumes (fold_tiles): it is
    calibrated on the run's own split mosaics and gives one verdict per mosaic; a mosaic
    with a third row of tiles gets a one-line error."""
    shape = (32, 128)
    run = _train_one_step(tmp_path, 10, shape, fold_tiles=[16, 16], fold_pad=4)
    np.save(tmp_path / "new.npy", blur(sharp_spectra(3, shape, seed=5, width=1.0), 1.5))
    res = _applicability(run, tmp_path / "new.npy", "--format", "json", "--repeats", "50")
    assert res.exit_code == 0, res.output
    assert "calibrated the applicability domain" in res.stderr and "9 training" in res.stderr
    assert len(json.loads(res.stdout)["inputs"]) == 3
    np.save(tmp_path / "tall.npy", np.ones((1, 48, 128), np.float32))
    res = _applicability(run, tmp_path / "tall.npy")
    assert res.exit_code == 2 and "Traceback" not in res.output
    last = res.stderr.strip().splitlines()[-1]  # after the note on the other shape
    assert last == (
        "error: spectra of shape (48, 128) fold into 3 volumes each; the features were set up for 2"
    )


def test_command_rejects_bad_input(tiny_run, tmp_path):
    run = tiny_run / "run"
    np.save(tmp_path / "2d.npy", np.zeros((2, 5, 5), np.float32))
    for args, message in [
        ((tmp_path / "2d.npy",), "1D spectra"),
        ((tmp_path / "missing.npy",), "no such file"),
        ((tiny_run / "a.npy", "--format", "xml"), "--format"),
        ((tiny_run / "a.npy", "--direction", "sideways"), "direction"),
    ]:
        res = _applicability(run, *args)
        assert res.exit_code == 2, res.output
        assert message in res.stderr and "Traceback" not in res.output
        assert len(res.stderr.strip().splitlines()) == 1
    res = _applicability(tmp_path, tiny_run / "a.npy")
    assert res.exit_code == 2 and "not a training run" in res.stderr


def test_changed_weights_are_detected_and_recalibrated(tiny_run, tmp_path):
    run = tiny_run / "run"
    first = ApplicabilityDomain.for_run(run, "sim2exp", repeats=100)
    path = ApplicabilityDomain.path_for(run, "sim2exp")
    assert first.checkpoint["file"] == CHECKPOINT and first.direction == "sim2exp"
    assert first.calibration["n_heldout"] == 6 and first.bank.shape[0] == 54
    # more training changes the weights
    state, info = load_state(run / CHECKPOINT)
    state["model"]["G_B.stem_conv.1.weight"] += 0.01
    save_state(run / CHECKPOINT, state, info)
    assert read_info(run / CHECKPOINT) == info
    with pytest.raises(ValueError, match="weights changed since the applicability calibration"):
        ApplicabilityDomain.load(path, run=run)
    messages = []
    second = ApplicabilityDomain.for_run(run, "sim2exp", repeats=100, log=messages.append)
    assert "weights changed" in messages[0] and "calibrated" in messages[0]
    assert second.checkpoint["weights_sha256"] != first.checkpoint["weights_sha256"]
    reloaded = ApplicabilityDomain.load(path, run=run)  # now it matches
    x = sharp_spectra(2, SHAPE, seed=9, width=1.0)
    assert np.array_equal(reloaded.assess_spectra(x).distances, second.assess_spectra(x).distances)


def test_inputs_in_other_units_are_judged_as_in_training_units(tiny_run):
    """Measured spectra come in counts or per monitor: like `translate`, the measure brings
    each input to the training intensity level first, so units do not change the verdict.
    Without that, the distances of the same spectra 300 times brighter differ."""
    run = tiny_run / "run"
    domain = ApplicabilityDomain.for_run(run, "exp2sim", repeats=200)
    x = blur(sharp_spectra(6, SHAPE, seed=7, width=1.0), 1.5)
    x[:, 10:14] = np.nan
    same = domain.assess_spectra(x).distances
    # at a = 1e-3 the blurred lines' float32 tails (~1e-38) underflow to 0 and leave the
    # percentile's non-zero pixels: levels differ by up to 1.4e-3 and distances by 1.1e-3
    for a in (1e-3, 300.0):
        np.testing.assert_allclose(domain.assess_spectra(a * x).distances, same, rtol=3e-3)
    domain.extractor.match = None  # as given, in the wrong units
    as_given = domain.assess_spectra(300.0 * x).distances
    assert np.abs(as_given - same).max() > 0.05 * same.mean()
