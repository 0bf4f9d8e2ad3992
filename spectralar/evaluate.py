"""Evaluate a tokenizer and a generator with metrics we can compute offline, each named for what it is.

    python -m spectralar.evaluate reconstruct --checkpoint fmnist --data fmnist --num 1000
    python -m spectralar.evaluate train-classifier --data fmnist --out spectralar/pretrained/fmnist/classifier
    python -m spectralar.evaluate generate --checkpoint fmnist --data fmnist [--inception-weights FILE]

reconstruct: PSNR / SSIM (data range 2, Gaussian window 11, sigma 1.5) of the decodings from 1..N tokens,
  against the real image and against the exact sub-image x_i = IDCT(DCT(x) * M_i) the decoder is trained to
  produce, plus the exact x_i against the real image (what a perfect tokenizer would score).
generate: without --inception-weights, the classifier Frechet distance (CFD, *not* FID: the Frechet
  distance in the feature space of a small classifier trained on the same data) of generated vs real test
  images, that classifier's accuracy on the samples of each class, and, as the floor, the CFD of a
  real training subset of the same size vs the test images. With --inception-weights FILE (the standard
  pt_inception-2015-12-05 FID weights, which you provide), FID / IS / precision / recall via torch-fidelity.
train-classifier: trains that classifier (a few minutes on two CPU cores for Fashion-MNIST).

Each command writes OUT/<command>.json and PNG figures to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from spectralar_kernels import spectral_subimages

from .checkpoint import CheckpointError, read_meta
from .classifier import ClassifierConfig, classify, load_classifier, save_classifier, train_classifier
from .cli import Parser, fail, positive_int
from .data import DataError, collate, make_dataset
from .metrics import CFD_LABEL, frechet_distance_from_features, psnr, ssim
from .pretrained import load_model, load_pretrained, resolve
from .viz import save_grid

__all__ = ["PSNR_CAP_DB", "build_parser", "main", "reconstruction_metrics"]

PSNR_CAP_DB = 100.0  # per-image cap, so that a perfect reconstruction does not make the mean infinite


# ---- shared helpers (also used by spectralar.experiments) ------------------------------------------


def pick_device(name):
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def tokenizer_dir(checkpoint) -> Path:
    """A tokenizer checkpoint directory from a bundled name, a training output root, or the directory itself."""
    p = Path(checkpoint)
    if (p / "config.json").is_file() and read_meta(p)["kind"] == "tokenizer":
        return p
    return resolve(checkpoint) / "tokenizer"


def load_subset(data, split, size, channels, num, seed=0):
    """(images [M, C, S, S], labels [M], class names) for the first `num` images of a seeded permutation."""
    ds = make_dataset(data, split, size, channels)
    n = len(ds) if num is None else min(num, len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    x, y = collate(ds, idx)
    return x, y, list(ds.classes)


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: dict) -> Path:
    """Strict JSON (a NaN or infinite metric becomes null), written via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=1, allow_nan=False) + "\n")
    tmp.rename(path)
    return path


def uncapped(psnrs):
    """PSNR values for plotting: the cap (an exact match, e.g. x_N = x) is left out rather than drawn at 100 dB."""
    return [None if v is None or v >= PSNR_CAP_DB else v for v in psnrs]


