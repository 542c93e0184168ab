"""Training of the SR generators: random-patch data (:mod:`sfsr.training.data`), the iteration-based
warm-up / GAN loop with resume, EMA, validation and logging (:mod:`sfsr.training.loop`) and the
generator exponential moving average (:mod:`sfsr.training.ema`). See ``docs/training.md``."""
