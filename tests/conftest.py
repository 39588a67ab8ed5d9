"""Shared test set-up: float64 everywhere, so rules are compared with the float64
reference at tight tolerances (float32 behaviour is tested with explicit dtypes)."""

import jax

jax.config.update("jax_enable_x64", True)
