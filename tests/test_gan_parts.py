"""Exp2SimGAN parts: network shapes in 1D/2D/3D, PatchNCE against hand computation, masked
losses, gradients, normalisation, the spectral Frechet distance, checkpoint files."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from exp2sim.gan.checkpoint import load_state, read_info, save_state
from exp2sim.gan.config import TrainConfig, load_preset
from exp2sim.gan.data import CropSampler, shifted_copies
from exp2sim.gan.fid import frechet_distance, spectra_distance
from exp2sim.gan.fold import TileFold
from exp2sim.gan.layers import count_parameters
from exp2sim.gan.losses import masked_l1, patch_mse, patch_nce, sample_locations
from exp2sim.gan.model import DCLGAN, run_generator, run_generator_stack
from exp2sim.gan.networks import PatchDiscriminator, ResnetGenerator
from exp2sim.gan.normalisation import IntensityScale, LevelMatch
from exp2sim.gan.synthetic import blur, sharp_spectra

TINY = {
    "ngf": 4,
    "n_blocks": 2,
    "ndf": 4,
    "nce_patches": 16,
    "nce_units": 8,
    "nce_layers": ("down1", "down2", "block1", "block2"),
}


@pytest.mark.parametrize("shape", [(37,), (30, 41), (10, 13, 17)])
def test_generator_keeps_any_shape_and_discriminator_has_two_outputs(shape):
    torch.manual_seed(0)
    g = ResnetGenerator(len(shape), ngf=4, n_blocks=2)
    x = torch.randn(2, 1, *shape)
    y, feats = g(x, ["stem", "down2", "block2"])
    assert y.shape == x.shape
    assert y.abs().max() <= 1  # tanh output
    padded = [s + (-s) % 4 for s in shape]
    assert feats[0].shape == (2, 4, *padded)
    assert feats[1].shape == (2, 16, *(p // 2 for p in padded))  # conv before 2nd blur-pool
    assert feats[2].shape == (2, 16, *(p // 4 for p in padded))
    _, enc = g(x, ["down1"], encode_only=True)
    assert enc[0].shape == (2, 8, *padded)
    # stopping early gives the same features as the full pass
    none, early = g(x, ["stem", "down2", "block2"], encode_only=True)
    assert none is None
    for f_early, f_full in zip(early, feats, strict=True):
        torch.testing.assert_close(f_early, f_full)
    d = PatchDiscriminator(len(shape), ndf=4)
    out = d(torch.randn(3, 1, *(32,) * len(shape)))
    assert out.shape[:2] == (3, 2) and out.dim() == 2 + len(shape)


def test_generator_is_translation_equivariant_away_from_borders():
    """Anti-aliased sampling: shifting the input by 4 pixels shifts the output by 4."""
    torch.manual_seed(1)
    g = ResnetGenerator(1, ngf=4, n_blocks=1).eval()
    x = torch.zeros(1, 1, 256)
    x[0, 0, 100:104] = 1.0
    y0 = g(x)[0, 0]
    y1 = g(torch.roll(x, 4, -1))[0, 0]
    torch.testing.assert_close(y1[60:200], y0[56:196], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", [(41,), (22, 29), (9, 12, 14)])
def test_kernel_generators_take_local_weighted_means(shape):
    """A kernel generator's output (TrainConfig.kernel) is a per-pixel weighted mean of its
    input over k^dim neighbours, whatever its weights: it cannot exceed the neighbourhood's
    extremes, a flat spectrum stays flat, and with `sharpen` it is an unsharp mask,
    (1 + a) x - a blur(x) with a >= 0: never below the input where the input is a local
    maximum. Checked against scipy's min/max filters on random weights and inputs."""
    from scipy.ndimage import maximum_filter, minimum_filter

    k, dim = 5, len(shape)
    torch.manual_seed(0)
    blur_gen = ResnetGenerator(dim, ngf=4, n_blocks=1, kernel=k)
    sharp_gen = ResnetGenerator(dim, ngf=4, n_blocks=1, kernel=k, sharpen=True)
    for g in (blur_gen, sharp_gen):
        for p in g.parameters():  # far from the near-identity start
            torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(2, 1, *shape)
    with torch.no_grad():
        y = blur_gen(x).numpy()
        flat = blur_gen(torch.full((1, 1, *shape), 0.3)).numpy()
        sharpened = sharp_gen(x).numpy()
    window = (1, 1) + (k,) * dim
    high = maximum_filter(x.numpy(), size=window, mode="nearest")
    low = minimum_filter(x.numpy(), size=window, mode="nearest")
    assert y.shape == x.shape
    assert np.all(y <= high + 1e-6) and np.all(y >= low - 1e-6)
    assert np.abs(y - x.numpy()).max() > 0.05  # it does blur
    np.testing.assert_allclose(flat, 0.3, rtol=1e-5)
    peaks = x.numpy() == high
    assert np.all(sharpened[peaks] >= x.numpy()[peaks] - 1e-6)
    assert np.abs(sharpened - x.numpy()).max() > 1e-3  # a is small at random weights
    with pytest.raises(ValueError, match="odd"):
        ResnetGenerator(dim, ngf=4, n_blocks=1, kernel=4)
    with pytest.raises(ValueError, match="odd"):
        TrainConfig(kernel=6)


