"""The information bottleneck that splits a layer's channels into robust and non-robust ones.

Kim, Lee, Ro (NeurIPS 2021), Eq. 3–5. For a model split at layer ``l``
(:class:`nonrobust.split.LayerSplit`) with features ``Z = f_l(x)`` of shape
``[B, C, H, W]``, optimise a noise scale ``σ`` so that ``Z + σ·ε`` still
predicts the label::

    L(σ) = CE(f_l+(Z + σ·ε), y) + β · KL(N(Z, σ_z²) ‖ N(Z, σ²))
    KL per unit = ½ [σ_z²/σ² + log(σ²/σ_z²) − 1]

with ``σ = softplus(λ)``, then ``T = max σ_z²`` and robust channels
``i_r = 1[σ² > T]``, non-robust ``i_nr = 1 − i_r``; ``Z_r = i_r·Z``,
``Z_nr = i_nr·Z`` (so ``Z = Z_r + Z_nr``).

Protocols (each named in every result):

* ``paper`` — the reference code: one σ per sample and channel, λ₀ = 0, Adam
  lr 0.1, 200 iterations, one ε per channel broadcast over space, σ_z² the
  unbiased spatial variance, KL averaged, β 0.3, true labels, and **T the max
  of σ_z² over every sample and channel of the batch** — so this protocol's
  split of one image depends on the other images in its batch. Everything
  else (σ_z², noise draws) is per image: the noise of image ``i`` comes from
  its own generator seeded by ``(seed, index[i])``. The loss is the batch mean,
  as the reference code takes it (σ matches the reference to float precision);
  through Adam that couples the images of a batch only via Adam's ε.
* ``batch-free`` — the same, with ``T`` per image (max over its channels), and
  each image's own loss summed, so that nothing about an image depends on its batch.
* ``population`` — one σ per channel shared by a whole data set, optimised
  over mini-batches; σ_z² per channel is the mean of the per-image spatial
  variances over the data set and ``T`` its max. The masks need no labels at
  use time and apply to new images: the deployable split.

Options: ``noise="unit"`` draws ε per unit ``[B, C, H, W]`` (the paper's
text), ``kl="sum"`` sums the KL over units (the paper's text), ``beta``,
``iterations``, ``lr``.

Speed: ``Z`` (and the context the head needs) is computed once per batch and
the optimisation runs through the head only.

Why one module: this is one method, Eq. 3–5 of the paper, and its three protocols
share every part (the loss, the optimiser of σ, the threshold and the masks). A
reader checks it against the paper and the reference code side by side, and one
file keeps every difference between the protocols in view. The measures of
agreement between noise seeds at the end are small and belong to the method's
results.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .errors import UserError, check
from .fields import setting
from .io import load_tensors, save_tensors
from .runtime import derive_seed, frozen, index_seed, make_generator
from .split import LayerSplit, require_4d

__all__ = ["IBConfig", "IBResult", "distill", "distill_population", "masked_predictions", "gaussian_kl", "ReiterableBatches",
           "seed_agreement", "summarise_agreement", "wrong_labels", "apply_mask", "describe_agreement", "noise_seeds", "robust_channels",
           "threshold_quantile", "PROTOCOLS", "LABEL_SOURCES"]

log = logging.getLogger(__name__)

PROTOCOLS = ("paper", "batch-free", "population")
LABEL_SOURCES = ("true", "predicted", "random-wrong")
VAR_EPS = 1e-10  # added to σ² and σ_z², as the reference code does
POPULATION_CACHE_BYTES = 512 * 2**20  # the population fit keeps its features (and head context) in memory up to this size


def threshold_quantile(rule: str) -> float | None:
    """The Q of a ``quantile:Q`` threshold rule, ``None`` for ``max`` and ``channel``; :class:`UserError` for anything else."""
    if rule in ("max", "channel"):
        return None
    kind, _, value = str(rule).partition(":")
    try:
        q = float(value)
    except ValueError:
        q = float("nan")
    check(kind == "quantile" and 0 < q < 1, f"unknown threshold rule {rule!r}: use max, channel or quantile:Q with 0 < Q < 1")
    return q


@dataclass(frozen=True)
class IBConfig:
    """Settings of the bottleneck. Defaults are the reference code's (the ``paper`` protocol).

    Attributes:
        protocol: ``paper``, ``batch-free`` or ``population`` (module docstring).
        beta: weight of the KL term (β; 0 gives plain cross-entropy).
        iterations: Adam steps per batch (per data set for ``population``).
        lr: Adam learning rate on λ (σ = softplus(λ), λ₀ = 0).
        noise: ``channel`` (one ε per channel, broadcast over space) or ``unit`` (per unit).
        kl: ``mean`` (reference code) or ``sum`` (the paper's text) over units.
        seed: seed of the noise draws.
        threshold: the rule that turns σ into robust channels: ``max`` (the paper: σ² > T with T the
            largest σ_z² of the batch for ``paper``, of the image for ``batch-free``, of the data set's
            channels for ``population``), ``channel`` (σ² > the same image's and channel's own σ_z²: more
            noise tolerated than the channel varies) or ``quantile:Q`` (T the Q-quantile of those σ_z²).
        samples: noise draws averaged per Adam step (1 in the reference code).
        labels: the labels σ is optimised with: ``true`` (the reference code, also for adversarial
            inputs), ``predicted`` (the model's own prediction on the input: label-free, deployable) or
            ``random-wrong`` (for each image a seeded label other than its true one: if the robust
            features then predict that label, the split encodes the label rather than the features).
    """

    protocol: Literal["paper", "batch-free", "population"] = setting(
        "paper", "bottleneck protocol: paper (the reference code's, threshold per batch), batch-free (threshold per image) "
        "or population (one label-free split for a data set)", "choice")
    beta: float = setting(0.3, "KL weight β", "non_negative")
    iterations: int = setting(200, "Adam steps on σ", "positive_int")
    lr: float = setting(0.1, "Adam learning rate on σ", "positive")
    noise: Literal["channel", "unit"] = setting("channel", "one ε per channel (reference code) or per unit (paper text)", "choice")
    kl: Literal["mean", "sum"] = setting("mean", "KL averaged (reference code) or summed (paper text) over units", "choice")
    seed: int = setting(0, "seed of the noise draws", "int")
    threshold: str = setting(
        "max", "rule for robust channels: max (the paper: σ² above the largest σ_z² of the batch, image or data set), "
        "channel (σ² above that channel's own σ_z²) or quantile:Q (σ² above the Q-quantile of σ_z², 0 < Q < 1)")
    samples: int = setting(1, "noise draws averaged per Adam step (variance reduction; costs that many head passes)", "positive_int")
    labels: Literal["true", "predicted", "random-wrong"] = setting(
        "true", "labels σ is optimised with: true (the paper), predicted (the model's own: label-free), or random-wrong "
        "(a seeded label other than the true one: the control for label dependence)", "choice")

    def __post_init__(self) -> None:
        check(self.protocol in PROTOCOLS, f"unknown protocol {self.protocol!r}: choose from {', '.join(PROTOCOLS)}")
        check(math.isfinite(self.beta) and self.beta >= 0, f"beta must be ≥ 0, got {self.beta}")
        check(self.iterations >= 1, f"iterations must be ≥ 1, got {self.iterations}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.noise in ("channel", "unit"), f"noise must be channel or unit, got {self.noise!r}")
        check(self.kl in ("mean", "sum"), f"kl must be mean or sum, got {self.kl!r}")
        threshold_quantile(self.threshold)  # raises UserError for a bad rule
        check(isinstance(self.samples, int) and self.samples >= 1, f"samples must be a positive integer, got {self.samples!r}")
        check(self.labels in LABEL_SOURCES, f"labels must be one of {', '.join(LABEL_SOURCES)}, got {self.labels!r}")
        check(self.protocol != "population" or self.labels != "random-wrong",
              "the population protocol takes true or predicted labels (random-wrong labels are a per-image control)")


@dataclass
class IBResult:
    """The outcome of the bottleneck on a batch (or, for ``population``, on a data set).

    Per-image protocols hold ``[B, C]`` tensors (one row per image); ``population``
    holds ``[C]`` tensors that apply to any image.

    Attributes:
        layer: the split layer's name.
        config: the :class:`IBConfig` used.
        sigma: optimised noise scale σ (not σ²), ``[B, C]`` or ``[C]``.
        var_z: σ_z², the spatial variance of Z, ``[B, C]`` or ``[C]``.
        threshold: T under :attr:`IBConfig.threshold`: ``[B]`` (one per image; equal within a ``paper`` batch) or
            ``[]`` for ``population``; under the ``channel`` rule T is σ_z² itself, ``[B, C]`` or ``[C]``.
            :func:`robust_channels` compares σ² with it.
        robust_mask: bool, σ² > T, same shape as ``sigma``.
        loss: final value of the objective (CE + β·KL), for the record.
        labels: int64 ``[B]``, the labels σ was optimised with (per-image protocols; see :attr:`IBConfig.labels`).
    """

    layer: str
    config: IBConfig
    sigma: Tensor
    var_z: Tensor
    threshold: Tensor
    robust_mask: Tensor
    loss: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)
    labels: Tensor | None = None

    @property
    def threshold_value(self) -> float | None:
        """T as one number: the population's, or the first image's (the whole batch's under ``paper``); None under
        the ``channel`` rule, whose T is each entry's own σ_z² (a threshold shaped like ``sigma``)."""
        return None if self.threshold.dim() == self.sigma.dim() else float(self.threshold.flatten()[0])

    @property
    def nonrobust_mask(self) -> Tensor:
        """bool, the complement of :attr:`robust_mask`."""
        return ~self.robust_mask

    def mask(self, channels: Literal["nonrobust", "robust"]) -> Tensor:
        """The ``channels`` mask (:attr:`nonrobust_mask` or :attr:`robust_mask`): what an NRF-family attack pushes."""
        check(channels in ("nonrobust", "robust"), f"channels must be nonrobust or robust, got {channels!r}")
        return self.nonrobust_mask if channels == "nonrobust" else self.robust_mask

    def robust(self, z: Tensor) -> Tensor:
        """``Z_r = i_r · Z``: non-robust channels zeroed. ``z`` is ``[B, C, H, W]``."""
        return apply_mask(z, self.robust_mask, self.layer)

    def nonrobust(self, z: Tensor) -> Tensor:
        """``Z_nr = i_nr · Z``: robust channels zeroed."""
        return apply_mask(z, self.nonrobust_mask, self.layer)

    def counts(self) -> dict[str, float]:
        """Numbers of robust and non-robust channels (mean per image for per-image protocols)."""
        r = self.robust_mask.float().sum(-1)
        c = self.robust_mask.shape[-1]
        return {"robust": float(r.mean()), "nonrobust": float(c - r.mean()), "channels": c}

    def select(self, index: Tensor | slice) -> "IBResult":
        """The result for a subset of the images (per-image protocols)."""
        if self.sigma.dim() == 1:
            return self
        return IBResult(self.layer, self.config, self.sigma[index], self.var_z[index], self.threshold[index],
                        self.robust_mask[index], self.loss, dict(self.extra), None if self.labels is None else self.labels[index])

    def save(self, path: str | Path) -> None:
        """Write the result as safetensors (tensors) + JSON metadata, atomically."""
        meta = {"format": "nonrobust-ib", "version": 1, "layer": self.layer, "config": asdict(self.config),
                "loss": self.loss, "extra": self.extra, "counts": self.counts()}
        tensors = {"sigma": self.sigma, "var_z": self.var_z, "threshold": self.threshold, "robust_mask": self.robust_mask.to(torch.uint8)}
        if self.labels is not None:
            tensors["labels"] = self.labels
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "IBResult":
        """Read a result written by :meth:`save`; :class:`UserError` for other files."""
        t, meta = load_tensors(path, device)
        if meta.get("format") != "nonrobust-ib":
            raise UserError(f"{path}: not a bottleneck split file (written by `nonrobust split`)")
        return cls(meta["layer"], IBConfig(**meta["config"]), t["sigma"], t["var_z"], t["threshold"],
                   t["robust_mask"].bool(), meta.get("loss", float("nan")), meta.get("extra", {}), t.get("labels"))


def apply_mask(z: Tensor, mask: Tensor, layer: str = "") -> Tensor:
    """``i · Z``: the channels of features ``z`` ``[B, C, H, W]`` where the bool ``mask`` is False set to zero.

    ``mask`` is one mask per image, ``[B, C]``, or one for every image, ``[C]``.
    """
    require_4d(z, layer)
    m = mask.to(device=z.device, dtype=z.dtype)
    if m.dim() == 1:
        check(m.shape[0] == z.shape[1], f"mask has {m.shape[0]} channels, features have {z.shape[1]}")
        return z * m.view(1, -1, 1, 1)
    check(m.shape == z.shape[:2], f"mask of shape {list(m.shape)} does not fit features {list(z.shape)}")
    return z * m[:, :, None, None]


def gaussian_kl(var_z: Tensor, sigma_sq: Tensor) -> Tensor:
    """KL(N(·, σ_z²) ‖ N(·, σ²)) per unit, with 1e-10 added to both variances (docs/method.md §2)."""
    a, b = var_z + VAR_EPS, sigma_sq + VAR_EPS
    return 0.5 * (a / b + torch.log(b / a) - 1)


def spatial_variance(z: Tensor) -> Tensor:
    """Unbiased variance of ``z [B, C, H, W]`` over its spatial axes, ``[B, C]``.

    A 1×1 feature map has no spatial variance: it is taken as 0 (with a warning).
    """
    if z.shape[2] * z.shape[3] < 2:
        warnings.warn("the split layer's feature map is 1×1: spatial variance σ_z² is taken as 0", stacklevel=3)
        return torch.zeros(z.shape[:2], dtype=z.dtype, device=z.device)
    flat = z.flatten(2)
    return (flat - flat.mean(2, keepdim=True)).square_().sum(2) / (flat.shape[2] - 1)


def _check_features(z: Tensor, split: LayerSplit) -> None:
    require_4d(z, split.layer, split.model)
    if not torch.isfinite(z).all():
        raise UserError(f"the features at layer {split.layer!r} contain NaN or inf: check the model and the inputs")


def _check_images(x: Tensor) -> None:
    """The bottleneck's inputs: NaN or inf is an error; values outside [0,1] a warning.

    Only a warning, because the bottleneck also serves models whose inputs are not
    images; for an image model they are almost always normalised tensors fed to a
    model that normalises itself.
    """
    check(bool(torch.isfinite(x).all()), "the bottleneck's input images contain NaN or inf pixels: check the data")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        warnings.warn(f"the bottleneck's inputs lie in [{lo:.3g}, {hi:.3g}], not [0,1]: for an image model pass images, "
                      "not normalised tensors (normalisation lives inside the model)", stacklevel=3)


class _PerImageNoise:
    """ε for each image from its own generator, so an image's draws do not depend on its batch.

    Channel noise is drawn up front, ``[iterations, C, 1, 1]`` per image in one call
    (cheap: iterations × C numbers); unit noise, far larger, is drawn step by step.
    """

    def __init__(self, indices: Tensor, seed: int, shape: tuple[int, ...], iterations: int, device: torch.device) -> None:
        """``iterations``: how many draws (the bottleneck's iterations × its samples per step)."""
        self.gens = [make_generator(index_seed(seed, int(i)), device) for i in indices.tolist()]
        self.shape, self.device = shape, device
        self.table = None
        if shape[1:] == (1, 1):
            self.table = torch.stack([torch.randn((iterations, *shape), generator=g, device=device) for g in self.gens], 1)

    def __call__(self, step: int) -> Tensor:
        if self.table is not None:
            return self.table[step]
        return torch.stack([torch.randn(self.shape, generator=g, device=self.device) for g in self.gens])


def distill(
    split: LayerSplit,
    x: Tensor,
    y: Tensor,
    config: IBConfig = IBConfig(),
    *,
    indices: Tensor | None = None,
    noise: Tensor | None = None,
) -> IBResult:
    """Run the bottleneck on one batch (protocols ``paper`` and ``batch-free``).

    Args:
        split: the model split at the layer to analyse.
        x: images ``[B, C, H, W]`` in [0,1] on the model's device.
        y: labels ``int64 [B]`` (the true labels, also for adversarial inputs).
        config: :class:`IBConfig`; ``population`` is :func:`distill_population`'s.
        indices: each image's index in its data set (default ``0 … B−1``); seeds its noise.
        noise: pre-drawn ε of shape ``[iterations, B, C, 1, 1]`` (``[iterations, B, C, H, W]``
            for unit noise), for exact reproduction of another implementation.

    Returns:
        :class:`IBResult` with ``[B, C]`` tensors.
    """
    check(config.protocol != "population", "the population protocol works on a data set: use distill_population")
    check(x.dim() == 4 and y.dim() == 1 and x.shape[0] == y.shape[0], f"need images [B,C,H,W] and labels [B], got {list(x.shape)} and {list(y.shape)}")
    _check_images(x)
    with frozen(split.model), torch.no_grad():
        z, ctx = split.features_and_context(x)
    _check_features(z, split)
    var_z = spatial_variance(z)
    idx = torch.arange(x.shape[0], device="cpu") if indices is None else indices.cpu()  # indices seed the noise: CPU by design
    shape = (z.shape[1], 1, 1) if config.noise == "channel" else tuple(z.shape[1:])
    draws = config.iterations * config.samples  # draw number step·samples + k is the k-th sample of Adam step `step`
    if noise is not None:
        check(noise.shape == (draws, z.shape[0], *shape), f"noise must have shape {[draws, z.shape[0], *shape]}")
        draw = lambda i: noise[i].to(z)  # noqa: E731
    else:
        draw = _PerImageNoise(idx, config.seed, shape, draws, z.device)
    targets = _targets(split, z, ctx, y.to(z.device), config, idx)
    with frozen(split.model):
        sigma, loss = _optimise_sigma(split, z, ctx, targets, var_z, config, draw)
    threshold = _threshold(var_z, config)
    robust = robust_channels(sigma, threshold)
    _warn_degenerate(robust)
    return IBResult(split.layer, config, sigma, var_z, threshold, robust, loss, {"n": x.shape[0]}, targets)


def _targets(split: LayerSplit, z: Tensor, ctx: tuple[Any, ...], y: Tensor, config: IBConfig, indices: Tensor) -> Tensor:
    """The labels σ is optimised with (:attr:`IBConfig.labels`): ``y``, the head's prediction, or a seeded wrong label.

    Image ``i``'s wrong label comes from its own generator, seeded by ``(seed, "wrong-label", index[i])``.
    """
    if config.labels == "true":
        return y
    with torch.no_grad(), frozen(split.model):
        logits: Tensor = split.head(z, ctx)
    if config.labels == "predicted":
        return logits.argmax(1)
    return wrong_labels(y, logits.shape[1], seed=config.seed, indices=indices)


def wrong_labels(y: Tensor, classes: int, *, seed: int, indices: Tensor) -> Tensor:
    """For each image a seeded label other than its own: the ``random-wrong`` labels of :attr:`IBConfig.labels`.

    Image ``i``'s wrong label is ``(y[i] + s) mod classes`` with ``s`` uniform in ``1 … classes − 1`` from its own
    generator, seeded by ``(seed, "wrong-label", indices[i])``: the same label whichever batch the image is in.
    ``y`` is int64 ``[B]``, ``indices`` the images' data-set indices ``[B]``; returns int64 ``[B]`` on ``y``'s device.
    """
    check(classes >= 2, "random-wrong labels need at least 2 classes")
    shift = torch.stack([torch.randint(1, classes, (), device="cpu", generator=make_generator(derive_seed(seed, "wrong-label", int(i)), "cpu"))
                         for i in indices.tolist()]).to(y.device)
    return (y + shift) % classes


def _threshold(var_z: Tensor, config: IBConfig) -> Tensor:
    """T for ``var_z`` (``[B, C]``, or ``[C]`` for population) under ``config.threshold`` (see :attr:`IBResult.threshold`)."""
    if config.threshold == "channel":
        return var_z.clone()
    q = threshold_quantile(config.threshold)
    pooled = config.protocol != "batch-free"  # paper: over the whole batch; population: over the data set's channels
    values = var_z.flatten() if pooled else var_z
    t = values.amax(-1) if q is None else torch.quantile(values.double(), q, dim=-1).to(var_z.dtype)
    return t.expand(var_z.shape[0]).clone() if pooled and var_z.dim() == 2 else t


def robust_channels(sigma: Tensor, threshold: Tensor) -> Tensor:
    """The robust mask ``σ² > T`` for ``sigma`` ``[B, C]`` or ``[C]`` and a threshold as :attr:`IBResult.threshold` holds it."""
    t = threshold if threshold.dim() == sigma.dim() else threshold.unsqueeze(-1)
    return sigma.pow(2) > t


def _warn_degenerate(robust: Tensor) -> None:
    """Warn when the split is all-robust or all-non-robust (the R or NR head then sees only zeros)."""
    if bool(robust.all()):
        warnings.warn("every channel came out robust (σ² > T everywhere): the non-robust features are all zero; a larger β (--beta) gives fewer "
                      "robust channels", stacklevel=3)
    elif not bool(robust.any()):
        warnings.warn("no channel came out robust (σ² ≤ T everywhere): the robust features are all zero; a smaller β (--beta) gives more robust "
                      "channels", stacklevel=3)


class _IBLoss:
    """CE + β·KL for fixed features; the parts of the KL that do not depend on σ are computed once.

    KL summed over a channel row = ½ [Σ a/b + Σ log b − Σ (log a + 1)] with
    a = σ_z² + 1e-10 and b = σ² + 1e-10 (:func:`gaussian_kl`, regrouped).
    """

    def __init__(self, split: LayerSplit, z: Tensor, ctx: tuple[Any, ...], y: Tensor, var_z: Tensor, config: IBConfig) -> None:
        self.split, self.z, self.ctx, self.y, self.config = split, z, ctx, y, config
        self.a = var_z + VAR_EPS
        self.const_total = float((self.a.log() + 1).sum())
        units = z.shape[2] * z.shape[3] if config.noise == "unit" else 1  # σ_z² is per channel: equal KL per unit
        self.kl_scale = 0.5 * (units if config.kl == "sum" else 1 / var_z.shape[1])

    def __call__(self, sigma: Tensor, eps: Tensor, per_image: bool) -> Tensor:
        """The loss value. ``per_image``: the sum of each image's own loss (images do not interact); else the batch mean."""
        s = sigma.expand_as(self.a)
        logits = self.split.head(torch.addcmul(self.z, s[:, :, None, None], eps), self.ctx, consume=True)
        b = s.square() + VAR_EPS
        kl = self.kl_scale * ((self.a / b + b.log()).sum() - self.const_total)
        total = F.cross_entropy(logits, self.y, reduction="sum") + self.config.beta * kl
        return total if per_image else total / self.z.shape[0]

    def grad(self, lam: Tensor, eps: Tensor, per_image: bool) -> Tensor:
        """∂loss/∂λ for σ = softplus(λ) (``[B, C]``, or ``[C]`` shared by the batch).

        Autograd runs only through the head and the cross-entropy, down to the noisy
        features ``Z̃ = Z + σ·ε``; the rest is closed-form: ∂/∂σ = Σ_space ∂/∂Z̃ · ε,
        the KL's ∂/∂σ ½ (a/b + log b) = σ (b − a) / b², and ∂σ/∂λ = sigmoid(λ).
        Fewer operations per step matter here: the loop's cost is mostly per-operation
        overhead and torch's slow kernels for small feature maps (BENCHMARKS.md).
        """
        with torch.no_grad():
            s = F.softplus(lam).expand_as(self.a)
            noisy = torch.addcmul(self.z, s[:, :, None, None], eps)
        with torch.enable_grad():  # also when the caller is under torch.no_grad()
            noisy.requires_grad_(True)
            # `+ 0`: the head may work in place on its input (ReLU(inplace=True)), which a leaf forbids
            logits = self.split.head(noisy + 0, self.ctx, consume=True)
            (g_noisy,) = torch.autograd.grad(F.cross_entropy(logits, self.y, reduction="sum"), noisy)
        with torch.no_grad():
            if eps.shape[2:] == (1, 1):  # channel noise: ε is constant over space
                g = _spatial_sum(g_noisy).mul_(eps.view(s.shape))
            else:
                g = _spatial_sum(g_noisy.mul_(eps))
            b = s.square().add_(VAR_EPS)
            g.addcdiv_(s * (b - self.a), b.square(), value=2 * self.config.beta * self.kl_scale)
            if lam.dim() == 1:
                g = g.sum(0)
            g.mul_(torch.sigmoid(lam))
            return g if per_image else g.div_(self.z.shape[0])


def _spatial_sum(t: Tensor) -> Tensor:
    """``t [B, C, H, W]`` summed over space: ``[B, C]``.

    On maps of up to 16 units a matrix-vector product: torch's reduction over a
    short innermost axis is much slower there (a 2×2 map of [128, 256]: about
    40 µs against 80–130 µs on the 2-core CPU of BENCHMARKS.md).
    """
    b, c, units = t.shape[0], t.shape[1], t.shape[2] * t.shape[3]
    if units <= 16:
        return (t.reshape(b * c, units) @ t.new_ones(units)).view(b, c)
    return t.sum((2, 3))


class _Adam:
    """Adam (Kingma & Ba) on one tensor, as ``torch.optim.Adam`` with its defaults computes it.

    Written out because the optimiser object's per-step bookkeeping costs more than
    the update itself at the bottleneck's sizes (200 steps on ``[B, C]``).
    """

    def __init__(self, param: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = 0

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        # torch's m̂ / (√v̂ + ε) with the bias corrections folded into two scalars
        root_bc2 = math.sqrt(1 - b2**self.t)
        denom = self.v.sqrt().add_(self.eps * root_bc2)
        self.param.addcdiv_(self.m, denom, value=-self.lr * root_bc2 / (1 - b1**self.t))


def _optimise_sigma(split: LayerSplit, z: Tensor, ctx: tuple[Any, ...], y: Tensor, var_z: Tensor, config: IBConfig,
                    draw: Callable[[int], Tensor]) -> tuple[Tensor, float]:
    lam = torch.zeros(var_z.shape, device=z.device)
    opt = _Adam(lam, config.lr)
    loss_fn = _IBLoss(split, z, ctx, y, var_z, config)
    # `paper` takes the batch mean of the loss, as the reference code does (so σ matches it to float precision: the
    # scale reaches Adam's update only through its ε); the other protocols sum each image's own loss, so that an
    # image's σ does not depend on its batch at all
    per_image = config.protocol != "paper"
    for step in range(config.iterations):
        g = loss_fn.grad(lam, draw(step * config.samples), per_image=per_image)
        for k in range(1, config.samples):  # the mean gradient over the step's noise draws
            g += loss_fn.grad(lam, draw(step * config.samples + k), per_image=per_image)
        opt.step(g / config.samples if config.samples > 1 else g)
    sigma = F.softplus(lam.detach())
    if not torch.isfinite(sigma).all():
        raise UserError("the bottleneck diverged (non-finite σ): lower --lr or --beta")
    with torch.no_grad():
        loss = loss_fn(sigma, draw(config.iterations * config.samples - 1), per_image=True)
    return sigma, float(loss) / z.shape[0]


def distill_population(
    split: LayerSplit,
    batches: Iterable[tuple[Tensor, Tensor]],
    config: IBConfig = IBConfig(protocol="population"),
    *,
    total: int | None = None,
    progress: bool = True,
) -> IBResult:
    """The ``population`` protocol: one σ per channel for a whole data set.

    ``batches`` yields ``(x [B,C,H,W] in [0,1], y [B])``, the same images each time it is
    iterated. One pass collects σ_z² (the mean over images of each channel's spatial
    variance); then the mini-batches are cycled through for ``config.iterations`` Adam
    steps, one per step (labels are used here, never at use time). The first pass keeps
    each batch's features while they total at most :data:`POPULATION_CACHE_BYTES`, so a
    fit on a few thousand images runs the model's lower part once per image instead of
    once per step (the result is the same: the features are computed by the same frozen
    model); beyond that the batches are iterated again and memory does not grow with
    the data set.

    Returns:
        :class:`IBResult` with ``[C]`` tensors; ``threshold`` is a scalar.
    """
    check(config.protocol == "population", "distill_population needs IBConfig(protocol='population')")
    if iter(batches) is batches:
        raise TypeError("batches must be re-iterable (a list, or an object whose __iter__ starts over), not a one-shot iterator")
    model = split.model
    var_sum, n = None, 0
    cache: list[tuple[tuple[int, ...], _IBLoss]] | None = []  # each batch's noise shape and loss, made once
    cached_bytes = 0

    def prepared(z: Tensor, ctx: tuple[Any, ...], y: Tensor) -> tuple[tuple[int, ...], _IBLoss]:
        """One mini-batch's noise shape and loss (its targets and the KL's constant parts), for every step it serves."""
        shape = (z.shape[0], z.shape[1], 1, 1) if config.noise == "channel" else tuple(z.shape)
        targets = _targets(split, z, ctx, y.to(z.device), config, torch.arange(z.shape[0], device="cpu"))
        return shape, _IBLoss(split, z, ctx, targets, spatial_variance(z), config)

    with frozen(model), torch.no_grad():
        for x, y in tqdm(batches, desc="σ_z²", total=total, unit="batch", disable=not progress, leave=False):
            _check_images(x)
            z, ctx = split.features_and_context(x)
            _check_features(z, split)
            v = spatial_variance(z).sum(0)
            var_sum = v if var_sum is None else var_sum + v
            n += x.shape[0]
            if cache is not None:
                cached_bytes += _nbytes((z, ctx))
                if cached_bytes <= POPULATION_CACHE_BYTES:
                    cache.append(prepared(z, ctx, y))
                else:
                    cache = None  # too large to keep: the Adam steps iterate the batches again
    check(n > 0, "no images for the population bottleneck")
    assert var_sum is not None  # n > 0: the loop above ran
    var_pop = var_sum / n
    gen = make_generator(config.seed, var_pop.device)
    lam = torch.zeros(var_pop.shape, device=var_pop.device)
    opt = _Adam(lam, config.lr)
    step = 0
    bar = tqdm(total=config.iterations, desc="population σ", disable=not progress, leave=False)

    def losses() -> Iterator[tuple[tuple[int, ...], _IBLoss]]:
        if cache is not None:
            yield from cache
            return
        for x, y in batches:
            with torch.no_grad():
                yield prepared(*split.features_and_context(x), y)

    with frozen(model):
        while step < config.iterations:
            seen = False
            for shape, loss_fn in losses():
                seen = True
                g: Tensor | int = 0
                for _ in range(config.samples):  # the mean gradient over the step's noise draws
                    eps = torch.randn(shape, generator=gen, device=lam.device)
                    g = g + loss_fn.grad(lam, eps, per_image=False)
                assert isinstance(g, Tensor)  # config.samples ≥ 1
                opt.step(g / config.samples if config.samples > 1 else g)
                step += 1
                bar.update(1)
                if step >= config.iterations:
                    break
            check(seen, "no images for the population bottleneck")
    bar.close()
    sigma = F.softplus(lam.detach())
    with torch.no_grad(), frozen(model):
        last = float(loss_fn(sigma[None, :], eps, per_image=False))  # on the last mini-batch
    threshold = _threshold(var_pop, config)
    robust = robust_channels(sigma, threshold)
    _warn_degenerate(robust)
    return IBResult(split.layer, config, sigma, var_pop, threshold, robust, last, {"n": n})


def _nbytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (tensors, or tuples and lists of them, nested)."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    return 0


def seed_agreement(masks: Tensor) -> dict[str, Tensor]:
    """How far ``K`` splits of the same images with different noise seeds agree on the robust sets.

    Args:
        masks: bool ``[K, B, C]`` (the robust masks of ``K ≥ 2`` seeds for ``B`` images; a population
            split is one "image": ``[K, 1, C]``).

    Returns:
        Per image, ``[B]`` each: ``jaccard``, the mean over the ``K(K−1)/2`` pairs of seeds of
        ``|R_i ∩ R_j| / |R_i ∪ R_j|`` — a pair whose two sets are both empty counts as 1 (they agree that
        no channel is robust) and is also counted in ``both_empty``, the share of pairs where it happened;
        ``every`` and ``any``, the numbers of channels robust under every seed and under at least one.
    """
    check(masks.dim() == 3 and masks.shape[0] >= 2, f"need robust masks [K ≥ 2, B, C], got {list(masks.shape)}")
    k = masks.shape[0]
    jaccard = torch.zeros(masks.shape[1], dtype=torch.float64, device=masks.device)
    both_empty = torch.zeros_like(jaccard)
    for i in range(k):
        for j in range(i + 1, k):
            inter = (masks[i] & masks[j]).sum(-1).double()
            union = (masks[i] | masks[j]).sum(-1).double()
            jaccard += torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
            both_empty += (union == 0).double()
    pairs = k * (k - 1) / 2
    return {"jaccard": jaccard / pairs, "both_empty": both_empty / pairs, "every": masks.all(0).sum(-1), "any": masks.any(0).sum(-1)}


def summarise_agreement(agreement: dict[str, Tensor], channels: int, seeds: int) -> dict[str, float | int | str | None]:
    """The summary every split reports of :func:`seed_agreement` (over all the images it covers)."""
    entries = agreement["every"].numel() * channels
    any_robust = int(agreement["any"].sum())
    nonempty = float((1 - agreement["both_empty"]).sum())  # in units of "all pairs of one image"
    return {"seeds": seeds, "images": int(agreement["jaccard"].numel()),
            "jaccard_mean": float(agreement["jaccard"].mean()),
            "pairs_both_empty": float(agreement["both_empty"].mean()),
            # the mean over the pairs with at least one robust channel: each empty pair added exactly 1 to the image's sum
            "jaccard_nonempty_pairs": float((agreement["jaccard"] - agreement["both_empty"]).sum()) / nonempty if nonempty else None,
            "robust_every_seed": int(agreement["every"].sum()) / entries,
            "robust_any_seed": any_robust / entries,
            "every_of_any": int(agreement["every"].sum()) / any_robust if any_robust else None,
            "empty_sets": "a pair of seeds whose robust sets are both empty counts as agreement (Jaccard 1) in jaccard_mean; "
                          "pairs_both_empty is the share of such pairs, and jaccard_nonempty_pairs leaves them out"}


def noise_seeds(config: IBConfig, k: int) -> list[IBConfig]:
    """``config`` with the noise seeds ``config.seed``, ``+ 1``, …, ``+ k − 1``: the splits a stability measurement compares."""
    return [replace(config, seed=config.seed + j) for j in range(k)]


def describe_agreement(summary: Mapping[str, Any]) -> str:
    """One sentence of a :func:`summarise_agreement` summary (the ``split`` printout and the report say it alike)."""
    nonempty = "—" if summary["jaccard_nonempty_pairs"] is None else f"{summary['jaccard_nonempty_pairs']:.3f}"
    return (f"stability over {summary['seeds']} noise seeds: mean Jaccard overlap of each image's robust sets "
            f"{summary['jaccard_mean']:.3f} (a pair of empty sets counts as 1: {summary['pairs_both_empty']:.1%} of pairs; without "
            f"them {nonempty}); entries robust under every seed {summary['robust_every_seed']:.2%}, under any "
            f"{summary['robust_any_seed']:.2%}")


class ReiterableBatches:
    """Re-iterable batches: every ``iter()`` starts the data set over."""

    def __init__(self, make: Callable[[], Iterable[tuple[Tensor, Tensor]]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.make())


def masked_predictions(split: LayerSplit, result: IBResult | Tensor, x: Tensor) -> dict[str, Tensor]:
    """Predicted classes from ``f_l+(Z)``, ``f_l+(Z_r)`` and ``f_l+(Z_nr)`` for images ``x``.

    ``result`` holds masks for exactly these images (per-image protocols) or one ``[C]`` split
    (``population``); or it is a robust mask itself, bool ``[B, C]`` or ``[C]`` (the controls of
    :mod:`nonrobust.sanity`). Returns ``{"int", "robust", "nonrobust"}``, each ``int64 [B]``.
    """
    robust = result.robust_mask if isinstance(result, IBResult) else result.bool()
    with frozen(split.model), torch.no_grad():
        z, ctx = split.features_and_context(x)
        return {
            "int": split.head(z, ctx).argmax(1),
            "robust": split.head(apply_mask(z, robust, split.layer), ctx).argmax(1),
            "nonrobust": split.head(apply_mask(z, ~robust, split.layer), ctx).argmax(1),
        }
