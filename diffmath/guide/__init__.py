"""Guidance and composition: conditioned and combined models, classifier and classifier-free guidance (lesson 9),
and several models sampled together (lessons 21-24)."""

from diffmath.guide import compose, guidance, multi, zmagic

__all__ = ["compose", "guidance", "multi", "zmagic"]