@pytest.mark.parametrize(("kernel", "shape"), [(0, (37,)), (3, (37,)), (3, (8, 12, 12))])
def test_simulation_generator_never_outputs_negative_intensity(kernel, shape):
    """The Exp2Sim generator's translations (target: simulation, S(Q, w) >= 0) are clipped
    at zero intensity, drawn (tanh) or unsharp-masked alike, where the unclipped output,
    which the training losses see, does go negative beside a line at these random weights.
    A drawing generator's are exactly max(output, 0); a kernel generator's are that in
    intensity units times one factor <= 1 per input, which keeps each input's summed
    intensity."""
    torch.manual_seed(1)
    free = ResnetGenerator(len(shape), ngf=4, n_blocks=1, kernel=kernel, sharpen=kernel > 0)
    for p in free.parameters():
        torch.nn.init.normal_(p, std=0.3)
    clipped = ResnetGenerator(
        len(shape), ngf=4, n_blocks=1, kernel=kernel, sharpen=kernel > 0, nonnegative=True
    )
    clipped.load_state_dict(free.state_dict())
    if kernel:  # intensities s sinh(gain z), here 2 sinh(1.5 z) in the target domain
        target = IntensityScale(q=2.0 * math.sinh(1.5), compression=math.sinh(1.5))
        for g in (free, clipped):
            g.set_scales(IntensityScale(q=0.1, compression=10.0), target)
    x = torch.zeros(2, 1, *shape)
    x[..., shape[-1] // 2] = 1.0  # one sharp line per spectrum on an empty background
    x[..., shape[-1] // 2 + 1] = 0.5
    with torch.no_grad():
        y_free, y_clipped = free.translation(x), clipped.translation(x)
        y_training = clipped(x)
    assert (y_free < -1e-4).any()  # the checks below could fail
    assert (y_clipped >= 0).all()
    torch.testing.assert_close(y_training, y_free)
    if not kernel:
        torch.testing.assert_close(y_clipped, y_free.clamp_min(0.0))
    else:
        s, gain = clipped.scales[2].item(), clipped.scales[3].item()
        assert (s, round(gain, 6)) == (2.0, 1.5)
        i_free = (s * torch.sinh(gain * y_free.double())).flatten(1)
        i_clipped = (s * torch.sinh(gain * y_clipped.double())).flatten(1)
        factor = i_free.sum(1) / i_free.clamp_min(0).sum(1)
        assert ((factor > 0.5) & (factor < 1 - 1e-3)).all()
        torch.testing.assert_close(i_clipped, i_free.clamp_min(0) * factor[:, None])
        torch.testing.assert_close(i_clipped.sum(1), i_free.sum(1))
        # only measured pixels count (a masked pixel's output is thrown away)
        measured = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) > 0.3
        with torch.no_grad():
            y_part = clipped.translation(x, measured=measured)
        i_part = (s * torch.sinh(gain * y_part.double())).flatten(1)
        keep = measured.flatten(1)
        torch.testing.assert_close((i_part * keep).sum(1), (i_free * keep).sum(1))
    z = np.zeros(shape, dtype=np.float32)
    z[..., shape[-1] // 2] = 1.0
    assert (run_generator(clipped, z, torch.device("cpu"), "fp32") >= 0).all()
    model = DCLGAN(TrainConfig(**TINY, kernel=kernel), len(shape))
    assert model.G_A.nonnegative and not model.G_B.nonnegative  # only toward simulation
    assert not DCLGAN(TrainConfig(**TINY, nonnegative_simulation=False), 1).G_A.nonnegative


def test_kernel_shifts_add_taps_that_move_intensity():
    """Shifted taps (TrainConfig.kernel_shifts) join the softmax: the output stays a
    weighted mean, now of the local window and the shifted values; missing ones (NaN) get no
    weight, which leaves exactly the generator without them; a flat spectrum stays flat."""
    from scipy.ndimage import maximum_filter, minimum_filter

    torch.manual_seed(0)
    shifts = ((0, -6), (0, 6))
    g = ResnetGenerator(2, ngf=4, n_blocks=1, kernel=3, shifts=shifts)
    for p in g.parameters():
        torch.nn.init.normal_(p, std=0.3)
    local = ResnetGenerator(2, ngf=4, n_blocks=1, kernel=3)
    state = g.state_dict()
    head = [k for k in state if k.startswith("decoder.")][-2:]  # the last conv
    local.load_state_dict({k: v[:9] if k in head else v for k, v in state.items()})
    x = torch.rand(2, 1, 10, 16)
    context = 2.0 + torch.rand(2, 2, 10, 16)  # brighter than every local tap
    with torch.no_grad():
        y = g(x, context=context).numpy()
        alone = g(x, context=torch.full_like(context, torch.nan)).numpy()
        flat = g(torch.full((1, 1, 10, 16), 0.3), context=torch.full((1, 2, 10, 16), 0.3))
        expected = local(x).numpy()
    high = np.maximum(maximum_filter(x.numpy(), size=(1, 1, 3, 3), mode="nearest"), 3.0)
    low = minimum_filter(x.numpy(), size=(1, 1, 3, 3), mode="nearest")
    assert np.all(y <= high + 1e-6) and np.all(y >= low - 1e-6)
    # measured: 18 % of the pixels clearly above their local window (2 of 11 taps shifted)
    assert (y > maximum_filter(x.numpy(), size=(1, 1, 3, 3)) + 0.05).mean() > 0.1
    np.testing.assert_allclose(alone, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat.numpy(), 0.3, rtol=1e-5)
    with pytest.raises(ValueError, match="context"):
        g(x)
    with pytest.raises(ValueError, match="kernel"):
        TrainConfig(kernel_shifts=[[0, 40]])


def test_crops_carry_shifted_taps_from_the_whole_spectrum():
    """CropSampler with kernel shifts: channel j holds, at every pixel, the spectrum's value
    at that pixel plus shift j, also after a random flip (which swaps +o and -o), taken
    beyond the crop where needed; NaN beyond the spectrum. The values encode positions."""
    rows, cols = 12, 40
    spectra = np.arange(2 * rows * cols, dtype=np.float32).reshape(2, rows, cols)
    shifts = ((0, -10), (0, 10))
    sampler = CropSampler(spectra, (8, 16), flip_axes=(-1,), shifts=shifts)
    x, mask = sampler.sample(40, torch.Generator().manual_seed(0))
    assert x.shape == (40, 3, 8, 16) and mask.shape == (40, 1, 8, 16) and not mask.any()
    directions = set()
    for crop in x.numpy():
        step = crop[0, 0, 1] - crop[0, 0, 0]  # +1 as sampled, -1 flipped
        directions.add(step)
        column = (crop[0] % cols).astype(int)
        for j, (_, o) in enumerate(shifts):
            partner = column + int(step) * o
            inside = (partner >= 0) & (partner < cols)
            np.testing.assert_array_equal(crop[1 + j][inside], (crop[0] + step * o)[inside])
            assert np.isnan(crop[1 + j][~inside]).all()
    assert directions == {1.0, -1.0}
    with pytest.raises(ValueError, match="symmetric"):
        CropSampler(spectra, (8, 16), flip_axes=(-1,), shifts=((0, 10),))
    taps = shifted_copies(spectra[0], shifts)
    np.testing.assert_array_equal(taps[1][:, :30], spectra[0][:, 10:])
    assert np.isnan(taps[1][:, 30:]).all() and np.isnan(taps[0][:, :10]).all()
    for window in ((slice(2, 9), slice(0, 16)), (slice(4, 12), slice(20, 40))):  # at edges
        part = shifted_copies(spectra[0], shifts, window)
        np.testing.assert_array_equal(part, taps[(slice(None), *window)])


def test_tiled_translation_takes_shifted_taps_from_the_whole_spectrum(monkeypatch):
    """A spectrum too large for one pass is translated in tiles; each tile's shifted taps
    must be the whole spectrum's (partners beyond the tile included), not the tile's own."""
    from exp2sim.gan.translate import Translator

    torch.manual_seed(0)
    g = ResnetGenerator(2, ngf=4, n_blocks=1, kernel=3, shifts=((0, -24), (0, 24)))
    scale = IntensityScale(q=1.0)
    g.set_scales(scale, scale)
    translator = Translator(g, scale, scale, max_voxels=48 * 48)
    x = np.random.default_rng(0).random((48, 96)).astype(np.float32)
    x[5, 70] = np.nan
    calls = []
    run = translator._run
    monkeypatch.setattr(
        translator, "_run", lambda z, taps=None: calls.append((z, taps)) or run(z, taps)
    )
    y = translator(x)
    assert np.isnan(y[5, 70]) and np.isfinite(np.delete(y.ravel(), 5 * 96 + 70)).all()
    z = scale.transform(x)
    expected = shifted_copies(z, g.shifts)
    tiles = [(zt, taps) for zt, taps in calls if zt.shape != z.shape]
    assert tiles and all(taps is not None for _, taps in tiles)
    h, w = tiles[0][0].shape
    for zt, taps in tiles:
        corners = [
            (i, j)
            for i in range(49 - h)
            for j in range(97 - w)
            if np.array_equal(z[i : i + h, j : j + w], zt, equal_nan=True)
        ]
        assert len(corners) == 1
        i, j = corners[0]
        np.testing.assert_array_equal(taps, expected[:, i : i + h, j : j + w])
    # some tiles' taps reach beyond the tile: the case a tile-local copy would get wrong
    assert any(np.isfinite(taps[1][:, -24:]).any() for _, taps in tiles)


def test_fold_stacks_each_row_of_tiles_into_a_volume_and_unfolds_exactly():
    """A 2 x 3 grid of 4 x 5 tiles, each pixel holding (spectrum, row, tile, y, x) as
    digits: volume r of spectrum i holds tile j of row r at slice pad + j, in order, with
    masked (NaN) slices at both ends; unfold gives the spectra back bit for bit."""
    n, rows, cols, th, tw = 2, 2, 3, 4, 5
    i, r, y, j, x = np.meshgrid(*map(np.arange, (n, rows, th, cols, tw)), indexing="ij")
    mosaic = (10000 * i + 1000 * r + 100 * j + 10 * y + x).astype(np.float32)
    mosaic = mosaic.reshape(n, rows * th, cols * tw)
    fold = TileFold((th, tw), pad=2)
    volumes = fold.fold(mosaic)
    assert volumes.shape == (n * rows, cols + 4, th, tw) == (4, 7, 4, 5)
    assert fold.volume_shape(mosaic.shape[1:]) == (7, 4, 5)
    for a in range(n):
        for b in range(rows):
            v = volumes[a * rows + b]
            assert np.isnan(v[:2]).all() and np.isnan(v[-2:]).all()
            for t in range(cols):
                np.testing.assert_array_equal(
                    v[2 + t], mosaic[a, b * th : (b + 1) * th, t * tw : (t + 1) * tw]
                )
    np.testing.assert_array_equal(fold.unfold(volumes, mosaic.shape[1:]), mosaic)
    with pytest.raises(ValueError, match="whole number of the model's 4 x 5 tiles"):
        fold.fold(np.zeros((1, 8, 14)))
    with pytest.raises(ValueError, match="folds 2D spectra"):
        fold.fold(np.zeros((1, 8, 15, 3)))
    with pytest.raises(ValueError, match="do not unfold"):
        fold.unfold(volumes[:3], mosaic.shape[1:])


def test_folded_generator_reaches_the_neighbouring_tiles():
    """What the fold is for: in a 2D mosaic the same (h, k) pixel of the next energy slice
    lies a tile's width away, beyond the reach of a 3-tap kernel generator (its output is a
    weighted mean of the 3 x 3 pixels around each pixel); folded, it is the next slice of
    the volume. One lit pixel, in tile 1: the same pixel of tile 2 stays dark through the
    2D generator on the mosaic and is lit through the 3D one on the folded volume."""
    torch.manual_seed(0)
    tile, cols = 16, 5
    mosaic = np.zeros((1, tile, tile * cols), np.float32)
    mosaic[0, 8, tile + 8] = 1.0
    fold = TileFold((tile, tile), pad=2)
    with torch.no_grad():
        g2 = ResnetGenerator(2, ngf=4, n_blocks=1, kernel=3)
        flat = g2(torch.from_numpy(mosaic)[:, None])[0, 0].numpy()
        g3 = ResnetGenerator(3, ngf=4, n_blocks=1, kernel=3)
        volume = np.nan_to_num(fold.fold(mosaic))
        folded = g3(torch.from_numpy(volume)[:, None])[:, 0].numpy()
    through_3d = fold.unfold(folded, mosaic.shape[1:])[0]
    for out in (flat, through_3d):
        assert out[8, tile + 8] > 0.5  # the lit pixel keeps most of its intensity
    assert flat[8, 2 * tile + 8] == 0.0
    assert through_3d[8, 2 * tile + 8] > 1e-3 and through_3d[8, 8] > 1e-3  # tiles 2 and 0


def test_a_stack_translates_as_its_spectra_one_by_one():
    """run_generator_stack (a folded mosaic's volumes in one pass) gives what run_generator
    gives for each volume: instance norm is per spectrum."""
    torch.manual_seed(0)
    g = ResnetGenerator(3, ngf=4, n_blocks=1, kernel=3).eval()
    z = blur(sharp_spectra(3, (10, 16, 16), seed=1, mask_fraction=0.2), 1.0)
    cpu = torch.device("cpu")
    stack = run_generator_stack(g, z, cpu, "fp32")  # as in training: outside no_grad
    single = np.stack([run_generator(g, v, cpu, "fp32") for v in z])
    np.testing.assert_allclose(stack, single, rtol=1e-5, atol=1e-6)
    shifted = ResnetGenerator(1, ngf=4, n_blocks=1, kernel=3, shifts=((-4,), (4,)))
    with pytest.raises(ValueError, match="one spectrum at a time"):
        run_generator_stack(shifted, np.zeros((2, 16)), cpu, "fp32")


def test_kernel_generator_starts_near_the_identity():
    """Initialised like every other generator (xavier, gain 0.02), a kernel generator's
    first output is close to its input (a narrow centre-weighted kernel), so training starts
    from doing almost nothing rather than from noise."""
    torch.manual_seed(0)
    model = DCLGAN(TrainConfig(**TINY, kernel=7), 2)
    x = torch.from_numpy(blur(sharp_spectra(2, (40, 48), seed=0), 1.0)).float()[:, None]
    with torch.no_grad():
        for g in (model.G_A, model.G_B):
            y = g(x)
            assert float((y - x).norm() / x.norm()) < 0.2


def test_paper_generator_has_the_papers_size():
    """DESIGN.md: 11.4 M parameters per generator (ngf 64, 9 blocks), ~30 M in all."""
    g = ResnetGenerator(2, ngf=64, n_blocks=9)
    assert 11.3e6 < count_parameters(g) < 11.45e6
    model = DCLGAN(load_preset("paper"), 2)
    assert 28e6 < count_parameters(model) < 32e6


@pytest.mark.parametrize(("dim", "kernel"), [(1, 0), (2, 3), (3, 3)])
def test_head_sets_the_width_of_the_last_convolution(dim, kernel):
    """`head` changes only the last convolution: ngf inputs, one output (drawn) or the
    kernel's k^dim taps and the unsharp mask's amount (kernel, sharpen), head^dim taps."""
    wide = ResnetGenerator(dim, ngf=4, n_blocks=1, kernel=kernel, sharpen=kernel > 0)
    narrow = ResnetGenerator(dim, ngf=4, n_blocks=1, kernel=kernel, sharpen=kernel > 0, head=3)
    outputs = kernel**dim + 1 if kernel else 1
    assert count_parameters(wide) - count_parameters(narrow) == 4 * outputs * (7**dim - 3**dim)
    x = torch.rand(2, 1, *(12,) * dim)
    assert narrow(x).shape == x.shape
    for bad in (0, 4):
        with pytest.raises(ValueError, match="head must be an odd number"):
            ResnetGenerator(dim, ngf=4, n_blocks=1, head=bad)
        with pytest.raises(ValueError, match="head must be an odd number"):
            TrainConfig(head=bad)


def test_patch_nce_matches_hand_computation():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # orthonormal keys equal to the queries: -log(e^(1/t) / (e^(1/t) + e^0)) per patch
    for tau in (1.0, 0.5):
        expected = math.log(1 + math.exp(-1 / tau))
        assert patch_nce(q, q, tau).item() == pytest.approx(expected, rel=1e-6)
    tau = 0.07
    # three patches, written out: row i's positive is key i
    q = torch.nn.functional.normalize(
        torch.tensor([[[1.0, 2.0], [3.0, -1.0], [-1.0, 1.0]]]), dim=-1
    )
    k = torch.nn.functional.normalize(torch.tensor([[[2.0, 1.0], [1.0, -1.0], [0.0, 1.0]]]), dim=-1)
    total = 0.0
    for i in range(3):
        logits = [float(q[0, i] @ k[0, j]) / tau for j in range(3)]
        total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    assert patch_nce(q, k, tau).item() == pytest.approx(total / 3, rel=1e-5)


def test_patch_nce_compares_patches_within_each_image_only():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 5, 4), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(3, 5, 4), dim=-1)
    per_image = [patch_nce(q[i : i + 1], k[i : i + 1]) for i in range(3)]
    assert patch_nce(q, k).item() == pytest.approx(float(sum(per_image) / 3), rel=1e-6)


