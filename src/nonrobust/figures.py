"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes.

Every function takes plain numbers (lists, tensors) from :mod:`nonrobust.analyses`
or the report's cached results, so a figure can be redrawn without rerunning
anything. Nothing here touches a model.
"""

from __future__ import annotations

import io
import math
import textwrap
from types import ModuleType
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["table1_figure", "tsne_figure", "beta_figure", "sigma_figure", "featvis_figure"]

_COLOURS = {"int": "#7f7f7f", "robust": "#1f77b4", "nonrobust": "#d62728"}
_NAMES = {"int": "Int. (Z)", "robust": "R (Z_r)", "nonrobust": "NR (Z_nr)"}


def _plt() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def table1_figure(tables: dict[str, dict[str, Any]]) -> bytes:
    """Grouped bars of Table 1: one panel per protocol, accuracy of Int / R / NR per input kind.

    ``tables`` maps a protocol name to :func:`nonrobust.analyses.feature_accuracy`'s result.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 3.4), squeeze=False, sharey=True)
    for ax, (protocol, table) in zip(axes[0], tables.items(), strict=False):
        rows = list(table["rows"])
        width = 0.27
        for j, kind in enumerate(("int", "robust", "nonrobust")):
            values = [100 * table["rows"][r][kind] for r in rows]
            ax.bar([i + (j - 1) * width for i in range(len(rows))], values, width, color=_COLOURS[kind], label=_NAMES[kind])
        ax.set_xticks(range(len(rows)), rows, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{protocol} protocol (masks from clean images)", fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=8)
    return _png(fig)


def tsne_figure(embeddings: dict[str, Tensor], labels: Tensor, classes: Sequence[str], attack: str,
                attack_label: str | None = None) -> bytes:
    """Fig. 2: 2-D t-SNE of pooled Z_r and Z_nr, clean and under ``attack``, coloured by true class.

    ``embeddings`` maps ``"clean/robust"``, ``"clean/nonrobust"``, ``"<attack>/robust"``,
    ``"<attack>/nonrobust"`` to ``[N, 2]``.
    """
    plt = _plt()
    embeddings = {k: v.detach().cpu() for k, v in embeddings.items()}
    fig, axes = plt.subplots(2, 2, figsize=(8.5, 8))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for r, part in enumerate(("robust", "nonrobust")):
        for c, source in enumerate(("clean", attack)):
            ax = axes[r][c]
            emb = embeddings[f"{source}/{part}"]
            ax.scatter(emb[:, 0], emb[:, 1], c=labels.cpu().numpy() % cmap.N, cmap=cmap, s=6, vmin=0, vmax=cmap.N - 1)
            ax.set_title(f"{_NAMES[part]} — {attack_label or source if source == attack else source}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    if len(classes) <= 20:
        handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i % cmap.N), label=name) for i, name in enumerate(classes)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(classes), 5), fontsize=8)
    return _png(fig)


