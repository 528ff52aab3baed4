"""Samplers and bounded time series (ring buffers)."""
