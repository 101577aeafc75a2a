"""deltatune: fine-tune pretrained transformers with parameter-efficient methods, measured."""

__version__ = "0.1.0"
