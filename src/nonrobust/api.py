"""The front door: the few calls most users need, re-exported by ``import nonrobust``.

Each function here is a thin, documented entry point to one module (models,
data, split, bottleneck, attacks, evaluation, report); the modules hold the
rest. Every example runs offline on the shipped model and CIFAR-10 slice, and
the test suite runs them (``tests/test_api.py``)::

    >>> import torch
    >>> import nonrobust as nr
    >>> model = nr.load_model("cifar10-small-at")
    >>> x, y = nr.load_data("cifar10-slice", n=8).tensors()
    >>> s = nr.split_model(model)
    >>> res = nr.distill(s, x, y, iterations=20)
    >>> bool((res.robust(s.features(x)) + res.nonrobust(s.features(x)) == s.features(x)).all())
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from .errors import check

if TYPE_CHECKING:
    from .attacks import Attack
    from .bottleneck import IBConfig, IBResult
    from .data import ImageDataset
    from .evaluation import Evaluation
    from .report import ReportSettings
    from .split import LayerSplit

__all__ = ["load_model", "load_data", "split_model", "distill", "make_attack", "evaluate_attacks", "run_report"]


def load_model(model: str | os.PathLike[str], device: str | torch.device = "cpu", *,
               input_shape: tuple[int, int, int] | None = None, **options: Any) -> nn.Module:
    """A model ready to analyse: a shipped one by name, a nonrobust checkpoint, or a model from elsewhere.

    Args:
        model: a pretrained name (``nonrobust models list``: e.g. ``"cifar10-small-at"``,
            ``"cifar10-vgg16-at"``), the path of a ``.safetensors`` checkpoint written by
            nonrobust (nothing is unpickled), ``"ARCH=weights.pt"`` (a PyTorch state dict of a
            registered architecture, read with ``weights_only=True``), ``"robustbench:NAME"`` or
            ``"file.py:function"`` (runs that file; needs ``input_shape``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` ...
        input_shape: ``(C, H, W)`` of the images, for ``file.py:function`` models.
        **options: :class:`nonrobust.foreign.ModelOptions` fields for the foreign routes:
            ``normalize="cifar10"``, ``num_classes=100``, ``arch_options="depth=34"``, ``model_dir=...``.

    Returns:
        The model in eval mode on ``device``, mapping images ``[B, C, H, W]`` in [0, 1] to
        logits ``[B, K]`` (normalisation is inside it). ``model.nonrobust_meta`` holds its
        metadata: classes, input shape, split layer, training recipe, measured accuracies.

    Raises:
        UserError: an unknown name, a missing or foreign file.

    Example:
        >>> import nonrobust as nr
        >>> model = nr.load_model("cifar10-small-at")
        >>> meta = model.nonrobust_meta
        >>> meta.arch, meta.split_layer, meta.input_shape
        ('small_cnn', 'features.23', (3, 32, 32))
    """
    from dataclasses import fields

    from .foreign import ModelOptions
    from .loading import resolve

    known = [f.name for f in fields(ModelOptions)]
    check(set(options) <= set(known), f"load_model: unknown option(s) {', '.join(sorted(set(options) - set(known)))}: "
                                      f"the options are {', '.join(known)}")
    return resolve(model, device, input_shape, options=ModelOptions(**options))[0]


def load_data(name: str, split: str = "test", *, n: int | None = None, data_dir: str | os.PathLike[str] | None = None,
              image_size: int | None = None) -> ImageDataset:
    """A labelled image data set, in memory.

    Args:
        name: ``cifar10``, ``cifar100``, ``svhn``, ``tiny-imagenet`` (read from ``data_dir``;
            ``nonrobust data prepare NAME`` downloads them), ``cifar10-slice`` (1,000 CIFAR-10 test
            images shipped with the package), ``folder:PATH`` (one sub-folder of images per class)
            or ``npz:PATH`` (uint8 ``x_train, y_train, x_test, y_test``).
        split: ``"train"`` or ``"test"``.
        n: keep the first ``n`` images (class-balanced where the files allow).
        data_dir: where the registered data sets live (default ``$NONROBUST_DATA``, else
            ``~/.cache/nonrobust/data``).
        image_size: resize every image to ``image_size × image_size``.

    Returns:
        An :class:`~nonrobust.data.ImageDataset`: ``.tensors()`` gives float images
        ``[N, C, H, W]`` in [0, 1] and int64 labels ``[N]``; ``.batches(B)`` streams them.

    Example:
        >>> import nonrobust as nr
        >>> ds = nr.load_data("cifar10-slice", n=20)
        >>> x, y = ds.tensors()
        >>> tuple(x.shape), x.dtype, float(x.min()) >= 0 and float(x.max()) <= 1
        ((20, 3, 32, 32), torch.float32, True)
        >>> ds.classes[:3]
        ['airplane', 'automobile', 'bird']
    """
    from .data import load_dataset

    return load_dataset(name, split, data_dir=data_dir, n=n, image_size=image_size)


def split_model(model: nn.Module, layer: str | None = None) -> LayerSplit:
    """Cut ``model`` at ``layer`` into ``f = f_l+ ∘ f_l`` (method.md §1).

    Args:
        model: any ``nn.Module`` classifier.
        layer: a module name (``nonrobust models layers MODEL`` lists them); default: the layer
            recorded in the model's metadata (the paper's layer for the registered architectures).

    Returns:
        A :class:`~nonrobust.split.LayerSplit`: ``features(x)`` gives ``Z = f_l(x)``
        ``[B, C, H, W]``; ``features_and_context(x)`` also what else crosses the cut;
        ``head(z, context)`` gives the logits.

    Raises:
        UserError: an unknown layer, or no layer given for a model without metadata.

    Example:
        >>> import nonrobust as nr
        >>> model = nr.load_model("cifar10-small-at")
        >>> x, _ = nr.load_data("cifar10-slice", n=4).tensors()
        >>> s = nr.split_model(model)
        >>> z, ctx = s.features_and_context(x)
        >>> s.layer, tuple(z.shape)
        ('features.23', (4, 256, 2, 2))
        >>> bool(torch.allclose(s.head(z, ctx), model(x), atol=1e-5))
        True
    """
    from .errors import check
    from .split import split_model as _split

    if layer is None:
        meta = getattr(model, "nonrobust_meta", None)
        check(meta is not None, "this model has no metadata naming its split layer: pass layer= (see `nonrobust models layers`)")
        assert meta is not None
        layer = meta.split_layer
    return _split(model, layer)


def distill(split: LayerSplit, x: Tensor, y: Tensor, config: IBConfig | None = None, *, indices: Tensor | None = None,
            **settings: Any) -> IBResult:
    """Split one batch's channels into robust and non-robust ones with the information bottleneck (method.md §2).

    Args:
        split: the model cut at a layer (:func:`split_model`).
        x: images ``[B, C, H, W]`` in [0, 1] on the model's device; ``y``: their true labels ``[B]``.
        config: an :class:`~nonrobust.bottleneck.IBConfig`; or give its fields as ``settings``
            (``protocol`` ``"paper"`` or ``"batch-free"``, ``beta`` 0.3, ``iterations`` 200, ``lr`` 0.1,
            ``noise``, ``kl``, ``seed``). For the label-free ``population`` protocol use
            :func:`nonrobust.bottleneck.distill_population`.
        indices: each image's index in its data set (default ``0 … B−1``); it seeds the image's noise.

    Returns:
        An :class:`~nonrobust.bottleneck.IBResult`: ``robust_mask`` / ``nonrobust_mask`` (bool
        ``[B, C]``, a partition of the channels), ``sigma`` ``[B, C]``, ``threshold`` ``[B]``;
        ``robust(z)`` and ``nonrobust(z)`` mask features, and ``Z = robust(Z) + nonrobust(Z)``.

    Example:
        >>> import nonrobust as nr
        >>> model = nr.load_model("cifar10-small-at")
        >>> x, y = nr.load_data("cifar10-slice", n=8).tensors()
        >>> res = nr.distill(nr.split_model(model), x, y, beta=0.3, iterations=20)
        >>> tuple(res.robust_mask.shape), bool((res.robust_mask ^ res.nonrobust_mask).all())
        ((8, 256), True)
    """
    from .bottleneck import IBConfig
    from .bottleneck import distill as _distill
    from .errors import check

    check(config is None or not settings, "give either config= or the bottleneck's settings, not both")
    return _distill(split, x, y, config if config is not None else IBConfig(**settings), indices=indices)


def make_attack(name: str, **settings: Any) -> Attack:
    """A registered attack with its defaults, overridden by ``settings`` (method.md §4).

    Args:
        name: a name or display label of :data:`nonrobust.attacks.ATTACKS` (``pgd-20`` or ``PGD-20``; README's
            attack table, generated from the registry, describes each).
        **settings: e.g. ``eps`` (in [0, 1] pixel units), ``steps``, ``alpha``; the NRF family
            needs ``split=`` (:func:`split_model`).

    Returns:
        An attack: ``attack(model, x, y, generator=None)`` returns adversarial images of ``x``'s
        shape in [0, 1] (a bounded attack's lie inside its ball exactly) and leaves the model's
        mode and gradients as they were; ``attack.describe()`` gives every setting with its norm
        and budget.

    Example:
        >>> import torch, nonrobust as nr
        >>> model = nr.load_model("cifar10-small-at")
        >>> x, y = nr.load_data("cifar10-slice", n=8).tensors()
        >>> pgd = nr.make_attack("pgd-20", eps=8 / 255)
        >>> x_adv = pgd(model, x, y, generator=torch.Generator().manual_seed(0))
        >>> float((x_adv.double() - x.double()).abs().max()) <= 8 / 255
        True
        >>> pgd.describe()["steps"], pgd.norm
        (20, 'linf')
    """
    from .attacks import make_attack as _make

    return _make(name, **settings)


def evaluate_attacks(model: nn.Module, data: ImageDataset | Iterable[tuple[Tensor, Tensor]], attacks: Mapping[str, Attack], *,
                     batch_size: int = 128, seed: int = 0, progress: bool = False) -> Evaluation:
    """Clean and robust accuracy under each attack, the per-point worst case, and the measured perturbation sizes.

    Every attack runs on every image, as ``nonrobust attack`` runs it (one loop: for one seed and batch size the
    two give the same per-image results).

    Args:
        model: maps images in [0, 1] to logits.
        data: an :class:`~nonrobust.data.ImageDataset` (streamed in batches of ``batch_size`` on the
            model's device) or an iterable of ``(x [B, C, H, W], y [B])`` batches.
        attacks: display name → attack (:func:`make_attack`).
        seed: seeds every random start (batch ``i`` draws from ``(seed, i)``).

    Returns:
        a :class:`~nonrobust.evaluation.Evaluation`: ``{"n", "clean_accuracy", "worst_case_accuracy", "mode",
        "attacks": {name: {"settings", "robust_accuracy", "success_rate", "perturbation", "perturbation_changed",
        "perturbation_fooled", "seconds"}}}``; accuracies are fractions of ``n``, ``success_rate`` of the
        clean-correct images; each ``perturbation*`` is ``{"points", "linf_max", "l2_median", "l2_max", "nan",
        "min", "max"}`` over every image, the changed ones, and the fooled ones.

    Example:
        >>> import nonrobust as nr
        >>> model = nr.load_model("cifar10-small-at")
        >>> ds = nr.load_data("cifar10-slice", n=16)
        >>> res = nr.evaluate_attacks(model, ds, {"FGSM": nr.make_attack("fgsm")}, batch_size=8)
        >>> res["n"], res["attacks"]["FGSM"]["robust_accuracy"] <= res["clean_accuracy"]
        (16, True)
        >>> res["attacks"]["FGSM"]["perturbation"]["linf_max"] <= 8 / 255
        True
    """
    from .evaluation import evaluate_attacks as _evaluate

    if hasattr(data, "batches"):
        device = next(model.parameters(), torch.zeros(0, device="cpu")).device
        data = data.batches(batch_size, device=device)
    return _evaluate(model, data, dict(attacks), seed=seed, progress=progress)


def run_report(settings: ReportSettings | Mapping[str, Any], out_dir: str | os.PathLike[str], *, only: tuple[str, ...] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """The paper's tables and figures for one model and data set, as ``out_dir/report.html`` and ``results.json``.

    Args:
        settings: a :class:`~nonrobust.report.ReportSettings` or its fields as a mapping
            (``model`` and ``data`` are required; ``n``, ``attacks``, ``eps``, ``beta`` ...).
        out_dir: the report folder; every step is cached there, so a rerun (or a killed run
            restarted) only computes what changed.
        only: run these sections (``table1`` … ``sigma``) and what they need.

    Returns:
        The results (also written as ``results.json``); :class:`nonrobust.report.ReportResults` describes every key.

    Example:
        >>> import tempfile, nonrobust as nr
        >>> out = tempfile.mkdtemp()
        >>> res = nr.run_report(dict(model="cifar10-small-at", data="cifar10-slice", n=12, attacks=("fgsm",),
        ...                          device="cpu"), out, only=("table3",), progress=False)
        >>> res["table3"]["rows"][0]["label"], res["table3"]["n"]
        ('FGSM', 12)
    """
    from .report import ReportSettings
    from .report import run_report as _run

    if not isinstance(settings, ReportSettings):
        settings = ReportSettings(**dict(settings))
    return _run(settings, Path(out_dir), only=only, progress=progress)