def test_masked_pixels_do_not_enter_the_losses():
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., :, 10:] = True
    y2 = y.clone()
    y2[mask] = 1e6
    assert masked_l1(x, y, mask).item() == pytest.approx(masked_l1(x, y2, mask).item())
    expected = (x - y).abs()[~mask].mean().item()
    assert masked_l1(x, y, mask).item() == pytest.approx(expected, rel=1e-6)
    # a discriminator map over fully masked cells gets no weight
    pred = torch.zeros(2, 1, 4, 4)
    pred[..., :, 3] = 100.0  # only cells of the masked columns are wrong
    fully_masked = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    fully_masked[..., 12:] = True
    assert patch_mse(pred, 0.0, fully_masked).item() == 0.0
    # feature locations are drawn from unmasked cells only
    weights = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.5, 0.0]])
    ids = sample_locations(weights, 3, torch.Generator().manual_seed(0))
    assert set(ids[0].tolist()) == {1, 3, 4}


def test_one_step_reaches_every_trainable_part():
    torch.manual_seed(0)
    config = TrainConfig(**TINY)
    model = DCLGAN(config, 2)
    opt_g = torch.optim.Adam(model.generator_parameters(), 1e-4)
    opt_d = torch.optim.Adam(model.discriminator_parameters(), 1e-4)
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    mask = torch.zeros_like(a, dtype=torch.bool)
    mask[..., :4] = True
    losses = model.train_step(
        a.masked_fill(mask, 0), mask, b, mask, opt_g, opt_d, torch.Generator().manual_seed(0)
    )
    assert all(math.isfinite(v) for v in losses.values())
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_normalisation_inverts_and_ignores_hot_pixels():
    rng = np.random.default_rng(0)
    x = rng.gamma(0.5, 2.0, size=(20, 30, 40)).astype(np.float32)
    x[:, :, :5] = np.nan
    scale = IntensityScale.fit(x)
    z = scale.transform(x)
    np.testing.assert_array_equal(np.isnan(z), np.isnan(x))
    np.testing.assert_allclose(scale.inverse(z), x, rtol=1e-5, atol=1e-6)
    assert np.nanpercentile(np.abs(z), 99) == pytest.approx(1.0, abs=1e-3)
    hot = x.copy()
    hot[0, 0, 10:15] = 1e7
    assert IntensityScale.fit(hot).q == pytest.approx(scale.q, rel=0.01)
    assert np.isfinite(IntensityScale.fit(hot).transform(hot)[0, 0, 10])
    assert scale.transform(np.array([-2.0])) == -scale.transform(np.array([2.0]))
    with pytest.raises(ValueError, match="all zero"):
        IntensityScale.fit(np.zeros((3, 3)))


