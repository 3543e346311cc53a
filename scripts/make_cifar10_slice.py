"""Write the CIFAR-10 test slice shipped with the package (``nonrobust/assets/cifar10-test-1000.safetensors``).

    NONROBUST_DATA=DIR python scripts/make_cifar10_slice.py

The first 1,000 test images of the prepared copy (``DIR/cifar-10-batches-py``) in
the order nonrobust reads them: the JPEG-re-encoded copy stores its test set
sorted by class, which nonrobust reads round-robin, so the slice holds 100
images of each class.
"""

from pathlib import Path

from nonrobust import data
from nonrobust.io import save_tensors

OUT = Path(__file__).resolve().parents[1] / "src" / "nonrobust" / "assets" / "cifar10-test-1000.safetensors"

ds = data.load_dataset("cifar10", "test", n=1000)
save_tensors(OUT, {"images": ds.images, "labels": ds.labels}, {
    "classes": ds.classes,
    "source": "CIFAR-10 test set, JPEG-re-encoded copy (shared/data/cifar10_from_jpeg.py), first 1,000 in nonrobust's class-balanced order",
    "per_class": ds.labels.bincount(minlength=10).tolist(),
})
print(f"wrote {OUT} ({OUT.stat().st_size / 2**20:.1f} MiB)")
