"""Training losses. The released recipe uses ``1 - SSIM`` (SPEC 6); L1 and Charbonnier are opt-in."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["gaussian_window", "ssim_map", "ssim_differentiable", "SSIMLoss", "CharbonnierLoss", "build_loss", "LOSSES"]


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 2-D Gaussian ``[size, size]`` (outer product of the normalised 1-D kernel)."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM map of the released loss: per channel, Gaussian window, zero padding ``window_size // 2``.

    ``x``, ``y``: ``[B, C, H, W]`` in [0, 1] (not clamped); ``C1 = 0.01^2``, ``C2 = 0.03^2``.
    Returns ``[B, C, H, W]``.
    """
    C = x.shape[1]
    win = gaussian_window(window_size, sigma).to(x)[None, None].expand(C, 1, -1, -1)  # [C, 1, k, k]
    pad = window_size // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, padding=pad, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim_differentiable(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean of :func:`ssim_map` over everything: a scalar tensor (1 for identical images).

    The loss's SSIM (float tensors, gradients); the reported metric is :func:`utils.metrics.ssim`.
    """
    return ssim_map(x, y, window_size, sigma).mean()


class SSIMLoss(nn.Module):
    """``1 - SSIM(restored, target)``, the released training loss (SPEC 6)."""

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1.0 - ssim_differentiable(restored, target)


class CharbonnierLoss(nn.Module):
    """``mean(sqrt((x - y)^2 + eps^2))``, a smooth L1."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((restored - target) ** 2 + self.eps**2).mean()


LOSSES: dict[str, type[nn.Module]] = {
    "ssim": SSIMLoss, "l1": nn.L1Loss, "charbonnier": CharbonnierLoss, "mse": nn.MSELoss,
}


def build_loss(name: str) -> nn.Module:
    """Loss by name: ``ssim`` (released), ``l1``, ``charbonnier`` or ``mse`` (the squared error that
    PSNR measures)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]()
