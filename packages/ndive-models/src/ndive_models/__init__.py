"""ndive-models: the NDIVE paper's models and the ttbar jet data they train on."""

__version__ = "0.1.0"
