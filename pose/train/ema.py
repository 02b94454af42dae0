"""Exponential moving average of the model's weights (params ``train.ema_decay``, ``train.ema_warmup_steps``).

After every optimiser step ``ema = d * ema + (1 - d) * weights`` for every floating-point entry of
the state dict (parameters and BatchNorm running statistics; integer buffers such as
``num_batches_tracked`` are copied), with a warm-up of the decay
``d = ema_decay * (1 - exp(-updates / ema_warmup_steps))`` (0 warm-up steps: ``d = ema_decay``),
so the average does not drag the random initial weights along. This is the EMA of the modern
bottom-up and top-down trainers (e.g. ultralytics ``ModelEMA``, whose warm-up this is; mmpose's
``ExpMomentumEMA``); the official HigherHRNet code has none: a deliberate deviation for a
recipe that is robust to the noise of a short CPU budget (README, *Training budget and
ablations*).

The averaged model is the one validated during training and saved as ``model`` in
``best.pt`` / ``last.pt`` (what evaluate, predict, export and serving load); the raw training
weights are saved beside it as ``model_raw`` with the update count ``ema_updates``, so a resumed
run continues both exactly. The EMA takes no random numbers and does not touch the training
weights: the training trajectory is the same with and without it.
"""

from __future__ import annotations

import copy
import math

import torch


class ModelEMA:
    """EMA copy of ``model`` (module docstring). ``module`` is the averaged network (eval mode, no
    gradients); ``updates`` the number of `update` calls so far.

    Args:
        model: the training network (unwrapped, not DDP), already on its device.
        decay: params ``train.ema_decay``, in (0, 1).
        warmup_steps: params ``train.ema_warmup_steps`` (>= 0).

    Raises ValueError for a decay outside (0, 1) or negative warm-up steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup_steps: float):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"params train.ema_decay: must be in (0, 1) when the EMA is on, got {decay}")
        if float(warmup_steps) < 0:
            raise ValueError(f"params train.ema_warmup_steps: must be >= 0, got {warmup_steps}")
        self.decay, self.warmup_steps = float(decay), float(warmup_steps)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        """The decay applied by the next `update`."""
        if self.warmup_steps <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.warmup_steps))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold ``model``'s current weights into the average (call after each optimiser step)."""
        d = self.current_decay()
        src = model.state_dict()
        floats_e, floats_m = [], []
        for name, e in self.module.state_dict().items():
            m = src[name].detach()
            if e.dtype.is_floating_point:
                floats_e.append(e)
                floats_m.append(m.to(e.dtype))
            else:
                e.copy_(m)
        if floats_e:
            torch._foreach_lerp_(floats_e, floats_m, 1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Restore the average and its update count from a checkpoint (exact resume)."""
        self.module.load_state_dict(state)
        self.updates = int(updates)
