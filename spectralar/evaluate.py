"""Evaluate a tokenizer and a generator with metrics we can compute offline, each named for what it is.

    python -m spectralar.evaluate reconstruct --checkpoint fmnist --data fmnist --num 1000
    python -m spectralar.evaluate train-classifier --data fmnist --out runs/fmnist/classifier
    python -m spectralar.evaluate generate --checkpoint fmnist --data fmnist [--inception-weights FILE]

reconstruct: PSNR / SSIM (data range 2, Gaussian window 11, sigma 1.5) of the decodings from 1..N tokens,
  against the real image and against the exact sub-image x_i = IDCT(DCT(x) * M_i) the decoder is trained to
  produce, plus the exact x_i against the real image (what a perfect tokenizer would score).
generate: without --inception-weights, the classifier Frechet distance (CFD, *not* FID: the Frechet
  distance in the feature space of a small classifier trained on the same data) of generated vs real test
  images, that classifier's accuracy on the samples of each class, and, as the floor, the CFD of a
  real training subset of the same size vs the test images. With --inception-weights FILE (the standard
  pt_inception-2015-12-05 FID weights, which you provide), FID / IS / precision / recall via torch-fidelity.
  Under torchrun (`torchrun --nproc_per_node=G -m spectralar.evaluate generate ...`) the sampling batches are
  shared out over the processes and gathered on rank 0, which scores them: the same numbers as one process for
  the same --seed and --batch-size.
train-classifier: trains that classifier (a few minutes on two CPU cores for Fashion-MNIST); an existing
  checkpoint at --out is replaced only with --overwrite.

Each command writes OUT/<command>.json and PNG figures to --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .cli import (
    Parser,
    add_common_flags,
    add_sampling_flags,
    check_new_checkpoint,
    positive_float,
    positive_int,
    run_command,
    sampling_params,
    seed,
    threads_flag,
)
from .data import DataError, make_dataset
from .distributed import close_distributed, init_distributed
from .evaluation.measures import (
    PSNR_CAP_DB,
    check_classifier,
    check_inception,
    classifier_metrics,
    decode_all,
    encode_all,
    inception_metrics,
    load_subset,
    reconstruction_metrics,
    save_classifier,
    train_classifier,
    uncapped,
    write_json,
)
from .evaluation.metrics import CFD_LABEL
from .models.config import ClassifierConfig
from .pretrained import classifier_dir, load_model, load_pretrained, resolve, tokenizer_dir, training_info
from .sampling import gather_samples, sample_batches
from .training.runtime import check_model_size
from .viz import plot_panels, plot_per_class, save_grid

__all__ = ["build_parser", "main"]


def cmd_reconstruct(args, device, command) -> dict:
    t0 = time.time()
    tok = load_model(tokenizer_dir(args.checkpoint), "tokenizer", device)
    c = tok.config
    x, _, _ = load_subset(args.data, args.split, c.image_size, c.channels, args.num, args.seed)
    res = reconstruction_metrics(tok, x, args.batch_size)
    out = Path(args.out)
    used = list(range(1, c.num_tokens + 1))
    report = {"command": command, "checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
              "num_images": int(x.shape[0]), "num_tokens": c.num_tokens, "windows": list(c.windows),
              "mapping": c.mapping, "tokens_used": used, **res,
              "notes": {"range": "images in [-1, 1], data range 2; reconstructions and sub-images clamped to [-1, 1]",
                        "psnr": f"mean of per-image PSNR in dB, each capped at {PSNR_CAP_DB}",
                        "ssim": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid positions only",
                        "subimage": "x_i = IDCT(DCT(x) * M_i): the exact low-pass image of the first i windows"},
              "seconds": round(time.time() - t0, 1)}
    write_json(out / "reconstruct.json", report)
    fix = lambda m, v: uncapped(v) if m == "psnr" else v  # noqa: E731
    series = lambda m: {"decoded vs real image": (used, res[f"{m}_vs_image"]),  # noqa: E731
                        "decoded vs exact sub-image x_i": (used, fix(m, res[f"{m}_vs_subimage"])),
                        "exact x_i vs real image": (used, fix(m, res[f"{m}_subimage_vs_image"]))}
    plot_panels(out / "reconstruct.png", [("PSNR", "tokens used (prefix length)", "dB", series("psnr"), False),
                                          ("SSIM", "tokens used (prefix length)", "SSIM", series("ssim"), False)],
                title=f"reconstruction per prefix ({x.shape[0]} {args.split} images)")
    rows = x[:8].to(device)
    grid = torch.cat([tok.decode_progressive(tok.encode(rows)), rows[:, None]], 1).cpu()
    save_grid(grid.flatten(0, 1), out / "reconstruct_examples.png", nrow=grid.shape[1], scale=2)
    print(f"PSNR vs image per prefix: {' '.join(f'{v:.2f}' for v in res['psnr_vs_image'])}")
    print(f"SSIM vs image per prefix: {' '.join(f'{v:.3f}' for v in res['ssim_vs_image'])}")
    return report


def cmd_generate(args, device, command) -> dict | None:
    """Under torchrun every rank samples its share of the batches (see spectralar.sampling) and rank 0, which
    gathers the decoded images, scores them and writes the report: the same numbers as one process."""
    try:
        rank, world = init_distributed(device)
        return _generate(args, device, command, rank, world)
    finally:
        close_distributed()


def _generate(args, device, command, rank, world) -> dict | None:
    t0 = time.time()
    if args.inception_weights:
        check_inception(args.inception_weights)
    root = resolve(args.checkpoint)
    tok, gen = load_pretrained(root, device)
    c, nc = tok.config, gen.config.num_classes
    if rank == 0:  # the held-out images are read (and checked) before the long sampling
        real_test, test_y, classes = load_subset(args.data, args.split, c.image_size, c.channels, args.real_num,
                                                 args.seed)
    else:
        classes = make_dataset(args.data, args.split, c.image_size, c.channels).classes
    if len(classes) != nc:
        raise ValueError(f"--data has {len(classes)} classes, the generator {nc}")
    clf = None
    if args.classifier or not args.inception_weights:
        path = classifier_dir(args.classifier, args.checkpoint)
        clf = load_model(path, "classifier")
        check_classifier(clf, c.image_size, c.channels, nc)
    labels = torch.arange(nc).repeat_interleave(args.num_per_class)
    t1 = time.time()
    part = sample_batches(tok, gen, labels, batch_size=args.batch_size, seed=args.seed, params=sampling_params(args),
                          rank=rank, world=world)
    samples = gather_samples(part, rank, world)
    if rank != 0:
        return None
    fake = samples.all_images()
    sample_s = time.time() - t1
    n = fake.shape[0]
    real_train, _, _ = load_subset(args.data, "train", c.image_size, c.channels, n, args.seed + 1)
    out = Path(args.out)
    report = {"command": command, "checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
              "num_generated": n, "num_real": int(real_test.shape[0]), "cfg_scale": args.cfg_scale,
              "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
              "batch_size": args.batch_size, "processes": world, "sampling_seconds": round(sample_s, 1)}
    if args.inception_weights:
        w, bs = args.inception_weights, args.batch_size
        report["inception"] = {"label": "FID / IS / precision / recall (InceptionV3 via torch-fidelity)",
                               "generated_vs_real": inception_metrics(fake, real_test, w, device, bs),
                               "real_train_vs_real_floor": inception_metrics(real_train, real_test, w, device, bs)}
    if clf is not None:
        k = classifier_metrics(clf, fake=fake, labels=labels, real=real_test, real_labels=test_y,
                               real_train=real_train, reconstructed_train=decode_all(tok, encode_all(tok, real_train)),
                               classes=classes, split=args.split)
        report["classifier"] = k = {"classifier_val_accuracy": training_info(path).get("val_accuracy"), **k}
        print(f"{CFD_LABEL}: generated {k['cfd_generated_vs_real']:.3f}, real-vs-real floor "
              f"{k['cfd_real_train_vs_real_floor']:.3f}, tokenizer reconstructions "
              f"{k['cfd_reconstructed_train_vs_real']:.3f}; classifier accuracy on samples "
              f"{k['accuracy_on_generated']:.3f} (on real {args.split} images {k['classifier_accuracy_on_real']:.3f}); "
              f"within-class diversity vs real {k['diversity_features_mean']:.3f} (features), "
              f"{k['diversity_pixels_mean']:.3f} (pixels)")
        plot_per_class(out / "generate_accuracy.png", k["accuracy_on_generated_per_class"], k["accuracy_on_generated"])
    if "inception" in report:
        print(f"inception metrics: {report['inception']['generated_vs_real']}")
    show = torch.cat([fake[labels == k][:10] for k in range(nc)])
    save_grid(show, out / "generate_samples.png", nrow=min(10, args.num_per_class), scale=2)
    report["seconds"] = round(time.time() - t0, 1)
    write_json(out / "generate.json", report)
    return report


def cmd_train_classifier(args, device, command) -> dict:
    check_new_checkpoint(args.out, args.overwrite)
    train_ds = make_dataset(args.data, "train", args.image_size, args.channels)
    cfg = ClassifierConfig(image_size=args.image_size, channels=args.channels, num_classes=len(train_ds.classes),
                           width=args.width, feature_dim=args.feature_dim)
    check_model_size("classifier", cfg, device, f"--width {args.width}, --feature-dim {args.feature_dim}")
    try:
        val = load_subset(args.data, args.split, cfg.image_size, cfg.channels, None)[:2]
    except DataError:
        val = None
    model, info = train_classifier(train_ds, cfg, args.steps, args.batch_size, args.lr, args.seed, device, val)
    info.update(data=args.data, classes=list(train_ds.classes), command=command)
    path = save_classifier(args.out, model, info)
    print(f"wrote {path}: {info}")
    return info


def build_parser() -> Parser:
    p = Parser(prog="python -m spectralar.evaluate", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    r = sub.add_parser("reconstruct", help="PSNR / SSIM of reconstructions per prefix length")
    r.add_argument("--checkpoint", default="fmnist",
                   help="bundled model name, a training output directory, or a tokenizer checkpoint directory")
    r.add_argument("--num", type=positive_int, default=1000, help="held-out images to evaluate (seeded subset)")
    add_common_flags(r, "runs/eval/reconstruct")
    g = sub.add_parser("generate", help="classifier metrics (CFD, accuracy) or, with Inception weights, FID/IS/P/R")
    g.add_argument("--checkpoint", default="fmnist",
                   help="bundled model name or a directory with tokenizer/ and generator/")
    g.add_argument("--classifier", default=None,
                   help="classifier checkpoint directory (default: CHECKPOINT/classifier; with "
                        "--inception-weights, classifier metrics only when given)")
    g.add_argument("--inception-weights", default=None, metavar="FILE",
                   help="standard FID InceptionV3 weights (pt_inception-2015-12-05-*.pth); needs torch-fidelity")
    g.add_argument("--real-num", type=positive_int, default=None,
                   help="held-out real images (default: the whole split)")
    add_sampling_flags(g, num_per_class=100)
    add_common_flags(g, "runs/eval/generate")
    t = sub.add_parser("train-classifier", help="train the small CNN classifier that defines CFD")
    t.add_argument("--out", required=True, help="output checkpoint directory (e.g. RUN/classifier)")
    t.add_argument("--overwrite", action="store_true", help="replace the checkpoint already at --out")
    t.add_argument("--data", default="fmnist", help="'fmnist', a folder of its IDX files, or an image folder")
    t.add_argument("--split", default="test", help="held-out split for the reported accuracy")
    t.add_argument("--image-size", type=positive_int, default=32, help="input size (the tokenizer's image size)")
    t.add_argument("--channels", type=int, choices=[1, 3], default=1, help="input channels (the tokenizer's)")
    t.add_argument("--width", type=positive_int, default=16, help="channels of the first conv stage")
    t.add_argument("--feature-dim", type=positive_int, default=128, help="dimension of the CFD feature space")
    t.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps")
    t.add_argument("--batch-size", type=positive_int, default=128, help="images per step")
    t.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate (AdamW, cosine)")
    t.add_argument("--seed", type=seed, default=0, help="seed for init and data order")
    t.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    threads_flag(t)
    return p


COMMANDS = {"reconstruct": cmd_reconstruct, "generate": cmd_generate, "train-classifier": cmd_train_classifier}


def main(argv=None) -> int:
    return run_command("python -m spectralar.evaluate", build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
