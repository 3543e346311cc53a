"""nonrobust: robust and non-robust features of image classifiers (Kim, Lee, Ro, NeurIPS 2021).

The front door (:mod:`nonrobust.api`, documented there with runnable examples)::

    import nonrobust as nr
    model = nr.load_model("cifar10-small-at")          # or a checkpoint path
    ds = nr.load_data("cifar10-slice")                 # or cifar10, svhn, folder:PATH, npz:PATH ...
    s = nr.split_model(model)                          # f = f_l+ ∘ f_l at the model's layer
    x, y = ds.tensors()
    masks = nr.distill(s, x[:128], y[:128])            # robust / non-robust channels per image
    res = nr.evaluate_attacks(model, ds, {"PGD-20": nr.make_attack("pgd-20")})
    nr.run_report({"model": "cifar10-small-at", "data": "cifar10-slice"}, "out")

The modules (``data``, ``models``, ``split``, ``bottleneck``, ``attacks``,
``evaluation``, ``analyses``, ``report``, ``training``) hold everything else.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["__version__", "load_model", "load_data", "split_model", "distill", "make_attack", "evaluate_attacks", "run_report"]


def __getattr__(name: str) -> Any:
    """Import the front-door functions on first use, so ``import nonrobust`` (and the CLI's start) stays light."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'nonrobust' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
