"""The architecture registry, model building, checkpoints and pretrained models.

A checkpoint is one safetensors file: the weights are ``model.state_dict()``
(normalisation buffers included) and the header's JSON metadata is a
:class:`CheckpointMeta` — everything needed to rebuild the model (arch,
options, classes, normalisation) and to know what it is (dataset, split layer,
training recipe, metrics, versions). Nothing is ever unpickled.

Typical use::

    model = build("small_cnn", num_classes=10)
    ...train...
    save(model, "runs/small.safetensors", make_meta(model, dataset="cifar10", metrics={"clean": 0.81}))
    model, meta = load_with_meta("runs/small.safetensors", device="cuda")   # or pretrained_with_meta("cifar10-small-at")

The package, one module per part:

- :mod:`.registry`: the architecture registry (:data:`ARCHITECTURES`, each an :class:`ArchSpec`) and :func:`build`;
- :mod:`.checkpoints`: checkpoint metadata (:class:`CheckpointMeta`), :func:`save`, :func:`load` with its
  digest check, and whether a model fits a data set (:func:`check_compatible`);
- :mod:`.shipped`: the models shipped with the package (:data:`PRETRAINED`, :func:`pretrained`).

Loading a model by any route (shipped name, checkpoint, state dict, Python file) is :mod:`nonrobust.loading`.
"""

from __future__ import annotations

from .checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointMeta,
    attach,
    check_compatible,
    load,
    load_with_meta,
    make_meta,
    save,
    tensors_digest,
    unwrap,
    weight_mismatch,
)
from .registry import ARCHITECTURES, ArchSpec, BuildRecord, arch_spec, build
from .shipped import PRETRAINED, PretrainedSpec, headline, pretrained, pretrained_with_meta, training_summary

__all__ = [
    "ArchSpec",
    "ARCHITECTURES",
    "arch_spec",
    "build",
    "BuildRecord",
    "CheckpointMeta",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "make_meta",
    "save",
    "load",
    "load_with_meta",
    "PretrainedSpec",
    "PRETRAINED",
    "pretrained",
    "headline",
    "training_summary",
    "pretrained_with_meta",
    "attach",
    "weight_mismatch",
    "check_compatible",
    "unwrap",
    "tensors_digest",
]
