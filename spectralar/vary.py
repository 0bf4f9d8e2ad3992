"""Variations of your own images: keep each image's first k spectral tokens, re-sample the rest.

    python -m spectralar.vary shirt.png --keep 4 --num 8 --out vary.png
    python -m spectralar.vary shirt.png --class Sandal --keep 3,6 --num 8      # "this shape as a sandal"

The tokens are coarse to fine, so the first k hold the image's low frequencies: a small k keeps its silhouette
and re-draws the detail, a large k gives near-copies, k = 0 ignores the image, k = N returns its reconstruction.
The sampled class is --class (an id or a name) for every image, or, without it, each image's own class as the
checkpoint's classifier judges it. Images are read and prepared as `python -m spectralar.reconstruct` prepares
them (a 28x28 Fashion-MNIST image padded as in training; other sizes resized and center-cropped).

Each output row: the input as the tokenizer sees it, then for each k (separated by a blank tile) the image
decoded from its first k tokens alone, then --num variations.
"""

from __future__ import annotations

import sys

import torch

from .checkpoint import CheckpointError
from .cli import (
    Parser,
    add_sampling_params_flags,
    check_grid_pixels,
    check_output,
    fail,
    int_list,
    pick_device,
    positive_int,
    sampling_params,
    set_threads,
    threads_flag,
)
from .data import FMNIST_CLASSES, DataError, prepare_image, to_model_range
from .evaluation.measures import check_classifier
from .models.classifier import classify
from .pretrained import checked_config, class_names, load_model, load_pretrained, resolve
from .sampling import batch_seed, decode_prefix, sample_variations
from .viz import save_grid

__all__ = ["build_parser", "main"]

PROG = "python -m spectralar.vary"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__)
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--keep", type=int_list, required=True, metavar="K[,K...]",
                   help="tokens of each image to keep (0..N), one or several comma-separated values")
    p.add_argument("--class", dest="cls", default=None, metavar="C",
                   help="class to sample, an id or a name (default: each image's class, as the checkpoint's classifier "
                        "judges it)")
    p.add_argument("--num", type=positive_int, default=8, help="variations per image and k")
    add_sampling_params_flags(p)
    p.add_argument("--checkpoint", default="fmnist",
                   help="bundled model name (fmnist) or a directory with tokenizer/ and generator/ (from train)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same variations)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--out", default="variations.png", help="output image path (.png)")
    p.add_argument("--scale", type=positive_int, default=3, help="pixel upscaling of the saved grid")
    threads_flag(p)
    return p


def _class_id(text: str, names: list[str]) -> int:
    """--class C as a class id: an id in range or a class name (case-insensitive)."""
    try:
        c = int(text)
    except ValueError:
        lower = [n.lower() for n in names]
        if text.lower() in lower:
            return lower.index(text.lower())
        raise ValueError(f"--class {text!r}: unknown class; use an id in [0, {len(names)}) or one of "
                         f"{', '.join(names)}") from None
    if not 0 <= c < len(names):
        raise ValueError(f"--class {c}: class ids lie in [0, {len(names)})")
    return c


def main(argv=None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # image files before and after the flags
    try:
        device = pick_device(args.device)
        out = check_output(args.out, image=True)
        root = resolve(args.checkpoint)
        tcfg, tmeta = checked_config(root / "tokenizer", "tokenizer")
        gcfg = checked_config(root / "generator", "generator")[0]
        N, nc = tcfg.num_tokens, gcfg.num_classes
        bad = [k for k in args.keep if not 0 <= k <= N]
        if bad or not args.keep:
            raise ValueError(f"--keep {bad or args.keep}: keep 0 to {N} tokens (this model has {N})")
        names = class_names(root) or [str(i) for i in range(nc)]
        cls = None if args.cls is None else _class_id(args.cls, names)
        clf_path = root / "classifier"
        if cls is None and not clf_path.is_dir():
            raise ValueError(f"{root} has no classifier to tell each image's class: pass --class")
        params = sampling_params(args)
        cols = 1 + len(args.keep) * (args.num + 2)
        check_grid_pixels(len(args.images), cols, tcfg.image_size, args.scale)
        fmnist = tcfg.channels == 1 and tmeta.get("train", {}).get("classes") == FMNIST_CLASSES
        prepared = [prepare_image(f, tcfg.image_size, tcfg.channels, fmnist) for f in args.images]
        set_threads(PROG, args.threads)
        tokenizer, generator = load_pretrained(root, device)
        x = torch.stack([to_model_range(img) for img, _ in prepared]).to(device)
        if cls is None:
            clf = load_model(clf_path, "classifier", device)
            check_classifier(clf, tcfg.image_size, tcfg.channels, nc)
            probs = classify(clf, x)[1].softmax(-1)
            conf, labels = probs.max(-1)
            how = [f"{names[c]} (the classifier's guess, p={p:.2f})" for c, p in zip(labels.tolist(), conf.tolist())]
        else:
            labels = torch.full((x.shape[0],), cls)
            how = [f"{names[cls]} (--class)"] * x.shape[0]
        codes = tokenizer.encode(x)
        labels = labels.to(device)
        blank = torch.ones_like(x[:1])  # a white tile between the groups of the row
        groups = [x[:, None]]
        for j, k in enumerate(args.keep):
            var = sample_variations(generator, codes, labels, keep=k, num=args.num, params=params,
                                    seed=batch_seed(args.seed, j))  # [M, num, N]
            kept = decode_prefix(tokenizer, codes[:, :k]) if k else blank.expand_as(x)
            imgs = decode_prefix(tokenizer, var.flatten(0, 1)).view(x.shape[0], args.num, *x.shape[1:])
            groups += [blank.expand(x.shape[0], 1, *x.shape[1:]), kept[:, None], imgs]
        grid = torch.cat(groups, 1).cpu()
        out = save_grid(grid.flatten(0, 1), out, nrow=grid.shape[1], scale=args.scale)
        for f, (_, prep), h in zip(args.images, prepared, how):
            print(f"{f}: {prep}; sampled as {h}")
        print(f"wrote {out.resolve()}: {len(args.images)} rows (input; then for k = {', '.join(map(str, args.keep))} "
              f"of {N} tokens: the first k tokens alone, then {args.num} variations)")
    except (CheckpointError, DataError, ValueError) as e:
        return fail(PROG, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
