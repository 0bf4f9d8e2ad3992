"""Does spectral tokenization beat raster and 1-D tokens at the same budget? Trains and evaluates tokenizer kinds
side by side: the same backbone, codebook, trainer, schedule, generator preset and evaluation, only
`TokenizerConfig.tokens` (and N) differing (`python -m spectralar.experiments kinds`; docs/results.md).

A run is KIND-N (spectral-16, raster-16, 1d-16, raster-64) at one seed, in OUT/seed<S>/<KIND-N>/: a tokenizer and
a generator trained by `train_stage` (resumable, wall times in times.json), then `evaluate_run` writes eval.json
(every measure) and figures.safetensors (the pictures' pixels). `compare_kinds` does whatever is missing for the
runs asked for, then reports over every evaluated run in OUT (kinds_report.py).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..checkpoint import read_meta
from ..models.classifier import classify
from ..models.config import TOKEN_KINDS
from ..pretrained import PRETRAINED_DIR, load_model, load_pretrained
from ..sampling import SamplingParams, sample_batches
from .measures import (
    check_classifier,
    class_accuracy,
    classifier_metrics,
    decode_all,
    encode_all,
    load_subset,
    reconstruction_metrics,
    write_json,
)
from .metrics import CFD_LABEL, frechet_distance_from_features
from .probes import probe_r2, token_embeddings
from .runs import stage_seconds, train_stage

__all__ = ["DEFAULT_RUNS", "KindsOptions", "RunSpec", "compare_kinds", "evaluate_run", "time_sampling", "train_run"]

DEFAULT_RUNS = ("spectral-16", "raster-16", "1d-16", "raster-64")
EVAL, FIGURES = "eval.json", "figures.safetensors"
PROBE_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


@dataclass(frozen=True)
class RunSpec:
    """One tokenization: a kind (`TokenizerConfig.tokens`) at a number of tokens N."""

    kind: str
    num_tokens: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.num_tokens}"

    @staticmethod
    def parse(name: str) -> RunSpec:
        """"raster-64" -> RunSpec("raster", 64); ValueError naming the bad name."""
        kind, _, n = name.strip().rpartition("-")
        if kind not in TOKEN_KINDS or not n.isdigit() or int(n) < 1:
            raise ValueError(f"run {name!r}: expected KIND-N with KIND one of {list(TOKEN_KINDS)} and N >= 1 tokens, "
                             "e.g. raster-64")
        return RunSpec(kind, int(n))


@dataclass
class KindsOptions:
    """The comparison's settings: everything but `runs` and `seeds` is shared by every run (the fairness).

    `mapping` is the spectral runs' token-frequency mapping (the others have no windows). Evaluation: `num` test
    images for reconstruction, `num_per_class` samples per class at each CFG scale in `cfgs` (the first
    `prefix_per_class` of them at the last scale also decoded from every prefix: N decodings each), the probe fitted
    on `probe_train` training images and scored on the first `probe_test` of the reconstruction images,
    the generator's cross-entropy on the whole test split; `classifier` defaults to the bundled one.
    `train_only` trains and stops; `report_only` only rewrites the report from the evaluated runs in `out`;
    `time_sampling` > 0 also times the KV-cached sampling of every run of the first seed side by side in this
    process, in that many interleaved rounds (timings from separate processes on a shared machine do not compare).
    """

    out: str | Path
    runs: tuple[str, ...] = DEFAULT_RUNS
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 500
    generator_steps: int = 200
    batch_size: int = 64
    generator_batch_size: int = 256
    lr: float = 1e-3
    preset: str = "fmnist"
    generator_preset: str = "fmnist"
    mapping: str = "gain"
    data: str = "fmnist"
    val_size: int = 500
    ckpt_every: int = 250
    classifier: str | Path | None = None
    num: int = 500
    num_per_class: int = 100
    prefix_per_class: int = 50
    cfgs: tuple[float, ...] = (1.0, 2.0)
    probe_train: int = 5000
    probe_test: int = 500
    eval_batch_size: int = 100
    threads: int | None = None
    device: str | torch.device = "cpu"
    train_only: bool = False
    report_only: bool = False
    reevaluate: bool = False
    time_sampling: int = 0

    def specs(self) -> list[RunSpec]:
        specs = [RunSpec.parse(r) for r in self.runs]
        if not specs or len({s.name for s in specs}) != len(specs):
            raise ValueError(f"runs {list(self.runs)}: expected distinct KIND-N names")
        return specs

    def check(self) -> None:
        """Checks before any work (one-line ValueErrors naming the option)."""
        self.specs()
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {list(self.seeds)}: expected distinct integers")
        for name in ("steps", "generator_steps", "batch_size", "generator_batch_size", "ckpt_every", "num",
                     "num_per_class", "prefix_per_class", "probe_train", "probe_test", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.probe_train < 4:
            raise ValueError(f"probe_train must be >= 4 (a validation split picks the ridge), got {self.probe_train}")
        if not self.cfgs or min(self.cfgs) < 0:
            raise ValueError(f"cfgs {list(self.cfgs)}: expected guidance scales >= 0")
        if self.train_only and self.report_only:
            raise ValueError("train_only and report_only exclude each other")


def run_dir(opts: KindsOptions, spec: RunSpec, seed: int) -> Path:
    return Path(opts.out) / f"seed{seed}" / spec.name


def train_run(opts: KindsOptions, spec: RunSpec, seed: int) -> dict:
    """Train (or finish) the tokenizer and the generator of one run; returns the seconds spent per stage now."""
    out = run_dir(opts, spec, seed)
    common = {"data": opts.data, "seed": seed, "val_size": opts.val_size, "lr": opts.lr, "threads": opts.threads,
              "device": opts.device, "ckpt_every": opts.ckpt_every}
    config = {"overrides": {"tokens": spec.kind, "num_tokens": spec.num_tokens},
              "mapping": opts.mapping if spec.kind == "spectral" else None}
    # warm-up: a tenth of each schedule, at most the command line's defaults (200 and 100 steps)
    tok = train_stage("tokenizer", out, opts.steps, config=config, preset=opts.preset, batch_size=opts.batch_size,
                      warmup=min(200, opts.steps // 10), **common)
    gen = train_stage("generator", out, opts.generator_steps, preset=opts.generator_preset,
                      batch_size=opts.generator_batch_size, warmup=min(100, opts.generator_steps // 10), **common)
    return {"tokenizer": tok, "generator": gen}


SHARED = ("steps", "batch_size", "accum", "lr", "min_lr_ratio", "warmup", "weight_decay", "clip", "preset", "data")


def training_settings(out: Path) -> dict:
    """What both stages of a run were trained with, minus what differs by design (seed, kind, N): the fairness
    record the report compares across runs."""
    return {stage: {k: read_meta(out / stage)["train"]["args"].get(k) for k in SHARED}
            for stage in ("tokenizer", "generator")}


def _u8(images: torch.Tensor) -> torch.Tensor:
    return images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


@torch.no_grad()
def _cross_entropy(gen, codes: torch.Tensor, labels: torch.Tensor, batch_size: int) -> list[float]:
    """The generator's mean cross-entropy (nats) at each position 1..N of the given code sequences [M, N]
    (teacher forcing, the true class)."""
    dev = next(gen.parameters()).device
    total = torch.zeros(codes.shape[1], dtype=torch.float64)
    for i in range(0, codes.shape[0], batch_size):
        x, y = codes[i:i + batch_size].to(dev), labels[i:i + batch_size].to(dev)
        logits = gen(y, x[:, :-1]).float()  # [B, N, K]
        total += F.cross_entropy(logits.transpose(1, 2), x, reduction="none").double().sum(0).cpu()
    return (total / codes.shape[0]).tolist()


@torch.no_grad()
def evaluate_run(opts: KindsOptions, spec: RunSpec, seed: int) -> dict:
    """Every measure of one trained run, written to its eval.json (and the figures' pixels to figures.safetensors).

    Reconstruction: PSNR / SSIM of the decoding of every prefix against the real image (`num` test images, the
    same for every run and seed), and the CFD of reconstructed training images. Generation at each CFG scale:
    classifier metrics of `num_per_class` samples per class against the whole test split, sampling seconds per
    image with the KV cache; at the last scale also CFD / accuracy of the first `prefix_per_class` samples per
    class decoded from every prefix. The causality probe's R^2 on the run's own tokens; the generator's
    cross-entropy per position on the whole test split (teacher forcing, true labels).
    """
    t0 = time.time()
    out = run_dir(opts, spec, seed)
    dev = torch.device(opts.device)
    tok, gen = load_pretrained(out, dev)
    c, nc, N, bs = tok.config, gen.config.num_classes, tok.config.num_tokens, opts.eval_batch_size
    shape = (c.image_size, c.channels)
    clf = load_model(opts.classifier or PRETRAINED_DIR / "fmnist" / "classifier", "classifier")
    check_classifier(clf, c.image_size, c.channels, nc)
    real, real_y, classes = load_subset(opts.data, "test", *shape, None, 0)
    f_real = classify(clf, real)[0]
    x = real[torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(0))[:opts.num]]
    rec = reconstruction_metrics(tok, x, bs)
    labels = torch.arange(nc).repeat_interleave(opts.num_per_class)
    real_train, _, _ = load_subset(opts.data, "train", *shape, labels.numel(), seed + 1)
    recon_train = decode_all(tok, encode_all(tok, real_train))
    report = {"run": spec.name, "kind": spec.kind, "num_tokens": N, "seed": seed, "prefix_meaning": tok.prefix_meaning,
              "params": {"tokenizer": sum(p.numel() for p in tok.parameters()),
                         "generator": sum(p.numel() for p in gen.parameters())},
              "tokenizer_config": dataclasses.asdict(c), "training": training_settings(out),
              "train_seconds": stage_seconds(out),
              "reconstruction": {"num_images": int(x.shape[0]), "psnr_vs_image": rec["psnr_vs_image"],
                                 "ssim_vs_image": rec["ssim_vs_image"]},
              "generation": {}}
    for cfg in opts.cfgs:
        s = sample_batches(tok, gen, labels, batch_size=bs, seed=seed, params=SamplingParams(cfg_scale=cfg))
        fake, n = s.all_images(), labels.numel()
        m = classifier_metrics(clf, fake=fake, labels=labels, real=real, real_labels=real_y, real_train=real_train,
                               reconstructed_train=recon_train, classes=classes)
        per = m["accuracy_on_generated_per_class"]
        worst = min(per, key=per.get)
        m.update(worst_class=worst, worst_class_accuracy=per[worst], cfg_scale=cfg,
                 sampling_seconds_per_image=s.seconds / n, sampling_tokens_per_second=s.tokens / s.seconds)
        report["generation"][f"cfg{cfg:g}"] = m
        codes, imgs = s.all_codes(), fake
    report["reconstruction"]["cfd_reconstructed_train_vs_real"] = m["cfd_reconstructed_train_vs_real"]
    keep = torch.cat([torch.nonzero(labels == k)[:opts.prefix_per_class, 0] for k in range(nc)])
    prefix = {"cfg_scale": opts.cfgs[-1], "label": CFD_LABEL, "num_generated": int(keep.numel()), "accuracy": [],
              "cfd": []}
    for k in range(1, N + 1):
        f, logits = classify(clf, decode_all(tok, codes[keep], num_tokens=k))
        prefix["accuracy"].append(class_accuracy(logits, labels[keep], classes)[0])
        prefix["cfd"].append(frechet_distance_from_features(f, f_real))
    report["generated_prefixes"] = prefix
    xtr, _, _ = load_subset(opts.data, "train", *shape, opts.probe_train, 0)
    (ctr, qtr), (cte, qte) = token_embeddings(tok, xtr, bs), token_embeddings(tok, x[:opts.probe_test], bs)
    report["probe"] = {"num_train": int(xtr.shape[0]), "num_test": int(min(opts.probe_test, x.shape[0]))}
    for name, (a, b) in {"continuous": (ctr, cte), "quantized": (qtr, qte)}.items():
        r2 = [None if r is None or np.isnan(r["r2"]) else r["r2"] for r in probe_r2(a, b, PROBE_ALPHAS)]
        defined = [v for v in r2[1:] if v is not None]
        report["probe"][name] = {"r2": r2, "mean_r2_positions_2_to_N": float(np.mean(defined)) if defined else None}
    test_codes = encode_all(tok, real)
    ce = _cross_entropy(gen, test_codes, real_y, 500)
    report["generator_cross_entropy"] = {"split": "test", "num_images": int(real.shape[0]), "per_position": ce,
                                         "per_token": float(np.mean(ce)), "per_image": float(np.sum(ce)),
                                         "test_codes_used": int(test_codes.unique().numel())}
    first = torch.stack([torch.nonzero(labels == k)[0, 0] for k in range(nc)])
    show = torch.stack([imgs[labels == k][:4] for k in range(nc)])  # [classes, 4, C, S, S]
    save_file({"samples": _u8(show).contiguous(),
               "prefixes": _u8(tok.decode_progressive(codes[first].to(dev)).cpu()).contiguous()}, str(out / FIGURES))
    report["seconds"] = round(time.time() - t0, 1)
    write_json(out / EVAL, report)
    return report


@torch.no_grad()
def time_sampling(opts: KindsOptions, seed: int, rounds: int) -> dict:
    """Seconds per image of KV-cached sampling (generator only, no decoding) of every trained run of `seed`,
    measured side by side: `rounds` rounds, each sampling `num_per_class` images per class with every run in turn
    at the last CFG scale; the median round per run. Written to OUT/sampling_timing.json."""
    gens = {}
    for spec in opts.specs():
        path = run_dir(opts, spec, seed) / "generator"
        if path.is_dir():
            gens[spec.name] = load_model(path, "generator", opts.device)
    times = {name: [] for name in gens}
    for _ in range(rounds):
        for name, gen in gens.items():
            labels = torch.arange(gen.config.num_classes).repeat_interleave(opts.num_per_class)
            s = sample_batches(None, gen, labels, batch_size=opts.eval_batch_size, seed=seed,
                               params=SamplingParams(cfg_scale=opts.cfgs[-1]), decode=False)
            times[name].append(s.seconds / labels.numel())
    report = {"seed": seed, "rounds": rounds, "cfg_scale": opts.cfgs[-1], "batch_size": opts.eval_batch_size,
              "threads": torch.get_num_threads(), "device": str(opts.device),
              "seconds_per_image_median": {n: float(np.median(t)) for n, t in times.items()},
              "seconds_per_image_rounds": times}
    write_json(Path(opts.out) / "sampling_timing.json", report)
    return report


def compare_kinds(opts: KindsOptions, log=print) -> dict:
    """Train and evaluate what is missing of `opts.runs` x `opts.seeds` (finished stages and evaluations are kept;
    `reevaluate` redoes the evaluations), then report over every evaluated run in `opts.out`. Returns the report."""
    from .kinds_report import write_report

    opts.check()
    if not opts.report_only:
        for seed in opts.seeds:
            for spec in opts.specs():
                spent = train_run(opts, spec, seed)
                log(f"[{spec.name} seed {seed}] trained (this call: tokenizer {spent['tokenizer']:.0f} s, "
                    f"generator {spent['generator']:.0f} s)")
                if opts.train_only or ((run_dir(opts, spec, seed) / EVAL).is_file() and not opts.reevaluate):
                    continue
                r = evaluate_run(opts, spec, seed)
                g = r["generation"][f"cfg{opts.cfgs[-1]:g}"]
                log(f"[{spec.name} seed {seed}] evaluated in {r['seconds']:.0f} s: PSNR "
                    f"{r['reconstruction']['psnr_vs_image'][-1]:.2f} dB, CFD {g['cfd_generated_vs_real']:.1f} at CFG "
                    f"{opts.cfgs[-1]:g}")
    if opts.time_sampling:
        t = time_sampling(opts, opts.seeds[0], opts.time_sampling)
        log("KV-cached sampling, ms per image (side by side): " + ", ".join(
            f"{n} {1000 * v:.2f}" for n, v in t["seconds_per_image_median"].items()))
    return write_report(Path(opts.out), log=log)