def plot_panels(path, panels, title="") -> Path:
    """One PNG with a row of line plots; panels = [(title, xlabel, ylabel, {label: (xs, ys)}, logy)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (ptitle, xlabel, ylabel, series, logy) in zip(axes[0], panels):
        for label, (xs, ys) in series.items():
            pts = [(a, b) for a, b in zip(xs, ys) if b is not None and math.isfinite(b)]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label)
        ax.set(title=ptitle, xlabel=xlabel, ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def reconstruction_metrics(tokenizer, images, batch_size=100) -> dict:
    """Mean PSNR / SSIM per prefix length 1..N of `tokenizer` on images [M, C, S, S] (kept on the CPU).

    Reconstructions and exact sub-images are clamped to [-1, 1] (the displayable range) before scoring.
    Returns lists of length N: psnr/ssim_vs_image, psnr/ssim_vs_subimage, psnr/ssim_subimage_vs_image.
    """
    dev = next(tokenizer.parameters()).device
    windows = tokenizer.config.windows
    keys = [f"{m}_{k}" for k in ("vs_image", "vs_subimage", "subimage_vs_image") for m in ("psnr", "ssim")]
    sums = {k: torch.zeros(len(windows), dtype=torch.float64) for k in keys}
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(dev).float()
        rec = tokenizer.decode_progressive(tokenizer.encode(x)).clamp(-1, 1).cpu()  # [B, N, C, S, S]
        sub = spectral_subimages(x, windows, all_prefixes=True).clamp(-1, 1).cpu()
        real = x.cpu()[:, None].expand_as(rec)
        pairs = {"vs_image": (rec, real), "vs_subimage": (rec, sub), "subimage_vs_image": (sub, real)}
        for name, (a, b) in pairs.items():
            a2, b2 = a.flatten(0, 1), b.flatten(0, 1)  # [B*N, C, S, S]
            sums[f"psnr_{name}"] += psnr(a2, b2, max_db=PSNR_CAP_DB).view(-1, len(windows)).sum(0)
            sums[f"ssim_{name}"] += ssim(a2, b2).view(-1, len(windows)).sum(0)
    return {k: (v / images.shape[0]).tolist() for k, v in sums.items()}


def find_classifier(path, checkpoint):
    """The classifier checkpoint: --classifier, else <checkpoint root>/classifier."""
    if path is None:
        path = resolve(checkpoint) / "classifier"
        if not path.is_dir():
            raise CheckpointError(f"no classifier at {path}; train one with `python -m spectralar.evaluate "
                                  f"train-classifier --data DATA --out {path}` or pass --classifier DIR")
    return load_classifier(path)


def check_classifier(clf, image_size, channels, num_classes):
    c = clf.config
    if (c.image_size, c.channels, c.num_classes) != (image_size, channels, num_classes):
        raise ValueError(f"the classifier takes {c.channels}x{c.image_size}x{c.image_size} images of {c.num_classes} "
                         f"classes, the model makes {channels}x{image_size}x{image_size} of {num_classes}")


def sample_codes(tokenizer, generator, labels, args, device) -> torch.Tensor:
    """Codes [M, N] for class ids `labels`, sampled exactly as `python -m spectralar.generate` does."""
    from .generate import sample

    opts = SimpleNamespace(batch_size=args.batch_size, seed=args.seed, cfg=args.cfg, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, kv_cache=True, compile=False)
    codes, _, _, _ = sample(tokenizer, generator, labels, opts, device)
    return torch.cat([codes[c] for c in sorted(codes)])


@torch.no_grad()
def decode_all(tokenizer, codes, prefix_len=None, batch_size=500) -> torch.Tensor:
    dev = next(tokenizer.parameters()).device
    return torch.cat([tokenizer.decode(codes[i:i + batch_size].to(dev), prefix_len).cpu()
                      for i in range(0, codes.shape[0], batch_size)])


def class_accuracy(logits, labels, classes) -> tuple[float, dict]:
    hit = (logits.argmax(1) == labels).float()
    per = {classes[c]: float(hit[labels == c].mean()) for c in range(len(classes)) if (labels == c).any()}
    return float(hit.mean()), per


def add_sampling_flags(p):
    p.add_argument("--num-per-class", type=positive_int, default=100, help="generated samples per class")
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=positive_int, default=None, help="keep the k most likely codes")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")


def check_sampling_flags(args):
    if args.cfg < 0:
        raise ValueError(f"--cfg {args.cfg}: must be >= 0")
    if args.temperature < 0:
        raise ValueError(f"--temperature {args.temperature}: must be >= 0 (0 = greedy)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p {args.top_p}: must lie in (0, 1]")


def add_common_flags(p, out_default):
    p.add_argument("--data", default="fmnist",
                   help="'fmnist' (Debian's dataset-fashion-mnist), a folder of its IDX files, or an image folder")
    p.add_argument("--split", default="test", help="held-out split to evaluate on (test; 'val' for ROOT/val folders)")
    p.add_argument("--out", default=out_default, help=f"output directory for JSON and PNGs (default {out_default})")
    p.add_argument("--batch-size", type=positive_int, default=100, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed for the image subset and for sampling")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")


# ---- commands -------------------------------------------------------------------------------------


def cmd_reconstruct(args, device, command) -> dict:
    t0 = time.time()
    tok = load_model(tokenizer_dir(args.checkpoint), "tokenizer", device)
    c = tok.config
    x, _, _ = load_subset(args.data, args.split, c.image_size, c.channels, args.num, args.seed)
    res = reconstruction_metrics(tok, x, args.batch_size)
    out = Path(args.out)
    prefixes = list(range(1, c.num_tokens + 1))
    report = {"command": command, "checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
              "num_images": int(x.shape[0]), "num_tokens": c.num_tokens, "windows": list(c.windows),
              "mapping": c.mapping, "prefix_len": prefixes, **res,
              "notes": {"range": "images in [-1, 1], data range 2; reconstructions and sub-images clamped to [-1, 1]",
                        "psnr": f"mean of per-image PSNR in dB, each capped at {PSNR_CAP_DB}",
                        "ssim": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid positions only",
                        "subimage": "x_i = IDCT(DCT(x) * M_i): the exact low-pass image of the first i windows"},
              "seconds": round(time.time() - t0, 1)}
    write_json(out / "reconstruct.json", report)
    fix = lambda m, v: uncapped(v) if m == "psnr" else v  # noqa: E731
    series = lambda m: {"decoded vs real image": (prefixes, res[f"{m}_vs_image"]),  # noqa: E731
                        "decoded vs exact sub-image x_i": (prefixes, fix(m, res[f"{m}_vs_subimage"])),
                        "exact x_i vs real image": (prefixes, fix(m, res[f"{m}_subimage_vs_image"]))}
    plot_panels(out / "reconstruct.png", [("PSNR", "tokens used (prefix length)", "dB", series("psnr"), False),
                                          ("SSIM", "tokens used (prefix length)", "SSIM", series("ssim"), False)],
                title=f"reconstruction per prefix ({x.shape[0]} {args.split} images)")
    rows = x[:8].to(device)
    grid = torch.cat([tok.decode_progressive(tok.encode(rows)), rows[:, None]], 1).cpu()
    save_grid(grid.flatten(0, 1), out / "reconstruct_examples.png", nrow=grid.shape[1], scale=2)
    print(f"PSNR vs image per prefix: {' '.join(f'{v:.2f}' for v in res['psnr_vs_image'])}")
    print(f"SSIM vs image per prefix: {' '.join(f'{v:.3f}' for v in res['ssim_vs_image'])}")
    return report


def _fidelity_dataset(images):
    """torch-fidelity input: uint8 [3, H, W] images (grey replicated to RGB)."""
    u8 = images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    if u8.shape[1] == 1:
        u8 = u8.repeat(1, 3, 1, 1)

    class _Images(torch.utils.data.Dataset):
        def __len__(self):
            return u8.shape[0]

        def __getitem__(self, i):
            return u8[i]

    return _Images()


def inception_metrics(fake, real, weights, device, batch_size) -> dict:
    """FID, IS, precision and recall from torch-fidelity's documented defaults (InceptionV3 'compat')."""
    try:
        import torch_fidelity
    except ImportError:
        raise ValueError("--inception-weights needs torch-fidelity, which is not installed: "
                         "`pip install torch-fidelity` (or drop the flag for the classifier metrics)") from None
    m = torch_fidelity.calculate_metrics(input1=_fidelity_dataset(fake), input2=_fidelity_dataset(real),
                                         cuda=device.type == "cuda", batch_size=batch_size, isc=True, fid=True,
                                         prc=True, feature_extractor_weights_path=str(weights), cache=False,
                                         verbose=False)
    return {k: float(v) for k, v in m.items()}


