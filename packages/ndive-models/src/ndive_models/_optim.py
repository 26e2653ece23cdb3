"""Optimisers: NovoGrad (as in the NDIVE paper), AdamW (GN2) and Lion (GN3).

Lion comes from the maintained ``lion-pytorch`` package (the implementation salt uses);
:func:`make_optimizer` builds any of them by name.
"""

from __future__ import annotations

import torch


class NovoGrad(torch.optim.Optimizer):
    """NovoGrad (Ginsburg et al., arXiv:1905.11286, Algorithm 1): Adam-like momentum with a
    second moment per *parameter tensor* (layer) instead of per element.

    For each parameter tensor ``w`` with gradient ``g`` at step ``t``:

        v_1 = ||g_1||^2,              v_t = b2 v_{t-1} + (1 - b2) ||g_t||^2
        u_t = g_t / (sqrt(v_t) + eps) + weight_decay * w_{t-1}
        m_1 = u_1,                    m_t = b1 m_{t-1} + u_t
        w_t = w_{t-1} - lr * m_t

    With ``grad_averaging=True`` the momentum update is ``m_t = b1 m_{t-1} + (1 - b1) u_t``
    (the variant of NVIDIA's implementation). A parameter whose gradient is ``None`` is
    skipped; an all-zero gradient gives ``v = 0`` and a step of ``weight_decay * w`` only.

    Args:
        params: parameters or parameter groups.
        lr: learning rate. betas: ``(b1, b2)`` (paper: 0.95, 0.98). eps: added to sqrt(v).
        weight_decay: decoupled-from-moment L2 term added to the normalised gradient.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.95, 0.98), eps: float = 1e-8,
                 weight_decay: float = 0.0, grad_averaging: bool = False):
        if lr <= 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1 or eps < 0:
            raise ValueError(f"invalid NovoGrad settings lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps,
                                      "weight_decay": weight_decay, "grad_averaging": grad_averaging})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("NovoGrad does not support sparse gradients")
                state = self.state[p]
                norm2 = torch.sum(g * g)
                if not state:
                    state["step"] = 0
                    state["v"] = norm2.clone()
                    state["m"] = torch.zeros_like(p)
                    first = True
                else:
                    state["v"].mul_(b2).add_(norm2, alpha=1 - b2)
                    first = False
                state["step"] += 1
                u = g / (state["v"].sqrt() + group["eps"])
                if group["weight_decay"]:
                    u = u + group["weight_decay"] * p
                m = state["m"]
                if first:
                    m.copy_(u)
                elif group["grad_averaging"]:
                    m.mul_(b1).add_(u, alpha=1 - b1)
                else:
                    m.mul_(b1).add_(u)
                p.add_(m, alpha=-group["lr"])
        return loss


#: Names :func:`make_optimizer` accepts.
OPTIMIZERS = ("novograd", "adamw", "lion")


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0):
    """``"novograd"`` (paper), ``"adamw"`` (GN2) or ``"lion"`` (GN3).

    Lion (Chen et al., arXiv:2302.06675) with ``betas = (0.9, 0.99)``, per element:
    ``c = b1 m + (1 - b1) g``, ``w <- w (1 - lr wd) - lr sign(c)``, ``m <- b2 m + (1 - b2) g``.
    Its steps have size ``lr`` per element, so it wants a learning rate 3-10x smaller and a
    weight decay 3-10x larger than AdamW.
    """
    if name == "novograd":
        return NovoGrad(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "lion":
        try:
            from lion_pytorch import Lion
        except ImportError as err:
            raise ValueError("optimizer 'lion' needs the lion-pytorch package: "
                             "pip install lion-pytorch") from err
        return Lion(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
