"""`exp2sim evaluate`: the paper's evaluation, end to end and reproducible.

    simulate (or reuse) datasets -> train the GAN -> train two classifiers (on unconvolved
    and on convolved spectra) -> translate the test set both ways, and the classical
    baselines -> accuracies, paired fidelity, applicability -> report

Everything lands in one report directory: `config.json`, `data/` (the simulated datasets),
`gan/` (a run directory for `exp2sim translate`), `classifier-unconvolved/` and
`classifier-convolved/` (for `exp2sim classify --model`), `figures/`, `report.md` and
`metrics.json`. Every stage keeps its results, so an interrupted evaluation started again
with the same command picks up where it stopped (datasets and GAN training resume).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from exp2sim.cli_common import progress_bar
from exp2sim.evaluation import outliers
from exp2sim.evaluation.config import DIRECTIONS, EvaluationConfig
from exp2sim.evaluation.data import (
    Labelled,
    _sim_config,
    build_datasets,
    cached_paired_parameters,
    layout,
    simulate_all,
)
from exp2sim.evaluation.report import ARTEFACTS_SUBTRACTED, BINS_ROW, REFINED
from exp2sim.fileio import write_npy_atomic, write_text_atomic
from exp2sim.spectra.background import subtract_background
from exp2sim.spectra.generate import SimulationConfig

if TYPE_CHECKING:  # torch is imported only when the GAN or a classifier is needed
    from exp2sim.classifier import ClassifierConfig, DUQClassifier
    from exp2sim.gan.translate import Translator

MAGNETS = Path(__file__).parent / "magnets"
NEGATIVE_CONTROL_MAGNETS = (MAGNETS / "square_afm.toml", MAGNETS / "afm_chain.toml")


class _Cluster:
    """A local Dask cluster started on first use (reused datasets need none)."""

    def __init__(self, workers: int) -> None:
        self.workers, self.cluster = workers, None

    def address(self) -> str:
        if self.cluster is None:
            from exp2sim.spectra.generate import local_cluster

            self.cluster = local_cluster(self.workers or None)
        return self.cluster.scheduler_address

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


class Stages:
    """Progress bars and wall-clock seconds of the evaluation's stages."""

    def __init__(self, console: Console, show: bool) -> None:
        self.console, self.show, self.seconds = console, show, {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.console.print(f"[bold]{name}[/]")
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 1)

    @contextlib.contextmanager
    def bar(self, label: str) -> Iterator[Callable[..., None]]:
        """A progress callback (what, done, total, task=what) drawing one bar per task:
        `what` is the text beside the bar, `task` names the bar when that text changes
        while the same work goes on (a GAN's epochs)."""
        with progress_bar(label, "what", self.show) as bar:
            tasks: dict[str, int] = {}

            def update(what: str, done: int, total: int, task: str | None = None) -> None:
                key = what if task is None else task
                if key not in tasks:
                    tasks[key] = bar.add_task(label, total=total, what=what)
                bar.update(tasks[key], completed=done, total=total, what=what)

            yield update


# ------------------------------------------------------------------------------ stages
# fields earlier versions wrote to config.json, ignored where they hold their default
REMOVED_FIELDS = {"gan_iterations": 0}  # was never applied


