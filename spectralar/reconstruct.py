"""Encode your own images and show every prefix's reconstruction.

    python -m spectralar.reconstruct a.png b.jpg --out recon.png [--checkpoint fmnist]

Each output row: the input as the tokenizer sees it, then the decodings from 1, 2, ..., N tokens. Inputs are
prepared as in training: for a tokenizer trained on Fashion-MNIST, a 28x28 image (its native size) is padded
with the background value to the tokenizer's size; any other size is resized (shorter side, bicubic) and
center-cropped. Images are converted to the tokenizer's channel count. The command says which it did.
16-bit images are scaled to 8 bits, floating-point ones must hold values in [0, 1], and transparent pixels are
composited onto black (see spectralar.data.load_image); an image Pillow cannot read, or one too large to decode
safely, is an error naming the file.
"""

from __future__ import annotations

import sys

import torch

from .cli import (
    USER_ERRORS,
    Parser,
    check_grid_pixels,
    check_output,
    fail,
    pick_device,
    positive_int,
    set_threads,
    threads_flag,
)
from .data import FMNIST_CLASSES, prepare_image, to_model_range
from .evaluation.metrics import psnr
from .pretrained import checked_config, load_model, resolve
from .progress import bar
from .viz import save_grid


def main(argv=None) -> int:
    prog = "python -m spectralar.reconstruct"
    p = Parser(prog=prog, description=__doc__)
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--out", required=True, help="output image path (.png)")
    p.add_argument("--checkpoint", default="fmnist", help="bundled model name or a training output directory")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--scale", type=positive_int, default=3, help="pixel upscaling of the saved grid")
    threads_flag(p)
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
        out = check_output(args.out, image=True)
        path = resolve(args.checkpoint) / "tokenizer"
        c, meta = checked_config(path, "tokenizer")
        check_grid_pixels(len(args.images), c.num_tokens + 1, c.image_size, args.scale)
        fmnist = c.channels == 1 and meta.get("train", {}).get("classes") == FMNIST_CLASSES
        prepared = [prepare_image(f, c.image_size, c.channels, fmnist) for f in args.images]
        set_threads(prog, args.threads)
        tok = load_model(path, "tokenizer", device)
        x = torch.stack([to_model_range(img) for img, _ in prepared]).to(device)
        prog_imgs = torch.cat([tok.decode_progressive(tok.encode(x[i:i + 64]))  # [B, N, C, H, W]
                               for i in bar(range(0, len(x), 64), desc="reconstruct", unit="batch")])
        grid = torch.cat([x[:, None], prog_imgs], 1)
        out = save_grid(grid.flatten(0, 1), out, nrow=grid.shape[1], scale=args.scale)
        for f, (_, how) in zip(args.images, prepared):
            print(f"{f}: {how}")
        full = psnr(prog_imgs[:, -1], x).tolist()
        print(f"wrote {out.resolve()}: {len(args.images)} rows (input, then 1..{c.num_tokens} tokens); "
              f"PSNR of the full reconstruction: {', '.join(f'{v:.1f}' for v in full)} dB")
        if not tok.nested:  # raster and 1-D tokens: say what a prefix is (spectral prefixes are x_k)
            print(f"{tok.kind} tokens: the image after k tokens is {tok.prefix_meaning}")
    except USER_ERRORS as e:
        return fail(prog, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
