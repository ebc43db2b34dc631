"""nbtl-search: hyperparameter search for non-binary transfer learning (timm + Optuna)."""

__version__ = "0.1.0"
