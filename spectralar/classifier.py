"""A small CNN classifier: the feature space of the offline generation metrics.

Without InceptionV3 FID weights (none can be downloaded here) generated images are judged by a classifier
trained on the same dataset: its accuracy on samples of each class, and the Frechet distance between
Gaussians fitted to its penultimate features of generated and real images -- the *classifier Frechet
distance (CFD)*. CFD is not FID and is not comparable with published FIDs; it only ranks models evaluated
with the same classifier. Trained by `python -m spectralar.evaluate train-classifier`; stored like every
other checkpoint (safetensors + JSON, kind "classifier").

    [B, C, S, S] -> 3 x (conv3x3-BN-ReLU, maxpool 2) -> avgpool to 4x4 -> linear -> ReLU
                 = features [B, feature_dim] -> dropout -> linear -> logits [B, classes]

Small on purpose (~0.2 M params, ~2.5 M multiply-adds per 32x32 image) so that it trains in minutes on
two CPU cores.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import CheckpointError, load_into, load_weights, read_meta, save_checkpoint
from .config import from_dict, to_dict
from .data import collate, index_batches

__all__ = ["ClassifierConfig", "SmallCNN", "classify", "load_classifier", "save_classifier", "train_classifier"]


@dataclass
class ClassifierConfig:
    image_size: int = 32
    channels: int = 1
    num_classes: int = 10
    width: int = 16  # channels of the first stage; doubled at each of the three stages
    feature_dim: int = 128  # the feature space of CFD
    dropout: float = 0.2


def _conv(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Images [B, C, S, S] in [-1, 1] (S >= 8) -> logits [B, num_classes]; `features` gives [B, feature_dim]."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        c = self.config = config
        if c.image_size < 8:
            raise ValueError(f"image_size must be >= 8 (three 2x poolings), got {c.image_size}")
        w = c.width
        self.body = nn.Sequential(*_conv(c.channels, w), nn.MaxPool2d(2), *_conv(w, 2 * w), nn.MaxPool2d(2),
                                  *_conv(2 * w, 4 * w), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4))
        self.fc = nn.Linear(64 * w, c.feature_dim)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.feature_dim, c.num_classes)

    def features(self, x):
        return F.relu(self.fc(self.body(x).flatten(1)))

    def forward(self, x):
        return self.head(self.drop(self.features(x)))


@torch.no_grad()
def classify(model: SmallCNN, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 [M, feature_dim], logits float32 [M, classes]) of images [M, C, S, S], on the CPU."""
    c = model.config
    if images.dim() != 4 or tuple(images.shape[1:]) != (c.channels, c.image_size, c.image_size):
        raise ValueError(f"the classifier takes [M, {c.channels}, {c.image_size}, {c.image_size}] images, "
                         f"got {tuple(images.shape)}")
    model.eval()
    dev = next(model.parameters()).device
    feats, logits = [], []
    for i in range(0, images.shape[0], batch_size):
        f = model.features(images[i:i + batch_size].to(dev).float().clamp(-1, 1))
        feats.append(f.cpu())
        logits.append(model.head(f).cpu())
    return torch.cat(feats), torch.cat(logits)


def train_classifier(train_ds, config: ClassifierConfig, steps: int = 2000, batch_size: int = 128, lr: float = 2e-3,
                     seed: int = 0, device="cpu", val=None, log=print) -> tuple[SmallCNN, dict]:
    """Train a SmallCNN with AdamW (cosine schedule, 100 warmup steps) and random +-2 px shifts.

    Args:
        train_ds: a dataset yielding ([C, S, S] in [-1, 1], label); batches come from `collate`.
        val: optional (images [M, C, S, S], labels [M]) for the reported accuracy.
    Returns:
        (model in eval mode, info dict with steps, seconds, final train loss and val accuracy).
    """
    torch.manual_seed(seed)
    model = SmallCNN(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = min(100, max(1, steps // 10))
    step, epoch, t0, loss_avg = 0, 0, time.time(), None
    model.train()
    while step < steps:
        batches = index_batches(len(train_ds), batch_size, seed, epoch)
        if not batches:
            raise ValueError(f"{len(train_ds)} images cannot fill one batch of {batch_size}")
        for idx in batches:
            x, y = collate(train_ds, idx)
            x, y = x.to(device), y.to(device)
            # +-2 px random shifts (replicated edges): cheap augmentation against overfitting
            pad = F.pad(x, (2, 2, 2, 2), mode="replicate")
            dy, dx = torch.randint(0, 5, (2,)).tolist()
            x = pad[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
            frac = (step - warmup) / max(1, steps - warmup)
            scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
            for g in opt.param_groups:
                g["lr"] = lr * scale
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
            if log and (step % 200 == 0 or step == steps):
                log(f"[classifier] step {step}/{steps} loss {loss_avg:.4f} ({time.time() - t0:.0f} s)")
            if step >= steps:
                break
        epoch += 1
    model.eval()
    info = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "seconds": round(time.time() - t0, 1),
            "train_loss": loss_avg}
    if val is not None:
        _, logits = classify(model, val[0])
        info["val_accuracy"] = float((logits.argmax(1) == val[1]).float().mean())
        info["val_size"] = int(val[1].numel())
    return model, info


def save_classifier(path, model: SmallCNN, info: dict) -> Path:
    """Write checkpoint directory `path` (model.safetensors + config.json, kind "classifier")."""
    return save_checkpoint(path, "classifier", model, to_dict(model.config), step=info.get("steps", 0), train=info)


def load_classifier(path, device="cpu") -> tuple[SmallCNN, dict]:
    """(SmallCNN in eval mode, its training info) from a checkpoint directory written by `save_classifier`."""
    meta = read_meta(path)
    if meta["kind"] != "classifier":
        raise CheckpointError(f"{path} holds a {meta['kind']}, not a classifier")
    try:
        cfg = from_dict(ClassifierConfig, meta["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: bad classifier config ({e})") from None
    model = SmallCNN(cfg)
    load_into(model, load_weights(path, meta), str(path))
    return model.to(device).eval(), meta.get("train", {})
