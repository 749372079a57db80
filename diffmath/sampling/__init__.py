"""The one sampler loop and the DDIM family of update rules that every chapter's sampler is built from (lesson 4)."""

from diffmath.sampling import loop, samplers

__all__ = ["loop", "samplers"]
