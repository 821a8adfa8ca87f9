"""Training: the loop (loop.py), optimizers and schedules, checkpoints, progress. Kept import-free:
``import bigmodel`` loads this package, and ``bigmodel --help`` must stay fast."""
