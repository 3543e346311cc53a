"""Feature visualisation by feature inversion, Lucid style, in plain PyTorch.

Fig. 3 of Kim, Lee, Ro (NeurIPS 2021), "Distilling Robust and Non-Robust
Features in Adversarial Examples by Information Bottleneck", shows what a
layer's features ``Z = f_l(x)``, robust features ``Z_r = i_r·Z`` and non-robust
features ``Z_nr = i_nr·Z`` of clean and adversarial images look like: for each
target activation ``t`` it optimises an image whose activation ``a = f_l(image)``
points the same way as ``t``. :func:`invert_features` does this for ``K``
targets at once, with the reference code's protocol as defaults
(:class:`FeatVisConfig`):

* **Parameterisation** (:class:`FourierImage`): the image is the sigmoid of a
  decorrelated colour image stored as a Fourier spectrum. Each frequency ``f``
  (cycles per pixel) is scaled by ``1 / max(f, 1/max(H, W))`` (a 1/f spectrum,
  so Adam's per-parameter steps become an approximately whitened image update),
  the inverse real FFT is orthonormal and divided by 4, and for 3-channel
  images the three channels are mixed by Lucid's ImageNet colour-correlation
  square root ``[[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]``
  divided by its largest column norm. Initial spectrum: N(0, 0.01²) from an
  explicit generator, so the initial image is grey (0.5) with faint noise.
* **Transforms**, fresh for every step and image (:func:`random_transform`):
  pad 8 with constant 0.5 (Lucid's feature-inversion padding: a neutral grey
  rather than mirrored content, so the optimiser cannot place content in the
  border), integer jitter up to ±4, scale drawn from (0.9, 0.95, 1.05, 1.1, 1,
  1, 1, 1), rotation uniform in ±5°, integer jitter ±1, then resampled back to
  the original ``H×W`` (the layer's activation only has the target's spatial
  size for the training image size). The whole chain is one affine map applied
  with ``F.affine_grid``/``F.grid_sample`` (bilinear) to the padded image.
* **Objective**, maximised with Adam (lr 0.05, 512 steps)::

      score_k   = dot(a_k, t_k) · max(cos(a_k, t_k), 0.1) ** 2
      penalty_k = Σ_pixels (x_k − stop_gradient(blur(x_k)))²
      loss      = Σ_k (−score_k + blur_weight · penalty_k)

  ``blur`` is Lucid's 3×3 blur (weight 1 at the centre, 0.5 at the eight
  neighbours, normalised by the weights that fall inside the image). Because
  the blurred copy is a constant, the penalty's gradient ``2·(x − blur(x))``
  pulls each pixel towards its neighbourhood mean: a small smoothing step every
  iteration. ``blur_weight = 0.01`` is the reference code's value for
  CIFAR-10/SVHN (its Tiny-ImageNet setting, −0.5, rewards sharpness instead;
  negative weights are allowed). The penalty is a raw sum, so its weight
  relative to the score depends on the scale of the layer's activations; at
  0.01 it is a mild regulariser for typical CIFAR activations.

Two details of the reference code (``visualization/inversion.py``, built on
torch-lucent) differ from that description; :meth:`FeatVisConfig.reference`
selects them: its "cossim" is ``dot(a, t) / ‖t‖`` (the projection of ``a`` on
``t/‖t‖``, not a cosine, and without the 0.1 floor), and it resizes the whole
transformed canvas (pad included) back to the image size instead of cropping
it, so the model sees the image shrunk by ``H / (H + 2·pad)`` inside a grey
frame. Its jitter also shifts by 0..d−1 pixels in one direction only and it
draws one transform per batch; this module uses centred shifts and a separate
transform per image.

Determinism: all randomness (the initial spectrum and every transform draw)
comes from one CPU ``torch.Generator`` seeded with ``config.seed``, so the draws
are the same on every device and the global RNG is never touched. On CPU two
runs are bit-identical; on CUDA, ``grid_sample``'s backward uses atomic adds, so
bit-identity there needs ``torch.use_deterministic_algorithms(True)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import UserError, check
from .runtime import frozen, make_generator
from .split import LayerSplit

__all__ = ["FeatVisConfig", "FourierImage", "random_transform", "objective_value", "invert_features",
           "blur_penalty", "COLOR_CORRELATION_SQRT"]

logger = logging.getLogger(__name__)

#: Square root of the colour correlation of ImageNet images (Lucid), rows = RGB.
COLOR_CORRELATION_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))

_FITS = ("crop", "resize")
_COSSIMS = ("cosine", "lucid")
_PAD_VALUE = 0.5  # grey padding, as in Lucid's feature inversion
_SPECTRUM_SD = 0.01  # standard deviation of the initial spectrum (or pixels), as in Lucid
_FFT_MAGIC = 4.0  # Lucid divides the inverse FFT by 4 to keep the initial image close to grey


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


@dataclass(frozen=True)
class FeatVisConfig:
    """Settings of :func:`invert_features`; the defaults are Lucid's feature inversion as Kim et al. used it.

    Steps, lr, transforms, ``cossim_pow`` and ``blur_weight`` are the reference
    code's values; :meth:`reference` also switches to its ``cossim`` definition
    (no floor) and its resize-back of the padded canvas.

    Attributes:
        steps: Adam steps (512).
        lr: Adam learning rate (0.05).
        pad: pixels of constant 0.5 padding added before the random transforms (8).
        jitter: first random shift; each axis moves by an integer in
            ``−(jitter // 2) .. jitter // 2`` pixels (8, so ±4).
        scales: zoom factors, one drawn uniformly per image and step (four
            values, then four 1's, so no zoom half the time).
        rotate: rotation drawn uniformly in ``[−rotate, rotate]`` degrees (5).
        jitter2: second random shift, after zoom and rotation (2, so ±1).
        cossim_pow: exponent ``p`` of the cosine factor of the score (2).
        blur_weight: weight of the blur penalty (0.01, the reference code's
            CIFAR-10/SVHN value; 0 turns it off; negative rewards sharpness).
        decorrelate: mix colours with Lucid's ImageNet colour-correlation matrix
            (3-channel images only; ignored for other channel counts).
        fft: Fourier parameterisation with 1/f scaling (else one parameter per pixel).
        seed: seed of the generator that draws the initial image and every transform.
        cossim: ``"cosine"`` (``a·t / (‖a‖‖t‖)``) or ``"lucid"`` (``a·t / ‖t‖``,
            what Lucid/Lucent's ``dot_compare`` and the reference code call cossim).
        cossim_floor: lower clamp of the cosine factor (0.1); ``None`` for none.
        fit: how the transformed canvas returns to ``H×W``: ``"crop"`` (its
            central ``H×W`` window, so the image keeps its scale) or ``"resize"``
            (the whole padded canvas resampled to ``H×W``, as the reference code does).
    """

    steps: int = 512
    lr: float = 0.05
    pad: int = 8
    jitter: int = 8
    scales: tuple[float, ...] = (0.9, 0.95, 1.05, 1.1, 1.0, 1.0, 1.0, 1.0)
    rotate: float = 5.0
    jitter2: int = 2
    cossim_pow: float = 2.0
    blur_weight: float = 0.01
    decorrelate: bool = True
    fft: bool = True
    seed: int = 0
    cossim: str = "cosine"
    cossim_floor: float | None = 0.1
    fit: str = "crop"

    def __post_init__(self) -> None:
        if not isinstance(self.scales, tuple):  # accept a list, keep the config hashable
            object.__setattr__(self, "scales", tuple(self.scales) if _iterable(self.scales) else (self.scales,))
        for name in ("steps", "pad", "jitter", "jitter2", "seed"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, not {value!r}")
        check(self.steps >= 1, f"steps must be at least 1, not {self.steps}")
        for name in ("pad", "jitter", "jitter2"):
            check(getattr(self, name) >= 0, f"{name} must be 0 or more, not {getattr(self, name)}")
        check(_finite(self.lr) and self.lr > 0, f"lr must be a positive number, not {self.lr!r}")
        check(len(self.scales) > 0 and all(_finite(s) and s > 0 for s in self.scales),
              f"scales must be positive numbers (at least one), not {self.scales!r}")
        check(_finite(self.rotate) and self.rotate >= 0, f"rotate must be 0 or more degrees, not {self.rotate!r}")
        check(_finite(self.cossim_pow) and self.cossim_pow >= 0, f"cossim_pow must be 0 or more, not {self.cossim_pow!r}")
        check(_finite(self.blur_weight), f"blur_weight must be a finite number, not {self.blur_weight!r}")
        check(self.cossim in _COSSIMS, f"unknown cossim {self.cossim!r}: use {' or '.join(_COSSIMS)}")
        check(self.cossim_floor is None or _finite(self.cossim_floor),
              f"cossim_floor must be a number or None, not {self.cossim_floor!r}")
        check((self.cossim_floor is not None and self.cossim_floor > 0) or float(self.cossim_pow).is_integer(),
              f"cossim_pow {self.cossim_pow} is not an integer, so the cosine factor must be floored above 0 "
              "(cossim_floor > 0): a negative cosine to a fractional power is undefined")
        check(self.fit in _FITS, f"unknown fit {self.fit!r}: use {' or '.join(_FITS)}")
        for name in ("decorrelate", "fft"):
            check(isinstance(getattr(self, name), bool), f"{name} must be True or False, not {getattr(self, name)!r}")

    @classmethod
    def reference(cls, **overrides: Any) -> FeatVisConfig:
        """Kim et al.'s code for CIFAR-10/SVHN as closely as this module allows.

        ``cossim="lucid"``, ``cossim_floor=None``, ``fit="resize"``, other fields
        at their defaults (which are the reference's); ``overrides`` replaces fields.
        """
        return replace(cls(cossim="lucid", cossim_floor=None, fit="resize"), **overrides)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (for recording with results)."""
        return asdict(self)


class FourierImage(nn.Module):
    """``K`` images ``[K, C, H, W]`` in (0, 1), parameterised as in Lucid.

    ``raw`` is a Fourier spectrum (``fft=True``; the trainable tensor has shape
    ``[K, C, H, W // 2 + 1, 2]``, real and imaginary parts, scaled by ``1/f``
    and inverted by an orthonormal real FFT, then divided by 4) or one value
    per pixel (``fft=False``, ``[K, C, H, W]``). For ``C == 3`` and
    ``decorrelate=True`` the channels are then mixed by
    :data:`COLOR_CORRELATION_SQRT` divided by its largest column norm; finally a
    sigmoid maps to (0, 1). The initial parameters are N(0, ``sd``²) drawn from
    ``generator`` (on the generator's device, then moved to ``device``), so the
    same seed gives the same initial images on every device.

    Calling the module (no arguments) returns the images; ``parameters()`` holds
    the one trainable tensor.
    """

    spectrum_scale: Tensor  # buffers (registered in __init__ when fft / decorrelate is on)
    color_matrix: Tensor

    def __init__(self, k: int, image_shape: tuple[int, int, int], generator: torch.Generator,
                 device: str | torch.device = "cpu", decorrelate: bool = True, fft: bool = True, *,
                 sd: float = _SPECTRUM_SD, decay_power: float = 1.0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        check(isinstance(k, int) and k >= 1, f"number of images must be a positive integer, not {k!r}")
        channels, height, width = _image_shape(image_shape)
        self.k, self.image_shape, self.fft = k, (channels, height, width), bool(fft)
        self.decorrelate = bool(decorrelate) and channels == 3
        device = torch.device(device)
        shape = (k, channels, height, width // 2 + 1, 2) if self.fft else (k, channels, height, width)
        init = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype) * sd
        self.raw = nn.Parameter(init.to(device))
        if self.fft:
            fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
            fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
            freqs = torch.sqrt(fx * fx + fy * fy)
            scale = freqs.clamp_min(1.0 / max(height, width)).pow(-decay_power)
            self.register_buffer("spectrum_scale", scale.to(device=device, dtype=dtype), persistent=False)
        if self.decorrelate:
            matrix = torch.tensor(COLOR_CORRELATION_SQRT, dtype=torch.float64)
            matrix = matrix / matrix.norm(dim=0).max()
            self.register_buffer("color_matrix", matrix.to(device=device, dtype=dtype), persistent=False)

    def forward(self) -> Tensor:
        """The images ``[K, C, H, W]``, values in (0, 1), differentiable in ``raw``."""
        _, height, width = self.image_shape
        if self.fft:
            spectrum = torch.view_as_complex(self.raw) * self.spectrum_scale
            image = torch.fft.irfft2(spectrum, s=(height, width), norm="ortho") / _FFT_MAGIC
        else:
            image = self.raw
        if self.decorrelate:
            image = torch.einsum("ij,kjhw->kihw", self.color_matrix, image)
        return torch.sigmoid(image)

    def extra_repr(self) -> str:
        return f"k={self.k}, image_shape={self.image_shape}, fft={self.fft}, decorrelate={self.decorrelate}"


def random_transform(images: Tensor, config: FeatVisConfig, generator: torch.Generator) -> Tensor:
    """Apply a fresh random pad–jitter–zoom–rotate–jitter to each image, keeping ``[K, C, H, W]``.

    Per image (independent draws from ``generator``, on its own device): pad
    ``config.pad`` pixels of 0.5; shift by an integer in ``±(config.jitter // 2)``
    per axis; zoom by a factor from ``config.scales`` and rotate by a uniform angle
    in ``±config.rotate`` degrees about the centre; shift by an integer in
    ``±(config.jitter2 // 2)``; then take the central ``H×W`` window
    (``fit="crop"``) or resample the whole padded canvas to ``H×W``
    (``fit="resize"``). Implemented as one affine map (bilinear
    ``grid_sample``); points beyond the padding read the padding's value. With
    no padding, shift, zoom or rotation the images come back unchanged.
    Differentiable in ``images``; the same generator state gives the same output.
    """
    check(isinstance(images, Tensor) and images.dim() == 4,
          f"images must be a 4-D tensor [K, C, H, W], not shape {list(getattr(images, 'shape', []))}")
    k, _, height, width = images.shape
    dev, dtype, gdev = images.device, images.dtype, generator.device

    def shifts(d: int) -> Tensor:
        half = d // 2
        return torch.randint(-half, half + 1, (k, 2), generator=generator, device=gdev).to(dtype=torch.float64)

    shift1 = shifts(config.jitter)
    scale_index = torch.randint(0, len(config.scales), (k,), generator=generator, device=gdev)
    angle_u = torch.rand(k, generator=generator, device=gdev, dtype=torch.float64)
    shift2 = shifts(config.jitter2)

    scale = torch.tensor(config.scales, dtype=torch.float64, device=gdev)[scale_index]
    angle = (2.0 * angle_u - 1.0) * math.radians(config.rotate)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Inverse map, in pixels about the centre: output u -> canvas position v = R(-θ)(F u + s2) / s + s1.
    inv_rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) / scale[:, None, None]
    p = config.pad
    padded_h, padded_w = height + 2 * p, width + 2 * p
    fit = (padded_w / width, padded_h / height) if config.fit == "resize" else (1.0, 1.0)
    out_half = torch.tensor([width / 2 * fit[0], height / 2 * fit[1]], dtype=torch.float64, device=gdev)
    in_half = torch.tensor([padded_w / 2, padded_h / 2], dtype=torch.float64, device=gdev)
    linear = inv_rot * out_half[None, None, :] / in_half[None, :, None]  # normalised output -> normalised input
    offset = (torch.einsum("kij,kj->ki", inv_rot, shift2) + shift1) / in_half
    theta = torch.cat([linear, offset[:, :, None]], dim=2).to(device=dev, dtype=dtype)

    canvas = F.pad(images, (p, p, p, p), mode="constant", value=_PAD_VALUE) if p > 0 else images
    grid = F.affine_grid(theta, [k, images.shape[1], height, width], align_corners=False)
    return F.grid_sample(canvas, grid, mode="bilinear", padding_mode="border", align_corners=False)


def blur_penalty(images: Tensor) -> Tensor:
    """``Σ (x − stop_gradient(blur(x)))²`` per image, ``[K, C, H, W]`` -> ``[K]``.

    ``blur`` is Lucid's 3×3 blur (centre weight 1, the eight neighbours 0.5),
    normalised by the weights inside the image at the borders. The gradient,
    ``2·(x − blur(x))``, pulls every pixel towards its neighbourhood mean.
    """
    channels = images.shape[1]
    kernel = torch.full((3, 3), 0.5, dtype=images.dtype, device=images.device)
    kernel[1, 1] = 1.0
    with torch.no_grad():
        summed = F.conv2d(images, kernel.expand(channels, 1, 3, 3).contiguous(), padding=1, groups=channels)
        weights = F.conv2d(torch.ones_like(images[:1, :1]), kernel[None, None], padding=1)
        blurred = summed / weights
    return (images - blurred).pow(2).flatten(1).sum(1)


def objective_value(split: LayerSplit, images: Tensor, targets: Tensor, cossim_pow: float = 2.0, *,
                    cossim: str = "cosine", cossim_floor: float | None = 0.1) -> Tensor:
    """The inversion score ``dot(a_k, t_k) · max(cos(a_k, t_k), floor) ** cossim_pow`` per image, ``[K]``.

    ``a = split.features(images)`` for ``images`` ``[K, C, H, W]`` in [0, 1]
    (no transforms, no blur penalty), ``targets`` ``[K, C_l, h, w]``; ``cossim``
    and ``cossim_floor`` as in :class:`FeatVisConfig`. The model runs in eval
    mode without gradients (its modes and flags are restored); the result is
    detached, on the images' device. With ``a == t`` and ``cossim="cosine"`` the
    score is ``‖t‖²``.
    """
    images = _check_4d(images, "images")
    targets = _check_4d(targets, "targets")
    check(images.shape[0] == targets.shape[0],
          f"{images.shape[0]} images but {targets.shape[0]} targets: give one target per image")
    FeatVisConfig(cossim_pow=cossim_pow, cossim=cossim, cossim_floor=cossim_floor)  # validates the three
    with torch.no_grad(), frozen(split.model):
        acts = _features(split, images)
        _check_match(acts, targets, split, tuple(images.shape[1:]))
        return _score(acts, targets.to(acts), cossim_pow, cossim, cossim_floor).detach()


def invert_features(split: LayerSplit, targets: Tensor, image_shape: tuple[int, int, int],
                    config: FeatVisConfig = FeatVisConfig(), *, progress: bool = True) -> Tensor:
    """Images whose layer-``split.layer`` activations match ``targets`` (Kim et al., NeurIPS 2021, Fig. 3).

    Args:
        split: the model cut at the layer (``split.features(x)`` gives ``Z``
            for images ``x`` in [0, 1]).
        targets: ``[K, C_l, h, w]`` activations to invert (``Z``, ``Z_r`` or
            ``Z_nr`` of ``K`` images), the shape ``split.features`` gives for
            images of ``image_shape``.
        image_shape: ``(C, H, W)`` of the images to produce (the model's input size).
        config: the protocol; defaults: Fourier parameterisation with colour
            decorrelation, Adam lr 0.05 for 512 steps, transforms pad 8 / jitter 8
            / zoom / rotate ±5° / jitter 2, score ``dot · max(cos, 0.1)²`` minus
            0.01 × blur penalty (see the module docstring).
        progress: show a tqdm bar over the steps.

    Returns:
        ``[K, *image_shape]`` images in [0, 1], detached, on the targets' device,
        in the targets' dtype. All ``K`` images are optimised as one batch; the
        loss is a sum over ``k`` of terms that each depend only on image ``k``
        and target ``k``, so image ``k`` does not depend on the other targets
        except through the shared random stream. The initial images are
        ``FourierImage(K, image_shape, make_generator(config.seed), device,
        config.decorrelate, config.fft)``; the same generator then draws every
        step's transforms.

    The model runs in eval mode with parameter gradients off (both restored on
    return) and gradients on even if the caller is in ``torch.no_grad()``.
    Raises :class:`UserError` for targets that are not a finite 4-D float tensor
    or do not match the layer's output for ``image_shape``.
    """
    check(isinstance(config, FeatVisConfig), f"config must be a FeatVisConfig, not {type(config).__name__}")
    targets = _check_4d(targets, "targets")
    check(targets.shape[0] >= 1, "targets is empty: give at least one target activation")
    check(targets.is_floating_point(), f"targets must be a float tensor, not {targets.dtype}")
    check(bool(torch.isfinite(targets).all()), "targets contain NaN or infinite values")
    image_shape = _image_shape(image_shape)
    target = targets.detach()
    k = target.shape[0]
    generator = make_generator(config.seed, "cpu")

    with frozen(split.model), torch.enable_grad():
        image = FourierImage(k, image_shape, generator, target.device, config.decorrelate, config.fft,
                             dtype=target.dtype)
        with torch.no_grad():
            _check_match(_features(split, image()), target, split, image_shape)
        optimizer = torch.optim.Adam(image.parameters(), lr=config.lr)
        bar = tqdm(range(config.steps), desc=f"feature inversion ({split.layer})", disable=not progress, leave=False)
        for _ in bar:
            x = image()
            acts = split.features(random_transform(x, config, generator))
            score = _score(acts, target, config.cossim_pow, config.cossim, config.cossim_floor)
            loss = -score.sum()
            if config.blur_weight != 0:
                loss = loss + config.blur_weight * blur_penalty(x).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        with torch.no_grad():
            result: Tensor = image().detach()
    logger.debug("inverted %d target(s) of layer %r in %d steps", k, split.layer, config.steps)
    return result


# -- helpers ---------------------------------------------------------------


def _score(acts: Tensor, targets: Tensor, cossim_pow: float, cossim: str, floor: float | None) -> Tensor:
    a, t = acts.flatten(1), targets.flatten(1)
    dot = (a * t).sum(1)
    t_norm: Tensor = torch.linalg.vector_norm(t, dim=1)
    if cossim == "cosine":
        cos: Tensor = dot / (torch.linalg.vector_norm(a, dim=1) * t_norm).clamp_min(1e-12)
    else:  # Lucid's "cossim": the length of a's projection on t
        cos = dot / (t_norm + 1e-10)
    if floor is not None:
        cos = cos.clamp_min(floor)
    return dot * cos.pow(cossim_pow)


def _features(split: LayerSplit, images: Tensor) -> Tensor:
    try:
        acts = split.features(images)
    except RuntimeError as exc:  # e.g. a first conv expecting another channel count
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{type(split.model).__name__} cannot run on images of shape {list(images.shape[1:])} "
                        f"({first}): give the model's input image_shape") from None
    return acts


def _check_match(acts: Tensor, targets: Tensor, split: LayerSplit, image_shape: tuple[int, ...]) -> None:
    check(tuple(acts.shape[1:]) == tuple(targets.shape[1:]),
          f"targets have shape {list(targets.shape[1:])} per image, but layer {split.layer!r} outputs "
          f"{list(acts.shape[1:])} for images of shape {list(image_shape)}: give that layer's activations "
          "for images of that size")


def _check_4d(tensor: Any, name: str) -> Tensor:
    check(isinstance(tensor, Tensor), f"{name} must be a tensor, not {type(tensor).__name__}")
    check(tensor.dim() == 4, f"{name} must be 4-D [K, C, H, W], not shape {list(tensor.shape)}")
    return cast(Tensor, tensor)


def _image_shape(shape: Any) -> tuple[int, int, int]:
    ok = (isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 3
          and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape))
    check(ok, f"image_shape must be (channels, height, width) with positive integers, not {shape!r}")
    return int(shape[0]), int(shape[1]), int(shape[2])