def test_level_match_leaves_spectra_too_faint_to_match_as_they_are():
    """Factors q / (own level): exact for an ordinary spectrum; 1 for a blank one and for
    one whose level is so small that the factor would overflow float32 (an almost empty
    mosaic: one pixel of 2e-5 among subnormal tails, 99.9th percentile 1e-40)."""
    match = LevelMatch(3.4, statistic="mean")
    x = np.zeros((3, 40, 40), np.float32)
    x[0] = blur(sharp_spectra(1, (40, 40), seed=0), 1.0)[0]
    x[2] = 1e-40
    x[2, 5, 5] = 2e-5
    own = IntensityScale.fit(x[0], statistic="mean").q
    with np.errstate(all="raise"):  # no overflow warning either
        factors = match.factors(x)
    np.testing.assert_allclose(factors, [3.4 / own, 1.0, 1.0])
    assert np.isfinite(x * factors[:, None, None].astype(np.float32)).all()


def test_mean_intensity_scale_is_the_same_with_and_without_resolution():
    """Blurring conserves intensity: the "mean" scale of a sharp set and of its blurred copy
    agree, the 99th percentile does not (sharp lines are brighter). A hot pixel moves
    neither."""
    sharp = sharp_spectra(30, (48, 64), seed=3, mask_fraction=0.1)
    blurred = blur(sharp, 2.0)
    # blur() renormalises at the mask edge, so the sums agree to about a per cent
    assert np.nansum(blurred) == pytest.approx(np.nansum(sharp), rel=0.02)
    mean = [IntensityScale.fit(x, statistic="mean").q for x in (sharp, blurred)]
    pct = [IntensityScale.fit(x).q for x in (sharp, blurred)]
    assert mean[0] / mean[1] == pytest.approx(1.0, abs=0.03)
    assert pct[0] / pct[1] > 1.5
    # 20x the clipped mean over measured pixels, zeros included
    v = sharp[np.isfinite(sharp)]
    assert mean[0] == pytest.approx(20 * np.minimum(v, np.percentile(v, 99.9)).mean(), rel=1e-6)
    hot = sharp.copy()
    hot[0, 5, 5] = 1e7
    assert IntensityScale.fit(hot, statistic="mean").q == pytest.approx(mean[0], rel=0.01)
    with pytest.raises(ValueError, match="unknown intensity statistic"):
        IntensityScale.fit(sharp, statistic="median")
    with pytest.raises(ValueError, match="intensity_scale must be"):
        TrainConfig(intensity_scale="max")


