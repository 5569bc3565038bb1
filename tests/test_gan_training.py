"""Exp2SimGAN training and inference: a small task that must be learned, exact resume,
tiled inference, the train/translate commands in 1D/2D/3D, kill -9 and torchrun."""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY_GAN
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from exp2sim.cli import app
from exp2sim.gan.checkpoint import load_state, read_info
from exp2sim.gan.config import TrainConfig
from exp2sim.gan.fold import TileFold
from exp2sim.gan.synthetic import blur, sharp_spectra
from exp2sim.gan.train import CHECKPOINT, Trainer
from exp2sim.gan.translate import Translator

runner = CliRunner()
TINY = TINY_GAN
SIGMA = 3.0  # the known blur (pixels) of the learning task


def rel(x, y):
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


# the paper's losses and normalisation; with exp2sim's intensity loss and mean scales; and the
# paper's setting with bf16 autocast, which must clear the same bar as float32 to count as a
# speed-up that keeps accuracy (issue 4; 1D at this size it is slower on the CPU, 87 s vs 66 s)
VARIANTS = {
    "paper": {},
    "intensity": {"intensity_scale": "mean", "lambda_intensity": 5.0},
    "bf16": {"precision": "bf16"},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def blur_run(tmp_path_factory, request):
    """A GAN trained for 3,000 iterations on unpaired 1D spectra: A = sharp lines blurred
    by a Gaussian of SIGMA pixels, B = sharp lines (other draws). About 90 s on 2 cores
    per variant.

    Why so many at the paper's learning rate: with 1,000 iterations at lr 2e-4, seeds 0-3
    gave deconvolution errors of 0.43-1.31 (identity 0.65), so the outcome was down to the
    seed (and to float32 round-off); this setting gave 0.30-0.47 and 0.22-0.27 for
    convolution (identity 1.08) for all four. With the intensity loss, seed 0: 0.37 and
    0.21. (A generator that adds its output to its input, tried with the intensity loss,
    stayed near the identity: 0.60 and 1.06 after 3,000 iterations.)"""
    # Both xdist workers ran tests of every variant and trained each run twice (6 instead of
    # 3 trainings, seen in this session). The runs live in the test session's directory,
    # shared by the workers: the first to need a variant trains it under a lock, the other
    # waits for it and reuses it.
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / f"blur-{request.param}"
    with open(shared / f"blur-{request.param}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        history = root / "run" / "history.json"
        if not (history.exists() and len(json.loads(history.read_text())) == 2):
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            _train_blur_run(root, request.param)
    return root


def _train_blur_run(root: Path, variant: str) -> None:
    shape = (128,)
    np.save(root / "a.npy", blur(sharp_spectra(200, shape, seed=2, width=1.0, lines=4), SIGMA))
    np.save(root / "b.npy", sharp_spectra(200, shape, seed=1, width=1.0, lines=4))
    config = blur_task_config(**VARIANTS[variant])
    Trainer.new(config, root / "a.npy", root / "b.npy", root / "run").fit()


def blur_task_config(**changes: object) -> TrainConfig:
    """The GAN of the 1D blur tasks: 3,000 iterations of a small network on 64-pixel crops."""
    settings = {
        "ngf": 16,
        "n_blocks": 3,
        "ndf": 16,
        "crop": 64,
        "nce_patches": 64,
        "nce_layers": ("down1", "down2", "block1", "block3"),
        "epochs": 1,
        "epochs_decay": 1,
        "iterations_per_epoch": 1500,
        "lr": 1e-4,
        "flip_axes": (),
    }
    return TrainConfig(**{**settings, **changes})


def test_gan_learns_a_known_blur_and_its_inverse(blur_run):
    """Held-out pairs the GAN never saw: both directions must beat the identity map."""
    truth = sharp_spectra(20, (128,), seed=3, width=1.0, lines=4)
    blurred = blur(truth, SIGMA)
    exp2sim = Translator.from_run(blur_run / "run", "exp2sim")
    sim2exp = Translator.from_run(blur_run / "run", "sim2exp")
    deconvolved, convolved = exp2sim(blurred), sim2exp(truth)
    # fp32, seeds 0-3 at the time of writing: 0.30-0.47 vs 0.65 and 0.22-0.27 vs 1.08;
    # bf16 autocast, seed 0: 0.34 and 0.33 (fp32 on the same machine: 0.43 and 0.28)
    assert rel(deconvolved, truth) < 0.8 * rel(blurred, truth)
    assert rel(convolved, blurred) < 0.5 * rel(truth, blurred)
    history = json.loads((blur_run / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all("fid" in h for h in history)
    best = Translator.from_run(blur_run / "run", "exp2sim", checkpoint="best")
    assert best.generator is not None
    # best.safetensors holds the epoch with the lowest held-out Frechet distance
    best_info = read_info(blur_run / "run" / "best.safetensors")
    lowest = min(history, key=lambda h: h["fid"])
    assert (best_info["epoch"], best_info["fid"]["fid"]) == (lowest["epoch"], lowest["fid"])
    assert (blur_run / "run" / "figures" / "losses.png").stat().st_size > 1000
    assert (blur_run / "run" / "figures" / "samples_epoch0002.png").exists()


def test_kernel_gan_learns_a_narrow_blur_and_its_inverse(tmp_path):
    """Kernel generators (TrainConfig.kernel) on the same kind of task with a blur of one
    pixel (an unsharp mask cannot undo wider ones: at SIGMA = 3 with 13 taps it deconvolved
    no better than the identity, 0.65 against 0.65). Held-out pairs, both directions must
    beat the identity map. Seed 0 at the time of writing, on one torch thread (as under
    xdist on 2 cores): 0.244 against 0.260 and 0.123 against 0.304, keeping 98 % and 89 % of
    the intensity; on two threads (other float round-off) 0.202 and 0.111; on a 2-core
    Intel Xeon under xdist (one thread) 0.190 against 0.260 and 0.162 against 0.304 (85 %
    and 94 % of the intensity), which is why the convolution's bar is 0.6 of the identity's
    error, not 0.5. Deconvolution gains little at this size, so its bar is only "better than
    doing nothing". About 80 s."""
    sigma, shape = 1.0, (128,)
    np.save(tmp_path / "a.npy", blur(sharp_spectra(200, shape, seed=2, width=1.0, lines=4), sigma))
    np.save(tmp_path / "b.npy", sharp_spectra(200, shape, seed=1, width=1.0, lines=4))
    config = blur_task_config(kernel=5)
    Trainer.new(config, tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "run").fit()
    truth = sharp_spectra(20, shape, seed=3, width=1.0, lines=4)
    blurred = blur(truth, sigma)
    deconvolved = Translator.from_run(tmp_path / "run", "exp2sim")(blurred)
    convolved = Translator.from_run(tmp_path / "run", "sim2exp")(truth)
    assert rel(deconvolved, truth) < rel(blurred, truth)
    assert rel(convolved, blurred) < 0.6 * rel(truth, blurred)
    # a blur keeps most of the intensity: no region emptied or made up
    assert 0.8 < convolved.sum() / truth.sum() < 1.1
    assert 0.8 < deconvolved.sum() / blurred.sum() < 1.1


def mix_slices(spectra: np.ndarray, distance: int, share: float) -> np.ndarray:
    """Each pixel gets `share` of the pixels `distance` away on either side (normalised by
    the shares that exist), as a mosaic's energy slices share intensity, then a 1-pixel
    blur."""
    out, weight = (1 - 2 * share) * spectra, np.full(spectra.shape[-1], 1 - 2 * share)
    out[..., distance:] += share * spectra[..., :-distance]
    out[..., :-distance] += share * spectra[..., distance:]
    weight[distance:] += share
    weight[:-distance] += share
    return blur(out / weight, 1.0)


def assert_mixing_learned(
    convolved: np.ndarray,
    measured: np.ndarray,
    truth: np.ndarray,
    local: np.ndarray,
    bar: float,
    lit_by_partners: float,
) -> None:
    """A learned resolution that mixes distant pixels: the convolution's error is below
    `bar` times the identity's; where only the distant partners light the measured spectrum
    (at least `lit_by_partners` of the pixels, dark after the `local` blur), it puts 0.3-3
    times the measured intensity, where the local blur puts under 1 %; and it keeps the
    total intensity within -20 / +10 %."""
    assert rel(convolved, measured) < bar * rel(truth, measured)
    only_partners = (local < 1e-3) & (measured > 0.05)
    assert only_partners.mean() > lit_by_partners
    moved = convolved[only_partners].mean() / measured[only_partners].mean()
    assert 0.3 < moved < 3.0
    assert local[only_partners].mean() < 0.01 * measured[only_partners].mean()
    assert 0.8 < convolved.sum() / truth.sum() < 1.1


def test_kernel_shifts_learn_to_mix_distant_pixels(tmp_path):
    """Kernel generators with shifted taps (TrainConfig.kernel_shifts) on a 1D task where
    the 'resolution' moves 10 % of each pixel's intensity 32 pixels either way, as the
    mosaic's energy resolution does between slices, besides a 1-pixel blur. Convolving,
    they must beat the identity and put intensity where only the partners 32 pixels away
    light the measured spectrum, which no local blur reaches. Seed 0 at the time of
    writing, two threads (AMD EPYC): 0.135 against the local blur's 0.232 and the
    identity's 0.482, the shifted taps' weights 0.055 and 0.058 (the truth: 0.1);
    deconvolving (not asserted) 0.43 against the identity's 0.36. On a 2-core Intel Xeon
    under xdist (one thread): 0.224, barely below the local blur's 0.232 (the reason the
    test no longer asks for 0.8 of it), with 0.75 of the measured intensity where only the
    partners light it (11 % of the pixels; the local blur: 1e-4). About 80 s."""
    shape = (128,)
    np.save(
        tmp_path / "a.npy",
        mix_slices(sharp_spectra(200, shape, seed=2, width=1.0, lines=4), 32, 0.1),
    )
    np.save(tmp_path / "b.npy", sharp_spectra(200, shape, seed=1, width=1.0, lines=4))
    config = blur_task_config(kernel=5, kernel_shifts=[[-32], [32]], flip_axes=(-1,))
    Trainer.new(config, tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "run").fit()
    truth = sharp_spectra(20, shape, seed=3, width=1.0, lines=4)
    measured = mix_slices(truth, 32, 0.1)
    convolved = Translator.from_run(tmp_path / "run", "sim2exp")(truth)
    local = blur(truth, 1.0)  # the best a purely local blur can do
    assert_mixing_learned(convolved, measured, truth, local, bar=0.6, lit_by_partners=0.05)


def mix_tiles(mosaics: np.ndarray, tile: int, share: float) -> np.ndarray:
    """Each pixel gets `share` of the same pixel in the neighbouring tiles of its row
    (normalised by the shares that exist), as the PCSMO mosaic's energy slices share
    intensity through the energy resolution, then a 1-pixel blur within each tile."""
    fold = TileFold((tile, tile))
    v = fold.fold(mosaics)
    out, weight = (1 - 2 * share) * v, np.full(v.shape[1], 1 - 2 * share)
    out[:, 1:] += share * v[:, :-1]
    out[:, :-1] += share * v[:, 1:]
    weight[1:] += share
    weight[:-1] += share
    out = gaussian_filter(out / weight[:, None, None], (0, 0, 1.0, 1.0), mode="constant")
    return fold.unfold(out, mosaics.shape[1:])


def test_volume_view_learns_to_mix_neighbouring_tiles(tmp_path):
    """A kernel GAN on mosaics folded into volumes (fold_tiles): 1 x 6 tiles of 16 x 16
    pixels whose 'resolution' moves 10 % of each pixel's intensity to the same pixel of the
    neighbouring tiles, besides a 1-pixel blur; every tile has lines of its own. Convolving,
    the GAN must beat the identity and put intensity where only the neighbouring tiles
    light the measured spectrum (5 % of the pixels), which a 3-tap generator on the flat
    mosaic cannot reach (the blur within the tiles puts 0.2 % of the measured intensity
    there). Seed 0 at the time of writing (ngf 8, 600 iterations, about 65 s): relative
    error 0.222 against the identity's 0.542 (the blur within the tiles alone: 0.169);
    1.55 times the measured intensity where only the neighbours light it."""
    tile, shape = 16, (16, 96)
    fold = TileFold((tile, tile))

    def mosaics(n: int, seed: int) -> np.ndarray:  # every tile with lines of its own
        tiles = sharp_spectra(6 * n, (tile, tile), seed=seed, width=1.0, lines=2)
        return fold.unfold(tiles.reshape(n, 6, tile, tile), shape)

    np.save(tmp_path / "a.npy", mix_tiles(mosaics(200, 2), tile, 0.1))
    np.save(tmp_path / "b.npy", mosaics(200, 1))
    config = blur_task_config(
        kernel=3,
        fold_tiles=(tile, tile),
        fold_pad=5,
        crop=16,
        d_layers=2,
        flip_axes=(-1,),
        ngf=8,
        ndf=8,
        iterations_per_epoch=300,
    )
    Trainer.new(config, tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "run").fit()
    truth = mosaics(20, 3)
    measured = mix_tiles(truth, tile, 0.1)
    in_tiles = mix_tiles(truth, tile, 0.0)  # the 1-pixel blur alone
    convolved = Translator.from_run(tmp_path / "run", "sim2exp")(truth)
    assert_mixing_learned(convolved, measured, truth, in_tiles, bar=0.5, lit_by_partners=0.02)


def test_tiled_translation_matches_whole_translation(blur_run):
    truth = sharp_spectra(3, (1024,), seed=4, width=1.0, lines=12)
    x = blur(truth, SIGMA)
    x[:, 500:540] = np.nan
    t = Translator.from_run(blur_run / "run", "exp2sim")
    whole = t(x)
    t.max_voxels = 256  # seven tiles of 256 overlapping by 128
    tiled = t(x)
    np.testing.assert_array_equal(np.isnan(tiled), np.isnan(x))
    ok = ~np.isnan(x)
    assert rel(tiled[ok], whole[ok]) < 0.05


def test_translation_keeps_the_input_units(blur_run):
    """Measured spectra come in any units: translating a * x must give a * (translation of
    x). The trained generator alone does not (instance norm forgets the input's scale);
    matching each spectrum to the training level does."""
    x = blur(sharp_spectra(4, (128,), seed=5, width=1.0, lines=4), SIGMA)
    x[:, 60:70] = np.nan
    ok = ~np.isnan(x)
    for direction in ("exp2sim", "sim2exp"):
        matched = Translator.from_run(blur_run / "run", direction)
        as_given = Translator.from_run(blur_run / "run", direction, match_intensity=False)
        y = matched(x)
        # measured with the fp32 run: 5e-4 (a = 0.01): a scaled input rounds differently
        for a in (0.01, 7.0):
            assert rel(matched(a * x)[ok], a * y[ok]) < 0.02  # float round-off only
            assert rel(as_given(a * x)[ok], a * as_given(x)[ok]) > 0.1
        np.testing.assert_array_equal(np.isnan(y), ~ok)


def test_applicability_calls_non_spectra_untrustworthy(blur_run):
    """The evaluation's outliers in 1D: spectra with one blurred line instead of four (of
    the trained kind but sparser, as Rb2MnF4 is on the PCSMO mosaic), smooth random fields
    and white noise (not spectra at all, like photographs) must all be untrustworthy, and
    held-out in-distribution spectra trustworthy on average. Measured on the three runs
    (paper / intensity / bf16), untrustworthy out of 10: 10 / 8 / 10 single lines, 9 / 10 /
    9 fields, 10 / 10 / 10 noise (mean distances 5.8 / 3.9 / 5.2, 5.3 / 21.1 / 5.5 and
    8.4 / 25.5 / 8.3; held-out 1.0). With version 3's features (no stem block): 10 / 10 /
    10, 9 / 10 / 10 and 10 / 10 / 10; with version 2's (the last block's channel means and
    deviations): 6 / 5 / 9, 0 / 2 / 2 and 4 / 7 / 10."""
    from scipy.ndimage import gaussian_filter1d

    from exp2sim.applicability import ApplicabilityDomain

    domain = ApplicabilityDomain.for_run(blur_run / "run", "exp2sim", repeats=200)
    rng = np.random.default_rng(0)
    fields = np.abs(gaussian_filter1d(rng.normal(size=(10, 128)), 8, axis=1))
    sets = {
        "in": blur(sharp_spectra(10, (128,), seed=11, width=1.0, lines=4), SIGMA),
        "sparse": blur(sharp_spectra(10, (128,), seed=13, width=1.0, lines=1), SIGMA),
        "fields": fields.astype(np.float32),
        "noise": rng.random((10, 128)).astype(np.float32),
    }
    result = {k: domain.assess_spectra(v) for k, v in sets.items()}
    means = {k: round(float(r.means.mean()), 2) for k, r in result.items()}
    assert means["in"] < domain.thresholds[0], means
    for name in ("sparse", "fields", "noise"):
        assert list(result[name].verdicts).count("untrustworthy") >= 8, (name, means)


def test_resume_continues_exactly(tmp_path):
    """Stop after 3 iterations, resume: the next losses equal an uninterrupted run's, across
    an epoch boundary (evaluation, checkpoint, learning-rate change)."""
    np.save(tmp_path / "a.npy", blur(sharp_spectra(8, (24, 24), seed=0), 1.5))
    np.save(tmp_path / "b.npy", sharp_spectra(8, (24, 24), seed=1))
    config = TrainConfig(**TINY, epochs=1, epochs_decay=1, iterations_per_epoch=4, seed=5)
    losses: dict[str, list] = {"full": [], "resumed": []}

    def record(key):
        return lambda s: losses[key].append(s["losses"])

    Trainer.new(config, tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "full").fit(
        record("full")
    )
    Trainer.new(config, tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "r").fit(
        record("resumed"), max_iterations=3
    )
    resumed = Trainer.resume(tmp_path / "r")
    assert (resumed.epoch, resumed.iteration) == (0, 3)
    resumed.fit(record("resumed"))
    assert len(losses["full"]) == 8
    assert losses["resumed"] == losses["full"]
    full_hist = json.loads((tmp_path / "full" / "history.json").read_text())
    assert json.loads((tmp_path / "r" / "history.json").read_text()) == full_hist


def test_averaged_generators_follow_the_moving_average_and_resume_exactly(tmp_path):
    """ema_decay: after every update w_avg <- d w_avg + (1 - d) w; evaluation, best.safetensors
    and translations use w_avg, training goes on with w; an interrupted run resumes to the
    same averages and the same best weights."""
    np.save(tmp_path / "a.npy", blur(sharp_spectra(8, (24, 24), seed=0), 1.5))
    np.save(tmp_path / "b.npy", sharp_spectra(8, (24, 24), seed=1))
    # evaluated only after the last epoch, so best.safetensors holds the final averages
    config = TrainConfig(
        **TINY, epochs=1, epochs_decay=1, iterations_per_epoch=3, seed=2, ema_decay=0.6,
        fid_every=2,
    )  # fmt: skip
    paths = (tmp_path / "a.npy", tmp_path / "b.npy")
    trainer = Trainer.new(config, *paths, tmp_path / "steps")
    expected = {k: v.clone() for k, v in trainer.ema.items()}
    for _ in range(3):
        trainer.step()
        latest = trainer._generator_state()
        expected = {k: 0.6 * expected[k] + 0.4 * latest[k] for k in expected}
    for k, v in expected.items():
        torch.testing.assert_close(trainer.ema[k], v, rtol=1e-5, atol=1e-6)
    latest = {k: v.clone() for k, v in trainer._generator_state().items()}
    name = "G_A.stem_conv.1.weight"
    assert not torch.allclose(latest[name], trainer.ema[name])
    with trainer.averaged_generators():
        torch.testing.assert_close(trainer._generator_state()[name], trainer.ema[name])
    torch.testing.assert_close(trainer._generator_state()[name], latest[name], rtol=0, atol=0)

    Trainer.new(config, *paths, tmp_path / "full").fit()
    Trainer.new(config, *paths, tmp_path / "r").fit(max_iterations=4)
    Trainer.resume(tmp_path / "r").fit()
    for file in (CHECKPOINT, "best.safetensors"):
        full, _ = load_state(tmp_path / "full" / file)
        resumed, _ = load_state(tmp_path / "r" / file)
        for part in full:
            if part in ("model", "ema"):
                for k in full[part]:
                    torch.testing.assert_close(resumed[part][k], full[part][k], rtol=0, atol=0)
    ckpt, _ = load_state(tmp_path / "full" / CHECKPOINT)
    best, info = load_state(tmp_path / "full" / "best.safetensors")
    assert info["epoch"] in (1, 2)
    assert info["epoch"] == 2  # the last epoch's best weights are the final averages
    torch.testing.assert_close(best["model"][name], ckpt["ema"][name], rtol=0, atol=0)
    assert not torch.allclose(ckpt["ema"][name], ckpt["model"][name])
    # the latest checkpoint translates with the averaged weights too
    latest_translator = Translator.from_run(tmp_path / "full", "exp2sim", checkpoint="latest")
    torch.testing.assert_close(
        latest_translator.generator.stem_conv[1].weight, ckpt["ema"][name], rtol=0, atol=0
    )


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", sharp_spectra(4, (24, 24), seed=0))
    small = TrainConfig(**TINY, epochs=1, epochs_decay=0, iterations_per_epoch=1)
    Trainer.new(small, tmp_path / "a.npy", tmp_path / "a.npy", tmp_path / "one").fit()
    wider = Trainer.new(
        small.replace(ngf=8), tmp_path / "a.npy", tmp_path / "a.npy", tmp_path / "two"
    )
    with pytest.raises(ValueError, match="another configuration: ngf=4"):
        wider.load_checkpoint(tmp_path / "one" / CHECKPOINT)
    narrower_head = Trainer.new(
        small.replace(head=3), tmp_path / "a.npy", tmp_path / "a.npy", tmp_path / "three"
    )
    with pytest.raises(ValueError, match="another configuration: head=7"):
        narrower_head.load_checkpoint(tmp_path / "one" / CHECKPOINT)
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer.new(small, tmp_path / "a.npy", tmp_path / "a.npy", tmp_path / "one")


def _tiny_toml(path: Path, **extra) -> Path:
    values = {**TINY, "epochs": 1, "epochs_decay": 1, "iterations_per_epoch": 3, **extra}
    lines = [
        f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in values.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# a 2D mosaic of 2 x 8 tiles of 16 x 16 pixels, trained and translated as 2 volumes each
# (with a 3-wide head, so that translate builds the generators as trained)
FOLDED = {"fold_tiles": [16, 16], "fold_pad": 4, "head": 3}


@pytest.mark.parametrize(
    ("shape", "extra"), [((40,), {}), ((20, 28), {}), ((16, 16, 20), {}), ((32, 128), FOLDED)]
)
def test_train_and_translate_commands_in_every_dimension(tmp_path, shape, extra):
    a = blur(sharp_spectra(4, shape, seed=0, mask_fraction=0.2), 1.0)
    b = sharp_spectra(4, shape, seed=1, mask_fraction=0.2)
    folder = tmp_path / "b"
    folder.mkdir()
    for i, s in enumerate(b):
        np.save(folder / f"{i}.npy", s)
    np.save(tmp_path / "a.npy", a)
    toml = _tiny_toml(tmp_path / "tiny.toml", **extra)
    res = runner.invoke(
        app,
        [
            "train",
            str(tmp_path / "a.npy"),
            str(folder),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            str(toml),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "translate",
            str(tmp_path / "a.npy"),
            "--run",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "t.npy"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = np.load(tmp_path / "t.npy")
    assert out.shape == a.shape
    np.testing.assert_array_equal(np.isnan(out), np.isnan(a))
    assert np.isfinite(out[~np.isnan(a)]).all()
    assert (out[~np.isnan(a)] >= 0).all()  # Exp2Sim output: a simulation, never negative
    # one spectrum (no stack axis) translates to one spectrum
    np.save(tmp_path / "one.npy", b[0])
    res = runner.invoke(
        app,
        [
            "translate",
            str(tmp_path / "one.npy"),
            "--run",
            str(tmp_path / "run"),
            "--direction",
            "sim2exp",
            "--out",
            str(tmp_path / "o.npy"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "o.npy").shape == shape
    if extra:  # the folded run's networks are 3D; spectra that are no whole tiles refused
        assert read_info(tmp_path / "run" / CHECKPOINT)["data"]["dim"] == 3
        np.save(tmp_path / "bad.npy", b[:, :30])
        args = ["translate", str(tmp_path / "bad.npy"), "--run", str(tmp_path / "run")]
        res = runner.invoke(app, [*args, "--out", str(tmp_path / "bad-out.npy")])
        assert res.exit_code == 2 and "whole number of the model's 16 x 16 tiles" in res.stderr


def test_exp2sim_translations_are_clipped_only_for_a_nonnegative_simulation(tmp_path):
    """The Exp2Sim translations are clipped at zero (TrainConfig.nonnegative_simulation)
    when domain B, the simulation, has no negative values; a domain B with some (say
    background-subtracted data) leaves them unclipped, and the run records which."""
    a = blur(sharp_spectra(4, (24,), seed=0), 1.0)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", sharp_spectra(4, (24,), seed=1))
    np.save(tmp_path / "b-neg.npy", sharp_spectra(4, (24,), seed=1) - 0.1)
    config = TrainConfig(**TINY, epochs=1, epochs_decay=0, iterations_per_epoch=1)
    for b, clipped in (("b.npy", True), ("b-neg.npy", False)):
        out = tmp_path / f"run-{b}"
        trainer = Trainer.new(config, tmp_path / "a.npy", tmp_path / b, out)
        assert trainer.model.G_A.nonnegative is clipped and not trainer.model.G_B.nonnegative
        trainer.fit()
        assert read_info(out / CHECKPOINT)["data"]["b_nonnegative"] is clipped
        assert Translator.from_run(out, "exp2sim").generator.nonnegative is clipped
        assert not Translator.from_run(out, "sim2exp").generator.nonnegative
    off = config.replace(nonnegative_simulation=False)
    trainer = Trainer.new(off, tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "off")
    assert not trainer.model.G_A.nonnegative


def test_translate_keeps_an_h5_dataset_and_rejects_bad_input(tmp_path):
    shape = (20, 24)
    a = blur(sharp_spectra(4, shape, seed=0), 1.0)
    np.save(tmp_path / "a.npy", a)
    config = TrainConfig(**TINY, epochs=1, epochs_decay=0, iterations_per_epoch=1)
    Trainer.new(config, tmp_path / "a.npy", tmp_path / "a.npy", tmp_path / "run").fit()
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs["default"] = "data"
        data = entry.create_group("data")
        data.attrs["signal"] = "signal"
        data["signal"] = a
        data["mask"] = np.zeros(shape, bool)
        data["mask"][:, :3] = True
        data["parameters"] = np.arange(4.0)
    res = runner.invoke(
        app,
        [
            "translate",
            str(tmp_path / "d.h5"),
            "--run",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "t.h5"),
        ],
    )
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "t.h5") as f:
        out = f["entry/data/signal"][()]
        assert f["entry/data/parameters"][()].tolist() == [0, 1, 2, 3]
    assert out.shape == a.shape and np.isnan(out[:, :, :3]).all()
    assert np.isfinite(out[:, :, 3:]).all()

    def error(*args):
        res = runner.invoke(
            app,
            [
                "translate",
                *map(str, args),
                "--run",
                str(tmp_path / "run"),
                "--out",
                str(tmp_path / "x.npy"),
            ],
        )
        assert res.exit_code == 2
        assert "error:" in res.output and "Traceback" not in res.output
        return res.output

    np.save(tmp_path / "3d.npy", np.zeros((2, 3, 4, 5)))
    assert "2D spectra" in error(tmp_path / "3d.npy")
    bad = a.copy()
    bad[0, 0, 0] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    assert "infinite" in error(tmp_path / "inf.npy")
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    assert "not a readable" in error(tmp_path / "corrupt.npy")
    assert "direction" in error(tmp_path / "a.npy", "--direction", "sideways")
    res = runner.invoke(
        app,
        [
            "translate",
            str(tmp_path / "a.npy"),
            "--run",
            str(tmp_path),
            "--out",
            str(tmp_path / "x.npy"),
        ],
    )
    assert res.exit_code == 2 and "not a training run" in res.output
    res = runner.invoke(
        app,
        ["train", str(tmp_path / "a.npy"), str(tmp_path / "3d.npy"), "--out", str(tmp_path / "r2")],
    )
    assert res.exit_code == 2 and "2D spectra but domain B 3D" in res.output


def _exp2sim() -> list[str]:
    return [sys.executable, "-m", "exp2sim"]


def test_training_survives_kill_9_and_resumes(tmp_path):
    np.save(tmp_path / "a.npy", blur(sharp_spectra(6, (24, 24), seed=0), 1.5))
    np.save(tmp_path / "b.npy", sharp_spectra(6, (24, 24), seed=1))
    toml = _tiny_toml(tmp_path / "t.toml", iterations_per_epoch=400, checkpoint_every=5)
    run = tmp_path / "run"
    cmd = [
        *_exp2sim(),
        "train",
        str(tmp_path / "a.npy"),
        str(tmp_path / "b.npy"),
        "--out",
        str(run),
        "--preset",
        str(toml),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 120
    while not (run / CHECKPOINT).exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / CHECKPOINT).exists()
    stopped_at = read_info(run / CHECKPOINT)["iteration"]
    assert 0 < stopped_at < 400
    res = subprocess.run(
        [*_exp2sim(), "train", "--resume", str(run), "--max-iterations", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert read_info(run / CHECKPOINT)["iteration"] == stopped_at + 3


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not installed",
)
def test_torchrun_two_processes_average_gradients(tmp_path):
    """Two CPU processes (gloo): every rank's gradients are averaged, so both hold the same
    weights, and the run's checkpoint keeps each rank's crop-sampler state."""
    np.save(tmp_path / "a.npy", blur(sharp_spectra(6, (24, 24), seed=0), 1.5))
    np.save(tmp_path / "b.npy", sharp_spectra(6, (24, 24), seed=1))
    toml = _tiny_toml(tmp_path / "t.toml", iterations_per_epoch=2)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "-m",
            "exp2sim",
            "train",
            str(tmp_path / "a.npy"),
            str(tmp_path / "b.npy"),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            str(toml),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    state, info = load_state(tmp_path / "run" / CHECKPOINT)
    assert info["world_size"] == 2 and len(state["rng"]["sampler"]) == 2
    assert not torch.equal(state["rng"]["sampler"][0], state["rng"]["sampler"][1])
    assert info["epoch"] == 2


def _average_in_process(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from exp2sim.gan.model import average_gradients

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    for p in params:
        p.grad = torch.full_like(p, float(rank + 1))
    average_gradients(params)
    torch.save([p.grad for p in params], f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_gradients_are_averaged_over_processes(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path}/rendezvous"
    mp.spawn(_average_in_process, args=(init, str(tmp_path)), nprocs=2)
    for rank in range(2):
        grads = torch.load(tmp_path / f"{rank}.pt")
        assert all(torch.equal(g, torch.full_like(g, 1.5)) for g in grads)