def beta_figure(sweep: list[dict[str, Any]], attack: str) -> bytes:
    """Fig. 5: R and NR accuracy (clean and under ``attack``) and channel counts against β."""
    plt = _plt()
    betas = [row["beta"] for row in sweep]
    xs = list(range(len(betas)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for kind in ("robust", "nonrobust"):
        ax1.plot(xs, [100 * r["rows"]["clean"][kind] for r in sweep], "-o", color=_COLOURS[kind], label=f"{_NAMES[kind]}, clean")
        if attack in sweep[0]["rows"]:
            ax1.plot(xs, [100 * r["rows"][attack][kind] for r in sweep], "--s", color=_COLOURS[kind], label=f"{_NAMES[kind]}, {attack}")
    ax1.set_ylabel("accuracy (%)")
    ax1.set_ylim(0, 100)
    ax1.legend(fontsize=7)
    robust = [r["robust_channels"] for r in sweep]
    nonrobust = [r["nonrobust_channels"] for r in sweep]
    width = 0.4  # side by side on a log axis, so that 1 robust channel of 256 stays visible
    ax2.bar([x - width / 2 for x in xs], robust, width, color=_COLOURS["robust"], label="robust channels")
    ax2.bar([x + width / 2 for x in xs], nonrobust, width, color=_COLOURS["nonrobust"], label="non-robust channels")
    ax2.set_yscale("symlog", linthresh=1)  # linear from 0 to 1 (so no channel can be drawn), logarithmic above
    top = max(robust + nonrobust + [1.0]) * 6  # room for the legend above the bars
    ticks = [0.0] + [10.0 ** k for k in range(0, int(math.log10(top)) + 1)]
    ax2.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax2.set_ylim(0, top)
    ax2.set_ylabel("channels per image (mean)")
    ax2.set_title("0 to 1 linear, logarithmic above", fontsize=8)
    ax2.legend(fontsize=7, ncol=2, loc="upper center")
    fig.subplots_adjust(wspace=0.3)
    for ax in (ax1, ax2):
        ax.set_xticks(xs, [f"{b:g}" for b in betas])
        ax.set_xlabel("β")
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def sigma_figure(sigma: Tensor, var_z: Tensor, threshold: float | None, robust: Tensor) -> bytes:
    """σ² of every (image, channel) of one batch against the threshold T (None: a per-channel T, not drawn).

    Left: histogram of log10 σ², robust and non-robust channels apart, T marked.
    Right: per channel, the mean σ² over the batch (sorted) and the mean σ_z², with T.
    ``sigma``, ``var_z`` and ``robust`` are ``[B, C]``.
    """
    plt = _plt()
    sigma, var_z, robust = (t.detach().cpu() for t in (sigma, var_z, robust))
    eps = 1e-12
    log_s = torch.log10(sigma.double().pow(2) + eps)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    bins = torch.linspace(float(log_s.min()), float(log_s.max()) + 1e-6, 41, device="cpu").numpy()
    for kind, sel in (("robust", robust), ("nonrobust", ~robust)):
        if sel.any():
            ax1.hist(log_s[sel].cpu().numpy(), bins=bins, color=_COLOURS[kind], alpha=0.7, label=f"{_NAMES[kind]}: {int(sel.sum())}")
    if threshold is not None:
        t = torch.log10(torch.tensor(threshold, dtype=torch.float64, device="cpu") + eps).item()
        ax1.axvline(t, color="k", ls="--", label=f"T = {threshold:.3g}")
    ax1.set_xlabel("log10 σ²  (one value per image and channel)")
    ax1.set_ylabel("count")
    ax1.legend(fontsize=7)
    mean_s = sigma.double().pow(2).mean(0)
    order = mean_s.argsort()
    ax2.semilogy(mean_s[order].cpu().numpy() + eps, color=_COLOURS["robust"], label="σ² (batch mean)")
    ax2.semilogy(var_z.double().mean(0)[order].cpu().numpy() + eps, color="#2ca02c", lw=0.8, label="σ_z² (batch mean)")
    if threshold is not None:
        ax2.axhline(threshold + eps, color="k", ls="--", label="T")
    ax2.set_xlabel("channel (sorted by mean σ²)")
    ax2.legend(fontsize=7)
    return _png(fig)


def featvis_figure(inputs: Tensor, visuals: Tensor, titles: list[list[str]], row_names: list[str],
                   col_names: Sequence[str] = ("input", "Int. (Z)", "R (Z_r)", "NR (Z_nr)")) -> bytes:
    """Fig. 3: per row an input image, then the visualisations of its Z, Z_r and Z_nr.

    ``inputs`` is ``[R, C, H, W]`` and ``visuals`` ``[R, 3, C, H, W]``, all in [0,1];
    ``titles[r][k]`` is the caption under column ``k`` (e.g. the head's predicted class).
    """
    plt = _plt()
    rows = inputs.shape[0]
    fig, axes = plt.subplots(rows, 4, figsize=(7.2, 1.95 * rows + 0.4), squeeze=False)

    def show(ax: Axes, img: Tensor) -> None:
        img = img.detach().float().clamp(0, 1).cpu()
        if img.shape[0] == 1:
            ax.imshow(img[0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).cpu().numpy())
        ax.set_xticks([])
        ax.set_yticks([])

    for r in range(rows):
        show(axes[r][0], inputs[r])
        for k in range(3):
            show(axes[r][k + 1], visuals[r, k])
        for k in range(4):
            axes[r][k].set_xlabel(titles[r][k], fontsize=7)
        # horizontal and wrapped, left of the row: rotated labels of several words ran into the next row's
        axes[r][0].set_ylabel(textwrap.fill(row_names[r], 16), fontsize=7, rotation=0, ha="right", va="center", labelpad=6)
    for k, name in enumerate(col_names):
        axes[0][k].set_title(name, fontsize=8)
    fig.subplots_adjust(left=0.2, wspace=0.15, hspace=0.45)
    return _png(fig)
