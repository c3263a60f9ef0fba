"""diffpde: solving PDEs with generative diffusion models."""

__version__ = "0.1.0"
