"""The paper's analyses of robust and non-robust features, streamed over batches.

* :func:`feature_accuracy` — Table 1: channel masks from the *clean* images,
  applied to the features of clean and adversarial images; accuracy of
  ``f_l+(Z̄)``, ``f_l+(i_r·Z̄)`` and ``f_l+(i_nr·Z̄)``.
* :func:`pooled_features` and :func:`tsne_embedding` — Fig. 2: spatially pooled
  ``Z_r`` and ``Z_nr`` of clean and adversarial images, embedded in 2-D.
* :func:`beta_sweep` — Fig. 5: robust / non-robust accuracy and channel counts
  against β.
* :func:`adversarial_agreement` — Table 2: on successfully attacked points,
  masks from the *adversarial* images (with the true labels); how often the
  non-robust features alone predict the adversarial label, and, as the
  contrast, how often the robust features do.

Masks come either from a per-image protocol (``paper`` or ``batch-free``: the
bottleneck runs on each batch, with labels) or from one ``population`` split
(:class:`~nonrobust.bottleneck.IBResult` with ``[C]`` masks, label-free at use
time). Every function takes the attacks as ``{display name: attack}`` and a seed;
batch ``i`` uses :func:`~nonrobust.evaluation.batch_generator` ``(seed, i)``.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import Attack
from .bottleneck import IBConfig, IBResult, distill, masked_predictions, noise_seeds, seed_agreement, summarise_agreement
from .errors import check
from .evaluation import attack_batch
from .runtime import frozen
from .split import LayerSplit
from .streams import StoredAdversarial

__all__ = ["feature_accuracy", "adversarial_agreement", "pooled_features", "tsne_embedding", "cluster_separation", "beta_sweep",
           "Adversarial"]


Adversarial = Attack | StoredAdversarial  # an attack to run, or its examples computed before


def adversarial_batch(source: Adversarial, model: nn.Module, x: Tensor, y: Tensor, batch: int, start: int, seed: int) -> Tensor:
    """Batch ``batch`` (images ``start …``) under ``source``: read from its file or attacked now."""
    if isinstance(source, StoredAdversarial):
        return source.rows(start, y)
    return attack_batch(source, model, x, y, seed=seed, batch=batch, start=start)


def _masks(split: LayerSplit, x: Tensor, y: Tensor, config: IBConfig | None, population: IBResult | None,
           indices: Tensor) -> IBResult:
    if population is not None:
        return population
    assert config is not None  # _protocol checked that one of the two is given
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an all-robust batch is a finding here, not a problem
        return distill(split, x, y, config, indices=indices)


def _protocol(config: IBConfig | None, population: IBResult | None) -> str:
    check((config is None) != (population is None), "pass either an IBConfig (per-image protocol) or a population split")
    if population is not None:
        check(population.sigma.dim() == 1, "population= needs a population split ([C] masks)")
        return "population"
    assert config is not None  # checked above: exactly one of the two is given
    check(config.protocol != "population", "for the population protocol pass its split as population=")
    return config.protocol


def feature_accuracy(
    model: nn.Module,
    split: LayerSplit,
    batches: Iterable[tuple[Tensor, Tensor]],
    attacks: dict[str, Adversarial],
    *,
    config: IBConfig | None = None,
    population: IBResult | None = None,
    seed: int = 0,
    total: int | None = None,
    progress: bool = True,
    stability: int = 1,
    label_control: bool = False,
) -> dict[str, Any]:
    """Table 1: accuracy of intermediate, robust and non-robust features, clean and under attack.

    Args:
        model: maps [0,1] images to logits; ``split`` is that model cut at a layer.
        batches: ``(x [B,C,H,W] in [0,1], y [B])`` on the model's device.
        attacks: display name -> attack (each run on every image), or the
            :class:`~nonrobust.streams.StoredAdversarial` examples of these images.
        config: a per-image protocol (``paper``/``batch-free``) — masks from each clean batch with its labels;
        population: or one population split (label-free masks).
        stability: per-image protocols: also split each clean batch with ``stability − 1`` more noise
            seeds and report how the robust sets agree (:func:`~nonrobust.bottleneck.summarise_agreement`).
        label_control: per-image protocols: also make each image's masks with a seeded wrong label ŷ
            (``labels="random-wrong"``) and count how often the heads on Z_r and Z_nr predict ŷ, and y.

    Returns:
        ``{"protocol", "threshold", "n", "rows": {"clean" | attack name: {"int", "robust", "nonrobust"}}, "channels"}``:
        accuracies in [0,1] over all ``n`` images; ``threshold`` the rule the masks used; ``channels`` the mean
        numbers of robust and non-robust channels per image; with the options, ``stability`` and ``label_control``
        (shares of all ``n`` images).
    """
    protocol = _protocol(config, population)
    per_image = population is None
    names = ["clean", *attacks]
    correct = {k: {"int": 0, "robust": 0, "nonrobust": 0} for k in names}
    n, robust_channels, channels = 0, 0.0, 0
    agreements: list[dict[str, Tensor]] = []
    control = {f"{k}_predicts_{t}": 0 for k in ("robust", "nonrobust") for t in ("mask_label", "true_label")}
    bar = tqdm(total=total, desc=f"Table 1 ({protocol})", unit="img", disable=not progress, leave=False)
    for i, (x, y) in enumerate(batches):
        indices = torch.arange(n, n + x.shape[0], device="cpu")  # data-set indices seed the noise: CPU by design
        res = _masks(split, x, y, config, population, indices)
        if per_image and stability > 1:
            assert config is not None  # per-image: _protocol checked that a config is given
            runs = [res] + [_masks(split, x, y, c, None, indices) for c in noise_seeds(config, stability)[1:]]
            agreements.append({k: v.cpu() for k, v in seed_agreement(torch.stack([r.robust_mask for r in runs])).items()})
        if per_image and label_control:
            assert config is not None  # per-image: _protocol checked that a config is given
            wrong = _masks(split, x, y, replace(config, labels="random-wrong"), None, indices)
            assert wrong.labels is not None  # distill records the labels it used
            for k, pred in masked_predictions(split, wrong, x).items():
                if k != "int":
                    control[f"{k}_predicts_mask_label"] += int((pred == wrong.labels).sum())
                    control[f"{k}_predicts_true_label"] += int((pred == y).sum())
        robust_channels += float(res.robust_mask.float().sum(-1).mean()) * x.shape[0]
        channels = res.robust_mask.shape[-1]
        for name in names:
            x_in = x if name == "clean" else adversarial_batch(attacks[name], model, x, y, i, n, seed)
            for k, pred in masked_predictions(split, res, x_in).items():
                correct[name][k] += int((pred == y).sum())
        n += x.shape[0]
        bar.update(x.shape[0])
    bar.close()
    check(n > 0, "no images to analyse")
    masks_config = config if population is None else population.config  # per_image is population is None
    assert masks_config is not None  # _protocol checked that one of the two is given
    out = {
        "protocol": protocol,
        "threshold": masks_config.threshold,
        "n": n,
        "rows": {name: {k: v / n for k, v in row.items()} for name, row in correct.items()},
        "channels": {"robust": robust_channels / n, "nonrobust": channels - robust_channels / n, "total": channels},
    }
    if agreements:
        out["stability"] = summarise_agreement({k: torch.cat([a[k] for a in agreements]) for k in agreements[0]}, channels, stability)
    if per_image and label_control:
        out["label_control"] = {k: v / n for k, v in control.items()}
    return out


def adversarial_agreement(
    model: nn.Module,
    split: LayerSplit,
    batches: Iterable[tuple[Tensor, Tensor]],
    attacks: dict[str, Adversarial],
    *,
    config: IBConfig | None = None,
    population: IBResult | None = None,
    seed: int = 0,
    total: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Table 2: do the non-robust features of adversarial examples predict the adversarial label?

    For each attack, on the points it fooled (``f(X_adv) ≠ Y``), masks are computed
    from ``X_adv`` with the true labels (per-image protocols; the population split
    is used as is) and the share of points with ``argmax f_l+(i^a_nr·Z̄) = f(X_adv)``
    is reported, next to the same share for the robust features.

    Returns:
        ``{"protocol", "n", "rows": {attack name: {"fooled", "nonrobust_agrees", "robust_agrees"}}}``;
        ``fooled`` counts points, the agreements are shares of the fooled points (None if none).
    """
    protocol = _protocol(config, population)
    stats = {k: {"fooled": 0, "nonrobust": 0, "robust": 0} for k in attacks}
    n = 0
    bar = tqdm(total=total, desc=f"Table 2 ({protocol})", unit="img", disable=not progress, leave=False)
    for i, (x, y) in enumerate(batches):
        for name, attack in attacks.items():
            x_adv = adversarial_batch(attack, model, x, y, i, n, seed)
            with torch.no_grad():
                adv_pred = model(x_adv).argmax(1)
            fooled = adv_pred != y
            if not fooled.any():
                continue
            idx = fooled.nonzero().squeeze(1)
            res = _masks(split, x_adv[idx], y[idx], config, population, n + idx.cpu())
            preds = masked_predictions(split, res, x_adv[idx])
            stats[name]["fooled"] += int(idx.numel())
            for k in ("nonrobust", "robust"):
                stats[name][k] += int((preds[k] == adv_pred[idx]).sum())
        n += x.shape[0]
        bar.update(x.shape[0])
    bar.close()
    check(n > 0, "no images to analyse")
    rows = {}
    for name, s in stats.items():
        f = s["fooled"]
        rows[name] = {"fooled": f, "nonrobust_agrees": s["nonrobust"] / f if f else None,
                      "robust_agrees": s["robust"] / f if f else None}
    return {"protocol": protocol, "n": n, "rows": rows}


