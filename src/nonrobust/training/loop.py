"""The training loop: derived random streams, one epoch, the held-out check, and :func:`train` with its resume checks."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import models
from ..attacks import PGD, STEP_FACTORS
from ..data import ImageDataset, augment, load_dataset
from ..errors import UserError, check
from ..identity import data_digest, data_record, model_digest, provenance, work_key
from ..io import check_output_folder, read_json, write_json
from ..runtime import Distributed, derive_seed, environment, make_generator
from .config import TrainConfig
from .folder import _FILES, _RESUMABLE_CHANGES, _config_differences, _RunFolder
from .methods import METHODS, Batch
from .schedules import lr_factor

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- random streams (runtime.derive_seed)
class _GlobalStream:
    """A private stream for code that can only draw from the global RNG (dropout).

    Inside :meth:`active` the global CPU (and this device's CUDA) generator holds
    this stream's state; on exit the caller's state is restored (fork_rng), so
    the global RNG the user sees is never advanced or reseeded.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed, self.device = seed, device
        self.cuda = device.type == "cuda"
        self.states: tuple[Tensor, Tensor | None] | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        index = self.device.index if self.device.index is not None else torch.cuda.current_device() if self.cuda else 0
        with torch.random.fork_rng(devices=[index] if self.cuda else []):
            if self.states is None:
                torch.default_generator.manual_seed(self.seed)
                if self.cuda:
                    torch.cuda.default_generators[index].manual_seed(self.seed)
            else:
                torch.set_rng_state(self.states[0])
                if self.cuda:
                    assert self.states[1] is not None  # saved on the CUDA device
                    torch.cuda.set_rng_state(self.states[1], index)
            yield
            self.states = (torch.get_rng_state(), torch.cuda.get_rng_state(index) if self.cuda else None)


# --------------------------------------------------------------------------- one epoch, the held-out check
def _train_epoch(cfg: TrainConfig, model: nn.Module, trained: nn.Module, optimizer: torch.optim.Optimizer, train_set: ImageDataset,
                 dist: Distributed, device: torch.device, epoch: int, progress: bool) -> dict[str, Any]:
    """One epoch of ``cfg.method`` on this rank's share of ``train_set``; returns the epoch's record (all ranks summed).

    ``model`` is the plain model (attacks run on it), ``trained`` the one the loss goes through (DDP-wrapped or ``model``).
    """
    spec = METHODS[cfg.method]
    images, labels = train_set.images, train_set.labels
    order = torch.randperm(len(labels), device="cpu", generator=make_generator(derive_seed(cfg.seed, epoch, "shuffle"), "cpu"))
    if len(order) % dist.world:  # pad like DistributedSampler so every rank takes the same number of steps
        order = torch.cat([order, order[: dist.world - len(order) % dist.world]])
    shard = order[dist.rank:: dist.world]
    per_rank = cfg.batch_size // dist.world
    n_steps = math.ceil(len(shard) / per_rank)
    aug_gen = make_generator(derive_seed(cfg.seed, epoch, "augment", dist.rank), "cpu")  # augmentation runs on the uint8 CPU images
    attack_gen = make_generator(derive_seed(cfg.seed, epoch, "attack", dist.rank), device)
    dropout = _GlobalStream(derive_seed(cfg.seed, epoch, "dropout", dist.rank), device)
    assert cfg.steps is not None  # a resolved config
    attack = PGD(eps=cfg.eps, steps=cfg.steps, alpha=cfg.alpha, random_start=True)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.amp == "bf16" else contextlib.nullcontext()
    trained.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    lr = cfg.lr
    bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False, disable=not (progress and dist.main))
    t0 = time.perf_counter()
    for i in range(n_steps):
        idx = shard[i * per_rank:(i + 1) * per_rank]
        x = images[idx].to(device).float().div_(255)
        y = labels[idx].to(device)
        if cfg.crop_pad or cfg.flip:
            x = augment(x, aug_gen, pad=cfg.crop_pad, flip=bool(cfg.flip))
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = cfg.lr * lr_factor(cfg.schedule, epoch, i, n_steps, cfg.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = Batch(trained, model, x, y, cfg, attack, attack_gen)
        with dropout.active():
            with amp:
                loss, logits = spec.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        with torch.no_grad():
            totals += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                   torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
        if i % 20 == 0 or i == n_steps - 1:
            bar.set_postfix(loss=f"{float(totals[0] / totals[2]):.4f}", lr=f"{lr:.4g}")
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    loss_sum, correct, count = dist.sum(totals).tolist()
    return {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / count, "train_acc": correct / count,
            "train_images": int(count), "seconds": round(seconds, 3), "images_per_second": round(count / seconds, 2)}


def _held_out(cfg: TrainConfig, model: nn.Module, eval_set: ImageDataset, device: torch.device) -> dict[str, Any]:
    """Clean and PGD accuracy on the held-out images, by :func:`nonrobust.evaluation.evaluate_attacks`."""
    from ..evaluation import evaluate_attacks

    attack = PGD(eps=cfg.eps, steps=cfg.eval_pgd_steps, alpha_factor=STEP_FACTORS["madry"], random_start=True)
    batches = ((x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x, y)
               for x, y in eval_set.batches(cfg.batch_size, device=device))
    model.eval()
    res = evaluate_attacks(model, batches, {"PGD": attack}, seed=derive_seed(cfg.seed, "eval"), progress=False)
    return {"eval_clean_acc": res["clean_accuracy"], "eval_pgd_acc": res["attacks"]["PGD"]["robust_accuracy"], "eval_n": res["n"]}


def _build(cfg: TrainConfig, train_set: ImageDataset) -> nn.Module:
    """The untrained model: ``cfg.arch`` from the registry, or from a user's factory ``path/to/file.py:function``."""
    from ..loading import is_python_spec, load_python_model

    if not is_python_spec(cfg.arch):
        return models.build(cfg.arch, train_set.num_classes, train_set.input_shape[0], cfg.mean, cfg.std, **cfg.arch_options)
    given = [flag for flag, value in (("--arch-option", cfg.arch_options), ("mean", cfg.mean), ("std", cfg.std)) if value]
    check(not given, f"{cfg.arch} is your own model: {given[0] if given else ''} has no effect on it (its options and normalisation "
          "are the factory's own): drop it")
    model, meta = load_python_model(cfg.arch, train_set.input_shape)
    check(meta.num_classes == train_set.num_classes, f"{cfg.arch} returns {meta.num_classes} logits, {train_set.name} has "
          f"{train_set.num_classes} classes: make the factory's last layer fit")
    return model


def _initialise(model: nn.Module, cfg: TrainConfig) -> None:
    """Load ``cfg.init`` (a checkpoint or a state dict of ``cfg.arch``) into ``model``, strictly."""
    from ..foreign import read_state_dict

    assert cfg.init is not None  # called only with initial weights
    state = read_state_dict(cfg.init)
    own = model.state_dict()
    if not any(k.startswith("normalize.") for k in state):  # a plain state dict: the normalisation is the run's own
        state.update({k: v for k, v in own.items() if k.startswith("normalize.")})
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise UserError(f"--init {cfg.init}: the weights do not fit {cfg.arch} ({len(missing)} missing, {len(unexpected)} unexpected, "
                        f"{len(wrong)} of wrong shape; first: {(missing or unexpected or wrong)[0]})")
    model.load_state_dict(state, strict=True)


def _check_out_dir(out: Path, cfg: TrainConfig, resume: bool) -> bool:
    """Check ``out`` against ``cfg``; return whether a committed state exists to resume from."""
    config_path, state_path = out / _FILES["config"], out / _FILES["state"]
    check_output_folder(out)
    if not resume:
        if config_path.is_file():
            saved = read_json(config_path)
            diff = _config_differences(saved, cfg.to_dict()) if isinstance(saved, dict) else ["unreadable"]
            if diff or saved.get("epochs") != cfg.epochs:
                raise UserError(f"{out} already holds a training run with other settings ({'; '.join(diff[:3]) or 'epochs'}): "
                                "choose another --out, or pass --resume to continue that run")
            raise UserError(f"{out} already holds this training run: pass --resume to continue it, or choose another --out")
        leftovers = [name for name in _FILES.values() if (out / name).exists()]
        check(not leftovers, f"{out} holds {', '.join(leftovers)} but no {_FILES['config']}: choose another --out")
        return False
    check(config_path.is_file(), f"--resume: {out} holds no training run (no {_FILES['config']}); drop --resume to start one")
    saved = read_json(config_path)
    diff = _config_differences(saved, cfg.to_dict())
    if diff:
        raise UserError(f"--resume: {out} was trained with {'; '.join(diff[:3])}{' and more' if len(diff) > 3 else ''}; "
                        f"only {' and '.join(_RESUMABLE_CHANGES)} may change when resuming")
    return state_path.is_file()


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    progress: bool = True,
    *,
    dataset: ImageDataset | None = None,
    eval_dataset: ImageDataset | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train a model as ``config`` says and write the run folder ``out_dir`` (see the module docstring).

    Args:
        config: the settings (resolved here with :meth:`TrainConfig.resolved`).
        out_dir: run folder; must not hold another run unless ``resume``.
        resume: continue the run in ``out_dir`` from its last complete epoch. Only
            ``epochs`` (to extend it) and ``device`` may differ from its config.
        progress: show a tqdm bar per epoch.
        dataset: training images to use instead of loading ``config.data`` (train split).
        eval_dataset: held-out images instead of ``config.data``'s test split
            (its first ``config.eval_n`` are used).
        command: the command line, recorded in the checkpoints' recipe.

    Returns:
        ``{"out_dir", "epochs", "last", "best", "checkpoint", "best_checkpoint"}``
        where ``last``/``best`` are per-epoch metric records (as in ``metrics.jsonl``);
        on ranks other than 0 of a distributed run only ``{"rank", "world_size"}``.

    Raises:
        UserError: invalid settings, an ``out_dir`` holding another run, or a
        ``resume`` whose settings differ.
    """
    cfg = config.resolved()
    out = Path(out_dir)
    dist = Distributed.from_env()
    check(cfg.batch_size % dist.world == 0, f"batch size {cfg.batch_size} must divide by the {dist.world} processes")
    try:
        device = dist.device(cfg.device)
        dist.init(device)
        has_state = _check_out_dir(out, cfg, resume)
        train_set = (dataset or load_dataset(cfg.data, "train", cfg.data_dir, image_size=cfg.image_size)).first(cfg.train_subset)
        eval_set = None
        if dist.main:
            eval_set = (eval_dataset or load_dataset(cfg.data, "test", cfg.data_dir, n=cfg.eval_n, image_size=cfg.image_size)).first(cfg.eval_n)
            check(eval_set.input_shape == train_set.input_shape, f"held-out images are {eval_set.input_shape}, training images {train_set.input_shape}")
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            torch.default_generator.manual_seed(derive_seed(cfg.seed, "init"))
            model = _build(cfg, train_set)
        if cfg.init:
            _initialise(model, cfg)
        # (the ignore: torch types Module.__setattr__'s value as Tensor | Module)
        models.attach(model, None, source=f"{cfg.arch} initialised from {cfg.init}" if cfg.init else f"{cfg.arch} initialised from seed {cfg.seed}")
        identity = {"train_data": data_digest(train_set), "init": model_digest(model)}
        if eval_set is not None:
            identity["eval_data"] = data_digest(eval_set)
        # torch's stubs leave memory_format out of Module.to's overloads (it takes it: a 4-D memory format for the parameters)
        model = model.to(device, memory_format=torch.channels_last) if cfg.channels_last else model.to(device)  # type: ignore[call-overload]
        # Only now, with the data loaded and the model built, does the run folder get written: a mistake
        # in the settings leaves no half-made run behind (which a rerun would take for a run to --resume).
        dist.barrier()  # every rank has checked the folder before rank 0 writes to it
        settings = {k: v for k, v in cfg.to_dict().items() if k not in _RESUMABLE_CHANGES}
        origin = provenance(model=model, data=train_set, settings=cfg.to_dict(), seeds={"train": cfg.seed},
                            key=work_key("train", model=identity["init"], data=identity["train_data"], settings=settings),
                            extra={"held_out": data_record(eval_set) if eval_set is not None else None})
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / _FILES["config"], cfg.to_dict())
            if not has_state:  # the run's own provenance: how it started (a resumed run keeps it)
                write_json(out / _FILES["provenance"], origin)
            elif (out / _FILES["provenance"]).is_file():
                origin = read_json(out / _FILES["provenance"])
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        record = {"command": list(command) if command is not None else None, "world_size": dist.world, "environment": environment(device)}
        run = _RunFolder(out, cfg, model, optimizer, train_set, record, identity, origin)
        if has_state:
            run.load_state(device)
            check(len(run.history) <= cfg.epochs, f"--resume: {out} has already trained {len(run.history)} epochs, more than --epochs {cfg.epochs}")
            log.info("resuming %s after epoch %d of %d", out, len(run.history), cfg.epochs)
            if dist.main:
                run.repair()
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if dist.world > 1 else model
        if dist.main:
            log.info("training %s on %s (%d images) with %s for %d epochs on %s%s", cfg.arch, train_set.name, len(train_set),
                     cfg.method, cfg.epochs, device, f" × {dist.world} processes" if dist.world > 1 else "")
        for epoch in range(len(run.history), cfg.epochs):
            entry = _train_epoch(cfg, model, trained, optimizer, train_set, dist, device, epoch, progress)
            if dist.main:
                assert eval_set is not None  # loaded on the main rank
                entry.update(_held_out(cfg, model, eval_set, device))
                run.end_epoch(entry)
                log.info("epoch %d/%d: loss %.4f, train acc %.2f%%, held-out clean %.2f%%, PGD-%d %.2f%% (%.0f img/s)%s",
                         entry["epoch"], cfg.epochs, entry["train_loss"], 100 * entry["train_acc"], 100 * entry["eval_clean_acc"],
                         cfg.eval_pgd_steps, 100 * entry["eval_pgd_acc"], entry["images_per_second"], " *best*" if entry["best"] else "")
            else:
                run.history.append(entry)
            dist.barrier()
        return run.summary() if dist.main else {"rank": dist.rank, "world_size": dist.world}
    finally:
        dist.close()
