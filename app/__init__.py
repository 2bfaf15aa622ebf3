"""Regula: a REST service that trains regularized NumPy models and shows what they ignore."""
