"""Training: objectives in every prediction space, EMA, the fit loop and its checkpoints (lesson 3)."""

from diffmath.train import training

__all__ = ["training"]
