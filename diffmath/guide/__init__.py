"""Guidance and composition: conditioned and combined models, classifier and classifier-free guidance (lesson 9)."""

from diffmath.guide import compose, guidance

__all__ = ["compose", "guidance"]
