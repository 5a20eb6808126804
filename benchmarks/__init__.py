"""Benchmarks of cxr-anomaly; run each as ``python -m benchmarks.NAME``."""
