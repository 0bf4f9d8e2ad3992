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

from spectralar_kernels.windows import MAPPINGS

from .cli import (
    Parser,
    add_common_flags,
    add_sampling_flags,
    int_list,
    non_negative_int,
    positive_float,
    positive_floats,
    positive_int,
    run_command,
    sampling_params,
    threads_flag,
)
from .evaluation.experiments import causality_probe, mapping_ablation, truncation
from .evaluation.kinds import DEFAULT_RUNS, KindsOptions, compare_kinds
from .evaluation.probes import check_probe_sizes
from .models.config import preset
from .pretrained import checked_config, tokenizer_dir
from .training import parse_overrides

__all__ = ["build_parser", "main"]


def cmd_truncation(args, device, command) -> dict:
    return truncation(args.checkpoint, args.out, data=args.data, split=args.split, num=args.num,
                      real_num=args.real_num, batch_size=args.batch_size, seed=args.seed,
                      generation=not args.no_generation, classifier=args.classifier,
                      num_per_class=args.num_per_class, sampling=sampling_params(args), device=device, command=command)


def cmd_mapping_ablation(args, device, command) -> dict:
    mappings = [m.strip() for m in args.mappings.split(",") if m.strip()]
    bad = [m for m in mappings if m not in MAPPINGS]
    if bad or not mappings:
        raise ValueError(f"--mappings {args.mappings!r}: choose from {', '.join(MAPPINGS)}")
    overrides = parse_overrides(preset("tokenizer", args.preset), args.set)
    return mapping_ablation(args.out, steps=args.steps, mappings=mappings, preset=args.preset, overrides=overrides,
                            data=args.data, split=args.split, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            num=args.num, val_size=args.val_size, generator_steps=args.generator_steps,
                            generator_preset=args.generator_preset, generator_batch_size=args.generator_batch_size,
                            classifier=args.classifier, num_per_class=args.num_per_class,
                            sampling=sampling_params(args), threads=args.threads, device=device, command=command)


def cmd_causality_probe(args, device, command) -> dict:
    alphas = positive_floats(args.alphas, "--alphas")
    dim = checked_config(tokenizer_dir(args.checkpoint), "tokenizer")[0].code_dim  # before anything loads
    check_probe_sizes(args.num_train, args.num_test, dim, names=("--num-train", "--num-test"))
    return causality_probe(args.checkpoint, args.out, data=args.data, split=args.split, num_train=args.num_train,
                           num_test=args.num_test, alphas=alphas, batch_size=args.batch_size, seed=args.seed,
                           device=device, command=command)


def cmd_kinds(args, device, command) -> dict:
    opts = KindsOptions(out=args.out, runs=tuple(r for r in args.runs.split(",") if r.strip()),
                        seeds=tuple(args.seeds), steps=args.steps, generator_steps=args.generator_steps,
                        batch_size=args.batch_size, generator_batch_size=args.generator_batch_size, lr=args.lr,
                        preset=args.preset, generator_preset=args.generator_preset, mapping=args.mapping,
                        data=args.data, val_size=args.val_size, ckpt_every=args.ckpt_every,
                        classifier=args.classifier, num=args.num, num_per_class=args.num_per_class,
                        prefix_per_class=args.prefix_per_class,
                        cfgs=tuple(args.cfgs), probe_train=args.probe_train, probe_test=args.probe_test,
                        eval_batch_size=args.eval_batch_size, threads=args.threads, device=device,
                        train_only=args.train_only, report_only=args.report_only, reevaluate=args.reevaluate,
                        time_sampling=args.time_sampling)
    return compare_kinds(opts)


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
    threads_flag(m)
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
    k.add_argument("--steps", type=positive_int, default=500, help="tokenizer steps of every run")
    k.add_argument("--generator-steps", type=positive_int, default=200, help="generator steps of every run")
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
    k.add_argument("--num", type=positive_int, default=500, help="test images for reconstruction and the probe")
    k.add_argument("--num-per-class", type=positive_int, default=100, help="samples per class at each CFG scale")
    k.add_argument("--prefix-per-class", type=positive_int, default=50,
                   help="of those at the last CFG scale, how many per class are decoded from every prefix")
    k.add_argument("--cfgs", type=float_list, default=[1.0, 2.0], help="CFG scales (the last also per prefix)")
    k.add_argument("--probe-train", type=positive_int, default=5000, help="training images to fit the probe")
    k.add_argument("--probe-test", type=positive_int, default=500,
                   help="test images to score the probe (the first of the reconstruction images)")
    k.add_argument("--eval-batch-size", type=positive_int, default=100, help="images per forward pass in evaluation")
    k.add_argument("--train-only", action="store_true", help="train what is missing, evaluate nothing")
    k.add_argument("--report-only", action="store_true", help="only rewrite the report from the evaluated runs")
    k.add_argument("--reevaluate", action="store_true", help="evaluate again runs that have an eval.json")
    k.add_argument("--time-sampling", type=non_negative_int, default=0, metavar="ROUNDS",
                   help="also time KV-cached sampling of the first seed's runs side by side (ROUNDS interleaved "
                        "rounds; 0 = no)")
    threads_flag(k)
    k.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    return p


COMMANDS = {"truncation": cmd_truncation, "mapping-ablation": cmd_mapping_ablation,
            "causality-probe": cmd_causality_probe, "kinds": cmd_kinds}


def main(argv=None) -> int:
    return run_command("python -m spectralar.experiments", build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
