"""Fused optimizers (fastops.optim.Adam, AdamW): not built yet."""
