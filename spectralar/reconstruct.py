"""Encode your own images and show every prefix's reconstruction.

    python -m spectralar.reconstruct a.png b.jpg --out recon.png [--checkpoint fmnist]

Each output row: the input as the tokenizer sees it, then the decodings from 1, 2, ..., N tokens. Inputs are
prepared as in training: for a tokenizer trained on Fashion-MNIST, a 28x28 image (its native size) is padded
with the background value to the tokenizer's size; any other size is resized (shorter side, bicubic) and
center-cropped. Images are converted to the tokenizer's channel count. The command says which it did.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from .checkpoint import CheckpointError
from .cli import Parser, check_grid_pixels, check_output, fail, pick_device, positive_int
from .data import FMNIST_CLASSES, DataError, load_image, pad_to, to_model_range
from .evaluation.metrics import psnr
from .pretrained import checked_config, load_model, resolve
from .viz import save_grid

FMNIST_SIZE = 28  # Fashion-MNIST's native image size; training pads it (data.fashion_mnist)


def prepare(path, size: int, channels: int, fmnist: bool) -> tuple[torch.Tensor, str]:
    """(uint8 [channels, size, size], what was done) for image file `path`, prepared as the training data was."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if fmnist and (w, h) == (FMNIST_SIZE, FMNIST_SIZE) and size >= FMNIST_SIZE:
                small = torch.from_numpy(np.asarray(im.convert("L")).copy())
                return pad_to(small[None], size), (f"{w}x{h} (Fashion-MNIST's size): padded to {size}x{size} with "
                                                   "the background value, as in training")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    how = (f"{w}x{h}: used as is" if (w, h) == (size, size) else
           f"{w}x{h}: resized (shorter side to {size}) and center-cropped to {size}x{size}")
    return load_image(path, size, channels), how


def main(argv=None) -> int:
    prog = "python -m spectralar.reconstruct"
    p = Parser(prog=prog, description=__doc__)
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--out", required=True, help="output image path (.png)")
    p.add_argument("--checkpoint", default="fmnist", help="bundled model name or a training output directory")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--scale", type=positive_int, default=3, help="pixel upscaling of the saved grid")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
        out = check_output(args.out, image=True)
        path = resolve(args.checkpoint) / "tokenizer"
        c, meta = checked_config(path, "tokenizer")
        check_grid_pixels(len(args.images), c.num_tokens + 1, c.image_size, args.scale)
        fmnist = c.channels == 1 and meta.get("train", {}).get("classes") == FMNIST_CLASSES
        prepared = [prepare(f, c.image_size, c.channels, fmnist) for f in args.images]
        tok = load_model(path, "tokenizer", device)
        x = torch.stack([to_model_range(img) for img, _ in prepared]).to(device)
        prog_imgs = tok.decode_progressive(tok.encode(x))  # [B, N, C, H, W]
        grid = torch.cat([x[:, None], prog_imgs], 1)
        out = save_grid(grid.flatten(0, 1), out, nrow=grid.shape[1], scale=args.scale)
        for f, (_, how) in zip(args.images, prepared):
            print(f"{f}: {how}")
        full = psnr(prog_imgs[:, -1], x).tolist()
        print(f"wrote {out.resolve()}: {len(args.images)} rows (input, then 1..{c.num_tokens} tokens); "
              f"PSNR of the full reconstruction: {', '.join(f'{v:.1f}' for v in full)} dB")
        if not tok.nested:  # raster and 1-D tokens: say what a prefix is (spectral prefixes are x_k)
            print(f"{tok.kind} tokens: the image after k tokens is {tok.prefix_meaning}")
    except (CheckpointError, DataError, ValueError) as e:
        return fail(prog, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
