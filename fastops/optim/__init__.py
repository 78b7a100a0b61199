"""Fused optimizers: fastops.optim.Adam and AdamW, drop-in for torch.optim.Adam/AdamW with one
kernel launch per (device, dtype) bucket of a param group per step (see fastops/optim/adam.py)."""
from fastops.optim.adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
