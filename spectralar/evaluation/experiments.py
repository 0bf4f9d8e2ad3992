"""The paper's experiments as a library (`python -m spectralar.experiments` is a thin command line over these):

truncation        quality vs number of tokens used: reconstruction PSNR / SSIM per prefix length, and generated
                  samples decoded from their first i tokens, scored by the classifier (accuracy, CFD -- not FID --
                  against real test images), next to the exact low-pass sub-images x_i of real images (what blur
                  alone costs under that classifier; spectral tokenizers only).
mapping_ablation  one tokenizer per token-frequency mapping with identical settings otherwise, optionally a
                  generator on each; reconstruction per prefix length, CFD / accuracy of samples.
causality_probe   how predictable token i is from tokens < i: held-out R^2 of a ridge regression per position, for
                  the tokenizer's own tokens and for learning-free baselines of equal length and dimension.

Each writes OUT/<name>.json (every number and the settings) and PNG figures, and returns the report. `sampling`
arguments are a `spectralar.sampling.SamplingParams` (default: no guidance, temperature 1); samples are drawn in
batches of `batch_size` from `seed`, as `python -m spectralar.generate` draws them. Errors name the argument; the
command line maps them to its flags.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spectralar_kernels import spectral_subimages
from spectralar_kernels.windows import MAPPINGS

from ..checkpoint import CheckpointError
from ..models.classifier import classify
from ..pretrained import classifier_dir, load_model, load_pretrained, resolve, tokenizer_dir
from ..progress import bar
from ..sampling import SamplingParams, sample_codes
from ..viz import plot_panels, save_grid
from .measures import (
    check_classifier,
    class_accuracy,
    decode_all,
    load_subset,
    reconstruction_metrics,
    uncapped,
    write_json,
)
from .metrics import CFD_LABEL, frechet_distance_from_features
from .probes import check_probe_sizes, dct_bands, pca_project, probe_r2, raster_patches, token_embeddings
from .runs import train_stage

__all__ = ["causality_probe", "mapping_ablation", "truncation"]


def truncation(checkpoint, out, *, data="fmnist", split="test", num=1000, real_num=None, batch_size=100, seed=0,
               generation=True, classifier=None, num_per_class=100, sampling=None, device="cpu", command="") -> dict:
    """Quality vs number of tokens used, for the model at `checkpoint` (bundled name or run folder)."""
    t0 = time.time()
    sampling = sampling or SamplingParams()
    tok = load_model(tokenizer_dir(checkpoint), "tokenizer", device)
    c = tok.config
    N, prefixes, nested = c.num_tokens, list(range(1, c.num_tokens + 1)), bool(c.windows)
    x, _, classes = load_subset(data, split, c.image_size, c.channels, num, seed)
    rec = reconstruction_metrics(tok, x, batch_size)
    report = {"command": command, "checkpoint": str(checkpoint), "data": data, "split": split, "num_tokens": N,
              "tokens": c.tokens, "prefix_meaning": tok.prefix_meaning, "windows": list(c.windows),
              "tokens_used": prefixes, "reconstruction": {"num_images": int(x.shape[0]), **rec}}
    out = Path(out)

    def series(gen_label, gen_values, real_values):  # the exact x_i exist for spectral tokens only
        return {gen_label: (prefixes, gen_values), **({"exact x_i vs real": (prefixes, real_values)} if nested else {})}

    panels = [("reconstruction PSNR", "tokens used", "dB",
               series("decoded vs real", rec["psnr_vs_image"], uncapped(rec["psnr_subimage_vs_image"])), False),
              ("reconstruction SSIM", "tokens used", "SSIM",
               series("decoded vs real", rec["ssim_vs_image"], rec["ssim_subimage_vs_image"]), False)]
    if generation:
        _, gen = load_pretrained(resolve(checkpoint), device)
        nc = gen.config.num_classes
        clf = load_model(classifier_dir(classifier, checkpoint), "classifier")
        check_classifier(clf, c.image_size, c.channels, nc)
        real, _, _ = load_subset(data, split, c.image_size, c.channels, real_num, seed)
        f_real, _ = classify(clf, real)
        labels = torch.arange(nc).repeat_interleave(num_per_class)
        codes = sample_codes(gen, labels, batch_size=batch_size, seed=seed, params=sampling)
        n = codes.shape[0]
        train_x, train_y, _ = load_subset(data, "train", c.image_size, c.channels, n, seed + 1)
        g = {"label": CFD_LABEL, "num_generated": n, "num_real": int(real.shape[0]),
             **dataclasses.asdict(sampling),
             "accuracy_generated": [], "cfd_generated": [], "accuracy_real_subimage": [], "cfd_real_subimage": []}
        strips = []
        for i in bar(prefixes, desc="prefixes", unit="prefix"):
            imgs = decode_all(tok, codes, num_tokens=i)
            f, logits = classify(clf, imgs)
            g["accuracy_generated"].append(class_accuracy(logits, labels, classes)[0])
            g["cfd_generated"].append(frechet_distance_from_features(f, f_real))
            if nested:
                sub = spectral_subimages(train_x, [c.windows[i - 1]], all_prefixes=True)[:, 0]
                f, logits = classify(clf, sub)
                g["accuracy_real_subimage"].append(class_accuracy(logits, train_y, classes)[0])
                g["cfd_real_subimage"].append(frechet_distance_from_features(f, f_real))
            strips.append(imgs[::num_per_class])  # one sample per class
        g["notes"] = (f"generated: {n} samples decoded from their first i tokens ({tok.prefix_meaning}); "
                      + (f"real_subimage: the exact low-pass x_i of {train_x.shape[0]} training images; " if nested
                         else "real_subimage: none (no spectral windows); ")
                      + f"against {real.shape[0]} {split} images")
        report["generation"] = g
        save_grid(torch.stack(strips, 1).flatten(0, 1), out / "truncation_samples.png", nrow=N, scale=2)
        panels += [("classifier accuracy", "tokens used", "accuracy",
                    series("generated", g["accuracy_generated"], g["accuracy_real_subimage"]), False),
                   ("CFD (not FID) vs real test", "tokens used", "CFD",
                    series("generated", g["cfd_generated"], g["cfd_real_subimage"]), True)]
        print(f"accuracy of generated samples per prefix: {' '.join(f'{v:.3f}' for v in g['accuracy_generated'])}")
        print(f"CFD of generated samples per prefix: {' '.join(f'{v:.3g}' for v in g['cfd_generated'])}")
    print(f"reconstruction PSNR vs image per prefix: {' '.join(f'{v:.2f}' for v in rec['psnr_vs_image'])}")
    plot_panels(out / "truncation.png", panels, title=f"quality vs number of {c.tokens} tokens")
    report["seconds"] = round(time.time() - t0, 1)
    write_json(out / "truncation.json", report)
    return report


def mapping_ablation(out, *, steps, mappings=("uniform", "power", "energy"), preset="fmnist", overrides=None,
                     data="fmnist", split="test", batch_size=64, lr=1e-3, seed=0, num=1000, val_size=200,
                     generator_steps=0, generator_preset="fmnist", generator_batch_size=256, classifier=None,
                     num_per_class=100, sampling=None, threads=None, device="cpu", command="") -> dict:
    """One tokenizer per mapping in `mappings`, identical settings otherwise (`overrides`: typed config fields shared
    by all), optionally a generator each (`generator_steps` > 0); the runs live in OUT/<mapping>/ and a rerun
    reuses finished stages."""
    t0 = time.time()
    mappings = list(mappings)
    bad = [m for m in mappings if m not in MAPPINGS]
    if bad or not mappings:
        raise ValueError(f"mappings {mappings}: choose from {', '.join(MAPPINGS)}")
    out = Path(out)
    sampling = sampling or SamplingParams()
    shared = {"preset": preset, "data": data, "batch_size": batch_size, "lr": lr, "seed": seed, "val_size": val_size,
              "threads": threads, "device": device}
    clf = None
    if generator_steps:  # fail before training when there is no classifier to judge the samples with
        try:
            clf = load_model(classifier_dir(classifier, "fmnist"), "classifier")
        except CheckpointError as e:
            raise CheckpointError(f"generator_steps > 0 needs a classifier (train one with `python -m "
                                  f"spectralar.evaluate train-classifier --data {data} --out DIR`); {e}") from None
    report = {"command": command, "steps": steps, "batch_size": batch_size, "preset": preset,
              "overrides": [f"{k}={v}" for k, v in (overrides or {}).items()], "generator_steps": generator_steps,
              "num_images": None, "runs": {}}
    x = f_real = None
    for m in mappings:
        run_dir = out / m
        secs = train_stage("tokenizer", run_dir, steps, config={"overrides": overrides or {}, "mapping": m}, **shared)
        tok = load_model(run_dir / "tokenizer", "tokenizer", device)
        c = tok.config
        if x is None:
            x, _, classes = load_subset(data, split, c.image_size, c.channels, num, seed)
            report["num_images"] = int(x.shape[0])
        r = {"windows": list(c.windows), "tokenizer_seconds": secs, **reconstruction_metrics(tok, x)}
        r["psnr_vs_image_mean_over_prefixes"] = float(np.mean(r["psnr_vs_image"]))
        r["ssim_vs_image_mean_over_prefixes"] = float(np.mean(r["ssim_vs_image"]))
        if generator_steps:
            gen_options = {**{k: v for k, v in shared.items() if k != "lr"}, "preset": generator_preset,
                           "batch_size": generator_batch_size}  # the generator at the default learning rate
            r["generator_seconds"] = train_stage("generator", run_dir, generator_steps, **gen_options)
            tok, gen = load_pretrained(run_dir, device)
            check_classifier(clf, c.image_size, c.channels, gen.config.num_classes)
            if f_real is None:
                real, _, _ = load_subset(data, split, c.image_size, c.channels, None, seed)
                f_real = classify(clf, real)[0]
            labels = torch.arange(gen.config.num_classes).repeat_interleave(num_per_class)
            f, logits = classify(clf, decode_all(tok, sample_codes(gen, labels, batch_size=batch_size, seed=seed,
                                                                          params=sampling)))
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
    if generator_steps:
        report["best_cfd"] = min(runs, key=lambda m: runs[m]["generation"]["cfd_generated_vs_real"])
    pre = list(range(1, len(report["best_psnr_per_prefix"]) + 1))
    plot_panels(out / "mapping_ablation.png",
                [("decoded vs real image", "tokens used", "PSNR (dB)",
                  {m: (pre, r["psnr_vs_image"]) for m, r in runs.items()}, False),
                 ("decoded vs real image", "tokens used", "SSIM",
                  {m: (pre, r["ssim_vs_image"]) for m, r in runs.items()}, False),
                 ("exact x_i vs real image (the mapping's ideal)", "tokens used", "PSNR (dB)",
                  {m: (pre, uncapped(r["psnr_subimage_vs_image"])) for m, r in runs.items()}, False)],
                title=f"token-frequency mapping ablation ({steps} tokenizer steps each)")
    report["seconds"] = round(time.time() - t0, 1)
    write_json(out / "mapping_ablation.json", report)
    print(f"best mean PSNR over prefixes: {report['best_mean_psnr']}; best at the full prefix: "
          f"{report['best_full_prefix_psnr']}" + (f"; best CFD: {report['best_cfd']}" if generator_steps else ""))
    return report


@torch.no_grad()
def causality_probe(checkpoint, out, *, data="fmnist", split="test", num_train=5000, num_test=1000,
                    alphas=(0.01, 0.1, 1, 10, 100, 1000), batch_size=100, seed=0, device="cpu", command="") -> dict:
    """Ridge-probe R^2 of token i from tokens < i for the tokenizer at `checkpoint` (its continuous and quantised
    tokens), spatial raster patches and, for spectral tokens, the raw DCT bands of its windows (PCA to code dim)."""
    t0 = time.time()
    alphas = [float(a) for a in alphas]
    if not alphas or not all(math.isfinite(a) and a > 0 for a in alphas):
        raise ValueError(f"alphas {alphas}: expected finite numbers > 0")
    tok = load_model(tokenizer_dir(checkpoint), "tokenizer", device)
    c = tok.config
    N, d, name = c.num_tokens, c.code_dim, c.tokens
    check_probe_sizes(num_train, num_test, d)
    xtr, _, _ = load_subset(data, "train", c.image_size, c.channels, num_train, seed)
    xte, _, _ = load_subset(data, split, c.image_size, c.channels, num_test, seed)
    (ctr, qtr), (cte, qte) = token_embeddings(tok, xtr, batch_size), token_embeddings(tok, xte, batch_size)
    ptr, pte = raster_patches(xtr, N), raster_patches(xte, N)
    s_tr, s_te, s_kept = pca_project(ptr.flatten(0, 1), pte.flatten(0, 1), d)
    s_tr, s_te = s_tr.view(xtr.shape[0], N, -1), s_te.view(xte.shape[0], N, -1)
    kinds = {f"{name} tokens (continuous)": (ctr, cte), f"{name} tokens (quantized)": (qtr, qte),
             "spatial raster patches (PCA)": (s_tr, s_te)}
    kept = {"spatial raster patches (PCA)": s_kept}
    definitions = {
        "probe": "ridge regression from the concatenated embeddings of tokens 1..i-1 to token i's embedding; "
                 "inputs standardised; alpha picked on the last 20% of the training images, then refitted; "
                 "R^2 variance-weighted over the output dims, on held-out images; null where token i "
                 "is constant over the held-out images (R^2 undefined)",
        f"{name} tokens (continuous)": "l2-normalised encoder outputs before quantisation",
        f"{name} tokens (quantized)": "the chosen (l2-normalised) code vectors",
        "spatial raster patches (PCA)": f"the image cut into {N} raster-ordered patches (a square grid if "
                                        f"possible, else horizontal strips), each flattened and projected to "
                                        f"{d} dims by one PCA fitted on all training patches"}
    if c.windows:  # a learning-free spectral baseline: the DCT coefficients of each token's band
        b_tr, b_te, b_kept = [], [], []
        for a, b in zip(dct_bands(xtr, c.windows), dct_bands(xte, c.windows)):
            pa, pb, k = pca_project(a, b, d)
            pad = d - pa.shape[1]  # narrow low bands (e.g. 1 coefficient) are zero-padded to d dims
            b_tr.append(F.pad(pa, (0, pad)))
            b_te.append(F.pad(pb, (0, pad)))
            b_kept.append(k)
        kinds["raw DCT bands (PCA)"] = (torch.stack(b_tr, 1), torch.stack(b_te, 1))
        kept["raw DCT bands (PCA)"] = b_kept
        definitions["raw DCT bands (PCA)"] = (f"the DCT coefficients of token i's band, projected to {d} dims by a "
                                              "PCA fitted per band on training images (zero-padded when the band "
                                              "is smaller)")
    positions = list(range(1, N + 1))
    report = {"command": command, "checkpoint": str(checkpoint), "data": data, "num_train": xtr.shape[0],
              "num_test": xte.shape[0], "num_tokens": N, "tokens": name, "dim": d, "windows": list(c.windows),
              "alphas": alphas, "positions": positions, "r2": {}, "mean_r2_positions_2_to_N": {},
              "chosen_alpha": {}, "pca_variance_kept": kept, "definitions": definitions}
    for label, (tr, te) in bar(kinds.items(), desc="probes", unit="embedding"):
        res = probe_r2(tr, te, alphas)
        # R^2 is undefined (null) where token i is the same for every held-out image (e.g. a collapsed code)
        r2 = [None if r is None or math.isnan(r["r2"]) else r["r2"] for r in res]
        report["r2"][label] = r2
        report["chosen_alpha"][label] = [None if r is None else r["alpha"] for r in res]
        defined = [v for v in r2[1:] if v is not None]
        report["mean_r2_positions_2_to_N"][label] = float(np.mean(defined)) if defined else None
        print(f"{label}: per position (2..{N}) " + " ".join("n/a" if v is None else f"{v:.2f}" for v in r2[1:])
              + ("" if not defined else f"; mean {np.mean(defined):.3f}"))
    out = Path(out)
    plot_panels(out / "causality_probe.png", [("linear predictability of token i from tokens < i", "position i",
                                               "held-out R^2", {k: (positions, v) for k, v in report["r2"].items()},
                                               False)])
    report["seconds"] = round(time.time() - t0, 1)
    write_json(out / "causality_probe.json", report)
    return report
