"""Fixtures shared by every test folder."""

import os

# Worker processes and tests must not oversubscribe the 2 cores with BLAS threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
