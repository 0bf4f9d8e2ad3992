"""Swap spectralar_kernels.dct2d into a frequency-domain image loss and check that only the speed changes.

The loss (written here for this example) is focal-frequency style (Jiang et al. 2021, with the DCT in place of
the FFT): the squared difference of the two images' 2-D DCT coefficients, each weighted by its own magnitude
|difference|^alpha (detached, normalised per image and channel to a maximum of 1), so the frequencies a model
gets most wrong dominate. --block 8 takes the DCT per 8 x 8 block, as JPEG does.

`torch_dct2d` is the unswapped code: the DCT-II as two products with a cosine basis matrix. The swapped loss calls
`spectralar_kernels.dct2d(x, block, norm=..., dim=...)`, which also takes scipy's other normalisations and
channels-last images directly (--norm, --channels-last).

Checked: the loss and the gradient of the prediction between the two paths. Exits 1 on a mismatch.

    python examples/frequency_loss.py                                  # CPU, a few seconds
    python examples/frequency_loss.py --block 8 --norm backward --channels-last
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
from _util import rel_err, timed

import spectralar_kernels as sk

# max |difference| of the loss and of the gradient, relative to the largest |value|: in fp32 each path is up to
# ~6e-6 off a float64 run (the focal weights amplify the coefficients' rounding), so the two differ by up to ~1e-5
TOLERANCE = 1e-4
NORMS = ("ortho", "backward", "forward")


def dct_matrix(n: int, norm: str, dtype, device) -> torch.Tensor:
    """`[n, n]` DCT-II basis C with y = C x, scipy's normalisations: "backward" y_k = 2 sum_i x_i cos(pi k (2i + 1)
    / 2n), "forward" that / 2n, "ortho" that scaled to an orthonormal C (row 0 by sqrt(1/4n), others sqrt(1/2n))."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    c = 2 * torch.cos(math.pi * k * (2 * i + 1) / (2 * n))
    if norm == "forward":
        c = c / (2 * n)
    elif norm == "ortho":
        c = c * math.sqrt(1 / (2 * n))
        c[0] /= math.sqrt(2)
    return c.to(dtype=dtype, device=device)


def torch_dct2d(x: torch.Tensor, block: int | None, norm: str, dim: tuple[int, int]) -> torch.Tensor:
    """The plain-torch 2-D DCT over `dim`: C_h @ tile @ C_w^T for the whole plane or each block x block tile."""
    x = x.movedim(dim, (-2, -1))
    h, w = x.shape[-2:]
    b_h, b_w = (block, block) if block else (h, w)
    tiles = x.unflatten(-2, (h // b_h, b_h)).unflatten(-1, (w // b_w, b_w)).transpose(-3, -2)  # [..., h/b, w/b, b, b]
    c_h, c_w = dct_matrix(b_h, norm, x.dtype, x.device), dct_matrix(b_w, norm, x.dtype, x.device)
    y = (c_h @ tiles @ c_w.T).transpose(-3, -2).reshape(x.shape)
    return y.movedim((-2, -1), dim)


def frequency_loss(pred, target, dct, alpha: float = 1.0, dim=(-2, -1)) -> torch.Tensor:
    """Mean over coefficients of w * |DCT(pred) - DCT(target)|^2, w = |difference|^alpha / its max per plane."""
    diff2 = (dct(pred) - dct(target)).pow(2)
    w = diff2.detach().sqrt().pow(alpha)
    w = w / w.amax(dim=dim, keepdim=True).clamp_min(1e-12)
    return (w * diff2).mean()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--size", type=int, default=64, help="image height and width")
    p.add_argument("--block", type=int, default=None, help="DCT per block x block tile (default: whole image)")
    p.add_argument("--norm", choices=NORMS, default="ortho")
    p.add_argument("--alpha", type=float, default=1.0, help="focal exponent of the weights")
    p.add_argument("--channels-last", action="store_true", help="images [B, H, W, C]: the DCT over dims (1, 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per path (the best is printed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if min(args.batch, args.channels, args.size, args.repeats) < 1:
        p.error("--batch, --channels, --size and --repeats must be >= 1")
    if args.block is not None and (args.block < 1 or args.size % args.block):
        p.error(f"--block must be a positive divisor of --size {args.size}, got {args.block}")
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    shape = (args.batch, args.channels, args.size, args.size)
    target = torch.rand(shape, device=device)
    pred0 = (target + 0.1 * torch.randn(shape, device=device)).clamp(0, 1)  # a reconstruction with errors
    dim = (-2, -1)
    if args.channels_last:
        target, pred0, dim = target.permute(0, 2, 3, 1), pred0.permute(0, 2, 3, 1), (1, 2)
    paths = {
        "torch matmul DCT": lambda x: torch_dct2d(x, args.block, args.norm, dim),
        "spectralar_kernels": lambda x: sk.dct2d(x, args.block, norm=args.norm, dim=dim),
    }

    def step(dct):
        pred = pred0.clone().requires_grad_()
        loss = frequency_loss(pred, target, dct, args.alpha, dim)
        loss.backward()
        return loss.detach(), pred.grad

    (loss_r, grad_r), (loss_s, grad_s) = (step(dct) for dct in paths.values())
    times = {name: timed(lambda d=dct: step(d), args.repeats, device) for name, dct in paths.items()}
    loss_err, grad_err = rel_err(loss_r, loss_s), rel_err(grad_r, grad_s)

    layout = "B, H, W, C" if args.channels_last else "B, C, H, W"
    print(f"focal frequency loss: images [{layout}] = {list(pred0.shape)}, DCT {args.block or 'whole image'}"
          f"{' blocks' if args.block else ''}, norm {args.norm}; {device.type}, "
          f"SPECTRALAR_KERNELS={os.environ.get('SPECTRALAR_KERNELS', 'auto')}")  # fmt: skip
    print(f"{'path':<20}{'loss':>14}{'fwd+bwd ms':>12}")
    for (name, t), loss in zip(times.items(), (loss_r, loss_s)):
        print(f"{name:<20}{loss.item():>14.6e}{t:>12.2f}")
    print(f"{'check':<24}{'result':>12}{'tolerance':>12}  ok")
    rows = [
        ("loss rel |diff|", loss_err, loss_err <= TOLERANCE),
        ("gradient max rel |diff|", grad_err, grad_err <= TOLERANCE),
    ]
    for name, err, ok in rows:
        print(f"{name:<24}{err:>12.2e}{TOLERANCE:>12.0e}  {'yes' if ok else 'NO'}")
    if all(row[-1] for row in rows):
        print("OK: loss and gradient within tolerance")
        return 0
    print("MISMATCH: the swapped loss differs from the torch one", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
