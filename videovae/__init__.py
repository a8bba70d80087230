"""videovae: causal video autoencoders with an explicit (B, T, C, H, W) API.

    import videovae
    vae = videovae.load("vae_v2.safetensors")     # float32 compute, whatever the file stores
    posterior = vae.encode(video)              # video: (B, T, 3, H, W) in [-1, 1], any T, H, W
    frames = vae.decode(posterior.mode(), num_frames=video.shape[1])
"""

from .api import VideoVAE, load
from .chunking import FrameLayout, FramePolicy
from .distribution import LatentDistribution
from . import errors
from .errors import *  # noqa: F403  (every error and warning class, listed in errors.__all__)

from .version import __version__ as __version__

__all__ = ["load", "VideoVAE", "LatentDistribution", "FramePolicy", "FrameLayout", *errors.__all__]
