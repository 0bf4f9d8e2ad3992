"""A small CNN classifier: the feature space of the offline generation metrics.

Without InceptionV3 FID weights (none can be downloaded here) generated images are judged by a classifier
trained on the same dataset: its accuracy on samples of each class, and the Frechet distance between
Gaussians fitted to its penultimate features of generated and real images -- the *classifier Frechet
distance (CFD)*. CFD is not FID and is not comparable with published FIDs; it only ranks models evaluated
with the same classifier. Trained by `python -m spectralar.evaluate train-classifier` (spectralar.evaluation's
`train_classifier`); stored like every other checkpoint (safetensors + JSON, kind "classifier"; loaded by
`pretrained.load_model(path, "classifier")`).

    [B, C, S, S] -> 3 x (conv3x3-BN-ReLU, maxpool 2) -> avgpool to 4x4 -> linear -> ReLU
                 = features [B, feature_dim] -> dropout -> linear -> logits [B, classes]

Small on purpose (~0.2 M params, ~2.5 M multiply-adds per 32x32 image) so that it trains in minutes on
two CPU cores.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ClassifierConfig

__all__ = ["SmallCNN", "classify"]


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