def cmd_generate(args, device, command) -> dict:
    t0 = time.time()
    check_sampling_flags(args)
    if args.inception_weights and not Path(args.inception_weights).is_file():
        raise ValueError(f"--inception-weights {args.inception_weights}: no such file")
    root = resolve(args.checkpoint)
    tok, gen = load_pretrained(root, device)
    c, nc = tok.config, gen.config.num_classes
    real_test, test_y, classes = load_subset(args.data, args.split, c.image_size, c.channels, args.real_num, args.seed)
    if len(classes) != nc:
        raise ValueError(f"--data has {len(classes)} classes, the generator {nc}")
    labels = torch.arange(nc).repeat_interleave(args.num_per_class)
    t1 = time.time()
    codes = sample_codes(tok, gen, labels, args, device)
    fake = decode_all(tok, codes)
    sample_s = time.time() - t1
    n = fake.shape[0]
    real_train, _, _ = load_subset(args.data, "train", c.image_size, c.channels, n, args.seed + 1)
    out = Path(args.out)
    report = {"command": command, "checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
              "num_generated": n, "num_real": int(real_test.shape[0]), "cfg": args.cfg, "temperature": args.temperature,
              "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "sampling_seconds": round(sample_s, 1)}
    if args.inception_weights:
        report["inception"] = {"label": "FID / IS / precision / recall (InceptionV3 via torch-fidelity)",
                               "generated_vs_real": inception_metrics(fake, real_test, args.inception_weights,
                                                                      device, args.batch_size),
                               "real_train_vs_real_floor": inception_metrics(real_train, real_test,
                                                                             args.inception_weights, device,
                                                                             args.batch_size)}
    if args.classifier or not args.inception_weights:
        clf, info = find_classifier(args.classifier, args.checkpoint)
        check_classifier(clf, c.image_size, c.channels, nc)
        f_test, l_test = classify(clf, real_test)
        f_fake, l_fake = classify(clf, fake)
        f_train, _ = classify(clf, real_train)
        f_rec, _ = classify(clf, decode_all(tok, torch.cat([tok.encode(real_train[i:i + 500].to(device)).cpu()
                                                           for i in range(0, real_train.shape[0], 500)])))
        acc, per_class = class_accuracy(l_fake, labels, classes)
        report["classifier"] = {
            "label": CFD_LABEL, "classifier_val_accuracy": info.get("val_accuracy"),
            "classifier_accuracy_on_real": class_accuracy(l_test, test_y, classes)[0],
            "cfd_generated_vs_real": frechet_distance_from_features(f_fake, f_test),
            "cfd_real_train_vs_real_floor": frechet_distance_from_features(f_train, f_test),
            "cfd_reconstructed_train_vs_real": frechet_distance_from_features(f_rec, f_test),
            "accuracy_on_generated": acc, "accuracy_on_generated_per_class": per_class,
            "notes": f"features: the classifier's {clf.config.feature_dim}-d penultimate layer; the floor and the "
                     f"reconstruction rows use {n} training images (as many as generated), against the same "
                     f"{real_test.shape[0]} {args.split} images. CFD is not FID and is not comparable with FIDs."}
        k = report["classifier"]
        print(f"{CFD_LABEL}: generated {k['cfd_generated_vs_real']:.3f}, real-vs-real floor "
              f"{k['cfd_real_train_vs_real_floor']:.3f}, tokenizer reconstructions "
              f"{k['cfd_reconstructed_train_vs_real']:.3f}; classifier accuracy on samples {acc:.3f} "
              f"(on real {args.split} images {k['classifier_accuracy_on_real']:.3f})")
        _plot_per_class(out / "generate_accuracy.png", per_class, acc)
    if "inception" in report:
        print(f"inception metrics: {report['inception']['generated_vs_real']}")
    show = torch.cat([fake[labels == k][:10] for k in range(nc)])
    save_grid(show, out / "generate_samples.png", nrow=min(10, args.num_per_class), scale=2)
    report["seconds"] = round(time.time() - t0, 1)
    write_json(out / "generate.json", report)
    return report


def _plot_per_class(path, per_class, overall):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(per_class), 3.4))
    ax.bar(range(len(per_class)), list(per_class.values()))
    ax.set_xticks(range(len(per_class)), list(per_class), rotation=45, ha="right", fontsize=8)
    ax.axhline(overall, color="k", ls="--", lw=1, label=f"all classes {overall:.3f}")
    ax.set(ylim=(0, 1), ylabel="classifier accuracy", title="accuracy on generated samples, per class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_train_classifier(args, device, command) -> dict:
    if not args.lr > 0:
        raise ValueError(f"--lr {args.lr}: must be > 0")
    cfg = ClassifierConfig(image_size=args.image_size, channels=args.channels, width=args.width,
                           feature_dim=args.feature_dim)
    train_ds = make_dataset(args.data, "train", cfg.image_size, cfg.channels)
    cfg.num_classes = len(train_ds.classes)
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
    add_sampling_flags(g)
    add_common_flags(g, "runs/eval/generate")
    t = sub.add_parser("train-classifier", help="train the small CNN classifier that defines CFD")
    t.add_argument("--out", required=True, help="output checkpoint directory (e.g. RUN/classifier)")
    t.add_argument("--data", default="fmnist", help="'fmnist', a folder of its IDX files, or an image folder")
    t.add_argument("--split", default="test", help="held-out split for the reported accuracy")
    t.add_argument("--image-size", type=positive_int, default=32, help="input size (the tokenizer's image size)")
    t.add_argument("--channels", type=int, choices=[1, 3], default=1, help="input channels (the tokenizer's)")
    t.add_argument("--width", type=positive_int, default=16, help="channels of the first conv stage")
    t.add_argument("--feature-dim", type=positive_int, default=128, help="dimension of the CFD feature space")
    t.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps")
    t.add_argument("--batch-size", type=positive_int, default=128, help="images per step")
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, cosine)")
    t.add_argument("--seed", type=int, default=0, help="seed for init and data order")
    t.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    t.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


COMMANDS = {"reconstruct": cmd_reconstruct, "generate": cmd_generate, "train-classifier": cmd_train_classifier}


def run_command(prog: str, parser, commands: dict, argv=None, check=None) -> int:
    """Shared body of the evaluate / experiments CLIs: parse, set threads and device, dispatch, one-line errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if check is not None:
            check(args)
        device = pick_device(args.device)
        commands[args.command](args, device, " ".join([prog, *argv]))
    except (CheckpointError, DataError, ValueError, FileNotFoundError) as e:
        return fail(f"{prog} {args.command}", e)
    return 0


def main(argv=None) -> int:
    return run_command("python -m spectralar.evaluate", build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