def pooled_features(
    model: nn.Module,
    split: LayerSplit,
    batches: Iterable[tuple[Tensor, Tensor]],
    attacks: dict[str, Adversarial],
    *,
    config: IBConfig | None = None,
    population: IBResult | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Tensor]:
    """Fig. 2's inputs: spatially averaged ``Z_r`` and ``Z_nr`` of clean and adversarial images.

    Masks come from the *clean* images (as in Table 1) and are applied to the
    features of each input. Returns float32 CPU tensors ``"y"`` ``[N]`` and, for
    ``"clean"`` and each attack name ``a``, ``"<a>/robust"`` and ``"<a>/nonrobust"``
    of shape ``[N, C]`` (mean over H×W of the masked features).
    """
    _protocol(config, population)
    out: dict[str, list[Tensor]] = {"y": []}
    n = 0
    for i, (x, y) in enumerate(tqdm(batches, desc="pooled features", unit="batch", disable=not progress, leave=False)):
        res = _masks(split, x, y, config, population, torch.arange(n, n + x.shape[0], device="cpu"))
        out["y"].append(y.cpu())
        for name in ["clean", *attacks]:
            x_in = x if name == "clean" else adversarial_batch(attacks[name], model, x, y, i, n, seed)
            with frozen(split.model), torch.no_grad():  # eval mode, as the masks were computed
                z = split.features(x_in)
            for part, masked in (("robust", res.robust(z)), ("nonrobust", res.nonrobust(z))):
                out.setdefault(f"{name}/{part}", []).append(masked.mean((2, 3)).float().cpu())
        n += x.shape[0]
    check(n > 0, "no images to analyse")
    return {k: torch.cat(v) for k, v in out.items()}


