"""Richardson-Lucy with the kernels a Sim2Exp kernel generator predicts (gan/refine.py): the
learned blur is Sim2Exp's translation, its transpose is the adjoint, the iterations invert a
known blur and never lower the likelihood, bad input is refused, and `translate --refine`."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_GAN
from typer.testing import CliRunner

from exp2sim.cli import app
from exp2sim.gan.fold import TileFold
from exp2sim.gan.networks import ResnetGenerator
from exp2sim.gan.normalisation import IntensityScale, LevelMatch
from exp2sim.gan.refine import LearnedBlur
from exp2sim.gan.synthetic import blur, sharp_spectra
from exp2sim.gan.translate import Translator

runner = CliRunner()


def learned_blur(dim: int, fold: TileFold | None = None, seed: int = 0) -> LearnedBlur:
    """A randomly initialised Sim2Exp kernel generator (3 taps), with intensity matching."""
    torch.manual_seed(seed)
    g = ResnetGenerator(dim, ngf=4, n_blocks=1, kernel=3, head=3)
    with torch.no_grad():  # kernels far from the identity prior, varying from pixel to pixel
        g.decoder[-1].weight.normal_(0.0, 0.5)
    source, target = IntensityScale(q=2.0), IntensityScale(q=1.5)
    g.set_scales(source, target)
    match = LevelMatch(3.0, "mean", 99.0)
    return LearnedBlur(Translator(g, source, target, match=match, fold=fold))


def box_blur(dim: int) -> LearnedBlur:
    """A kernel generator whose kernels are all the same 3^dim box: its last convolution's
    weights are zero and its bias cancels the identity prior, so the logits are equal."""
    g = ResnetGenerator(dim, ngf=4, n_blocks=1, kernel=3, head=3)
    with torch.no_grad():
        g.decoder[-1].weight.zero_()
        g.decoder[-1].bias.copy_(-g.prior)
    scale = IntensityScale(q=1.0)
    g.set_scales(scale, scale)
    return LearnedBlur(Translator(g, scale, scale))


@pytest.mark.parametrize(
    ("shape", "fold"), [((48,), None), ((24, 20), None), ((8, 12, 10), None), ((16, 48), "fold")]
)
def test_learned_blur_is_the_sim2exp_translation(shape, fold):
    """With the kernels Sim2Exp predicts for a spectrum, the linear blur gives Sim2Exp's own
    translation of it (intensity matching, masks and a folded mosaic included)."""
    folding = TileFold((8, 8), pad=1) if fold else None
    dim = 3 if fold else len(shape)
    lb = learned_blur(dim, folding)
    rng = np.random.default_rng(0)
    x = (5.0 * rng.random(shape) ** 3).astype(np.float32)
    x.flat[rng.choice(x.size, x.size // 10, replace=False)] = np.nan
    expected = lb.translator(x)
    w = lb.weights(x)
    assert torch.allclose(w.sum(1), torch.ones((), dtype=w.dtype))
    spatial = tuple(range(2, w.dim()))
    assert (w - w.mean(dim=spatial, keepdim=True)).abs().max() > 0.01  # not one kernel
    got = lb.blur(x, w)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.nanmax(expected))
    # the blur is linear in the intensities: kernels fixed, 2x the input gives 2x
    np.testing.assert_allclose(lb.blur(2 * x, w), 2 * got, rtol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_transpose_is_the_adjoint(dim):
    """<H u, r> = <u, H^T r> for random kernels and vectors (what Richardson-Lucy needs)."""
    lb = learned_blur(dim)
    shape = {1: (40,), 2: (12, 16), 3: (6, 8, 10)}[dim]
    rng = np.random.default_rng(1)
    w = lb.weights(rng.random(shape))
    u, r = (torch.from_numpy(rng.random((1, *shape))) for _ in range(2))
    left = (lb._apply(u, w) * r).sum()
    right = (u * lb._transpose(r, w)).sum()
    assert torch.isclose(left, right, rtol=1e-12)
    assert not torch.isclose(left, (u * r).sum(), rtol=1e-3)  # not the identity


def poisson_divergence(y: np.ndarray, hu: np.ndarray) -> float:
    """Sum of y log(y / Hu) - y + Hu: what Richardson-Lucy's iterations never increase
    (Hu floored at 1e-12 of y's maximum, as in the iterations)."""
    ok = np.isfinite(y)
    y, hu = y[ok], np.maximum(hu[ok], 1e-12 * y[ok].max())
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(y > 0, y * np.log(y / hu), 0.0)
    return float(np.sum(terms - y + hu))


def test_refinement_inverts_a_known_blur():
    """Sharp lines blurred by a 3-tap box (the generator's kernels, exactly): from the
    blurred spectra, 50 iterations bring them much closer to the truth, and every
    iteration count fits the data at least as well as the one before."""
    lb = box_blur(1)
    truth = sharp_spectra(6, (64,), seed=3, width=0.5, lines=4) + 0.05
    measured = np.stack([lb.blur(t, lb.weights(t)) for t in truth])
    error = {0: np.linalg.norm(measured - truth)}
    divergence = []
    for n in (1, 2, 5, 20, 50):
        u = lb.deconvolve(measured, measured, n)
        error[n] = np.linalg.norm(u - truth)
        fit = sum(
            poisson_divergence(y, lb.blur(x, lb.weights(x)))
            for y, x in zip(measured, u, strict=True)
        )
        divergence.append(fit)
    assert error[50] < 0.5 * error[0]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(divergence, divergence[1:], strict=False))
    # background-subtracted data (negative values) are shifted, not broken
    shifted = lb.deconvolve(measured - 0.3, measured - 0.3, 50)
    assert np.linalg.norm(shifted + 0.3 - truth) < 0.5 * error[0]


