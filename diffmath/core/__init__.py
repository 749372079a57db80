"""The layer every other one builds on: notation, schedules, the model contract and the device seam (lessons 0-4)."""

from diffmath.core import device, models, notation, schedules

__all__ = ["device", "models", "notation", "schedules"]
