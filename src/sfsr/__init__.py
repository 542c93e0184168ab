"""sfsr: a reproducible single-image super-resolution study pipeline.

The library holds the real logic; ``Snakefile``/``rules`` only wire it together.
"""

# First, before anything imports torch: sfsr's threading defaults (OMP_WAIT_POLICY=PASSIVE unless set)
# must be in the environment when torch loads its OpenMP runtime (sfsr.threads; torch-free).
from sfsr import threads as _threads

if _threads.apply_env_defaults()["torch_loaded_before"] and _threads.STATE["set"]:
    import logging as _logging

    _logging.getLogger("sfsr.threads").warning(
        "torch was imported before sfsr: its OpenMP threads keep libgomp's spin-waiting (slow beside "
        "other busy processes); import sfsr first or set %s in the environment",
        " ".join(f"{k}={v}" for k, v in _threads.STATE["set"].items()))

__version__ = "0.1.0"
