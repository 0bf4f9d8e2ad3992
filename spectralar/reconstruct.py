"""Encode your own images and show every prefix's reconstruction.

    python -m spectralar.reconstruct a.png b.jpg --out recon.png [--checkpoint fmnist]

Each output row: the input (resized and center-cropped to the tokenizer's size, converted to its channel
count), then the decodings from 1, 2, ..., N tokens.
"""

from __future__ import annotations

import sys

import torch

from .checkpoint import CheckpointError
from .cli import Parser, fail, positive_int
from .data import DataError, load_image, to_model_range
from .pretrained import load_model, resolve
from .viz import save_grid


def main(argv=None) -> int:
    prog = "python -m spectralar.reconstruct"
    p = Parser(prog=prog, description=__doc__)
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--checkpoint", default="fmnist", help="bundled model name or a training output directory")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--scale", type=positive_int, default=3, help="pixel upscaling of the saved grid")
    args = p.parse_args(argv)
    try:
        tok = load_model(resolve(args.checkpoint) / "tokenizer", "tokenizer", args.device)
        c = tok.config
        x = torch.stack([to_model_range(load_image(f, c.image_size, c.channels)) for f in args.images]).to(args.device)
        prog_imgs = tok.decode_progressive(tok.encode(x))  # [B, N, C, H, W]
        grid = torch.cat([x[:, None], prog_imgs], 1)
        out = save_grid(grid.flatten(0, 1), args.out, nrow=grid.shape[1], scale=args.scale)
        psnr = (10 * torch.log10(4 / (prog_imgs[:, -1] - x).pow(2).mean((1, 2, 3)))).tolist()
        print(f"wrote {out.resolve()}: {len(args.images)} rows (input, then 1..{c.num_tokens} tokens); "
              f"PSNR of the full reconstruction: {', '.join(f'{v:.1f}' for v in psnr)} dB")
    except (CheckpointError, DataError, ValueError) as e:
        return fail(prog, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
