"""Speed, memory and accuracy of the Exp2SimGAN (exp2sim.gan) training step and translation.

What is measured, for the `paper` configuration (ngf 64, 9 blocks, ndf 64, 256 x 256 crops)
and the `small` one (the TrainConfig defaults: ngf 32, 6 blocks, 64 x 64 crops), 2D, batch 1:

1. Seconds per training iteration of the optimised `DCLGAN.train_step` in fp32 and with bf16
   autocast: median over `--steps` timed steps after `--warmup` steps.
2. The same for `naive_train_step` below, the baseline: a plain eager transcription of the
   DCLGAN/CUT reference code with the same losses and weights (fp32, one network call per
   image, extra encoder passes for the PatchNCE keys, similarities by broadcasting), on the
   plain layers (`use_plain_layers`: every convolution through mkldnn/cuDNN directly, the
   blur layers as depthwise convolutions).
   Before timing anything, both are run on identical copies of a tiny model with identical
   random-number generators: the first step's losses must agree to 1e-4 and each network's
   gradient after it to 1e-2 (relative, fp32; see `equality_check`).
3. The speed-up of the optimised step over the naive one. The optimised step runs as
   `exp2sim train` does, with glibc's malloc keeping freed memory for reuse
   (exp2sim.allocator); the naive one with the defaults, and once more with that
   setting too, so that the table shows which part of the speed-up the allocator gives.
4. Seconds to translate one 240 x 400 spectrum with one generator (`Translator`): on the
   plain layers (the baseline), and on exp2sim's layers (Winograd and per-tap convolutions
   of exp2sim.gan.fastconv, blur one axis at a time) in fp32 and with bf16 autocast; the
   speed-up over the plain layers and the relative L2 difference from the plain translation
   of a blurred synthetic spectrum (untrained initial weights). `Translator` keeps freed
   memory on the CPU in every case.
5. Peak memory of one more training step / translation after the timed ones, above the
   memory in use before it (weights, optimiser state, inputs): on CUDA from the allocator
   statistics; on the CPU from the peak resident set size (ru_maxrss, restarted through
   /proc/self/clear_refs, with glibc's malloc told to return freed memory at once so that
   the RSS follows the tensors), every case in a fresh process (this script re-invoked
   with a hidden --one), as the malloc setting slows a process down.
6. Achieved FLOP/s (FLOPs counted with torch's FlopCounterMode on the first warm-up call,
   convolutions and matrix products, backward included; the Winograd route does fewer
   multiplications for the same result, so its rate is below the plain layers') as a
   fraction of a large matrix product's FLOP/s measured in the same run at the same precision,
   and of a large 3 x 3 convolution's through mkldnn/cuDNN (faster than the matrix product
   on some CPUs, see `convolution_peaks`).
7. 3D tiling: a small-width 3D generator translates a 64 x 64 x 32 volume (four times the
   32^3 training crop) whole and in tiles (`Translator(max_voxels=32**3)`): wall time, peak
   extra memory and the relative L2 difference between the tiled and the whole result.

The networks are untrained (their initial weights); timings do not depend on the weights.

Usage:
    python benchmarks/bench_gan.py                      # everything, ~5-10 min on 2 CPU cores
    python benchmarks/bench_gan.py --quick --configs small
    python benchmarks/bench_gan.py --device cuda --json gan_bench.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from exp2sim import allocator
from exp2sim.gan.config import TrainConfig
from exp2sim.gan.layers import BlurDownsample, BlurUpsample, Pad, xavier_init
from exp2sim.gan.losses import (
    gather_locations,
    masked_l1,
    patch_mse,
    sample_locations,
    valid_fraction,
)
from exp2sim.gan.model import DCLGAN, EXP, SIM, frozen
from exp2sim.gan.networks import ProjectionHeads, ResnetGenerator
from exp2sim.gan.normalisation import IntensityScale
from exp2sim.gan.synthetic import blur, sharp_spectra
from exp2sim.gan.train import pick_device
from exp2sim.gan.translate import Translator, tile_starts

CONFIGS: dict[str, dict[str, Any]] = {
    "paper": {"ngf": 64, "n_blocks": 9, "ndf": 64, "crop": 256},
    "small": {},  # TrainConfig defaults: ngf 32, 6 blocks, ndf 32, crop 64
}
CHECK_CONFIG: dict[str, Any] = {
    "ngf": 8,
    "n_blocks": 2,
    "ndf": 8,
    "nce_layers": ("down1", "down2", "block1", "block2"),
    "crop": 32,
}
CHECK_TOLERANCE = 1e-4  # relative, on the first step's losses
# relative L2, on the first step's gradients. Inside the step masked pixels are zero-filled,
# so a masked band is an exactly constant patch whose initial features are all zero and
# whose PatchNCE direction is round-off: measured 1e-3 with masks, 3e-6 without.
GRADIENT_TOLERANCE = 1e-2
SPECTRUM_SHAPE = (240, 400)  # one PCSMO-sized 2D spectrum (energy x momentum)
VOLUME_SHAPE = (64, 64, 32)  # 4 x 32^3 voxels
TILE_VOXELS = 32**3
BUSY_CORES = 0.25  # other processes' CPU use (cores) above which a CPU timing is flagged
BLUR_SIGMA = 2.0  # pixels: the "resolution" that makes domain A from domain B
MiB = 2**20


# ---------------------------------------------------------------------------------------
# The baseline: a straightforward eager DCLGAN step
# ---------------------------------------------------------------------------------------


class PlainBlurDownsample(torch.nn.Module):
    """The straightforward anti-aliased downsampling: reflection padding, then the
    dim-dimensional [1, 2, 1] binomial filter as a depthwise convolution with stride 2."""

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        k1 = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = k1
        for _ in range(dim - 1):
            kernel = kernel[..., None] * k1
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).clone(), False)
        self.pad, self.channels, self.dim = Pad(dim, 1), channels, dim

    def blur(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dim - 1]
        return conv(self.pad(x), self.kernel, stride=stride, groups=self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(x, 2)


class PlainBlurUpsample(PlainBlurDownsample):
    """The straightforward anti-aliased upsampling: nearest-neighbour repeat, then the
    padded binomial filter as a depthwise convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(F.interpolate(x, scale_factor=2, mode="nearest"), 1)


