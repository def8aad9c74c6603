"""medmm: multimodal medical machine learning research platform."""
__version__ = "0.1.0"
