"""Training of the SR generators: the stage table (:mod:`sfsr.training.stages`), random-patch data
(:mod:`sfsr.training.data`), the iteration-based loop of every stage with resume, EMA, validation
and logging (:mod:`sfsr.training.loop`) and the generator exponential moving average
(:mod:`sfsr.training.ema`). See ``docs/training.md``."""
