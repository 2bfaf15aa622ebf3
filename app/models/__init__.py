"""Models: read, delete, predict, sparsity, export."""
