"""The evaluation pipeline's parts: configuration, out-of-distribution inputs, report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exp2sim.evaluation import outliers
from exp2sim.evaluation.config import DIRECTIONS, EvaluationConfig, load_config


def _reference(n: int = 6, shape: tuple[int, ...] = (60, 40), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.0, size=(n, *shape)).astype(np.float32)
    x[:, :5] = np.nan  # a masked band, as the detector gaps of real data
    return x


# ------------------------------------------------------------------------------ config
def test_presets_and_toml_overrides(tmp_path):
    demo, paper = load_config("demo"), load_config("paper")
    assert demo.name == "demo" and paper.gan_preset == "paper"
    assert paper.n_train > demo.n_train
    f = tmp_path / "c.toml"
    f.write_text('preset = "paper"\nn_test = 7\n[gan]\nepochs = 3\n')
    cfg = load_config(f)
    assert cfg.n_test == 7 and cfg.gan["epochs"] == 3
    assert cfg.gan["crop"] == 256  # the preset's other GAN fields are kept
    assert cfg.n_train == paper.n_train


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_presets_make_valid_gan_and_classifier_configs(name):
    from exp2sim.classifier import ClassifierConfig
    from exp2sim.evaluation.pipeline import VOLUME_DEFAULTS
    from exp2sim.gan.config import load_preset

    cfg = load_config(name)
    gan = load_preset(cfg.gan_preset).replace(**cfg.gan)
    assert gan.min_crop() <= gan.crop
    for direction in DIRECTIONS:
        ClassifierConfig.from_dict(cfg.classifier_config(direction))
    assert set(cfg.volume) <= set(VOLUME_DEFAULTS)
    if cfg.volume:
        load_preset(cfg.gan_preset).replace(**{**cfg.gan, **cfg.volume["gan"]})


def test_classifier_settings_per_direction():
    """[classifier] for both classifiers, [classifier_convolved] after it for the one on
    convolved spectra; the seed is the evaluation's (or the member's)."""
    cfg = EvaluationConfig(
        seed=4, classifier={"epochs": 3}, classifier_convolved={"penalty_batch": 4, "epochs": 5}
    )
    assert cfg.classifier_config("unconvolved") == {"seed": 4, "device": "auto", "epochs": 3}
    assert cfg.classifier_config("convolved", 6) == {
        "seed": 6,
        "device": "auto",
        "epochs": 5,
        "penalty_batch": 4,
    }
    with pytest.raises(ValueError, match="unknown direction"):
        cfg.classifier_config("sideways")


def test_paper_smoke_config_runs_the_paper_networks_on_a_few_spectra():
    """examples/evaluation/paper-smoke.toml must exercise what `paper` trains and simulates
    (same networks, crops, resolution sampling, 3D volume), only on fewer spectra and steps."""
    from pathlib import Path

    from exp2sim.evaluation.pipeline import gan_config

    path = Path(__file__).resolve().parents[1] / "examples" / "evaluation" / "paper-smoke.toml"
    smoke, paper = load_config(path), load_config("paper")

    def gans(cfg):  # the 2D GAN's and the 3D example's training configurations
        return gan_config(cfg, cfg.gan), gan_config(cfg, {**cfg.gan, **cfg.volume["gan"]})

    for a, b in zip(gans(smoke), gans(paper), strict=True):
        assert a.architecture() == b.architecture() and a.crop == b.crop
        steps = [(c.epochs + c.epochs_decay) * c.iterations_per_epoch for c in (a, b)]
        assert 0 < steps[0] < steps[1] / 1000
    assert (smoke.n_mc, smoke.spread, smoke.models) == (paper.n_mc, paper.spread, paper.models)
    assert smoke.volume["shape"] == paper.volume["shape"]
    assert smoke.n_train < paper.n_train / 100 and smoke.n_test < paper.n_test / 100


def test_fixed_l_reaches_every_simulation_of_an_evaluation(tmp_path):
    """`fixed_l` (the original pipeline's convention) goes to the datasets' simulations;
    absent, they take the kinematic L as before."""
    from exp2sim.evaluation.data import _sim_config

    f = tmp_path / "c.toml"
    f.write_text("fixed_l = 0\n")
    cfg = load_config(f)
    assert cfg.fixed_l == 0.0 and _sim_config(cfg, "dimer", "montecarlo", 2, 1).fixed_l == 0.0
    assert _sim_config(load_config("demo"), "dimer", "none", 2, 1).fixed_l is None
    # the out-of-distribution magnets and the 3D example take theirs from the same place
    other = _sim_config(cfg, "rb2mnf4", "montecarlo", 2, 1, spread=1.0)
    volume = _sim_config(cfg, "dimer", "none", 2, 1, kind="volume", shape=(8, 8, 8))
    assert other.fixed_l == volume.fixed_l == 0.0 and (other.spread, volume.kind) == (1, "volume")
    from exp2sim.evaluation.report import _l_convention

    assert "Intensities at L = 0 (`fixed_l`" in _l_convention(cfg)


@pytest.mark.parametrize(
    "text, message",
    [
        ("n_tset = 3\n", "unknown evaluation settings: n_tset"),
        ("n_test = 0\n", "n_test must be at least 1"),
        ('models = ["goodenough"]\n', "at least two models"),
        ("spread = 1.5\n", "spread must be in"),
        ("fixed_l = nan\n", "fixed_l must be a finite L"),
        ("refine_iterations = -1\n", "refine_iterations must be at least 0"),
        ("classifier_seeds = 0\n", "classifier_seeds must be at least 1"),
        ("[classifier_convolved]\nseed = 3\n", "classifier_convolved must not set a seed"),
        ("n_test = [\n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(f)
    with pytest.raises(ValueError, match="unknown evaluation config"):
        load_config("papper")


def test_refinement_only_for_kernel_generators_without_shifts():
    """The report's refined row needs Sim2Exp's kernels: none for a GAN that draws its
    output, or one with kernel shifts, or with refine_iterations = 0; else the refined
    spectra, NaN where the measured ones are."""
    from exp2sim.evaluation.pipeline import refine
    from exp2sim.gan.networks import ResnetGenerator
    from exp2sim.gan.normalisation import IntensityScale
    from exp2sim.gan.translate import Translator

    scale = IntensityScale(q=1.0)
    x = np.random.default_rng(0).random((2, 12, 16))
    x[:, 0, 0] = np.nan
    kernel = ResnetGenerator(2, ngf=4, n_blocks=1, kernel=3)
    kernel.set_scales(scale, scale)
    drawn = ResnetGenerator(2, ngf=4, n_blocks=1)
    shifted = ResnetGenerator(2, ngf=4, n_blocks=1, kernel=3, shifts=((0, 4), (0, -4)))
    cfg, off = EvaluationConfig(), EvaluationConfig(refine_iterations=0)
    for c, g in ((cfg, drawn), (cfg, shifted), (off, kernel)):
        assert refine(c, Translator(g, scale, scale), x, x) is None
    out = refine(cfg, Translator(kernel, scale, scale), x, x)
    assert out.shape == x.shape and np.isnan(out[:, 0, 0]).all()
    assert np.isfinite(out[:, 1:]).all() and not np.allclose(out[:, 1:], x[:, 1:])


def test_changed_config_refuses_an_existing_report(tmp_path):
    from exp2sim.evaluation.pipeline import check_config

    check_config(EvaluationConfig(), tmp_path)
    check_config(EvaluationConfig(), tmp_path)  # the same: fine (resume)
    with pytest.raises(ValueError, match="differs in n_test"):
        check_config(EvaluationConfig(n_test=3), tmp_path)
    # reports of earlier versions hold a field that never had an effect
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "gan_iterations": 0}))
    check_config(EvaluationConfig(), tmp_path)
    # ... or lack a field added since: fine at its default, a change otherwise
    older = {k: v for k, v in saved.items() if k != "reference_bins"}
    (tmp_path / "config.json").write_text(json.dumps(older))
    check_config(EvaluationConfig(), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(older))
    with pytest.raises(ValueError, match="differs in reference_bins"):
        check_config(EvaluationConfig(reference_bins=False), tmp_path)


def test_config_problems_are_found_before_any_work(tmp_path):
    from exp2sim.evaluation.pipeline import check_config

    # 4 x 2 convolved spectra, 1 held out: 7 for the applicability's 20-point samples
    with pytest.raises(ValueError, match="applicability_points .20. exceeds the GAN's 7"):
        check_config(EvaluationConfig(n_train_convolved=4), tmp_path)
    with pytest.raises(ValueError, match="unknown training option.*ngff"):
        check_config(EvaluationConfig(gan={"ngff": 3}), tmp_path)
    with pytest.raises(ValueError, match="unknown classifier setting.*epoch"):
        check_config(EvaluationConfig(classifier={"epoch": 3}), tmp_path)
    with pytest.raises(ValueError, match="unknown classifier setting.*copies"):
        check_config(EvaluationConfig(classifier_convolved={"copies": 3}), tmp_path)
    assert not (tmp_path / "config.json").exists()


# ------------------------------------------------------------------------------ outliers
@pytest.mark.parametrize("make", [outliers.digits, outliers.photographs])
def test_far_outliers_look_like_spectra_in_size_scale_and_mask(make):
    ref = _reference()
    x = make(17, ref, seed=1)
    assert x.shape == (17, *ref.shape[1:]) and x.dtype == np.float32
    assert np.array_equal(np.isnan(x[0]), np.isnan(ref).all(axis=0))
    q_ref = np.percentile(ref[np.isfinite(ref)], 99)
    assert np.nanmax(x) == pytest.approx(q_ref, rel=1e-5)  # images span [0, q_ref]
    assert not np.allclose(x[0], x[1], equal_nan=True)  # different images
    assert np.array_equal(make(17, ref, seed=1), x, equal_nan=True)  # seeded


def test_photographs_beyond_the_bundled_ones_are_new_crops():
    ref = _reference()
    x = outliers.photographs(len(outliers.PHOTOGRAPHS) + 1, ref, seed=0)
    assert not np.allclose(x[0], x[-1], equal_nan=True)


def test_outliers_for_1d_and_3d_spectra():
    for shape in [(50,), (12, 10, 8)]:
        ref = np.random.default_rng(0).random((3, *shape)).astype(np.float32)
        assert outliers.digits(2, ref).shape == (2, *shape)
        assert outliers.photographs(2, ref).shape == (2, *shape)


def test_artefacts_add_background_noise_spurions_and_dead_pixels():
    clean = np.full((4, 60, 40), 10.0, dtype=np.float32)
    clean[:, ::7] = 0.0
    clean[:, :, 0] = np.nan  # masked pixels stay masked
    dirty = outliers.with_artefacts(clean, seed=3)
    assert dirty.shape == clean.shape
    dead = np.isnan(dirty)
    assert 0.005 < dead.mean() < 0.1  # 1 % of pixels plus one detector line
    assert all(np.isnan(d).all(axis=0).any() for d in dirty)  # a whole dead line each
    ok = ~dead & (clean > 0)
    assert np.nanmean(dirty[ok]) > 10.0  # background on top
    assert np.std(dirty[ok] - clean[ok]) > 1.0  # counting noise
    assert np.nanmax(dirty) > 1.5 * np.nanmax(clean)  # spurions
    assert np.array_equal(outliers.with_artefacts(clean, seed=3), dirty, equal_nan=True)


def test_each_artefact_alone():
    clean = np.full((2, 60, 40), 10.0, dtype=np.float32)
    clean[:, ::7] = 0.0
    background = outliers.with_artefacts(clean, seed=3, kinds=("background",))
    # 5-15 % of the 99th percentile (10), plus a slope of up to +-5 % along axis 0
    rise = background - clean
    assert not np.isnan(background).any() and rise.min() >= -1e-5 and rise.max() <= 2 + 1e-5
    assert np.all((rise[:, 0] >= 0.5 - 1e-5) & (rise[:, 0] <= 1.5 + 1e-5))  # first row: no slope
    assert np.allclose(np.diff(rise, axis=1), np.diff(rise, axis=1)[:, :1], atol=1e-5)  # linear
    assert np.allclose(np.diff(rise, axis=2), 0, atol=1e-5)  # flat along the rows
    dead = outliers.with_artefacts(clean, seed=3, kinds=("dead pixels",))
    assert np.isnan(dead).any()
    assert np.array_equal(dead[~np.isnan(dead)], clean[~np.isnan(dead)])  # nothing else
    noise = outliers.with_artefacts(clean, seed=3, kinds=("noise",))
    assert not np.isnan(noise).any() and np.all(noise[:, ::7] == 0)  # Poisson: 0 stays 0
    assert abs(noise[clean > 0].mean() - 10) < 0.2 and noise[clean > 0].std() > 1.0
    with pytest.raises(ValueError, match="unknown artefacts"):
        outliers.with_artefacts(clean, kinds=("cosmic rays",))


def test_negative_control_takes_each_row_block_from_another_magnet():
    sources = [np.full((3, 12, 5), float(i), dtype=np.float32) for i in range(3)]
    x = outliers.negative_control(sources, n=4, blocks=6, seed=0)
    assert x.shape == (4, 12, 5)
    blocks = x[:, ::2, 0]  # one value per row block (2 rows each)
    assert np.all(blocks[:, 1:] != blocks[:, :-1])  # neighbours from different magnets
    assert {int(v) for v in np.unique(blocks)} == {0, 1, 2}
    with pytest.raises(ValueError, match="do not split"):
        outliers.negative_control(sources, n=1, blocks=5)


# ------------------------------------------------------------------------------ end to end
TINY = """
name = "tiny"
n_train = 6
n_train_convolved = 4
n_test = 3
n_mc = 1
n_outliers = 3
applicability_repeats = 50
applicability_points = 4
rl_iterations = 5
reference_bins = true  # off in the demo preset, checked here
classifier_seeds = 2  # one in the demo preset, checked here
[gan]
ngf = 8
n_blocks = 2
ndf = 8
d_layers = 2
nce_layers = ["down1", "down2", "block1", "block2"]
nce_patches = 32
nce_units = 32
crop = 32
epochs = 1
epochs_decay = 1
iterations_per_epoch = 8
[classifier]
epochs = 2
min_steps = 0
[classifier_convolved]
penalty_batch = 2  # the convolved classifiers only, checked here
[volume]
shape = [16, 16, 16]
n_train = 3
n_train_convolved = 3
n_test = 1
[volume.gan]
crop = 16
"""


def test_a_gan_keeps_one_progress_bar_across_its_epochs(monkeypatch):
    """The demo's GAN bar says which epoch it is in; a new epoch must not start a new
    bar (ten stacked, stalled bars in a terminal before)."""
    import io

    from rich.console import Console

    from exp2sim import cli_common
    from exp2sim.evaluation.pipeline import Stages

    out = io.StringIO()
    monkeypatch.setattr(cli_common, "err_console", Console(file=out, width=120))
    stages = Stages(Console(file=io.StringIO()), show=True)
    with stages.bar("GAN") as update:
        for done in range(1, 7):
            update(f"epoch {(done - 1) // 2 + 1}/3", done, 6, task="gan")
        update("first set", 1, 2)
        update("second set", 2, 2)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    gan = [line for line in lines if "epoch" in line]
    assert len(gan) == 1 and "6/6" in gan[0] and "epoch 3/3" in gan[0]
    assert sum("set" in line for line in lines) == 2  # without a task: one bar per text


def test_demo_runs_the_whole_evaluation_and_reuses_it(tmp_path):
    """`exp2sim demo --config tiny.toml`: every stage, report, metrics and models; the
    second run reuses everything (no simulation, no training)."""
    import json
    import subprocess
    import sys

    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "exp2sim", "demo", "--out", str(out), "--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Gap in the margin closed by the GAN" in proc.stdout + proc.stderr
    assert "Expected order of the applicability distances (medians): " in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    for key in ("gap_closed_deconvolution", "gap_closed_convolution", "auc_digits", "auc_photos"):
        assert key in m
    for table in ("accuracy_classifier_unconvolved", "accuracy_classifier_convolved"):
        assert all(0.0 <= v <= 1.0 for v in m[table].values())
    for trained_on, gan in (("unconvolved", "GAN-deconvolved"), ("convolved", "GAN-convolved")):
        c = m[f"certainty_classifier_{trained_on}"]
        assert list(c["mean"]) == list(m[f"accuracy_classifier_{trained_on}"])
        assert all(0.0 <= v <= 1.0 for v in c["mean"].values())
        truth, before = list(c["mean"].values())[:2]
        if truth > before:
            expected = (c["mean"][gan] - before) / (truth - before)
            assert abs(c["gap_closed"][gan] - expected) < 1e-12
        else:  # no certainty lost: no gap to close (NaN, written as null)
            assert c["gap_closed"][gan] is None
        margin = m[f"margin_classifier_{trained_on}"]
        assert list(margin["mean"]) == list(c["mean"])
        for name, value in margin["mean"].items():  # the true model's certainty minus another's
            assert -1.0 <= value <= c["mean"][name] + 1e-12
    # two classifiers per direction: the tables average them, each one's own scores kept
    assert m["classifier_seeds"] == 2
    directions = {"deconvolution": "unconvolved", "convolution": "convolved"}
    for direction, trained_on in directions.items():
        per = m["per_classifier"][direction]
        for measure in ("accuracy", "certainty", "margin"):
            table = m[f"{measure}_classifier_{trained_on}"]
            table = table if measure == "accuracy" else table["mean"]
            for name, values in per["mean"][measure].items():
                assert len(values) == 2 and abs(np.mean(values) - table[name]) < 1e-12
            truth, before = list(per["mean"][measure].values())[:2]
            for method, shares in per["gap_closed"][measure].items():
                own = per["mean"][measure][method]
                for t, b, a, share in zip(truth, before, own, shares, strict=True):
                    assert (share is None) == (t <= b)
                    assert share is None or abs(share - (a - b) / (t - b)) < 1e-9
        # each spectrum counts as right for 0, 1 or 2 of the classifiers, of 6 spectra
        for value in m[f"accuracy_classifier_{trained_on}"].values():
            assert abs(value * 12 - round(value * 12)) < 1e-9
    # the bins-only reference: its own paired test spectra, a row and a fidelity
    from exp2sim.evaluation.pipeline import BINS_ROW

    assert BINS_ROW in m["accuracy_classifier_convolved"]
    # the demo preset's GAN sees each mosaic as volumes (fold_tiles): 3D networks, 2D data
    gan_data = json.loads((out / "gan" / "config.json").read_text())["data"]
    assert (gan_data["dim"], gan_data["spectrum_dim"]) == (3, 2)
    assert "gap_closed_convolution_bins" in m
    # the GAN's deconvolution refined with its Sim2Exp kernels (refine_iterations: 5)
    from exp2sim.evaluation.pipeline import REFINED

    assert REFINED in m["accuracy_classifier_unconvolved"]
    assert "gap_closed_deconvolution_refined" in m
    assert np.isfinite(m["fidelity_deconvolution"]["GAN, refined"]["psnr"])
    assert np.isfinite(m["fidelity_convolution"][BINS_ROW]["psnr"])
    assert set(m["applicability"]) >= {"digits", "photographs", "Rb2MnF4", "negative control"}
    from exp2sim.evaluation.report import ARTEFACTS_SUBTRACTED

    assert {"artefacts", ARTEFACTS_SUBTRACTED} <= set(m["applicability"])
    for summary in m["applicability"].values():  # a median lies within one std of the mean
        assert abs(summary["median"] - summary["mean"]) <= summary["std"] + 1e-6
    # the target's order of the sets, checked by median and by mean (tiers: the set names)
    order = m["applicability_order"]
    assert {n for tier in order["tiers"] for n in tier} == set(m["applicability"])
    for by in ("median", "mean"):
        for a, b in order[f"violations_{by}"]:
            assert m["applicability"][a][by] >= m["applicability"][b][by]
    for fractions in m["known_fraction"].values():
        translations = {"GAN-deconvolved", "Richardson-Lucy", "GAN-convolved", "Gaussian blur"}
        translations |= {REFINED}  # the tiny config's kernel GAN is refined
        assert set(fractions) == set(m["applicability"]) - {"training set"} | translations
        # fractions of the sets' sizes (n_test per model for the tests and their
        # translations, n_outliers else)
        sizes = {k: 2 * 3 if k.startswith("test") or k in translations else 3 for k in fractions}
        assert all(abs(v * sizes[k] - round(v * sizes[k])) < 1e-9 for k, v in fractions.items())
    report = (out / "report.md").read_text()
    assert "Gap closed by the GAN" in report and "ROC AUC" in report
    assert "Expected order of the distances" in report and "- By median: " in report
    assert "then the same after `--background`" in report
    assert "Certainty gap closed by the GAN" in report
    assert "Margin gap closed by the GAN" in report and "| margin |" in report
    assert "benchmarks/classifier_seeds.py" in report  # the intervals leave out its seed
    assert report.count("Averaged over 2 classifiers (seeds 0 to 1)") == 2
    assert "**n/a** [" not in report  # no interval for a share without a gap
    assert "Intensities at each pixel's kinematic L" in report  # no fixed_l
    # the report written from metrics.json (NaN there: null) is the one the run wrote
    from exp2sim.evaluation.report import render

    saved = EvaluationConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert render(saved, m) == report
    assert "refined by 5 iterations of Richardson-Lucy" in report
    assert f"{REFINED}: " in report  # its share of the certainty gap
    assert "know what it does not know" in report
    assert m["volume"]["shape"] == [16, 16, 16]
    assert np.isfinite(m["volume"]["psnr_deconvolution"]["GAN"])
    assert "3D example" in report
    for png in ("deconvolution", "convolution", "applicability", "volume"):
        assert (out / "figures" / f"{png}.png").stat().st_size > 10_000
    summary = json.loads((out / "spinwaves" / "summary.json").read_text())
    assert summary["goodenough_gamma_max_deviation_from_spinw_meV"] < 0.06
    # the kept models work from the command line
    spectrum = out / "one.npy"
    from exp2sim.spectra.dataset import read_dataset
    from exp2sim.spinwave import load_model

    ds = read_dataset(out / "data" / "goodenough_test_convolved.h5")
    # the demo preset draws within half of each range, around the best fit
    lo, hi = np.array(load_model("goodenough").around_best_fit(0.5).ranges).T
    assert np.all((ds.parameters >= lo) & (ds.parameters <= hi))
    assert "centred on the model's best fit" in report
    x = ds.signal[0].copy()
    x[ds.mask] = np.nan
    np.save(spectrum, x)
    classify = ["classify", "--model", str(out / "classifier-unconvolved"), str(spectrum)]
    classify += ["--deconvolve", str(out / "gan"), "--format", "json"]
    cls = subprocess.run(
        [sys.executable, "-m", "exp2sim", *classify], capture_output=True, text=True, check=False
    )
    assert cls.returncode == 0, cls.stderr
    assert set(json.loads(cls.stdout)["certainties"]) == {"goodenough", "dimer"}
    # run again: every dataset and model is reused (no file rewritten), same numbers
    kept = [*(out / "data").glob("*.h5"), out / "gan" / "checkpoint.safetensors"]
    kept += [
        out / f"classifier-{k}" / "classifier.safetensors" for k in ("unconvolved", "convolved")
    ]
    kept += [
        out / "classifier-seeds" / f"{k}-1" / "classifier.safetensors" for k in directions.values()
    ]
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    again = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["accuracy_classifier_unconvolved"] == m["accuracy_classifier_unconvolved"]
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps
    # [classifier_convolved] reaches the classifiers trained on convolved spectra only
    for folder in ("classifier-convolved", "classifier-seeds/convolved-1"):
        saved = json.loads((out / folder / "config.json").read_text())
        assert (saved["penalty_batch"], saved["epochs"]) == (2, 2)
    saved = json.loads((out / "classifier-unconvolved" / "config.json").read_text())
    assert (saved["penalty_batch"], saved["epochs"], saved["seed"]) == (0, 2, 0)


def test_a_reused_dataset_must_match_the_settings(tmp_path):
    from exp2sim.evaluation.data import simulate
    from exp2sim.spectra.generate import SimulationConfig

    config = SimulationConfig(model="goodenough", n=2, kind="cut", seed=4, chunk=2)
    first = simulate(config, tmp_path / "c.h5")
    assert first.shape[0] == 2
    assert np.array_equal(simulate(config, tmp_path / "c.h5"), first, equal_nan=True)
    other = SimulationConfig(model="goodenough", n=2, kind="cut", seed=5, chunk=2)
    with pytest.raises(ValueError, match=r"other settings \(seed\)"):
        simulate(other, tmp_path / "c.h5")


def test_ctrl_c_keeps_the_work_and_says_how_to_resume(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    toml = tmp_path / "small.toml"
    toml.write_text(
        'preset = "demo"\nn_train = 8\nn_train_convolved = 4\nn_test = 2\n'
        "applicability_points = 4\n"
    )
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "exp2sim", "evaluate", "--config", str(toml), "--out", str(out)]
    # A shell without job control starts background commands (`pytest &`) with SIGINT
    # ignored (POSIX), and pytest, its xdist workers and their children inherit that: Python
    # then never raises KeyboardInterrupt (`bash -c 'python -c "import signal;
    # print(signal.getsignal(signal.SIGINT))" &'` prints 1, SIG_IGN). The child starts with
    # SIGINT as from a terminal, however the tests were started.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not any((out / "data").glob("*.parts/chunk-*.npz")):  # some spectra finished
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the command and its workers
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out_text, err = proc.communicate()
        raise AssertionError(f"no exit 60 s after SIGINT; stderr:\n{err[-3000:]}") from None
    assert proc.returncode == 130
    assert f"interrupted: finished work is kept in {out}" in " ".join(err.split())
    assert "Traceback" not in err
    assert any((out / "data").glob("*.parts/chunk-*.npz"))
