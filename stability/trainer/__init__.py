"""The trainer: one run from its config to its rows (pycls' trainer, as phases)."""
