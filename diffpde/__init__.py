"""diffpde: solving PDEs with generative diffusion models."""

__version__ = "0.1.0"

__all__ = ["Prior", "__version__"]


def __getattr__(name: str):
    # `from .models.prior import Prior`, done on first use: the prior pulls in torch networks,
    # h5py and the samplers, which `import diffpde.pdes` alone should not pay for.
    if name == "Prior":
        from .models.prior import Prior

        return Prior
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