def tsne_embedding(features: Tensor, *, seed: int = 0, perplexity: float = 30.0) -> Tensor:
    """2-D t-SNE (scikit-learn, PCA initialisation) of ``features`` ``[N, D]``; returns ``[N, 2]``.

    The perplexity is lowered to ``(N − 1) / 3`` for small ``N``; ``seed`` fixes the result.
    Constant or all-zero features (e.g. an all-non-robust split's ``Z_r``) are embedded as they are.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    check(features.dim() == 2 and features.shape[0] >= 4, f"t-SNE needs [N ≥ 4, D] features, got {list(features.shape)}")
    x = features.detach().double().cpu().numpy()
    perplexity = min(perplexity, (x.shape[0] - 1) / 3)
    init = "pca" if float(x.std(0).max()) > 0 else "random"  # PCA of constant features divides by zero
    # one OpenMP thread: after torch has run, sklearn's OpenMP pool contends with torch's and runs ~20× slower
    with threadpool_limits(limits=1, user_api="openmp"):
        emb = TSNE(n_components=2, perplexity=perplexity, init=init, random_state=seed).fit_transform(x)
    return torch.from_numpy(emb).float()


def cluster_separation(embedding: Tensor, labels: Tensor, k: int = 5) -> dict[str, float | None]:
    """How well an embedding ``[N, 2]`` (e.g. a t-SNE) separates the classes ``labels`` ``[N]``.

    Returns ``knn_accuracy``: the leave-one-out accuracy of a ``k``-nearest-neighbour vote
    (ties to the lowest class), 1/classes for mixed classes and 1 for separated ones; and
    ``silhouette``: scikit-learn's silhouette score in [−1, 1] (None when it is undefined:
    fewer than 2 classes, or every point at one place).
    """
    from sklearn.metrics import silhouette_score

    check(embedding.dim() == 2 and embedding.shape[0] == labels.numel() and labels.numel() > k,
          f"need an embedding [N, D] and N > k labels, got {list(embedding.shape)} and {labels.numel()}")
    x = embedding.double()
    y = labels.long().flatten()
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    nearest = d.topk(k, largest=False).indices
    votes = torch.zeros(len(y), int(y.max()) + 1, dtype=torch.long, device=y.device)
    votes.scatter_add_(1, y[nearest.to(y.device)], torch.ones_like(nearest, device=y.device))
    knn = float((votes.argmax(1) == y).double().mean())
    spread = float(x.std(0).max()) > 0
    sil = float(silhouette_score(x.cpu().numpy(), y.cpu().numpy())) if spread and 2 <= len(y.unique()) < len(y) else None  # type: ignore[no-untyped-call]
    return {"knn_accuracy": knn, "silhouette": sil, "k": k}


def beta_sweep(
    model: nn.Module,
    split: LayerSplit,
    make_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    attacks: dict[str, Adversarial],
    betas: Iterable[float],
    *,
    config: IBConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Fig. 5: for each β, Table 1 under a per-image protocol with ``config.beta = β``.

    ``make_batches()`` returns a fresh pass over the images for each β. Returns one
    row per β: ``{"beta", "robust_channels", "nonrobust_channels", "rows"}`` with
    ``rows`` as in :func:`feature_accuracy` (clean and each attack).
    """
    out = []
    for beta in tqdm(list(betas), desc="β sweep", disable=not progress, leave=False):
        res = feature_accuracy(model, split, make_batches(), attacks, config=replace(config or IBConfig(), beta=float(beta)),
                               seed=seed, progress=False)
        out.append({"beta": float(beta), "robust_channels": res["channels"]["robust"],
                    "nonrobust_channels": res["channels"]["nonrobust"], "rows": res["rows"]})
    return out