def test_refinement_keeps_masks_and_refuses_bad_input():
    lb = learned_blur(2)
    x = sharp_spectra(2, (16, 20), seed=0, mask_fraction=0.2)
    out = lb.deconvolve(x, x, 3)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(x))
    assert (out[np.isfinite(x)] >= 0).all() and not np.allclose(out, x, equal_nan=True)
    assert lb.deconvolve(x[0], x[0], 3).shape == (16, 20)
    bad = x.copy()
    bad[0, 0, 0] = np.inf
    for args, message in [
        ((x, x[:1], 3), "differ in shape"),
        ((x, x, 0), "at least 1"),
        ((x[:, :, :, None], x[:, :, :, None], 3), "refines 2D spectra"),
        ((bad, x, 3), "infinite"),
    ]:
        with pytest.raises(ValueError, match=message):
            lb.deconvolve(*args)
    scale = IntensityScale(q=1.0)
    drawn = ResnetGenerator(2, ngf=4, n_blocks=1)
    shifted = ResnetGenerator(2, ngf=4, n_blocks=1, kernel=3, shifts=((0, 8), (0, -8)))
    with pytest.raises(ValueError, match="predict kernels"):
        LearnedBlur(Translator(drawn, scale, scale))
    with pytest.raises(ValueError, match="without kernel shifts"):
        LearnedBlur(Translator(shifted, scale, scale))
    # the kernels themselves: none for a drawing generator; shifted taps need their context
    # and get no weight where it is missing
    with pytest.raises(ValueError, match="only a kernel generator"):
        drawn.kernel_weights(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="needs context"):
        shifted.kernel_weights(torch.zeros(1, 1, 8, 16))
    w = shifted.kernel_weights(torch.zeros(1, 1, 8, 16), torch.full((1, 2, 8, 16), torch.nan))
    assert w.shape == (1, 11, 8, 16) and (w[:, 9:] == 0).all()
    assert torch.allclose(w.sum(1), torch.ones(()))
    exp2sim = ResnetGenerator(2, ngf=4, n_blocks=1, kernel=3, sharpen=True)
    with pytest.raises(ValueError, match="not Exp2Sim's unsharp mask"):
        LearnedBlur(Translator(exp2sim, scale, scale))


def test_translate_refine_command(tmp_path):
    """`translate --refine N` on a folded kernel run: shape and mask kept, non-negative, a
    better fit to the input under the run's own learned blur than the plain translation;
    --refine with sim2exp or below 0 is a one-line error."""
    shape = (32, 128)
    a = blur(sharp_spectra(4, shape, seed=0, mask_fraction=0.2), 1.0)
    b = sharp_spectra(4, shape, seed=1, mask_fraction=0.2)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    values = {
        **TINY_GAN,
        "epochs": 1,
        "epochs_decay": 1,
        "iterations_per_epoch": 3,
        "fold_tiles": [16, 16],
        "fold_pad": 4,
        "head": 3,
        "kernel": 3,
    }
    toml = tmp_path / "tiny.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    run = tmp_path / "run"
    args = ["train", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--out", str(run)]
    res = runner.invoke(app, [*args, "--preset", str(toml), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    translate = ["translate", str(tmp_path / "a.npy"), "--run", str(run), "--out"]
    res = runner.invoke(app, [*translate, str(tmp_path / "plain.npy")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*translate, str(tmp_path / "refined.npy"), "--refine", "10"])
    assert res.exit_code == 0, res.output
    plain, refined = np.load(tmp_path / "plain.npy"), np.load(tmp_path / "refined.npy")
    assert refined.shape == a.shape and refined.dtype == plain.dtype
    np.testing.assert_array_equal(np.isnan(refined), np.isnan(a))
    assert (refined[np.isfinite(a)] >= 0).all()
    lb = LearnedBlur.from_run(run)
    for y, p, r in zip(a, plain, refined, strict=True):
        w = lb.weights(p)  # the kernels the refinement used
        assert poisson_divergence(y, lb.blur(r, w)) < poisson_divergence(y, lb.blur(p, w))
    for bad in (["--refine", "3", "--direction", "sim2exp"], ["--refine", "-1"]):
        res = runner.invoke(app, [*translate, str(tmp_path / "x.npy"), *bad])
        assert res.exit_code == 2 and "--refine" in res.stderr
        assert "Traceback" not in res.output
