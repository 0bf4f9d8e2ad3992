import pytest
import torch
import torch.nn as nn

from spectralar.models.config import preset
from spectralar.models.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss


@pytest.mark.parametrize("image_size, channels, grid, downs", [(32, 1, 14, 1), (64, 3, 30, 1), (128, 3, 30, 2),
                                                                (256, 3, 30, 3)])
def test_patch_grid_and_depth(image_size, channels, grid, downs):
    """One logit per patch: 256 px gives pix2pix's 30x30 grid (three stride-2 convolutions); 32 px one."""
    with torch.device("meta"):
        d = PatchDiscriminator(channels, width=8, image_size=image_size)
        out = d(torch.empty(2, channels, image_size, image_size))
    assert out.shape == (2, 1, grid, grid)
    assert sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in d.modules()) == downs


def test_from_config_and_bad_sizes():
    cfg = preset("tokenizer", "micro")
    d = PatchDiscriminator.from_config(cfg, width=24)
    assert d.net[0].in_channels == cfg.channels and d.net[0].out_channels == 24
    assert d(torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)).shape == (1, 1, 14, 14)
    with torch.device("meta"):
        n = sum(p.numel() for p in PatchDiscriminator.from_config(preset("tokenizer", "imagenet-b64")).parameters())
    assert 2.7e6 < n < 2.8e6  # pix2pix's 70x70 PatchGAN at width 64: 2.77 M
    for kw, match in (({"channels": 0}, "channels"), ({"width": 2.5}, "width"), ({"image_size": 4}, "image_size")):
        with pytest.raises(ValueError, match=match):
            PatchDiscriminator(**({"channels": 1} | kw))


def test_hinge_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0, 1.0])  # relu(1 - x): 0, 0.5, 2, 0 -> mean 0.625
    fake = torch.tensor([-2.0, 0.0, 1.0, -0.5])  # relu(1 + x): 0, 1, 2, 0.5 -> mean 0.875
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.625 + 0.875))
    assert hinge_d_loss(torch.zeros(3), torch.zeros(3)).item() == 1.0  # a discriminator at chance
    assert hinge_d_loss(torch.full((3,), 1.5), torch.full((3,), -4.0)).item() == 0.0  # beyond the margins
    assert hinge_g_loss(fake).item() == pytest.approx(0.375)
    assert hinge_d_loss(real.bfloat16(), fake.bfloat16()).dtype == torch.float32


def test_discriminator_learns_real_from_fake():
    """Toy separation: real = smooth images (low frequencies), fake = white noise of the same scale. A few Adam
    steps drive the hinge loss from ~1 (chance) to near 0, and held-out samples are scored on the right side."""
    torch.manual_seed(0)
    d = PatchDiscriminator(1, width=8, image_size=32)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.9))

    def batch(n):
        smooth = nn.functional.interpolate(torch.randn(n, 1, 4, 4), size=32, mode="bilinear", align_corners=False)
        return smooth.clamp(-1, 1), (0.5 * torch.randn(n, 1, 32, 32)).clamp(-1, 1)

    real, fake = batch(16)
    first = hinge_d_loss(d(real), d(fake)).item()
    for _ in range(60):
        real, fake = batch(16)
        loss = hinge_d_loss(d(real), d(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
    real, fake = batch(16)
    with torch.no_grad():
        r, f = d(real).mean((1, 2, 3)), d(fake).mean((1, 2, 3))
    assert 0.8 < first < 1.2
    assert loss.item() < 0.1, loss.item()
    assert (r > 0).all() and (f < 0).all(), (r, f)


def test_adaptive_weight_matches_manual_gradient_norms():
    """weight = |grad_W rec| / (|grad_W adv| + 1e-4) at the last layer W, clamped and detached, and both graphs
    survive for the backward pass after it."""
    torch.manual_seed(0)
    body, last = nn.Linear(6, 5), nn.Linear(5, 4)
    x, target = torch.randn(3, 6), torch.randn(3, 4)
    out = last(torch.tanh(body(x)))
    rec = ((out - target) ** 2).mean()
    adv = -(out.sum(1) * torch.tensor([1.0, -2.0, 0.5])).mean()
    w = adaptive_weight(rec, adv, last.weight)

    h = torch.tanh(body(x)).detach()  # manual gradients of both losses with respect to last.weight
    g_rec = (2 / out.numel()) * (out.detach() - target).T @ h
    g_adv = -(torch.tensor([1.0, -2.0, 0.5])[:, None] / 3 * torch.ones(3, 4)).T @ h
    want = g_rec.norm() / (g_adv.norm() + 1e-4)
    torch.testing.assert_close(w, want)
    assert not w.requires_grad
    assert adaptive_weight(rec * 1e9, adv * 1e-9, last.weight, max_weight=10.0).item() == 10.0  # clamped
    (rec + w * adv).backward()  # the graphs were kept
    assert body.weight.grad is not None
