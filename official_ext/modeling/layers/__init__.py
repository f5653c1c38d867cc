"""Layers for the paper's recipe: grouped (distributed) batch normalization."""