def check_config(cfg: EvaluationConfig, out: Path) -> None:
    """Check what can be checked before any work (the GAN's and the classifier's settings,
    the sizes), then write config.json or check that an existing report used the same
    configuration."""
    from exp2sim.classifier import ClassifierConfig

    gan = gan_config(cfg, cfg.gan)
    if cfg.volume:
        gan_config(cfg, volume_gan(cfg, cfg.volume.get("gan", {})))
    for direction in DIRECTIONS:
        ClassifierConfig.from_dict(cfg.classifier_config(direction))
    n_a = cfg.n_train_convolved * len(cfg.models)
    n_gan_train = n_a - max(1, round(gan.val_fraction * n_a))
    if cfg.applicability_points > n_gan_train:
        raise ValueError(
            f"applicability_points ({cfg.applicability_points}) exceeds the GAN's "
            f"{n_gan_train} convolved training spectra (n_train_convolved x models, less the "
            "held-out share): lower it or raise n_train_convolved"
        )
    path = out / "config.json"
    if path.exists():
        saved, now = json.loads(path.read_text()), json.loads(json.dumps(cfg.to_dict()))
        for name, default in REMOVED_FIELDS.items():  # reports of earlier versions
            if saved.get(name, default) == default:
                saved.pop(name, None)
        defaults = json.loads(json.dumps(EvaluationConfig().to_dict()))
        for name in now.keys() - saved.keys():  # fields added since, at their default
            if now[name] == defaults[name]:
                saved[name] = now[name]
        if saved != now:
            changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
            raise ValueError(
                f"{out} holds an evaluation with another configuration (differs in "
                f"{', '.join(changed) or 'fields'}): use another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(cfg.to_dict(), indent=2) + "\n")


def outlier_spectra(
    cfg: EvaluationConfig, data: dict[str, Labelled], folder: Path, cluster, progress
) -> dict[str, np.ndarray]:
    """The applicability study's inputs beyond the test sets (n_outliers each)."""
    n, seed = cfg.n_outliers, 10 * cfg.seed + 5
    reference = data["train_convolved"].signal

    def job(model: str | Path, count: int, offset: int) -> tuple:
        # other magnets: their full parameter ranges, whatever the evaluation's spread
        config = _sim_config(cfg, model, "montecarlo", count, seed + offset, spread=1.0)
        return config, folder / f"{Path(model).stem}_outliers.h5", None

    per_magnet = max(2, -(-n // len(NEGATIVE_CONTROL_MAGNETS)))
    sources = simulate_all(
        [job("rb2mnf4", n, 0)]
        + [job(m, per_magnet, i + 1) for i, m in enumerate(NEGATIVE_CONTROL_MAGNETS)],
        cluster,
        progress,
    )
    rb2mnf4 = sources[0]
    artefacts = outliers.with_artefacts(data["test_convolved"].signal[:n], seed)
    return {
        "artefacts": artefacts,
        # what a user does with a measurement first: exp2sim classify ... --background
        ARTEFACTS_SUBTRACTED: subtract_background(artefacts, layout(cfg).background_block),
        "Rb2MnF4": rb2mnf4,
        "negative control": outliers.negative_control(sources, n, blocks=6, seed=seed),
        "photographs": outliers.photographs(n, reference, seed),
        "digits": outliers.digits(n, reference, seed),
    }


def train_gan(cfg: EvaluationConfig, data: dict[str, Labelled], out: Path, stages: Stages) -> Path:
    """Train (or resume, or reuse) the GAN: domain A = convolved training spectra of every
    model, domain B = unconvolved ones. Returns the run directory."""
    paths = {}
    for domain, split in (("a", "train_convolved"), ("b", "train")):
        paths[domain] = out / "data" / f"gan_domain_{domain}.npy"
        if not paths[domain].exists():
            write_npy_atomic(paths[domain], data[split].signal)
    return train_gan_run(cfg, paths, out / "gan", cfg.gan, stages, "GAN")


def gan_config(cfg: EvaluationConfig, gan: dict):  # noqa: ANN201 - a gan TrainConfig
    """The GAN's training configuration: the preset, the evaluation's seed and device, then
    the overrides `gan`."""
    from exp2sim.gan.config import TrainConfig, load_preset

    base = load_preset(cfg.gan_preset).replace(seed=cfg.seed, device=cfg.device)
    return TrainConfig.from_dict({**base.to_dict(), **gan})


def train_gan_run(
    cfg: EvaluationConfig, paths: dict[str, Path], run: Path, gan: dict, stages: Stages, label: str
) -> Path:
    """Train, resume or reuse the GAN run `run` on domains paths["a"], paths["b"]."""
    from exp2sim.gan.train import CHECKPOINT, Trainer

    if (run / CHECKPOINT).exists():
        trainer = Trainer.resume(run)
    else:
        trainer = Trainer.new(gan_config(cfg, gan), paths["a"], paths["b"], run)
    per_epoch = trainer.iterations_per_epoch
    total = trainer.total_epochs * per_epoch
    with stages.bar(label) as update:
        done = trainer.epoch * per_epoch + trainer.iteration

        def progress(s: dict) -> None:
            nonlocal done
            done += 1
            update(f"epoch {s['epoch'] + 1}/{trainer.total_epochs}", done, total, task="gan")

        trainer.fit(progress)
    return run


def train_classifiers(
    cfg: EvaluationConfig, train: Labelled, out: Path, direction: str, stages: Stages
) -> list:
    """Train (or reuse) `cfg.classifier_seeds` DUQ classifiers on one direction's training
    spectra ("unconvolved" or "convolved"): seed cfg.seed in out/classifier-DIRECTION/ (the
    one `classify --model` uses), the others in out/classifier-seeds/DIRECTION-SEED/."""
    from exp2sim.classifier import ClassifierConfig

    folders = [out / f"classifier-{direction}"]
    seeds = [cfg.seed + i for i in range(cfg.classifier_seeds)]
    folders += [out / "classifier-seeds" / f"{direction}-{seed}" for seed in seeds[1:]]
    label = f"classifier ({direction})"
    return [
        train_classifier(
            ClassifierConfig.from_dict(cfg.classifier_config(direction, seed)),
            train,
            folder,
            stages,
            label if i == 0 else f"{label}, seed {seed}",
        )
        for i, (folder, seed) in enumerate(zip(folders, seeds, strict=True))
    ]


def train_classifier(
    config: ClassifierConfig, train: Labelled, folder: Path, stages: Stages, label: str
) -> DUQClassifier:
    """Train (or reuse) a DUQ classifier with `config` on labelled spectra, saved in
    `folder`."""
    from exp2sim.classifier import DUQClassifier

    if (folder / "config.json").exists():
        with contextlib.suppress(ValueError):
            return DUQClassifier.load(folder)
    with stages.bar(label) as update:
        model = DUQClassifier(config).fit(
            train.signal,
            train.labels,
            list(train.classes),
            progress=lambda entry: update("epochs", entry["epoch"], entry["epochs"]),
        )
    model.save(folder)
    return model


VOLUME_DEFAULTS = {
    "shape": [24, 24, 24],
    "ei": 140.0,
    "frequency": 400.0,
    "n_train": 12,
    "n_train_convolved": 12,
    "n_test": 2,
    "gan": {},
}


MOSAIC_ONLY = ("kernel_shifts", "fold_tiles", "fold_pad")


def volume_gan(cfg: EvaluationConfig, overrides: dict) -> dict:
    """The 3D example's GAN settings: the mosaic GAN's, less those that only mean something
    for the mosaic (its kernel shifts are 2D pixel offsets, its fold cuts 2D tiles), with
    `overrides` on top."""
    return {k: x for k, x in cfg.gan.items() if k not in MOSAIC_ONLY} | overrides


def volume_example(cfg: EvaluationConfig, out: Path, cluster, stages: Stages) -> dict:
    """The 3D example (the paper's Fig. 6): (h, k, E) volumes of the last model at one
    incident energy, unconvolved and convolved (unpaired for training, paired for the test
    volumes), a 3D GAN (the 2D GAN's settings but its kernel shifts, with `volume["gan"]`
    on top), and the test volumes translated both ways. Returns PSNRs against the truth and
    the panels to draw."""
    from exp2sim.evaluation import metrics
    from exp2sim.gan.translate import Translator

    v = {**VOLUME_DEFAULTS, **cfg.volume}
    unknown = set(v) - set(VOLUME_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown volume settings: {', '.join(sorted(unknown))}")
    model, folder = cfg.models[-1], out / "data"
    stem, seed = Path(model).stem, 10 * cfg.seed + 6

    def config(resolution: str, n: int, offset: int) -> SimulationConfig:
        return _sim_config(
            cfg, model, resolution, n, seed + offset, kind="volume", ei=float(v["ei"]),
            frequency=float(v["frequency"]), shape=tuple(v["shape"]), chunk=2,
        )  # fmt: skip

    test_config = config("montecarlo", int(v["n_test"]), 2)
    params = cached_paired_parameters(
        folder / f"{stem}_volume_test_parameters.npy", test_config, cluster.address
    )
    jobs = {
        "b": (config("none", int(v["n_train"]), 0), folder / f"{stem}_volume_b.h5", None),
        "a": (
            config("montecarlo", int(v["n_train_convolved"]), 1),
            folder / f"{stem}_volume_a.h5",
            None,
        ),
    } | {
        name: (replace(test_config, resolution=res), folder / f"{stem}_volume_test_{name}.h5",
               params)
        for name, res in (("unconvolved", "none"), ("convolved", "montecarlo"))
    }  # fmt: skip
    with stages.bar("simulating volumes") as update:
        volumes = dict(
            zip(jobs, simulate_all(list(jobs.values()), cluster.address, update), strict=True)
        )
    train = {k: volumes[k] for k in ("b", "a")}
    test = {k: volumes[k] for k in ("unconvolved", "convolved")}
    cluster.close()
    paths = {}
    for domain, spectra in train.items():
        paths[domain] = folder / f"volume_domain_{domain}.npy"
        if not paths[domain].exists():
            write_npy_atomic(paths[domain], spectra)
    run = train_gan_run(cfg, paths, out / "gan-3d", volume_gan(cfg, v["gan"]), stages, "GAN (3D)")
    deconvolved = Translator.from_run(run, "exp2sim", device=cfg.device)(test["convolved"])
    convolved = Translator.from_run(run, "sim2exp", device=cfg.device)(test["unconvolved"])

    def psnr(x: np.ndarray, ref: np.ndarray) -> float:
        return float(np.mean([metrics.psnr(a, b) for a, b in zip(x, ref, strict=True)]))

    return {
        "metrics": {
            "model": model,
            "shape": list(v["shape"]),
            "ei": float(v["ei"]),
            "psnr_deconvolution": {
                "GAN": psnr(deconvolved, test["unconvolved"]),
                "convolved input": psnr(test["convolved"], test["unconvolved"]),
            },
            "psnr_convolution": {
                "GAN": psnr(convolved, test["convolved"]),
                "unconvolved input": psnr(test["unconvolved"], test["convolved"]),
            },
        },
        "panels": {
            "convolved (input)": test["convolved"][0],
            "GAN-deconvolved": deconvolved[0],
            "unconvolved (truth)": test["unconvolved"][0],
            "GAN-convolved": convolved[0],
        },
    }


# ------------------------------------------------------------------------------ the run


def refine(
    cfg: EvaluationConfig, sim2exp: Translator, measured: np.ndarray, deconvolved: np.ndarray
) -> np.ndarray | None:
    """The GAN's deconvolutions refined by `cfg.refine_iterations` of Richardson-Lucy with
    Sim2Exp's learned kernels (gan/refine.py); None when none are asked for or the run's
    generators draw their output instead of predicting kernels."""
    from exp2sim.gan.refine import LearnedBlur, unsupported

    if not cfg.refine_iterations or unsupported(sim2exp.generator):
        return None
    return LearnedBlur(sim2exp).deconvolve(measured, deconvolved, cfg.refine_iterations)


def translate_test_set(
    cfg: EvaluationConfig, gan_run: Path, test: np.ndarray, test_convolved: np.ndarray
) -> dict[str, np.ndarray]:
    """The report's translations of the paired test spectra (n, *S): the GAN in both
    directions, Richardson-Lucy and the Gaussian blur with the instrument's widths, and the
    refined GAN deconvolution where the run has one; keyed by the report's row names."""
    from exp2sim.evaluation import baselines
    from exp2sim.gan.translate import Translator

    exp2sim = Translator.from_run(gan_run, "exp2sim", device=cfg.device)
    sim2exp = Translator.from_run(gan_run, "sim2exp", device=cfg.device)
    blur = baselines.ResolutionBlur.for_config(SimulationConfig(kind="mosaic"))
    out = {
        "GAN-deconvolved": exp2sim(test_convolved),
        "GAN-convolved": sim2exp(test),
        "Richardson-Lucy": baselines.richardson_lucy_deconvolve(
            test_convolved, blur, cfg.rl_iterations
        ),
        "Gaussian blur": baselines.gaussian_convolve(test, blur),
    }
    refined = refine(cfg, sim2exp, test_convolved, out["GAN-deconvolved"])
    return out if refined is None else out | {REFINED: refined}


def scored_sets(
    test: np.ndarray,
    test_convolved: np.ndarray,
    translations: dict[str, np.ndarray],
    references: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """What each classifier scores, keyed by the report's row names in its order (truth,
    untranslated input, then the methods): "unconvolved" for the classifier trained on
    unconvolved spectra (the deconvolution table), "convolved" for the other.
    `translations`: `translate_test_set`'s; `references`: extra rows of the convolution
    table (the bins-only spectra)."""
    t = translations
    return {
        "unconvolved": {
            "unconvolved (truth)": test,
            "convolved": test_convolved,
            "GAN-deconvolved": t["GAN-deconvolved"],
            "Richardson-Lucy": t["Richardson-Lucy"],
            **{name: x for name, x in t.items() if name == REFINED},
        },
        "convolved": {
            "convolved (truth)": test_convolved,
            "unconvolved": test,
            "GAN-convolved": t["GAN-convolved"],
            "Gaussian blur": t["Gaussian blur"],
            **(references or {}),
        },
    }


def score_sets(classifiers: list, sets: dict[str, np.ndarray], labels: np.ndarray) -> list:
    """Per classifier and test spectrum of each set: whether it names the spectrum's model
    (labels (n,)), its certainty (0-1) for that model, and the margin over the other models
    (metrics.true_model_certainty). Returns [right, certainty, margin], each {set: (K, n)}
    for K classifiers (right as 0 or 1)."""
    from exp2sim.evaluation import metrics

    per: list[dict] = [{}, {}, {}]
    for name, x in sets.items():
        k = [clf.certainties(x) for clf in classifiers]
        scores = [metrics.true_model_certainty(v, labels) for v in k]
        per[0][name] = np.stack([v.argmax(1) == labels for v in k]).astype(float)
        per[1][name] = np.stack([v[0] for v in scores])
        per[2][name] = np.stack([v[1] for v in scores])
    return per


def per_classifier(per: list[dict], methods: tuple[str, ...]) -> dict:
    """Each classifier's own scores from `score_sets`' output: per measure (accuracy,
    certainty, margin), the mean of each set {set: [one per classifier]} and the share of
    the gap (the first two sets: truth, untranslated) closed by each method {method: [...]}."""
    from exp2sim.evaluation import metrics

    out: dict = {"mean": {}, "gap_closed": {}}
    for measure, scores in zip(("accuracy", "certainty", "margin"), per, strict=True):
        mean = {name: v.mean(1) for name, v in scores.items()}
        truth, before = list(mean.values())[:2]
        out["mean"][measure] = {name: v.tolist() for name, v in mean.items()}
        out["gap_closed"][measure] = {
            m: [metrics.gap_closed(*v) for v in zip(truth, before, mean[m], strict=True)]
            for m in methods
        }
    return out


def run_evaluation(
    cfg: EvaluationConfig, out: str | Path, console: Console | None = None, show: bool = True
) -> dict:
    """Run every stage and write the report; returns the metrics (also in metrics.json)."""
    from exp2sim.evaluation import metrics
    from exp2sim.evaluation.report import write_report

    out = Path(out)
    console = console or Console(stderr=True)
    stages = Stages(console, show)
    t0 = time.perf_counter()
    check_config(cfg, out)
    cluster = _Cluster(cfg.workers)
    try:
        with stages.stage("Simulating spectra"), stages.bar("simulating") as update:
            data = build_datasets(cfg, out / "data", cluster.address, update)
            extra = outlier_spectra(cfg, data, out / "data", cluster.address, update)
        volume = None
        if cfg.volume:
            with stages.stage("3D example"):
                volume = volume_example(cfg, out, cluster, stages)
    finally:
        cluster.close()
    with stages.stage("Training the GAN"):
        gan_run = train_gan(cfg, data, out, stages)
    with stages.stage("Training the classifiers"):
        unconvolved_members = train_classifiers(cfg, data["train"], out, "unconvolved", stages)
        convolved_members = train_classifiers(
            cfg, data["train_convolved"], out, "convolved", stages
        )
        cls_unconvolved, cls_convolved = unconvolved_members[0], convolved_members[0]
    test, test_conv = data["test"], data["test_convolved"]
    # a reference, not a method: the test spectra bins-only, exact, from the model
    references = {BINS_ROW: data["test_bins"].signal} if "test_bins" in data else {}
    with stages.stage("Translating the test set and the baselines"):
        t = translate_test_set(cfg, gan_run, test.signal, test_conv.signal)
        deconvolved, convolved, lucy, blurred, refined = (
            t["GAN-deconvolved"],
            t["GAN-convolved"],
            t["Richardson-Lucy"],
            t["Gaussian blur"],
            t.get(REFINED),
        )
        # the refined row, where there is one, in the table of what the classifiers know
        refined_row = {} if refined is None else {REFINED: refined}
    with stages.stage("Classifying"):
        sets = scored_sets(test.signal, test_conv.signal, t, references)
        members_fwd = score_sets(unconvolved_members, sets["unconvolved"], test.labels)
        members_rev = score_sets(convolved_members, sets["convolved"], test.labels)
        # each test spectrum's scores averaged over the classifiers
        correct_fwd, certain_fwd, margin_fwd = (
            {name: v.mean(0) for name, v in p.items()} for p in members_fwd
        )
        correct_rev, certain_rev, margin_rev = (
            {name: v.mean(0) for name, v in p.items()} for p in members_rev
        )
        # does either classifier call the out-of-distribution inputs "none of the known"?
        # and the translations: the target domain's classifier should call them known
        novel = {
            "test (unconvolved)": test.signal,
            "test (convolved)": test_conv.signal,
            "GAN-deconvolved": deconvolved,
            "Richardson-Lucy": lucy,
            **refined_row,
            "GAN-convolved": convolved,
            "Gaussian blur": blurred,
            **extra,
        }
        known = {
            name: {k: float(clf.known(x).mean()) for k, x in novel.items()}
            for name, clf in (("unconvolved", cls_unconvolved), ("convolved", cls_convolved))
        }

    def gaps(scores: dict[str, np.ndarray], methods: tuple[str, ...]) -> dict:
        """Per-spectrum scores (right or wrong, the certainty of the true model or its
        margin) of the truth, the untranslated input, then the methods -> their means, the
        share of the gap each method closes, and a one-sigma bootstrap interval of the first
        method's (the GAN's; the test set is small)."""
        mean = {k: float(v.mean()) for k, v in scores.items()}
        truth, before = list(scores)[:2]
        closed = {m: metrics.gap_closed(mean[truth], mean[before], mean[m]) for m in methods}
        lo_hi = metrics.gap_closed_interval(scores[truth], scores[before], scores[methods[0]])
        return {"mean": mean, "gap_closed": closed, "gap_closed_interval": list(lo_hi)}

    # the methods of each table: every scored set after the truth and the untranslated input
    deconvolution, convolution = tuple(sets["unconvolved"])[2:], tuple(sets["convolved"])[2:]
    accuracy_fwd, accuracy_rev = gaps(correct_fwd, deconvolution), gaps(correct_rev, convolution)

    def fidelity(pairs: dict[str, np.ndarray], reference: np.ndarray) -> dict:
        """Mean PSNR and SSIM of each method's spectra against the reference, pair by pair."""
        scores = {}
        for name, x in pairs.items():
            both = list(zip(x, reference, strict=True))
            scores[name] = {
                "psnr": float(np.mean([metrics.psnr(a, b) for a, b in both])),
                "ssim": float(np.mean([metrics.ssim(a, b) for a, b in both])),
            }
        return scores

    with stages.stage("Paired fidelity"):
        fid_deconv = fidelity(
            {"GAN": deconvolved}
            | ({} if refined is None else {"GAN, refined": refined})
            | {"Richardson-Lucy": lucy, "convolved input": test_conv.signal},
            test.signal,
        )
        fid_conv = fidelity(
            {"GAN": convolved, "Gaussian blur": blurred, "unconvolved input": test.signal}
            | references,
            test_conv.signal,
        )
    with stages.stage("Applicability"):
        applicability = assess_applicability(cfg, gan_run, data, extra, out, stages)
    results = {
        "config": cfg.name,
        "n_test": len(test),
        "classes": list(test.classes),
        "accuracy_classifier_unconvolved": accuracy_fwd["mean"],
        "accuracy_classifier_convolved": accuracy_rev["mean"],
        "gap_closed_deconvolution": accuracy_fwd["gap_closed"]["GAN-deconvolved"],
        "gap_closed_deconvolution_richardson_lucy": accuracy_fwd["gap_closed"]["Richardson-Lucy"],
        "gap_closed_deconvolution_refined": accuracy_fwd["gap_closed"].get(REFINED),
        "gap_closed_convolution": accuracy_rev["gap_closed"]["GAN-convolved"],
        "gap_closed_convolution_gaussian_blur": accuracy_rev["gap_closed"]["Gaussian blur"],
        "gap_closed_convolution_bins": accuracy_rev["gap_closed"].get(BINS_ROW),
        "gap_closed_deconvolution_interval": accuracy_fwd["gap_closed_interval"],
        "gap_closed_convolution_interval": accuracy_rev["gap_closed_interval"],
        "accuracy_standard_error": float(np.sqrt(0.25 / len(test))),
        "certainty_classifier_unconvolved": gaps(certain_fwd, deconvolution),
        "certainty_classifier_convolved": gaps(certain_rev, convolution),
        "margin_classifier_unconvolved": gaps(margin_fwd, deconvolution),
        "margin_classifier_convolved": gaps(margin_rev, convolution),
        "classifier_seeds": cfg.classifier_seeds,
        "per_classifier": {
            "deconvolution": per_classifier(members_fwd, deconvolution),
            "convolution": per_classifier(members_rev, convolution),
        },
        "fidelity_deconvolution": fid_deconv,
        "fidelity_convolution": fid_conv,
        "known_fraction": known,
        **applicability["metrics"],
    }
    with stages.stage("Figures and report"):
        from exp2sim.evaluation import figures

        fig_dir = out / "figures"
        fig_dir.mkdir(exist_ok=True)
        figures.translations(
            fig_dir / "deconvolution.png",
            {
                "convolved (input)": test_conv.signal[0],
                "GAN-deconvolved": deconvolved[0],
                **({} if refined is None else {"GAN, refined": refined[0]}),
                "Richardson-Lucy": lucy[0],
                "unconvolved (truth)": test.signal[0],
            },
        )
        figures.translations(
            fig_dir / "convolution.png",
            {
                "unconvolved (input)": test.signal[0],
                "GAN-convolved": convolved[0],
                "Gaussian blur": blurred[0],
                "Monte Carlo (truth)": test_conv.signal[0],
            },
        )
        applicability["figure"](fig_dir / "applicability.png")
        if volume is not None:
            figures.translations(
                fig_dir / "volume.png",
                volume["panels"],
                title=f"{volume['metrics']['model']}: (h, k, E) volume at Ei = "
                f"{volume['metrics']['ei']:g} meV (top: middle energy; bottom: k = 0)",
            )
            results["volume"] = volume["metrics"]
        results["seconds"] = {**stages.seconds, "total": round(time.perf_counter() - t0, 1)}
        write_text_atomic(out / "metrics.json", json.dumps(_plain(results), indent=2) + "\n")
        write_report(out, cfg, results)
    return results


def assess_applicability(
    cfg: EvaluationConfig,
    gan_run: Path,
    data: dict[str, Labelled],
    extra: dict[str, np.ndarray],
    out: Path,
    stages: Stages,
) -> dict:
    """Distance distributions of every set to the GAN's training set (Exp2Sim encoder),
    verdict counts, and the ROC AUC of each set against the convolved test set."""
    from exp2sim.applicability import ApplicabilityDomain, ridgeline
    from exp2sim.evaluation import metrics

    domain = ApplicabilityDomain.for_run(
        gan_run,
        "exp2sim",
        points=cfg.applicability_points,
        repeats=cfg.applicability_repeats,
        seed=cfg.seed,
        device=cfg.device,
    )
    n = cfg.n_outliers
    sets = {
        "training set": data["train_convolved"].signal[:n],
        "test (convolved)": data["test_convolved"].signal,
        "test (unconvolved)": data["test"].signal[:n],
        **extra,
    }
    distances, summary = {}, {}
    with stages.bar("applicability") as update:
        for i, (name, spectra) in enumerate(sets.items()):
            result = domain.assess_spectra(
                spectra,
                repeats=cfg.applicability_repeats,
                points=cfg.applicability_points,
                seed=cfg.seed,
            )
            distances[name] = result.distances
            means = result.distances.mean(axis=1)
            summary[name] = {
                "mean": float(means.mean()),
                "median": float(np.median(means)),
                "std": float(means.std()),
                "verdicts": {v: int(np.sum(np.asarray(result.verdicts) == v)) for v in _VERDICTS},
            }
            update("sets", i + 1, len(sets))
    reference = distances["test (convolved)"].mean(axis=1)
    auc = {
        name: metrics.roc_auc(reference, d.mean(axis=1))
        for name, d in distances.items()
        if name != "test (convolved)"
    }
    flat = {
        "applicability": summary,
        "applicability_thresholds": [float(t) for t in domain.thresholds],
        "applicability_order": {
            "tiers": APPLICABILITY_ORDER,
            **{
                f"violations_{by}": metrics.order_violations(
                    {k: s[by] for k, s in summary.items()}, APPLICABILITY_ORDER
                )
                for by in ("median", "mean")
            },
        },
        "auc": auc,
        "auc_digits": auc["digits"],
        "auc_photos": auc["photographs"],
    }
    return {
        "metrics": flat,
        "figure": lambda path: ridgeline(distances, domain.thresholds, path),
    }


_VERDICTS = ("trustworthy", "expert opinion", "untrustworthy")
# The target's order of the sets' distances, lowest first (issue 5, after the paper's
# Fig. 5b: train ~ test < unconvolved / artefacts < Rb2MnF4 / negative control <
# photographs / digits); the sets of a tier are not ordered among themselves.
APPLICABILITY_ORDER = (
    ("training set", "test (convolved)"),
    ("test (unconvolved)", "artefacts", ARTEFACTS_SUBTRACTED),
    ("Rb2MnF4", "negative control"),
    ("photographs", "digits"),
)


def _plain(obj):
    """JSON-ready copy (NumPy scalars to Python, NaN to None)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
