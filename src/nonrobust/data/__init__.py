"""Image classification data sets: loading, downloading, batching and augmentation.

A data set is named by one of

* a registry key of :data:`DATASETS` (``cifar10``, ``cifar100``, ``svhn``,
  ``tiny-imagenet``), read from its official release format under the data
  folder (``--data-dir``, else ``$NONROBUST_DATA``, else
  ``~/.cache/nonrobust/data``) once :func:`prepare` has fetched it;
* ``folder:PATH``: one sub-folder of images per class (sorted folder names give
  the labels). If ``PATH`` has a ``train`` or ``test`` sub-folder, the split is
  read from ``PATH/train`` or ``PATH/test`` (``PATH/val`` is accepted for
  ``test``); otherwise ``PATH`` itself is the ``test`` split and there is no
  ``train`` split (asking for it is an error that says so; the report then fits
  its population split on the images it does not evaluate);
* ``npz:PATH``: a NumPy ``.npz`` with ``x_train``, ``y_train``, ``x_test``,
  ``y_test`` (uint8 images ``N×H×W`` or ``N×H×W×C`` with ``C`` 1 or 3, integer
  labels) and optionally ``classes`` (class names).

Every loader returns an :class:`ImageDataset` holding uint8 ``[N, C, H, W]``
images on the CPU; :meth:`ImageDataset.batches` turns one batch at a time into
float ``[0, 1]`` tensors for a model. Loading never executes code from a data
file: CIFAR pickles go through a restricted unpickler, ``.npz`` files are read
with ``allow_pickle=False`` and SVHN ``.mat`` files with :func:`scipy.io.loadmat`.

The package, one module per part:

- :mod:`.dataset`: the container (:class:`ImageDataset`): images, labels, data-set indices, batching;
- :mod:`.registry`: the registry of named data sets (:data:`DATASETS`), each a :class:`DatasetInfo`;
- :mod:`.formats`: the readers of each on-disk format (CIFAR pickles, SVHN ``.mat``, Tiny-ImageNet,
  ``folder:`` and ``npz:``), none of which runs code from a file;
- :mod:`.load`: :func:`load_dataset`, the one entry point that resolves a name to a data set;
- :mod:`.download`: :func:`prepare`, the official downloads, checked by MD5 and extracted safely;
- :mod:`.augmentation`: training-only augmentation (random crop and flip).
"""

from __future__ import annotations

from ..fields import DATA_DIR_HELP, DEFAULT_DATA_ENV
from .augmentation import augment
from .dataset import ORDERS, SPLITS, ImageDataset, default_data_dir
from .download import prepare
from .formats import JPEG_COPY
from .load import load_dataset
from .registry import CIFAR10_MEAN, CIFAR10_STD, DATA_CHOICES_HELP, DATASETS, DatasetInfo, RemoteFile

__all__ = [
    "DATA_DIR_HELP",
    "DEFAULT_DATA_ENV",
    "DATA_CHOICES_HELP",
    "DATASETS",
    "DatasetInfo",
    "ImageDataset",
    "RemoteFile",
    "SPLITS",
    "ORDERS",
    "JPEG_COPY",
    "augment",
    "default_data_dir",
    "load_dataset",
    "prepare",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
]
