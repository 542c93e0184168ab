"""Figures and the summary table of the study report.

Every figure has a ``make_*`` function that returns a :class:`matplotlib.figure.Figure` (so tests
and notebooks can inspect it) and a thin ``plot_*`` function that saves it as PNG **and** PDF with
the same stem, atomically (:func:`sfsr.io.atomic_path`), and returns the two paths. Figures are
built with :class:`~matplotlib.figure.Figure` directly (never ``pyplot``): no global state, Agg
canvas for PNG, the PDF backend for PDF, nothing needs a display.

Colours are per model and identical in every figure (:func:`model_colors`); ``hr`` is black and
``bicubic`` grey. Image-quality numbers shown on visual grids come from :mod:`sfsr.metrics` (the
project's single metric implementation), on the Y channel (own gray values for gray HR images).

One module per figure kind: :mod:`~sfsr.plots.style` (colours, families, saving),
:mod:`~sfsr.plots.curves` (training curves), :mod:`~sfsr.plots.quality` (metric bars, RefSR by
reference level), :mod:`~sfsr.plots.accuracy` (accuracy, trade-off), :mod:`~sfsr.plots.grids`
(visual comparison grids), :mod:`~sfsr.plots.semantic` (test images the semantic prior fixed or
broke), :mod:`~sfsr.plots.summary` (the summary table); the public names are
re-exported here.
"""

from __future__ import annotations

from sfsr.plots.accuracy import make_accuracy, make_tradeoff, plot_accuracy, plot_tradeoff
from sfsr.plots.curves import make_training_curves, plot_training_curves
from sfsr.plots.grids import choose_crop, make_visual_grid, pick_images, plot_visual_grid
from sfsr.plots.quality import make_metric_bars, make_refsr, plot_metric_bars, plot_refsr
from sfsr.plots.semantic import make_semantic_examples, pick_semantic_examples, plot_semantic_examples
from sfsr.plots.style import FAMILIES, family_lookup, model_colors, model_family, save_figure
from sfsr.plots.summary import summary_table

__all__ = [
    "FAMILIES", "family_lookup", "model_family", "model_colors",
    "make_training_curves", "plot_training_curves",
    "make_metric_bars", "plot_metric_bars",
    "make_accuracy", "plot_accuracy",
    "make_tradeoff", "plot_tradeoff",
    "choose_crop", "pick_images", "make_visual_grid", "plot_visual_grid",
    "make_refsr", "plot_refsr",
    "pick_semantic_examples", "make_semantic_examples", "plot_semantic_examples",
    "save_figure", "summary_table",
]
