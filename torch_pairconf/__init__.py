"""torch-pairconf: robust pair confidence learning for emotion-cause pair extraction."""

__version__ = "0.1.0"
