"""The figures of the study, one table: what each is called, which rule draws it with which
:mod:`sfsr.plots` functions, its files under ``results/<experiment>/figures/`` and its place in the
Snakemake report. Torch- and matplotlib-free (plain data), so the rules read it when the workflow
is parsed: ``rules/report.smk`` takes each figure's output files and report entry from here
(:func:`figure_file`, :func:`report_args`); ``tests/test_recipes.py`` checks that every figure is
an output of its rule, handled by ``workflow_scripts/report.py``, listed in the report with a
caption file, and drawn by functions :mod:`sfsr.plots` has (the rules and the handlers name their
rule and PDF outputs themselves; the test holds them to the table).

Adding a figure: its plot function in ``sfsr.plots``, one entry here, its rule (or an output of an
existing rule) in ``rules/report.smk`` with a handler in ``workflow_scripts/report.py``, its caption
``report/<caption>`` and its targets (docs/architecture.md, "Adding things").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One figure. ``rule``: the rule that draws it; ``draw``: the :mod:`sfsr.plots` functions that
    rule calls for it; ``file``: its PNG under ``figures/``, without the suffix (Snakemake wildcards in
    braces); ``pdf``: whether a PDF beside it is an output too; ``caption``, ``category``,
    ``subcategory``: its entry in the report (``report/<caption>``)."""
    rule: str
    draw: tuple[str, ...]
    file: str
    caption: str
    category: str
    subcategory: str | None = None
    pdf: bool = True


#: Every figure of the study, by name.
FIGURES: dict[str, Figure] = {
    "training": Figure("plot_training", ("plot_training_curves",), "training_{stage}", "training_curves.rst",
                       "1. Training", "{stage}"),
    "metrics": Figure("plot_metrics", ("plot_metric_bars",), "metrics_{metric}", "metrics_bars.rst",
                      "2. Image quality", "{metric}"),
    "accuracy": Figure("plot_accuracy", ("plot_accuracy",), "accuracy_{dataset}_x{scale}", "accuracy.rst",
                       "3. Semantics", "{dataset} x{scale}"),
    "tradeoff": Figure("plot_accuracy", ("plot_tradeoff",), "tradeoff_{dataset}_x{scale}", "tradeoff.rst",
                       "3. Semantics", "{dataset} x{scale}"),
    "visual": Figure("plot_visual", ("plot_visual_grid",), "visual_{dataset}_x{scale}_{rank}", "visual_grid.rst",
                     "2. Image quality", "{dataset} x{scale}"),
    "semantic_examples": Figure("plot_semantic_examples", ("plot_semantic_examples",),
                                "semantic_examples_{dataset}_x{scale}", "semantic_examples.rst",
                                "3. Semantics", "{dataset} x{scale}"),
    "refsr": Figure("refsr_summary", ("plot_refsr",), "refsr_{dataset}_x{scale}", "refsr.rst",
                    "Reference-based SR", pdf=False),
}


def figure_file(name: str, results: str, suffix: str = "png") -> str:
    """The path pattern of figure ``name`` under ``results`` (wildcards kept): the rule's output."""
    return f"{results}/figures/{FIGURES[name].file}.{suffix}"


def report_args(name: str) -> dict[str, str]:
    """The keyword arguments of Snakemake's ``report()`` for figure ``name`` (the caption path as the
    rules in ``rules/`` name it)."""
    figure = FIGURES[name]
    args = {"caption": f"../report/{figure.caption}", "category": figure.category}
    if figure.subcategory is not None:
        args["subcategory"] = figure.subcategory
    return args
