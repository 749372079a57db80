"""Networks: the time-conditioned MLP for 2-D toys (``mlp``) and the small U-Net for images (``unet``)."""

from diffmath.nets import mlp, unet
from diffmath.nets.mlp import MLP

__all__ = ["MLP", "mlp", "unet"]