PLAIN_BLUR = {BlurDownsample: PlainBlurDownsample, BlurUpsample: PlainBlurUpsample}
PLAIN_CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}


def plain_layer(layer: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """The straightforward version of one of exp2sim's layers, or None if it is plain:
    a blur layer as a depthwise convolution, a convolution as torch's own class (no
    exp2sim.gan.fastconv routes) sharing the same weight and bias."""
    if type(layer) in PLAIN_BLUR:
        return PLAIN_BLUR[type(layer)](layer.dim, layer.channels).to(device)
    plain = PLAIN_CONV.get(len(getattr(layer, "kernel_size", ())))
    if plain is None or type(layer) is plain or not isinstance(layer, plain):
        return None
    new = plain(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                layer.padding_mode, device="meta")  # fmt: skip
    new.weight, new.bias = layer.weight, layer.bias
    return new


def use_plain_layers(model: torch.nn.Module) -> None:
    """Make `model` the straightforward implementation of itself (results unchanged to
    float32 round-off): the eager reference the optimised layers are compared with."""
    device = next(model.parameters()).device
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            plain = plain_layer(child, device)
            if plain is not None:
                setattr(parent, name, plain)


def naive_nce(
    config: TrainConfig,
    source: torch.Tensor,
    mask: torch.Tensor,
    output: torch.Tensor,
    source_gen: ResnetGenerator,
    key_heads: ProjectionHeads,
    other_gen: ResnetGenerator,
    query_heads: ProjectionHeads,
    generator: torch.Generator,
) -> torch.Tensor:
    """PatchNCE as in the CUT/DCLGAN reference code: the queries are `output` encoded by the
    other generator, the keys `source` encoded again by its own generator (an extra pass),
    the (P, P) similarities are built by broadcasting. Mean over the layers."""
    layers = config.nce_layers
    _, queries = other_gen(output, layers, encode_only=True)
    _, keys = source_gen(source, layers, encode_only=True)
    total = source.new_zeros(())
    for layer, (k, q) in enumerate(zip(keys, queries, strict=True)):
        weights = valid_fraction(mask, k.shape[2:]).flatten(1)
        ids = sample_locations(weights, config.nce_patches, generator)
        k_emb = key_heads(layer, gather_locations(k, ids)).detach()  # keys get no gradient
        q_emb = query_heads(layer, gather_locations(q, ids))
        logits = (q_emb[:, :, None, :] * k_emb[:, None, :, :]).sum(-1) / config.nce_temperature
        b, p, _ = logits.shape
        target = torch.arange(p, device=logits.device).repeat(b)  # positive: same location
        total = total + F.cross_entropy(logits.reshape(b * p, p), target)
    return total / len(layers)


def naive_train_step(
    model: DCLGAN,
    real_a: torch.Tensor,
    mask_a: torch.Tensor,
    real_b: torch.Tensor,
    mask_b: torch.Tensor,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    generator: torch.Generator,
) -> dict[str, float]:
    """The losses of `DCLGAN.train_step`, computed the reference way: fp32, four separate
    generator calls, separate discriminator calls for every input, PatchNCE keys from extra
    encoder passes. Random locations are drawn in the same order as in `train_step` (layer
    by layer, A -> B first), so with the same `generator` both draw the same patches."""
    c = model.config
    fake_b = model.G_A(real_a).masked_fill(mask_a, 0.0)
    fake_a = model.G_B(real_b).masked_fill(mask_b, 0.0)
    idt_b = model.G_A(real_b).masked_fill(mask_b, 0.0)
    idt_a = model.G_B(real_a).masked_fill(mask_a, 0.0)

    # discriminators: real/fake on own real vs translation, auxiliary class on both reals
    loss_d = real_a.new_zeros(())
    for d, real, other_real, fake, m_own, m_other, own, other in (
        (model.D_B, real_b, real_a, fake_b, mask_b, mask_a, SIM, EXP),
        (model.D_A, real_a, real_b, fake_a, mask_a, mask_b, EXP, SIM),
    ):
        pred_real = d(real)
        pred_fake = d(fake.detach())
        pred_other = d(other_real)
        gan = 0.5 * (
            patch_mse(pred_real[:, :1], 1.0, m_own) + patch_mse(pred_fake[:, :1], 0.0, m_other)
        )
        aux = 0.5 * (
            patch_mse(pred_real[:, 1:], own, m_own) + patch_mse(pred_other[:, 1:], other, m_other)
        )
        loss_d = loss_d + gan + c.lambda_aux * aux
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    # generators and projection heads, discriminators frozen
    with frozen(model.D_A, model.D_B):
        pred_fb = model.D_B(fake_b)
        pred_fa = model.D_A(fake_a)
        nce_ab = naive_nce(
            c, real_a, mask_a, fake_b, model.G_A, model.F_A, model.G_B, model.F_B, generator
        )
        nce_ba = naive_nce(
            c, real_b, mask_b, fake_a, model.G_B, model.F_B, model.G_A, model.F_A, generator
        )
    gan_g = 0.5 * (patch_mse(pred_fb[:, :1], 1.0, mask_a) + patch_mse(pred_fa[:, :1], 1.0, mask_b))
    aux_g = 0.5 * (patch_mse(pred_fb[:, 1:], SIM, mask_a) + patch_mse(pred_fa[:, 1:], EXP, mask_b))
    nce = 0.5 * (nce_ab + nce_ba)
    idt = 0.5 * (masked_l1(idt_b, real_b, mask_b) + masked_l1(idt_a, real_a, mask_a))
    loss_g = c.lambda_gan * gan_g + c.lambda_nce * nce + c.lambda_idt * idt + c.lambda_aux * aux_g
    with torch.set_grad_enabled(c.lambda_intensity > 0):
        intensity = model.intensity_loss(fake_b, real_a, fake_a, real_b)
    if c.lambda_intensity:
        loss_g = loss_g + c.lambda_intensity * intensity
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return {
        "D": loss_d.item(),
        "G": loss_g.item(),
        "gan": gan_g.item(),
        "nce": nce.item(),
        "idt": idt.item(),
        "aux": aux_g.item(),
        "intensity": intensity.item(),
    }


# ---------------------------------------------------------------------------------------
# Inputs, models, clocks and memory meters
# ---------------------------------------------------------------------------------------


def synthetic_pair(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spectra (A, B) of `shape`: A experiment-like (synthetic lines blurred by BLUR_SIGMA),
    B simulation-like (sharp lines of another draw), both normalised by IntensityScale(q=1)."""
    scale = IntensityScale(q=1.0)
    sharp = sharp_spectra(2, shape, seed=seed)
    return scale.transform(blur(sharp[:1], BLUR_SIGMA)[0]), scale.transform(sharp[1])


def training_crops(
    crop: int, device: torch.device, masked: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One (1, 1, crop, crop) crop per domain and its mask: all False, or with `masked` a
    band of masked columns in each (different bands).

    Every pixel, masked ones included, gets a uniform noise floor (0 to 0.05, as measured
    spectra have one): on an exactly constant patch the initial networks (zero biases) give
    an all-zero feature vector, which PatchNCE normalises to a direction set by round-off,
    and then the two implementations' gradients could not be compared."""
    a, b = (torch.from_numpy(x)[None, None].to(device) for x in synthetic_pair((crop, crop)))
    mask_a = torch.zeros_like(a, dtype=torch.bool)
    mask_b = torch.zeros_like(b, dtype=torch.bool)
    if masked:
        mask_a[..., -crop // 4 :] = True
        mask_b[..., : crop // 8] = True
    floor = torch.from_numpy(np.random.default_rng(1).uniform(0.0, 0.05, (2, 1, 1, crop, crop)))
    floor = floor.to(device=device, dtype=a.dtype)
    return (
        a.masked_fill(mask_a, 0.0) + floor[0],
        mask_a,
        b.masked_fill(mask_b, 0.0) + floor[1],
        mask_b,
    )


def make_generator(dim: int, ngf: int, n_blocks: int) -> ResnetGenerator:
    """A generator with the initial weights of training (same seed: same weights)."""
    torch.manual_seed(0)
    gen = ResnetGenerator(dim, ngf, n_blocks)
    xavier_init(gen)
    return gen


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call, the device's queue drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def current_rss() -> int:
    """Resident set size of this process now, bytes (Linux /proc; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


def peak_rss() -> int:
    """Peak resident set size of this process, bytes (ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else 1024 * peak


def reset_peak_rss() -> bool:
    """Restart the peak RSS from the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> bool:
    """Make glibc's malloc hand every freed block over 128 KiB back to the system at once (a
    fixed mmap threshold instead of the adaptive one, which keeps tensors' memory cached,
    and undoing `keep_freed_memory` where it ran) and return what it holds cached now, so
    that the RSS follows the live tensors. False where this is not glibc."""
    return (
        allocator.set_malloc(
            {
                allocator.M_MMAP_MAX: 65536,
                allocator.M_TRIM_THRESHOLD: 128 * 1024,
                allocator.M_MMAP_THRESHOLD: 128 * 1024,
            }
        )
        and allocator.trim()
    )


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> tuple[int, bool]:
    """(peak bytes in use during one call of fn above those in use before it, exact).
    CUDA: the caching allocator's statistics. CPU: the resident set size, its peak from
    ru_maxrss restarted through /proc/self/clear_refs, malloc's cache emptied first; this
    slows the process's later allocations, so it comes after the timings. Where that is
    not possible (not Linux + glibc) the value is an upper bound."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, True
    exact = release_freed_memory() and reset_peak_rss()
    base = current_rss()
    fn()
    return max(0, peak_rss() - base), exact


class OtherLoad:
    """CPU cores used by other processes between construction and `cores()` (Linux /proc;
    None elsewhere). Other work on the machine slows a CPU benchmark far more than its
    share of the cores: every parallel operation waits for its slowest thread."""

    def __init__(self) -> None:
        self.start, self.t0 = self._ticks(), time.perf_counter()

    @staticmethod
    def _ticks() -> tuple[int, int] | None:
        """(busy clock ticks of all CPUs, of this process), or None without /proc."""
        try:
            with open("/proc/stat") as f:
                cpu = [int(v) for v in f.readline().split()[1:9]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal; utime and stime of this process
        return sum(cpu) - cpu[3] - cpu[4], int(own[11]) + int(own[12])

    def cores(self) -> float | None:
        end = self._ticks()
        if end is None or self.start is None:
            return None
        others = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, others / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - self.t0))


# ---------------------------------------------------------------------------------------
# One case, run in a fresh process (the hidden --one option)
# ---------------------------------------------------------------------------------------


def measure(fn: Callable[[], object], device: torch.device, repeats: int) -> dict:
    """Median wall time of `repeats` calls, the load other processes put on the CPU
    meanwhile, and the peak extra memory of one more call."""
    load = OtherLoad()
    times = [timed(fn, device) for _ in range(repeats)]
    other_cores = load.cores()
    peak, exact = peak_extra_memory(fn, device)
    return {
        "times": times,
        "seconds": statistics.median(times),
        "other_cores": other_cores,
        "peak_bytes": peak,
        "memory_exact": exact,
    }


def run_train_case(spec: dict) -> dict:
    """Time one implementation of the training step; FLOPs from the first warm-up step."""
    device = torch.device(spec["device"])
    if spec["keep_memory"]:  # set by `plan` on the CPU only
        allocator.keep_freed_memory()
    config = TrainConfig(**CONFIGS[spec["config"]], precision=spec["precision"])
    torch.manual_seed(0)
    model = DCLGAN(config, dim=2).to(device)
    if spec["impl"] == "naive":
        use_plain_layers(model)
    opt_g, opt_d = model.optimisers()
    crops = training_crops(config.crop, device)
    rng = torch.Generator().manual_seed(0)
    step = model.train_step if spec["impl"] == "optimised" else None

    def one_step() -> dict[str, float]:
        if step is not None:
            return step(*crops, opt_g, opt_d, rng)
        return naive_train_step(model, *crops, opt_g, opt_d, rng)

    with FlopCounterMode(display=False) as counter:
        one_step()
    for _ in range(spec["warmup"] - 1):
        one_step()
    return measure(one_step, device, spec["steps"]) | {"flops": counter.get_total_flops()}


def run_translate_case(spec: dict) -> dict:
    """Time `Translator` on one synthetic spectrum/volume; save the output for comparisons."""
    device = torch.device(spec["device"])
    shape = tuple(spec["shape"])
    dim = len(shape)
    cfg = TrainConfig(**CONFIGS[spec["config"]])
    generator = make_generator(dim, cfg.ngf, cfg.n_blocks)
    if spec.get("impl") == "plain":
        use_plain_layers(generator)
    translator = Translator(
        generator,
        IntensityScale(q=1.0),
        IntensityScale(q=1.0),
        precision=spec["precision"],
        device=device,
        max_voxels=spec["max_voxels"],
    )
    spectrum = blur(sharp_spectra(1, shape, seed=3), BLUR_SIGMA)[0]
    tile = translator.tile_shape(shape)
    n_tiles = math.prod(
        len(tile_starts(s, t, int(translator.overlap * t)))
        for s, t in zip(shape, tile, strict=True)
    )

    with FlopCounterMode(display=False) as counter:
        out = translator(spectrum)
    np.save(spec["save"], out)
    del out
    return measure(lambda: translator(spectrum), device, spec["repeats"]) | {
        "flops": counter.get_total_flops(),
        "tile": list(tile),
        "tiles": n_tiles,
    }


def run_one(spec_json: str) -> None:
    """Entry point of the subprocess: run one case, print its result as one JSON line."""
    spec = json.loads(spec_json)
    run = run_train_case if spec["kind"] == "train" else run_translate_case
    print(json.dumps(run(spec)))


def in_subprocess(spec: dict) -> dict:
    """Run one case in a fresh Python process (clean peak-memory statistics)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# Reference points measured in the main process
# ---------------------------------------------------------------------------------------


def reference_repeats(device: torch.device, quick: bool) -> int:
    """Timed calls of a reference kernel (matrix product, convolution)."""
    return (3 if quick else 5) if device.type == "cpu" else 20


def warm_median(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls of fn after one untimed warm-up call."""
    timed(fn, device)
    return statistics.median(timed(fn, device) for _ in range(repeats))


def matmul_peaks(device: torch.device, quick: bool) -> dict[str, float]:
    """FLOP/s of a large square matrix product (2 n^3 FLOPs), median of a few, per precision:
    n = 4096 on the CPU, 8192 on CUDA. On CUDA also TF32, which fp32 convolutions use by
    default (torch.backends.cudnn.allow_tf32)."""
    n = 8192 if device.type == "cuda" else 4096
    repeats = reference_repeats(device, quick)
    kinds = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device.type == "cuda":
        kinds["tf32"] = torch.float32
    peaks = {}
    for name, dtype in kinds.items():
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        try:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            seconds = warm_median(lambda a=a, b=b: a @ b, device, repeats)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        peaks[name] = 2 * n**3 / seconds
    return peaks


def relative_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def relative_l2(x: np.ndarray, reference: np.ndarray) -> float:
    """|x - reference| / |reference|, L2 norms over all elements."""
    x, reference = np.asarray(x, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(x - reference) / np.linalg.norm(reference))


def equality_check(device: torch.device) -> dict:
    """Optimised and naive steps on identical copies of a tiny model with identically seeded
    random-number generators, with and without masks: the losses of the first step (the
    forward passes) and each network's gradient after it, relative L2 (the backward passes).

    Later steps are shown but not compared: this loss's gradient is sensitive to round-off
    (scaling G_A's initial weights by 1 + 1e-6 moves single elements of its gradient by up to
    2 % of their RMS), and Adam's first steps are +-lr whatever a gradient's size, so
    elements near zero take steps of opposite sign in the two runs and the networks drift
    apart by round-off alone (up to 0.2-0.4 relative L2 in their outputs after two steps)."""
    config = TrainConfig(**CHECK_CONFIG)
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # true fp32 on CUDA too
    results: dict[str, Any] = {"config": CHECK_CONFIG | {"nce_layers": list(config.nce_layers)}}
    worst = worst_gradient = 0.0
    try:
        for masked in (False, True):
            torch.manual_seed(0)
            fast = DCLGAN(config, dim=2).to(device)
            slow = copy.deepcopy(fast)
            use_plain_layers(slow)
            opts_fast, opts_slow = fast.optimisers(), slow.optimisers()
            rng_fast = torch.Generator().manual_seed(1)
            rng_slow = torch.Generator().manual_seed(1)
            crops = training_crops(config.crop, device, masked)
            steps = []
            gradients: dict[str, float] = {}
            for step in range(2):
                lf = fast.train_step(*crops, *opts_fast, rng_fast)
                ls = naive_train_step(slow, *crops, *opts_slow, rng_slow)
                steps.append({k: (lf[k], ls[k], relative_diff(lf[k], ls[k])) for k in lf})
                if step == 0:
                    gradients = {
                        name: relative_l2(
                            gradient(getattr(fast, name)), gradient(getattr(slow, name))
                        )
                        for name in ("G_A", "G_B", "D_A", "D_B")
                    }
            worst = max([worst, *(d for (_, _, d) in steps[0].values())])
            worst_gradient = max([worst_gradient, *gradients.values()])
            results["masked" if masked else "unmasked"] = {"steps": steps, "gradients": gradients}
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    results["worst"] = worst
    results["worst_gradient"] = worst_gradient
    results["passed"] = worst <= CHECK_TOLERANCE and worst_gradient <= GRADIENT_TOLERANCE
    return results


def gradient(network: torch.nn.Module) -> np.ndarray:
    """All parameter gradients of a network as one flat array (zeros where there is none)."""
    parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
        for p in network.parameters()
    ]
    return torch.cat(parts).detach().cpu().double().numpy()


def print_check(check: dict, device: torch.device) -> None:
    c = check["config"]
    print(
        f"\nEquality check, optimised DCLGAN.train_step vs naive_train_step (fp32, {device}, "
        f"ngf {c['ngf']}, {c['n_blocks']} blocks, crop {c['crop']}, NCE layers "
        f"{','.join(c['nce_layers'])}):"
    )
    for name in ("unmasked", "masked"):
        steps = check[name]["steps"]
        print(
            f"  {name} crops    optimised (step 1)  naive (step 1)  rel. diff 1  "
            "(step 2, not compared)"
        )
        for loss, (fast, slow, d1) in steps[0].items():
            print(f"    {loss:9s} {fast:17.8f} {slow:15.8f} {d1:12.1e} {steps[1][loss][2]:12.1e}")
        grads = ", ".join(f"{k} {v:.1e}" for k, v in check[name]["gradients"].items())
        print(f"    gradients after step 1, rel. L2 diff: {grads}")
    verdict = "PASS" if check["passed"] else "FAIL"
    print(
        f"  worst difference: losses {check['worst']:.1e} (tolerance {CHECK_TOLERANCE:g}), "
        f"gradients {check['worst_gradient']:.1e} (tolerance {GRADIENT_TOLERANCE:g}): {verdict}"
    )


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def convolution_peaks(device: torch.device, quick: bool) -> dict[str, float]:
    """FLOP/s of one large 3 x 3 convolution through the backend's own kernels (mkldnn on
    the CPU, cuDNN on CUDA), 256 -> 256 channels on 64 x 128 pixels (batch 4 on CUDA),
    forward, median of a few, per precision. A second reference beside the matrix product:
    on some CPUs (a 2-core AMD EPYC) mkldnn's convolutions run at twice the FLOP/s of the
    matrix product that torch calls, so "% of matmul" above 100 is possible there."""
    batch = 4 if device.type == "cuda" else 1
    repeats = reference_repeats(device, quick)
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x = torch.randn(batch, 256, 64, 128, device=device, dtype=dtype)
        w = 0.01 * torch.randn(256, 256, 3, 3, device=device, dtype=dtype)
        with torch.no_grad():
            seconds = warm_median(lambda x=x, w=w: F.conv2d(x, w, padding=1), device, repeats)
        peaks[name] = 2 * batch * 256 * 256 * 9 * 64 * 128 / seconds
    return peaks


def plan(args: argparse.Namespace, device: torch.device, tmp: Path) -> list[dict]:
    """Every case, in the order they run."""
    cpu = device.type == "cpu"
    cases: list[dict] = []
    for name in args.configs:
        slow = cpu and name == "paper"  # ~10-40 s per step on 2 cores
        if args.quick and slow:
            print(f"--quick on the CPU: skipping the {name} training step")
        else:
            default_warmup, default_steps = (1, 3) if slow else (2, 5)
            if args.quick:
                default_warmup, default_steps = 1, 2
            warmup = max(1, args.warmup if args.warmup is not None else default_warmup)
            steps = max(1, args.steps if args.steps is not None else default_steps)
            for impl, precision, keep in (
                ("naive", "fp32", False),
                ("naive", "fp32", True),
                ("optimised", "fp32", True),
                ("optimised", "bf16", True),
            ):
                if keep and impl == "naive" and not cpu:
                    continue  # the allocator setting is for the CPU only
                cases.append(
                    {
                        "kind": "train",
                        "config": name,
                        "impl": impl,
                        "precision": precision,
                        "keep_memory": keep and cpu,
                        "warmup": warmup,
                        "steps": steps,
                    }
                )
        for impl, precision in (("plain", "fp32"), ("optimised", "fp32"), ("optimised", "bf16")):
            cases.append(
                {
                    "kind": "translate",
                    "config": name,
                    "impl": impl,
                    "precision": precision,
                    "shape": list(SPECTRUM_SHAPE),
                    "max_voxels": 2**21,
                }
            )
    for mode, max_voxels in (("whole", 2**21), ("tiled", TILE_VOXELS)):
        cases.append(
            {
                "kind": "translate",
                "config": "small",
                "precision": "fp32",
                "mode": mode,
                "shape": list(VOLUME_SHAPE),
                "max_voxels": max_voxels,
            }
        )
    for i, case in enumerate(cases):
        case["device"] = str(device)
        if case["kind"] == "translate":
            case["repeats"] = args.repeats
            case["save"] = str(tmp / f"out{i}.npy")
    return cases


def label(case: dict) -> str:
    if case["kind"] == "train":
        kept = " kept memory" if case["impl"] == "naive" and case["keep_memory"] else ""
        return f"train {case['config']} {case['impl']}{kept}"
    if len(case["shape"]) == 3:
        return f"3D {'x'.join(map(str, case['shape']))} {case['mode']}"
    return f"translate {case['config']} 240x400 {case['impl']}"


def reference_name(case: dict) -> str:
    return "naive" if case["kind"] == "train" else "plain"


def derive(cases: list[dict], peaks: dict[str, float], conv_peaks: dict[str, float]) -> None:
    """FLOP/s and its fraction of the matrix product's and the large convolution's, the
    bf16-vs-fp32 differences of the translations and the tiled-vs-whole one of the 3D
    volume."""
    for c in cases:
        c["flop_rate"] = c["flops"] / c["seconds"]
        reference = "tf32" if c["precision"] == "fp32" and "tf32" in peaks else c["precision"]
        c["matmul_fraction"] = c["flop_rate"] / peaks[reference]
        c["conv_fraction"] = c["flop_rate"] / conv_peaks[c["precision"]]

    def output(**match: object) -> np.ndarray:
        """The saved translation of the case whose fields equal `match`."""
        case = next(
            c
            for c in cases
            if c["kind"] == "translate" and all(c.get(k) == v for k, v in match.items())
        )
        return np.load(case["save"])

    for c in cases:
        if c.get("impl") == "optimised" and c["kind"] == "translate":
            plain = output(config=c["config"], shape=c["shape"], impl="plain")
            c["rel_l2_vs_plain"] = relative_l2(np.load(c["save"]), plain)
        if c.get("mode") == "tiled":
            c["rel_l2_vs_whole"] = relative_l2(np.load(c["save"]), output(mode="whole"))


def notes(c: dict) -> str:
    parts = []
    if "speedup_kept" in c:
        parts.append(f"{c['speedup_kept']:.2f}x vs naive with kept memory")
    if "rel_l2_vs_plain" in c:
        parts.append(f"rel. L2 vs plain fp32 {c['rel_l2_vs_plain']:.1e}")
    if c.get("mode") == "tiled":
        tile = "x".join(map(str, c["tile"]))
        parts.append(f"{c['tiles']} tiles of {tile}, rel. L2 vs whole {c['rel_l2_vs_whole']:.1e}")
    if not c["memory_exact"]:
        parts.append("memory: upper bound")
    if busy(c):
        parts.append(f"UNRELIABLE: other processes used {c['other_cores']:.1f} cores")
    return "; ".join(parts)


def busy(c: dict) -> bool:
    """Whether other processes competed for the CPU while case `c` was timed."""
    return c["device"] == "cpu" and (c.get("other_cores") or 0.0) > BUSY_CORES


def print_progress(c: dict) -> None:
    speed = f", {c['speedup']:.2f}x vs {reference_name(c)}" if "speedup" in c else ""
    print(
        f"  {label(c):28s} {c['precision']}: {c['seconds']:8.3f} s (all: "
        f"{', '.join(f'{t:.3f}' for t in c['times'])}), peak +{c['peak_bytes'] / MiB:.0f} MiB, "
        f"{c['flops'] / 1e9:.1f} GFLOP{speed}",
        flush=True,
    )
    if busy(c):
        print(f"    WARNING: other processes used {c['other_cores']:.1f} CPU cores meanwhile")


def markdown(cases: list[dict]) -> str:
    rows = [
        "| case | precision | s | vs naive/plain | peak extra MiB | GFLOP | GFLOP/s "
        "| % of matmul | % of conv | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cases:
        speed = f"{c['speedup']:.2f}x" if "speedup" in c else ""
        rows.append(
            f"| {label(c)} | {c['precision']} | {c['seconds']:.3f} | {speed} "
            f"| {c['peak_bytes'] / MiB:.0f} | {c['flops'] / 1e9:.1f} "
            f"| {c['flop_rate'] / 1e9:.1f} | {100 * c['matmul_fraction']:.1f} "
            f"| {100 * c['conv_fraction']:.1f} | {notes(c)} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--configs", default="paper,small", help="comma-separated: paper, small")
    ap.add_argument(
        "--steps", type=int, help="timed training steps (default 5; 3 for paper on CPU)"
    )
    ap.add_argument("--warmup", type=int, help="warm-up steps (default 2; 1 for paper on CPU)")
    ap.add_argument("--repeats", type=int, help="timed translations (default 3, --quick 1)")
    ap.add_argument("--quick", action="store_true", help="few steps; no paper training on CPU")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one case in a subprocess
    args = ap.parse_args()
    if args.one:
        run_one(args.one)
        return
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        ap.error(f"unknown config(s) {sorted(unknown)}: use paper, small")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    device = pick_device(args.device)
    t_start = time.perf_counter()
    if device.type == "cpu":
        load = OtherLoad()
        time.sleep(1.0)
        others = load.cores()
        if others is not None and others > BUSY_CORES:
            print(
                f"WARNING: other processes are using {others:.1f} of {os.cpu_count()} CPU cores:"
                " CPU timings will be slow and noisy"
            )

    print(
        f"Exp2SimGAN benchmark on {device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__})"
    )
    if device.type == "cuda":
        print(f"  GPU: {torch.cuda.get_device_name(device)}")
    peaks = matmul_peaks(device, args.quick)
    print(
        "Matrix-product reference: "
        + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
        + (" (fp32 cases are compared with TF32: cuDNN's default)" if "tf32" in peaks else "")
    )

    conv_peaks = convolution_peaks(device, args.quick)
    print(
        "Convolution reference (3 x 3, 256 -> 256 channels, 64 x 128): "
        + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in conv_peaks.items())
    )

    check = equality_check(device)
    print_check(check, device)
    if not check["passed"]:
        print(
            "  WARNING: the two implementations disagree; the speed-ups below compare unequal steps"
        )

    with tempfile.TemporaryDirectory() as tmp:
        cases = plan(args, device, Path(tmp))
        print(f"\nRunning {len(cases)} cases, each in a fresh process:", flush=True)
        for case in cases:
            case.update(in_subprocess(case))
            reference = [
                c
                for c in cases
                if c.get("impl") in ("naive", "plain")
                and c["kind"] == case["kind"]
                and c["config"] == case["config"]
                and c.get("shape") == case.get("shape")
                and "seconds" in c
            ]
            if case.get("impl") == "optimised" and reference:
                case["speedup"] = reference[0]["seconds"] / case["seconds"]
                kept = [c for c in reference if c.get("keep_memory")]
                if kept:
                    case["speedup_kept"] = kept[0]["seconds"] / case["seconds"]
            print_progress(case)
        derive(cases, peaks, conv_peaks)

    print(
        "\nSummary. s: median seconds per training iteration (batch 1) or per translation; "
        "peak extra: memory\nof one more iteration/translation above that in use before it "
        "(weights, Adam state, inputs);\nGFLOP: convolutions and matrix products as counted "
        "by torch, backward included; % of matmul / conv:\nachieved FLOP/s over the matrix "
        "product's / the large convolution's at the same precision.\n"
    )
    print(markdown(cases))
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")

    if args.json:
        for c in cases:
            c.pop("save", None)
        result = {
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "matmul_flops": peaks,
            "convolution_flops": conv_peaks,
            "check": check,
            "cases": cases,
        }
        args.json.write_text(json.dumps(result, indent=2))
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
