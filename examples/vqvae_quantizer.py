"""Swap spectralar_kernels.vq_nearest into a VQ-VAE quantizer and check that only the speed changes.

The quantizer (van den Oord et al. 2017, written here for this example) replaces each latent vector by its nearest
code, passes the gradient straight through to the encoder, and returns the codebook loss ||sg[z] - e||^2 plus beta
times the commitment loss ||z - sg[e]||^2. With --groups G the channels split into G groups, each quantised with
its own codebook (grouped VQ), so the search runs over G codebooks at once.

`VectorQuantizer` searches as most VQ code does: `torch.cdist` + min, a G x M x K distance matrix.
`KernelVectorQuantizer` overrides only the search: `spectralar_kernels.vq_nearest(z [G, M, d], codebook [G, K, d],
return_distances="euclidean")`, one call for all groups and no M x K buffer.

Checked: the indices of both paths against a float64 argmin (the swapped path must agree on every row, up to codes
tied within fp32 rounding), their nearest-code distances, and the loss and gradients (of z and of the codebook)
between the two paths. Exits 1 on any mismatch.

    python examples/vqvae_quantizer.py                               # CPU, a few seconds
    python examples/vqvae_quantizer.py --batch 2 --size 8 --codes 64 # tiny (CI)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from _util import rel_err, timed

import spectralar_kernels as sk

TOLERANCE = 1e-5  # max |difference| of the loss, each gradient and the distances, relative to the largest |value|
TIE = 1e-6  # a code within this relative float64 distance of the nearest one counts as tied with it


class VectorQuantizer(nn.Module):
    """VQ-VAE quantizer over `groups` codebooks of `n_codes` codes; the nearest-code search in plain torch."""

    def __init__(self, channels: int, n_codes: int, groups: int = 1, beta: float = 0.25):
        super().__init__()
        self.groups, self.beta = groups, beta
        self.codebook = nn.Parameter(torch.randn(groups, n_codes, channels // groups))

    def search(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest code of every row of `z [G, M, d]` in its group's codebook: (indices, Euclidean distances)."""
        dist, idx = torch.cdist(z, self.codebook.detach()).min(dim=-1)
        return idx, dist

    def forward(self, z: torch.Tensor):
        """z `[B, C, H, W]` -> (quantised z, loss, indices `[G, B*H*W]`, distances `[G, B*H*W]`)."""
        b, c, h, w = z.shape
        zg = z.permute(0, 2, 3, 1).reshape(-1, self.groups, c // self.groups).transpose(0, 1)  # [G, M, d]
        idx, dist = self.search(zg.detach())
        e = self.codebook[torch.arange(self.groups, device=z.device)[:, None], idx]  # [G, M, d]
        loss = F.mse_loss(e, zg.detach()) + self.beta * F.mse_loss(zg, e.detach())
        zq = zg + (e - zg).detach()  # straight-through: forward e, gradient to z unchanged
        return zq.transpose(0, 1).reshape(b, h, w, c).permute(0, 3, 1, 2), loss, idx, dist


class KernelVectorQuantizer(VectorQuantizer):
    """The same quantizer, searching with spectralar_kernels.vq_nearest (per-group codebooks in one call)."""

    def search(self, z):
        return sk.vq_nearest(z, self.codebook, return_distances="euclidean")


def off_argmin(idx: torch.Tensor, d64: torch.Tensor) -> tuple[int, int]:
    """Rows whose index differs from the float64 argmin of `d64 [G, M, K]`: (all, those not tied with it)."""
    best, best_idx = d64.min(dim=-1)
    chosen = d64.gather(-1, idx[..., None])[..., 0]
    wrong = idx != best_idx
    return int(wrong.sum()), int((wrong & (chosen - best > TIE * best.clamp_min(1.0))).sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=64, help="latent channels, split evenly over the groups")
    p.add_argument("--size", type=int, default=16, help="latent height and width")
    p.add_argument("--codes", type=int, default=1024, help="codes per codebook")
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per path (the best is printed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if min(args.batch, args.channels, args.size, args.codes, args.groups, args.repeats) < 1:
        p.error("--batch, --channels, --size, --codes, --groups and --repeats must be >= 1")
    if args.channels % args.groups:
        p.error(f"--channels {args.channels} must be a multiple of --groups {args.groups}")
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    ref = VectorQuantizer(args.channels, args.codes, args.groups).to(device)
    swapped = KernelVectorQuantizer(args.channels, args.codes, args.groups).to(device)
    swapped.load_state_dict(ref.state_dict())
    z0 = torch.randn(args.batch, args.channels, args.size, args.size, device=device)  # the encoder's output
    upstream = torch.randn_like(z0)  # the decoder's gradient, fixed

    def step(model):
        """Forward and backward; returns the outputs and the gradients of z and of the codebook."""
        z = z0.clone().requires_grad_()
        model.zero_grad(set_to_none=True)
        zq, loss, idx, dist = model(z)
        (loss + (zq * upstream).sum()).backward()
        return loss.detach(), idx, dist, z.grad, model.codebook.grad

    (loss_r, idx_r, dist_r, gz_r, gc_r), (loss_s, idx_s, dist_s, gz_s, gc_s) = step(ref), step(swapped)
    zg = z0.permute(0, 2, 3, 1).reshape(-1, args.groups, args.channels // args.groups).transpose(0, 1)
    d64 = torch.cdist(zg.double(), ref.codebook.detach().double(), compute_mode="donot_use_mm_for_euclid_dist")
    off_r, off_s = off_argmin(idx_r, d64), off_argmin(idx_s, d64)
    dist_err = max(rel_err(d64.min(-1).values, d.double()) for d in (dist_r, dist_s))
    loss_err = rel_err(loss_r, loss_s)
    grad_err = max(rel_err(gz_r, gz_s), rel_err(gc_r, gc_s))
    times = {name: timed(lambda m=m: step(m), args.repeats, device)
             for name, m in (("torch cdist", ref), ("spectralar_kernels", swapped))}  # fmt: skip

    m, backend = args.batch * args.size**2, os.environ.get("SPECTRALAR_KERNELS", "auto")
    print(f"VQ-VAE quantizer: {args.groups} codebook(s) of {args.codes} codes x {args.channels // args.groups} dims, "
          f"{m} vectors per group; {device.type}, SPECTRALAR_KERNELS={backend}")  # fmt: skip
    print(f"{'path':<20}{'fwd+bwd ms':>12}{'rows off float64 argmin (not tied)':>38}")
    for (name, t), (off, untied) in zip(times.items(), (off_r, off_s)):
        print(f"{name:<20}{t:>12.2f}{f'{off} ({untied})':>38}")
    print(f"{'check':<34}{'result':>12}{'tolerance':>12}  ok")
    same_idx = int((idx_r != idx_s).sum())
    rows = [
        ("swapped: rows off argmin, untied", str(off_s[1]), "0", off_s[1] == 0),
        ("indices differing between paths", str(same_idx), "0", same_idx == 0),
        ("distances max rel |diff| (f64)", f"{dist_err:.2e}", f"{TOLERANCE:.0e}", dist_err <= TOLERANCE),
        ("loss rel |diff|", f"{loss_err:.2e}", f"{TOLERANCE:.0e}", loss_err <= TOLERANCE),
        ("grads (z, codebook) max rel", f"{grad_err:.2e}", f"{TOLERANCE:.0e}", grad_err <= TOLERANCE),
    ]
    for name, result, tol, ok in rows:
        print(f"{name:<34}{result:>12}{tol:>12}  {'yes' if ok else 'NO'}")
    if all(row[-1] for row in rows):
        print("OK: identical indices (float64 argmin on every row), loss and gradients within tolerance")
        return 0
    print("MISMATCH: the swapped quantizer differs from the torch one", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