def test_intensity_loss_allows_blurring_but_not_losing_intensity():
    """The loss compares intensities smoothed over 4 pixels: a blurred copy (intensity moved
    by a pixel or two) costs little, the same spectra at 60 % of their intensity cost a lot,
    and different normalisations of the two domains are undone before comparing."""
    model = DCLGAN(TrainConfig(**TINY, lambda_intensity=1.0), 2)
    sharp = sharp_spectra(4, (48, 48), seed=2)
    blurred = blur(sharp, 1.5)
    a, b = IntensityScale(q=1.5), IntensityScale(q=3.0)
    model.set_scales(a, b)

    def z(x, scale):
        return torch.from_numpy(scale.transform(x)).unsqueeze(1)

    def loss(fake_b, real_a):  # both directions with the same pair of spectra
        return model.intensity_loss(z(fake_b, b), z(real_a, a), z(fake_b, a), z(real_a, b))

    same = loss(sharp, sharp).item()
    moved = loss(blurred, sharp).item()
    dimmer = loss(0.6 * sharp, sharp).item()
    assert same < 1e-6
    assert dimmer > 5 * moved > 0
    # the value: mean |smoothed difference| in units of s of the output's domain
    smooth = gaussian_filter(0.4 * sharp, (0, 4, 4), mode="constant", truncate=3).mean()
    assert dimmer == pytest.approx(0.5 * (smooth / b.s + smooth / a.s), rel=1e-4)


