"""nonrobust: robust and non-robust features of image classifiers (Kim, Lee, Ro, NeurIPS 2021)."""

__version__ = "0.1.1"
