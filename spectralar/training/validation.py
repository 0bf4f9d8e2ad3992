"""Validation during training: held-out images (never training images; see `spectralar.data.training_data`), a log
row of losses, and a picture grid per evaluation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import collate
from ..evaluation.metrics import psnr
from ..viz import save_grid

__all__ = ["make_validation"]


def make_validation(stage: str, val_set, val_size: int, tokenizer, device, recon_loss: str = "l2") -> Callable:
    """A callable(model, step, samples_dir) -> log row (or None without validation images) that also saves a
    picture grid to samples_dir/step_STEP.png. Rank 0 only. Up to `val_size` images of `val_set`, the same ones at
    every evaluation. `recon_loss`: the tokenizer's reconstruction loss as trained ("l2" or "l1")."""
    if val_set is None or val_size <= 0 or len(val_set) == 0:
        return lambda model, step, samples_dir: None
    n = min(val_size, len(val_set))
    g = torch.Generator().manual_seed(1234)
    pick = torch.randperm(len(val_set), generator=g)[:n].tolist()
    x_val, y_val = collate(val_set, pick)
    if stage == "generator":
        codes_val = torch.cat([tokenizer.encode(x_val[i:i + 256].to(device)).cpu() for i in range(0, n, 256)])

    @torch.no_grad()
    def evaluate(model, step: int, samples_dir: Path):
        was = model.training
        model.eval()
        # the validation pass must not touch the global RNG, or resumed runs would diverge
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step)
            if stage == "tokenizer":
                row = {"split": "val", "step": step}
                x = x_val.to(device)
                for k in sorted({1, model.config.num_tokens // 2, model.config.num_tokens}):
                    r = model(x, num_tokens=k)
                    rl = F.l1_loss(r["recon"].float(), r["target"].float()) if recon_loss == "l1" else r["recon_loss"]
                    row[f"recon_loss@{k}"] = float(rl)
                    # PSNR of the MSE pooled over the validation images (one "image" of all of them)
                    pooled = r["recon"].float().clamp(-1, 1).reshape(1, -1, *x.shape[2:])
                    row[f"psnr_vs_image@{k}"] = float(psnr(pooled, x.reshape(1, -1, *x.shape[2:]))[0])
                row["loss"] = row[f"recon_loss@{model.config.num_tokens}"]
                prog = model.decode_progressive(model.encode(x[:8]))  # [8, N, C, H, W]
                grid = torch.cat([prog, x[:8, None]], 1)
                save_grid(grid.flatten(0, 1), samples_dir / f"step_{step:07d}.png", nrow=grid.shape[1], scale=2)
            else:
                losses = [model(y_val[i:i + 256].to(device), codes_val[i:i + 256, :-1].to(device),
                                targets=codes_val[i:i + 256].to(device))[1] for i in range(0, n, 256)]
                row = {"split": "val", "step": step, "loss": float(torch.stack(losses).mean())}
                nc = model.config.num_classes
                labels = torch.arange(nc, device=device).repeat_interleave(8)
                gen = torch.Generator(device=device).manual_seed(0)
                codes = model.generate(labels, cfg_scale=2.0 if model.config.class_dropout > 0 else 1.0, generator=gen)
                save_grid(tokenizer.decode(codes), samples_dir / f"step_{step:07d}.png", nrow=8, scale=2)
        model.train(was)
        return row

    return evaluate
