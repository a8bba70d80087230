"""The photographs the demo model learns from: scikit-image's `skimage.data` (the `train` extra).

Colour and gray photographs from the scikit-image wheel, split once and for all into a training set
and a held-out set that training never reads (the evaluation and the demo use the held-out ones).
Gray photographs are repeated to RGB and tinted per clip by the clip source.
"""

from __future__ import annotations

from torch import Tensor

from ..camera import photo_tensor
from ..errors import UsageError

HELD_OUT = ("astronaut", "coffee")
TRAIN_COLOUR = ("chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry", "colorwheel",
                "logo", "motorcycle_left", "motorcycle_right")
TRAIN_GRAY = ("camera", "coins", "moon", "brick", "grass", "gravel", "page", "text", "clock", "cell")


def _skimage_data():
    try:
        from skimage import data
    except ImportError:
        raise UsageError(
            "the built-in clip generator films scikit-image's photographs: pip install 'videovae[train]' "
            "(or pip install scikit-image), or train on a folder of videos with --data DIR"
        ) from None
    return data


def load_photo(name: str) -> Tensor:
    """One skimage.data photograph as (3, H, W) float32 in [-1, 1]."""
    data = _skimage_data()
    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        return photo_tensor(left if name == "motorcycle_left" else right)
    if name not in HELD_OUT + TRAIN_COLOUR + TRAIN_GRAY:
        raise UsageError(f"{name!r} is not one of videovae's photographs; see videovae.training.photos")
    return photo_tensor(getattr(data, name)())


def photos(split: str) -> dict[str, Tensor]:
    """{name: (3, H, W)} of the 'train' or 'held_out' split."""
    names = {"train": TRAIN_COLOUR + TRAIN_GRAY, "held_out": HELD_OUT}.get(split)
    if names is None:
        raise UsageError(f"split must be 'train' or 'held_out'; got {split!r}")
    return {name: load_photo(name) for name in names}
