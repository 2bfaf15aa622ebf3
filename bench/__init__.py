"""Benchmarks that measure Regula against what a user would pick instead, in the same run.

Run ``python -m bench`` (full) or ``python -m bench --quick`` (smoke, seconds). See
``bench/__main__.py``. This package imports nothing heavy at import time so ``__main__`` can clean
the BLAS environment first.
"""
