"""Helpers that run notebooks and Jupyter kernels for the magics tests."""
