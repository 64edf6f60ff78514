"""Experiments as commands: `python -m dlm.experiments.compare` and `... .ablate`."""
