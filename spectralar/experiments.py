"""The paper's experiments, at a scale that runs here (arXiv 2506.10962; our reduced configs are in docs/results.md).

    python -m spectralar.experiments truncation --checkpoint fmnist --data fmnist
    python -m spectralar.experiments mapping-ablation --steps 1000 --generator-steps 400 --out runs/ablation
    python -m spectralar.experiments causality-probe --checkpoint fmnist --data fmnist

truncation: quality vs number of tokens used. Reconstruction PSNR / SSIM per prefix length, and generated
  samples decoded from their first i tokens, scored by the classifier (accuracy, and the classifier Frechet
  distance CFD -- not FID -- against real test images), next to the same scores for the exact low-pass
  sub-images x_i of real images (what blur alone costs under that classifier).
mapping-ablation: trains one tokenizer per token-frequency mapping (uniform, power, energy, gain) with identical
  arguments except --mapping (same steps, batch, seed, model), optionally a generator on each, and compares
  reconstruction per prefix length (and CFD / accuracy of samples).
causality-probe: how predictable token i is from tokens < i. A ridge regression maps the concatenated
  embeddings of tokens 1..i-1 to the embedding of token i (fitted on training images, ridge strength picked
  on a validation split); we report held-out R^2 per position i for the spectral tokens (continuous
  l2-normalised encoder outputs, and the quantised code vectors) and for two baselines of equal length and
  dimension: spatial raster patches and raw DCT bands, each projected to the code dim by PCA.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spectralar_kernels import spectral_subimages
from spectralar_kernels.windows import MAPPINGS

from .checkpoint import CheckpointError, read_meta
from .cli import (
    Parser,
    add_common_flags,
    add_sampling_flags,
    int_list,
    non_negative_int,
    positive_float,
    positive_int,
    run_command,
)
from .evaluation.kinds import DEFAULT_RUNS, KindsOptions, compare_kinds
from .evaluation.measures import (
    check_classifier,
    class_accuracy,
    decode_all,
    load_subset,
    reconstruction_metrics,
    uncapped,
    write_json,
)
from .evaluation.metrics import CFD_LABEL, frechet_distance_from_features
from .evaluation.probes import dct_bands, pca_project, probe_r2, raster_patches
from .models.classifier import classify
from .models.config import preset
from .pretrained import classifier_dir, load_model, load_pretrained, resolve, tokenizer_dir
from .sampling import sample_codes
from .training import TrainOptions, parse_overrides, train
from .viz import plot_panels, save_grid

__all__ = ["build_parser", "main"]


def _sample(generator, labels, args) -> torch.Tensor:
    """Codes [M, N] sampled from the sampling flags, exactly as `python -m spectralar.generate` samples them."""
    return sample_codes(generator, labels, batch_size=args.batch_size, seed=args.seed, cfg_scale=args.cfg_scale,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


# ---- truncation -------------------------------------------------------------------------------------


def cmd_truncation(args, device, command) -> dict:
    t0 = time.time()
    tok = load_model(tokenizer_dir(args.checkpoint), "tokenizer", device)
    c = tok.config
    N, prefixes = c.num_tokens, list(range(1, c.num_tokens + 1))
    x, _, classes = load_subset(args.data, args.split, c.image_size, c.channels, args.num, args.seed)
    rec = reconstruction_metrics(tok, x, args.batch_size)
    report = {"command": command, "checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
              "num_tokens": N, "windows": list(c.windows), "tokens_used": prefixes,
              "reconstruction": {"num_images": int(x.shape[0]), **rec}}
    out = Path(args.out)
    panels = [("reconstruction PSNR", "tokens used", "dB",
               {"decoded vs real": (prefixes, rec["psnr_vs_image"]),
                "exact x_i vs real": (prefixes, uncapped(rec["psnr_subimage_vs_image"]))}, False),
              ("reconstruction SSIM", "tokens used", "SSIM",
               {"decoded vs real": (prefixes, rec["ssim_vs_image"]),
                "exact x_i vs real": (prefixes, rec["ssim_subimage_vs_image"])}, False)]
    if not args.no_generation:
        _, gen = load_pretrained(resolve(args.checkpoint), device)
        nc = gen.config.num_classes
        clf = load_model(classifier_dir(args.classifier, args.checkpoint), "classifier")
        check_classifier(clf, c.image_size, c.channels, nc)
        real, real_y, _ = load_subset(args.data, args.split, c.image_size, c.channels, args.real_num, args.seed)
        f_real, _ = classify(clf, real)
        labels = torch.arange(nc).repeat_interleave(args.num_per_class)
        codes = _sample(gen, labels, args)
        n = codes.shape[0]
        train_x, train_y, _ = load_subset(args.data, "train", c.image_size, c.channels, n, args.seed + 1)
        g = {"label": CFD_LABEL, "num_generated": n, "num_real": int(real.shape[0]), "cfg_scale": args.cfg_scale,
             "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
             "accuracy_generated": [], "cfd_generated": [], "accuracy_real_subimage": [], "cfd_real_subimage": []}
        strips = []
        for i in prefixes:
            imgs = decode_all(tok, codes, num_tokens=i)
            f, logits = classify(clf, imgs)
            g["accuracy_generated"].append(class_accuracy(logits, labels, classes)[0])
            g["cfd_generated"].append(frechet_distance_from_features(f, f_real))
            sub = spectral_subimages(train_x, [c.windows[i - 1]], all_prefixes=True)[:, 0]
            f, logits = classify(clf, sub)
            g["accuracy_real_subimage"].append(class_accuracy(logits, train_y, classes)[0])
            g["cfd_real_subimage"].append(frechet_distance_from_features(f, f_real))
            strips.append(imgs[::args.num_per_class])  # one sample per class
        g["notes"] = (f"generated: {n} samples decoded from their first i tokens; real_subimage: the exact low-pass "
                      f"x_i of {train_x.shape[0]} training images; both against {real.shape[0]} {args.split} images")
        report["generation"] = g
        save_grid(torch.stack(strips, 1).flatten(0, 1), out / "truncation_samples.png", nrow=N, scale=2)
        panels += [("classifier accuracy", "tokens used", "accuracy",
                    {"generated": (prefixes, g["accuracy_generated"]),
                     "real, exact x_i": (prefixes, g["accuracy_real_subimage"])}, False),
                   ("CFD (not FID) vs real test", "tokens used", "CFD",
                    {"generated": (prefixes, g["cfd_generated"]),
                     "real, exact x_i": (prefixes, g["cfd_real_subimage"])}, True)]
        print(f"accuracy of generated samples per prefix: {' '.join(f'{v:.3f}' for v in g['accuracy_generated'])}")
        print(f"CFD of generated samples per prefix: {' '.join(f'{v:.3g}' for v in g['cfd_generated'])}")
    print(f"reconstruction PSNR vs image per prefix: {' '.join(f'{v:.2f}' for v in rec['psnr_vs_image'])}")
    plot_panels(out / "truncation.png", panels, title="quality vs number of spectral tokens")
    report["seconds"] = round(time.time() - t0, 1)
    write_json(out / "truncation.json", report)
    return report


# ---- mapping ablation ---------------------------------------------------------------------------------


def _train_stage(stage, out, steps, device, threads=None, config=None, **options) -> float:
    """Train (or finish, or skip when already done) one stage with spectralar.training; returns seconds spent.
    `options` are TrainOptions fields; `config` the ones that set the model config (overrides, mapping), given to a
    fresh run only (a resumed run keeps its checkpoint's)."""
    ckpt = out / stage
    done = read_meta(ckpt)["step"] if ckpt.is_dir() else None
    if done is not None and done >= steps:
        return 0.0
    t = time.time()
    train(TrainOptions(stage=stage, out=out, steps=steps, eval_every=steps, ckpt_every=steps,
                       log_every=max(1, min(50, steps)), threads=threads, device=device, resume=done is not None,
                       **options, **((config or {}) if done is None else {})))
    return round(time.time() - t, 1)


def cmd_mapping_ablation(args, device, command) -> dict:
    t0 = time.time()
    mappings = [m.strip() for m in args.mappings.split(",") if m.strip()]
    bad = [m for m in mappings if m not in MAPPINGS]
    if bad or not mappings:
        raise ValueError(f"--mappings {args.mappings!r}: choose from {', '.join(MAPPINGS)}")
    out = Path(args.out)
    shared = {"preset": args.preset, "data": args.data, "batch_size": args.batch_size, "lr": args.lr,
              "seed": args.seed, "val_size": args.val_size}
    overrides = parse_overrides(preset("tokenizer", args.preset), args.set)
    clf = None
    if args.generator_steps:  # fail before training when there is no classifier to judge the samples with
        try:
            clf = load_model(classifier_dir(args.classifier, "fmnist"), "classifier")
        except CheckpointError as e:
            raise CheckpointError(f"--generator-steps needs a classifier: pass --classifier DIR (train one with "
                                  f"`python -m spectralar.evaluate train-classifier --data {args.data} --out DIR`); "
                                  f"{e}") from None
    report = {"command": command, "steps": args.steps, "batch_size": args.batch_size, "preset": args.preset,
              "overrides": args.set, "generator_steps": args.generator_steps, "num_images": None, "runs": {}}
    x = real = f_real = None
    for m in mappings:
        run_dir = out / m
        secs = _train_stage("tokenizer", run_dir, args.steps, device, args.threads,
                            config={"overrides": overrides, "mapping": m}, **shared)
        tok = load_model(run_dir / "tokenizer", "tokenizer", device)
        c = tok.config
        if x is None:
            x, _, classes = load_subset(args.data, args.split, c.image_size, c.channels, args.num, args.seed)
            report["num_images"] = int(x.shape[0])
        r = {"windows": list(c.windows), "tokenizer_seconds": secs, **reconstruction_metrics(tok, x)}
        r["psnr_vs_image_mean_over_prefixes"] = float(np.mean(r["psnr_vs_image"]))
        r["ssim_vs_image_mean_over_prefixes"] = float(np.mean(r["ssim_vs_image"]))
        if args.generator_steps:
            gen_options = {"preset": args.generator_preset, "data": args.data, "seed": args.seed,
                           "batch_size": args.generator_batch_size, "val_size": args.val_size}
            r["generator_seconds"] = _train_stage("generator", run_dir, args.generator_steps, device, args.threads,
                                                  **gen_options)
            tok, gen = load_pretrained(run_dir, device)
            check_classifier(clf, c.image_size, c.channels, gen.config.num_classes)
            if f_real is None:
                real, _, _ = load_subset(args.data, args.split, c.image_size, c.channels, None, args.seed)
                f_real = classify(clf, real)[0]
            labels = torch.arange(gen.config.num_classes).repeat_interleave(args.num_per_class)
            f, logits = classify(clf, decode_all(tok, _sample(gen, labels, args)))
            r["generation"] = {"label": CFD_LABEL, "num_generated": int(labels.numel()),
                               "cfd_generated_vs_real": frechet_distance_from_features(f, f_real),
                               "accuracy_on_generated": class_accuracy(logits, labels, classes)[0]}
        report["runs"][m] = r
        print(f"[{m}] windows {c.windows}; PSNR vs image per prefix {' '.join(f'{v:.2f}' for v in r['psnr_vs_image'])}")
    runs = report["runs"]
    report["best_mean_psnr"] = max(runs, key=lambda m: runs[m]["psnr_vs_image_mean_over_prefixes"])
    report["best_full_prefix_psnr"] = max(runs, key=lambda m: runs[m]["psnr_vs_image"][-1])
    report["best_psnr_per_prefix"] = [max(runs, key=lambda m: runs[m]["psnr_vs_image"][i])
                                      for i in range(len(next(iter(runs.values()))["psnr_vs_image"]))]
    if args.generator_steps:
        report["best_cfd"] = min(runs, key=lambda m: runs[m]["generation"]["cfd_generated_vs_real"])
    pre = list(range(1, len(report["best_psnr_per_prefix"]) + 1))
    plot_panels(out / "mapping_ablation.png",
                [("decoded vs real image", "tokens used", "PSNR (dB)",
                  {m: (pre, r["psnr_vs_image"]) for m, r in runs.items()}, False),
                 ("decoded vs real image", "tokens used", "SSIM",
                  {m: (pre, r["ssim_vs_image"]) for m, r in runs.items()}, False),
                 ("exact x_i vs real image (the mapping's ideal)", "tokens used", "PSNR (dB)",
                  {m: (pre, uncapped(r["psnr_subimage_vs_image"])) for m, r in runs.items()}, False)],
                title=f"token-frequency mapping ablation ({args.steps} tokenizer steps each)")
    report["seconds"] = round(time.time() - t0, 1)
    write_json(out / "mapping_ablation.json", report)
    print(f"best mean PSNR over prefixes: {report['best_mean_psnr']}; best at the full prefix: "
          f"{report['best_full_prefix_psnr']}" + (f"; best CFD: {report['best_cfd']}" if args.generator_steps else ""))
    return report


# ---- causality probe ----------------------------------------------------------------------------------


@torch.no_grad()
def cmd_causality_probe(args, device, command) -> dict:
    t0 = time.time()
    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--alphas {args.alphas!r}: expected comma-separated numbers") from None
    if not alphas or min(alphas) < 0:
        raise ValueError(f"--alphas {args.alphas!r}: expected non-negative numbers")
    tok = load_model(tokenizer_dir(args.checkpoint), "tokenizer", device)
    c = tok.config
    N, d = c.num_tokens, c.code_dim
    xtr, _, _ = load_subset(args.data, "train", c.image_size, c.channels, args.num_train, args.seed)
    xte, _, _ = load_subset(args.data, args.split, c.image_size, c.channels, args.num_test, args.seed)

    def spectral(x):
        cont, quant = [], []
        for i in range(0, x.shape[0], args.batch_size):
            xb = x[i:i + args.batch_size].to(device)
            cont.append(F.normalize(tok.encode_continuous(xb).float(), dim=-1).cpu())
            quant.append(tok.quantizer.codes_to_vectors(tok.encode(xb)).float().cpu())
        return torch.cat(cont), torch.cat(quant)

    (ctr, qtr), (cte, qte) = spectral(xtr), spectral(xte)
    ptr, pte = raster_patches(xtr, N), raster_patches(xte, N)
    s_tr, s_te, s_kept = pca_project(ptr.flatten(0, 1), pte.flatten(0, 1), d)
    s_tr, s_te = s_tr.view(xtr.shape[0], N, -1), s_te.view(xte.shape[0], N, -1)
    b_tr, b_te, b_kept = [], [], []
    for a, b in zip(dct_bands(xtr, c.windows), dct_bands(xte, c.windows)):
        pa, pb, kept = pca_project(a, b, d)
        pad = d - pa.shape[1]  # narrow low bands (e.g. 1 coefficient) are zero-padded to d dims
        b_tr.append(F.pad(pa, (0, pad)))
        b_te.append(F.pad(pb, (0, pad)))
        b_kept.append(kept)
    b_tr, b_te = torch.stack(b_tr, 1), torch.stack(b_te, 1)
    kinds = {"spectral tokens (continuous)": (ctr, cte), "spectral tokens (quantized)": (qtr, qte),
             "spatial raster patches (PCA)": (s_tr, s_te), "raw DCT bands (PCA)": (b_tr, b_te)}
    positions = list(range(1, N + 1))
    report = {"command": command, "checkpoint": str(args.checkpoint), "data": args.data, "num_train": xtr.shape[0],
              "num_test": xte.shape[0], "num_tokens": N, "dim": d, "windows": list(c.windows), "alphas": alphas,
              "positions": positions, "r2": {}, "mean_r2_positions_2_to_N": {}, "chosen_alpha": {},
              "pca_variance_kept": {"spatial raster patches (PCA)": s_kept, "raw DCT bands (PCA)": b_kept},
              "definitions": {
                  "probe": "ridge regression from the concatenated embeddings of tokens 1..i-1 to token i's embedding; "
                           "inputs standardised; alpha picked on the last 20% of the training images, then refitted; "
                           "R^2 variance-weighted over the output dims, on held-out images; null where token i "
                           "is constant over the held-out images (R^2 undefined)",
                  "spectral tokens (continuous)": "l2-normalised encoder outputs before quantisation",
                  "spectral tokens (quantized)": "the chosen (l2-normalised) code vectors",
                  "spatial raster patches (PCA)": f"the image cut into {N} raster-ordered patches (a square grid if "
                                                  f"possible, else horizontal strips), each flattened and projected to "
                                                  f"{d} dims by one PCA fitted on all training patches",
                  "raw DCT bands (PCA)": f"the DCT coefficients of token i's band, projected to {d} dims by a PCA "
                                         "fitted per band on training images (zero-padded when the band is smaller)"}}
    for name, (tr, te) in kinds.items():
        res = probe_r2(tr, te, alphas)
        # R^2 is undefined (null) where token i is the same for every held-out image (e.g. a collapsed code)
        r2 = [None if r is None or math.isnan(r["r2"]) else r["r2"] for r in res]
        report["r2"][name] = r2
        report["chosen_alpha"][name] = [None if r is None else r["alpha"] for r in res]
        defined = [v for v in r2[1:] if v is not None]
        report["mean_r2_positions_2_to_N"][name] = float(np.mean(defined)) if defined else None
        print(f"{name}: per position (2..{N}) " + " ".join("n/a" if v is None else f"{v:.2f}" for v in r2[1:])
              + ("" if not defined else f"; mean {np.mean(defined):.3f}"))
    out = Path(args.out)
    plot_panels(out / "causality_probe.png", [("linear predictability of token i from tokens < i", "position i",
                                               "held-out R^2", {k: (positions, v) for k, v in report["r2"].items()},
                                               False)])
    report["seconds"] = round(time.time() - t0, 1)
    write_json(out / "causality_probe.json", report)
    return report


def float_list(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        vals = []
    if not vals or not all(math.isfinite(v) for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got {text!r}")
    return vals


# ---- CLI ------------------------------------------------------------------------------------------------


def build_parser() -> Parser:
    p = Parser(prog="python -m spectralar.experiments", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    t = sub.add_parser("truncation", help="quality vs number of tokens used (reconstruction and generation)")
    t.add_argument("--checkpoint", default="fmnist", help="bundled model name or a training output directory")
    t.add_argument("--classifier", default=None, help="classifier checkpoint (default: CHECKPOINT/classifier)")
    t.add_argument("--num", type=positive_int, default=1000, help="held-out images for reconstruction")
    t.add_argument("--real-num", type=positive_int, default=None, help="real images for CFD (default: whole split)")
    t.add_argument("--no-generation", action="store_true", help="reconstruction only (no generator / classifier)")
    add_sampling_flags(t, num_per_class=100)
    add_common_flags(t, "runs/experiments/truncation")
    m = sub.add_parser("mapping-ablation", help="tokenizers with uniform / power / energy / gain windows, same budget")
    m.add_argument("--steps", type=positive_int, required=True, help="tokenizer training steps per mapping")
    m.add_argument("--mappings", default="uniform,power,energy", help="comma-separated mappings to compare")
    m.add_argument("--preset", default="fmnist", help="tokenizer preset shared by all runs (fmnist, micro)")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="tokenizer config override shared by all runs (repeatable), e.g. --set width=96")
    m.add_argument("--data", default="fmnist", help="'fmnist', a folder of its IDX files, or an image folder")
    m.add_argument("--split", default="test", help="held-out split for the comparison")
    m.add_argument("--out", default="runs/ablation", help="output directory (one sub-directory per mapping)")
    m.add_argument("--batch-size", type=positive_int, default=64, help="tokenizer training batch")
    m.add_argument("--lr", type=positive_float, default=1e-3, help="tokenizer peak learning rate")
    m.add_argument("--seed", type=int, default=0, help="seed shared by all runs (init, data order, sampling)")
    m.add_argument("--num", type=positive_int, default=1000, help="held-out images for the comparison")
    m.add_argument("--val-size", type=positive_int, default=200, help="validation images during training")
    m.add_argument("--generator-steps", type=non_negative_int, default=0,
                   help="also train a generator per mapping (0 = no)")
    m.add_argument("--generator-preset", default="fmnist", help="generator preset (fmnist, micro)")
    m.add_argument("--generator-batch-size", type=positive_int, default=256, help="generator training batch")
    m.add_argument("--classifier", default=None,
                   help="classifier for the generation comparison (default: the bundled fmnist one)")
    add_sampling_flags(m, num_per_class=100)
    m.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    m.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    c = sub.add_parser("causality-probe", help="ridge-probe R^2 of token i from tokens < i, spectral vs spatial")
    c.add_argument("--checkpoint", default="fmnist",
                   help="bundled model name, a training output directory, or a tokenizer checkpoint directory")
    c.add_argument("--num-train", type=positive_int, default=5000, help="training images to fit the probes")
    c.add_argument("--num-test", type=positive_int, default=1000, help="held-out images to score them")
    c.add_argument("--alphas", default="0.01,0.1,1,10,100,1000", help="ridge strengths to choose from")
    add_common_flags(c, "runs/experiments/causality")
    k = sub.add_parser("kinds", help="spectral vs raster vs 1-D tokens at the same budget: train, evaluate, report")
    k.add_argument("--out", default="runs/kinds", help="output directory (OUT/seed<S>/<KIND-N>/ per run, reports)")
    k.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="comma-separated KIND-N runs (KIND: spectral, "
                   "raster, 1d; N tokens), default %(default)s")
    k.add_argument("--seeds", type=int_list, default=[0, 1], help="comma-separated seeds (default 0,1)")
    k.add_argument("--steps", type=positive_int, default=2000, help="tokenizer steps of every run")
    k.add_argument("--generator-steps", type=positive_int, default=800, help="generator steps of every run")
    k.add_argument("--batch-size", type=positive_int, default=64, help="tokenizer training batch")
    k.add_argument("--generator-batch-size", type=positive_int, default=256, help="generator training batch")
    k.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate of both stages")
    k.add_argument("--preset", default="fmnist", help="tokenizer preset shared by all runs (fmnist, micro)")
    k.add_argument("--generator-preset", default="fmnist", help="generator preset shared by all runs")
    k.add_argument("--mapping", default="gain", choices=list(MAPPINGS), help="the spectral runs' mapping")
    k.add_argument("--data", default="fmnist", help="'fmnist', a folder of its IDX files, or an image folder")
    k.add_argument("--val-size", type=positive_int, default=500, help="validation images during training")
    k.add_argument("--ckpt-every", type=positive_int, default=250, help="steps between checkpoints (resume points)")
    k.add_argument("--classifier", default=None, help="classifier for CFD / accuracy (default: the bundled one)")
    k.add_argument("--num", type=positive_int, default=1000, help="test images for reconstruction")
    k.add_argument("--num-per-class", type=positive_int, default=100, help="samples per class at each CFG scale")
    k.add_argument("--cfgs", type=float_list, default=[1.0, 2.0], help="CFG scales (the last also per prefix)")
    k.add_argument("--probe-train", type=positive_int, default=5000, help="training images to fit the probe")
    k.add_argument("--probe-test", type=positive_int, default=1000, help="test images to score the probe")
    k.add_argument("--eval-batch-size", type=positive_int, default=100, help="images per forward pass in evaluation")
    k.add_argument("--train-only", action="store_true", help="train what is missing, evaluate nothing")
    k.add_argument("--report-only", action="store_true", help="only rewrite the report from the evaluated runs")
    k.add_argument("--reevaluate", action="store_true", help="evaluate again runs that have an eval.json")
    k.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    k.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    return p


def cmd_kinds(args, device, command) -> dict:
    opts = KindsOptions(out=args.out, runs=tuple(r for r in args.runs.split(",") if r.strip()),
                        seeds=tuple(args.seeds), steps=args.steps, generator_steps=args.generator_steps,
                        batch_size=args.batch_size, generator_batch_size=args.generator_batch_size, lr=args.lr,
                        preset=args.preset, generator_preset=args.generator_preset, mapping=args.mapping,
                        data=args.data, val_size=args.val_size, ckpt_every=args.ckpt_every,
                        classifier=args.classifier, num=args.num, num_per_class=args.num_per_class,
                        cfgs=tuple(args.cfgs), probe_train=args.probe_train, probe_test=args.probe_test,
                        eval_batch_size=args.eval_batch_size, threads=args.threads, device=device,
                        train_only=args.train_only, report_only=args.report_only, reevaluate=args.reevaluate)
    return compare_kinds(opts)


COMMANDS = {"truncation": cmd_truncation, "mapping-ablation": cmd_mapping_ablation,
            "causality-probe": cmd_causality_probe, "kinds": cmd_kinds}


def main(argv=None) -> int:
    return run_command("python -m spectralar.experiments", build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
