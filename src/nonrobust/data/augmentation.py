"""Training-only augmentation: random crop with zero padding and random horizontal flip."""

from __future__ import annotations

import torch

from ..errors import check

# --------------------------------------------------------------------------- augmentation


def augment(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding plus random horizontal flip, per image, in one vectorised step.

    Args:
        x: images ``[B, C, H, W]`` (any dtype, any device).
        generator: source of randomness (drawn on its own device); the global RNG when ``None``.
        pad: zero padding on each side before cropping back to ``H×W``; 0 disables cropping.
        flip: flip each image left-right with probability 1/2.

    Returns:
        A new tensor like ``x`` (same shape, dtype and device); gradients flow to ``x``.
    """
    check(x.dim() == 4, f"augment expects images [B, C, H, W], got shape {tuple(x.shape)}")
    check(int(pad) >= 0, f"pad must be 0 or more pixels, got {pad}")
    b, c, h, w = x.shape
    gen_device = generator.device if generator is not None else x.device
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=gen_device).to(x.device)
    flips = torch.rand(b, generator=generator, device=gen_device).to(x.device) < 0.5 if flip else torch.zeros(b, dtype=torch.bool, device=x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = offsets[1, :, None] + torch.where(flips[:, None], (w - 1) - cols, cols)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
