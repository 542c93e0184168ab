"""Data stage: MATLAB-exact bicubic resizing, image reading policy, builtin photos, dataset preparation.

Modules: :mod:`sfsr.data.bicubic`, :mod:`sfsr.data.images`, :mod:`sfsr.data.sources`,
:mod:`sfsr.data.prepare`, :mod:`sfsr.data.manifest` (reading a prepared set's manifest and reference
groups) and :mod:`sfsr.data.download`. Import from the modules directly.
"""
