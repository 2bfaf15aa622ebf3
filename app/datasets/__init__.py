"""Datasets: upload (CSV, Parquet, images), column profiles, storage of payloads."""
