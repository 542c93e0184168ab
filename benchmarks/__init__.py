"""sfsr's benchmark suite (``python -m benchmarks``) and standalone speed scripts.

Nothing here is a test: speed targets live in the suite's output and ``docs/PERFORMANCE.md``.
"""
