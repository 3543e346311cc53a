"""Standard and adversarial training on one loop: standard, PGD-AT, TRADES, MART and fast AT.

A run is a :class:`TrainConfig` (usually a :data:`PRESETS` entry plus
overrides, see :func:`make_config`) and an output folder::

    cfg = make_config("madry", arch="small_cnn", data="cifar10", epochs=30)
    result = train(cfg, "runs/madry")            # ... killed? then:
    result = train(cfg, "runs/madry", resume=True)

Each method of :data:`METHODS` is only a *loss*: ``loss(batch) -> (loss,
logits)`` on the batch of one step. Every inner maximisation runs the plain
(unwrapped) model in eval mode through :mod:`nonrobust.attacks`, as the
reference code does.

Run folder (written by rank 0 only)::

    config.json          the resolved TrainConfig (every default filled in)
    state.safetensors    the commit point of an epoch: model weights, optimizer
                         tensors, and in its JSON header the epoch count, the
                         per-epoch metrics, the best epoch and the optimizer's
                         non-tensor state. Written atomically, FIRST.
    last.safetensors     model checkpoint after the last complete epoch
                         (models.load-able; recipe = config + command, metrics)
    best.safetensors     the checkpoint of the best epoch (held-out PGD
                         accuracy; clean accuracy for standard training)
    metrics.jsonl        one JSON line per complete epoch
    provenance.json      what the run is made from (model, data, settings, versions, command:
                         :func:`nonrobust.identity.provenance`), also in every checkpoint's metadata

Crash safety: ``state.safetensors`` alone defines how far a run got; the other
files are derived from it. A crash between writing it and the derived files
leaves them one epoch behind, and resuming rewrites them (``metrics.jsonl``
from the history, ``last`` and — when the best epoch is the last one —
``best`` from the state's weights). A crash mid-epoch loses that epoch only.

Exact resume: no random-generator state needs saving, because every random
stream is derived from ``(seed, epoch, purpose, rank)``: the epoch's shuffle,
the augmentation, the attacks' random starts and a private stream for code
that can only draw from the global RNG (dropout), which runs inside
:func:`torch.random.fork_rng` so the caller's global RNG is never touched.
The learning rate is a pure function of the position in training. Resuming at
an epoch boundary therefore continues bit for bit on the same device
(checked on CPU). Cosine and cyclic schedules depend on the total number of
epochs, so extending such a run with more ``epochs`` changes the rest of its
schedule.

Multi-GPU / multi-node: under ``torchrun`` (``WORLD_SIZE > 1``) the process
group is initialised (NCCL for CUDA, else gloo), the model is wrapped in
DistributedDataParallel and every rank draws the same epoch permutation and
takes positions ``rank::world`` of it (padded as DistributedSampler does).
``batch_size`` is the *global* batch (it must divide by the world size): step
``i`` uses the same images as a single-process run's step ``i``. Multi-node
runs need ``out_dir`` on a shared file system.

The package, one module per part:

- :mod:`.config`: :class:`TrainConfig`, every setting of a run;
- :mod:`.schedules`: the learning-rate schedules (:func:`lr_factor`);
- :mod:`.methods`: the training methods, each a loss on a :class:`Batch` (:data:`METHODS`);
- :mod:`.presets`: named recipes (:data:`PRESETS`), :func:`make_config` and :func:`load_config`;
- :mod:`.folder`: the run folder: committed state, derived checkpoints and metrics, their repair;
- :mod:`.loop`: the random streams, one epoch, the held-out check and :func:`train`.
"""

from __future__ import annotations

from .config import TrainConfig
from .folder import STATE_FORMAT
from .loop import train
from .methods import METHODS, Batch, MethodSpec, prediction_kl, trades_adversary
from .presets import PRESETS, Preset, load_config, make_config
from .schedules import lr_factor

__all__ = [
    "TrainConfig",
    "MethodSpec",
    "METHODS",
    "Preset",
    "PRESETS",
    "Batch",
    "make_config",
    "load_config",
    "lr_factor",
    "trades_adversary",
    "prediction_kl",
    "train",
    "STATE_FORMAT",
]