def test_frechet_distance_closed_form_and_blur_sensitivity():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 9.0])
    # diagonal Gaussians: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    expected = 1.0 + (1 - 2) ** 2 + (2 - 3) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-5)
    sharp1 = sharp_spectra(12, (64, 64), seed=1, lines=5)
    sharp2 = sharp_spectra(12, (64, 64), seed=2, lines=5)
    blurred = blur(sharp_spectra(12, (64, 64), seed=3, lines=5), 2.0)
    same = spectra_distance(sharp1, sharp2, 32)
    assert same < 0.2 * spectra_distance(blurred, sharp2, 32)


def test_checkpoint_round_trip_without_code_and_clear_errors(tmp_path):
    state = {
        "a": {"w": torch.arange(6.0).reshape(2, 3), 3: {"step": torch.tensor(5)}},
        "b": [torch.ones(2), 7, "x"],
    }
    save_state(tmp_path / "c.safetensors", state, {"epoch": 4})
    back, info = load_state(tmp_path / "c.safetensors")
    assert info == {"epoch": 4} and read_info(tmp_path / "c.safetensors") == info
    torch.testing.assert_close(back["a"]["w"], state["a"]["w"])
    assert back["a"][3]["step"].item() == 5 and back["b"][1:] == [7, "x"]
    only_b, _ = load_state(tmp_path / "c.safetensors", prefixes=("b",))
    assert set(only_b) == {"b"}
    # the file is a safetensors file: 8-byte header length, then a JSON header
    raw = (tmp_path / "c.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert raw[8 : 8 + n].decode().startswith("{")
    (tmp_path / "bad.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not an exp2sim checkpoint"):
        load_state(tmp_path / "bad.safetensors")


def test_config_rejects_bad_values_and_reads_toml(tmp_path):
    with pytest.raises(ValueError, match="nce_layers"):
        TrainConfig(n_blocks=3, nce_layers=("block5",))
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    for decay in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ema_decay"):
            TrainConfig(ema_decay=decay)
    for tiles in ((40,), (40, 0), (8, 8, 8)):
        with pytest.raises(ValueError, match="fold_tiles"):
            TrainConfig(fold_tiles=tiles)
    with pytest.raises(ValueError, match="fold_pad"):
        TrainConfig(fold_tiles=(8, 8), fold_pad=-1)
    with pytest.raises(ValueError, match="three per shift"):
        TrainConfig(kernel=3, kernel_shifts=((0, -40), (0, 40)), fold_tiles=(40, 40))
    # configurations saved before the fold existed load without it
    old = TrainConfig().to_dict()
    del old["fold_tiles"], old["fold_pad"]
    assert TrainConfig.from_dict(old).folding() is None
    (tmp_path / "c.toml").write_text('preset = "paper"\nepochs = 3\n')
    config = load_preset(str(tmp_path / "c.toml"))
    assert (config.ngf, config.n_blocks, config.epochs) == (64, 9, 3)
    (tmp_path / "d.toml").write_text("no_such_option = 1\n")
    with pytest.raises(ValueError, match="no_such_option"):
        load_preset(str(tmp_path / "d.toml"))
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("huge")
