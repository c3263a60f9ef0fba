"""The ``diffpde caption`` command: add captions from the physics to an existing dataset file
(:func:`diffpde.data.generate.add_captions`)."""

from .generate import add_caption_parser as add_parser, run_caption as run  # noqa: F401
