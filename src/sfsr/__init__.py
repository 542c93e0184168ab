"""sfsr: a reproducible single-image super-resolution study pipeline.

The library holds the real logic; ``Snakefile``/``rules`` only wire it together.
"""

__version__ = "0.1.0"
