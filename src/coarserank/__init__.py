"""coarserank: distil a DeepFM teacher into a two-tower coarse ranker and ship it."""

__all__ = ["__version__"]
__version__ = "0.1.0"
