"""harness: hyperparameter search and benchmarking of materials-property models."""

__version__ = "0.1.0"
