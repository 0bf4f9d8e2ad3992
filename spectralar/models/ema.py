"""Exponential moving average of a model's weights, for sampling and evaluation (config field `ema_decay`)."""

from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    """Shadow copies of a model's state (`state_dict` entries: parameters and persistent buffers), on the
    model's devices and in its dtypes.

    `update` after each optimizer step: parameters move to decay * shadow + (1 - decay) * weights; buffers
    are copied, since they are running state rather than weights (the quantizer's usage counts and restart
    buffer, integer counters), so the shadow is always a complete model. Pass the bare model, not a DDP
    wrapper (the names must match). `state_dict` has the model's keys: it loads into the model directly,
    which is how a checkpoint stores it beside the raw weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not (isinstance(decay, float | int) and 0 < decay < 1):
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.params = {name for name, _ in model.named_parameters()}
        self.shadow = {name: t.detach().clone() for name, t in model.state_dict().items()}

    def _pairs(self, model: nn.Module):
        state = model.state_dict()
        if state.keys() != self.shadow.keys():
            raise ValueError(f"EMA: model has different entries ({sorted(state.keys() ^ self.shadow.keys())[:4]})")
        return [(name, self.shadow[name], t) for name, t in state.items()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, s, t in self._pairs(model):
            if name in self.params:
                s.lerp_(t, 1 - self.decay)
            else:
                s.copy_(t)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's weights with the averages (e.g. before exporting or sampling)."""
        for _, s, t in self._pairs(model):
            t.copy_(s)

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        """Exchange the model's weights and the averages in place: sample with the averages, then swap again
        to restore the trained weights exactly (the optimizer's references stay valid)."""
        for _, s, t in self._pairs(model):
            tmp = t.clone()
            t.copy_(s)
            s.copy_(tmp)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            raise ValueError(f"EMA state has different entries ({sorted(state.keys() ^ self.shadow.keys())[:4]})")
        for name, t in state.items():
            self.shadow[name].copy_(t)
