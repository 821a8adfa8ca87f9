"""Evaluation: metrics (evaluate/metrics.py) and reports. Kept import-free: ``import bigmodel``
loads this package, and ``bigmodel --help`` must stay fast."""
