"""Pruning: structured channel pruning, unstructured magnitude pruning and N:M (2:4) sparsity."""
