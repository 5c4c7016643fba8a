"""finecap: fine-grained, distinctive image captioning."""

__version__ = "0.1.0"
