"""Shared style of the report's figures: colours per model, model families, the rc style,
column checks, legends and saving as PNG + PDF.

Part of :mod:`sfsr.plots` (its docstring has the conventions).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from sfsr import io
from sfsr.errors import DataError


STYLE: dict[str, Any] = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 12, "figure.dpi": 100,
    "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
    "axes.spines.right": False,
}
"""Matplotlib settings applied while a figure is built and saved (fonts >= 9 pt)."""

FIXED_COLORS: dict[str, str] = {"hr": "#000000", "bicubic": "#8c8c8c", "lr_head": "#6b4226"}
"""Reserved colours: HR black, bicubic grey, the LR classification head brown."""

# tab10 without its grey (reserved for bicubic), then the light halves of tab20, then tab20b.
_PALETTE: tuple[str, ...] = tuple(
    [matplotlib.colors.to_hex(c) for i, c in enumerate(matplotlib.colormaps["tab10"].colors)
     if i != 7]
    + [matplotlib.colors.to_hex(c) for i, c in enumerate(matplotlib.colormaps["tab20"].colors)
       if i % 2 == 1 and i != 15]
    + [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20b"].colors]
)

FAMILIES: tuple[str, ...] = ("hr", "bicubic", "lr_head", "psnr", "gan", "semantic", "shared",
                             "refsr", "other")
"""Model families in display order (legend order, colour order)."""

FAMILY_MARKERS: dict[str, str] = {"hr": "*", "bicubic": "X", "lr_head": "P", "psnr": "o",
                                  "gan": "^", "semantic": "s", "shared": "D", "refsr": "v",
                                  "other": "h"}

_PSNR_ARCHS = ("srresnet", "msrresnet", "edsr", "rrdbnet", "autoencoder")
_GAN_NAMES = ("srgan", "esrgan", "gan")


def model_family(name: str) -> str:
    """Family of a model/input name, from the words in its name (case-insensitive).

    ``hr``, ``bicubic`` and ``lr_head`` (also ``<model>_lr_head``) are their own families; then, first match wins:
    ``refsr`` (name contains ``refsr``), ``shared`` (``shared``), ``semantic`` (``semantic`` or
    ``sem``), ``gan`` (``srgan``, ``esrgan``, ``gan``), ``psnr`` (``srresnet``, ``msrresnet``,
    ``edsr``, ``rrdbnet``, ``autoencoder``, ``psnr``), else ``other``. Semantic/shared/RefSR come
    first because those models are often named after the generator they build on
    (``srgan_semantic``).
    """
    n = str(name).lower()
    if n in ("hr", "bicubic", "lr_head"):
        return n
    if n.endswith("_lr_head"):  # the LR head of a shared-feature model, e.g. srresnet_x4_lr_head
        return "lr_head"
    words = set(n.replace("-", "_").split("_"))
    if "refsr" in n:
        return "refsr"
    if "shared" in n:
        return "shared"
    if "semantic" in n or "sem" in words:
        return "semantic"
    if any(g in n for g in _GAN_NAMES):
        return "gan"
    if any(a in n for a in _PSNR_ARCHS) or "psnr" in n:
        return "psnr"
    return "other"


def family_lookup(families: Mapping[str, str]) -> Callable[[str], str]:
    """``name -> family`` from a mapping (the workflow passes each name's family: hr, bicubic,
    lr_head or its training stage's); names it lacks are ``other``."""
    return lambda name: families.get(str(name), "other")


def _canonical_order(models: Sequence[str], colors: Mapping[str, str] | None = None,
                     family: Callable[[str], str] = model_family) -> list[str]:
    """Unique names in display order (legends, bars): the order of ``colors`` when it covers them
    (:func:`model_colors` returns its colours in display order), else by (family order, name)."""
    names = list(dict.fromkeys(str(m) for m in models))
    if colors is not None and all(m in colors for m in names):
        rank = {m: i for i, m in enumerate(colors)}
        return sorted(names, key=rank.__getitem__)
    return sorted(names, key=lambda m: (FAMILIES.index(family(m)), m))


def model_colors(models: Sequence[str], universe: Sequence[str] | None = None,
                 families: Mapping[str, str] | None = None) -> dict[str, str]:
    """One colour per model, the same in every figure, in display order.

    ``hr``/``bicubic``/``lr_head`` have fixed colours (:data:`FIXED_COLORS`). The other names of
    ``universe`` (default: ``models``) are put in canonical order (family, then name) and take the
    palette's colours in that order; the result is restricted to ``models`` and listed in that
    order. ``families``: each name's family (the workflow passes them, from the stage table);
    without it the family is guessed from the name (:func:`model_family`, for ad-hoc use). Pass the
    study's full model list as ``universe`` and every subset gets the same colours (this is what
    the report does). Deterministic; the palette (tab10 minus grey, then tab20/tab20b) cycles
    beyond 37 models.
    """
    family = family_lookup(families) if families is not None else model_family
    names = _canonical_order(list(universe or []) + list(models), family=family)
    free = [m for m in names if m not in FIXED_COLORS]
    colors = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(free)}
    colors.update({m: c for m, c in FIXED_COLORS.items() if m in names})
    wanted = {str(m) for m in models}
    return {m: colors[m] for m in names if m in wanted}


def _colors_for(models: Sequence[str], colors: Mapping[str, str] | None) -> dict[str, str]:
    """``colors`` if it covers ``models``, else :func:`model_colors` over ``models`` + ``colors``."""
    if colors is not None and all(m in colors for m in models):
        return dict(colors)
    return model_colors(list(models), universe=list(colors or []) + list(models))


def _style() -> Any:
    return matplotlib.rc_context(STYLE)


def _check_columns(df: pd.DataFrame, needed: Sequence[str], what: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{what}: table lacks the column(s) {missing}; it has {list(df.columns)}")


def save_figure(fig: Figure, out_png: str | os.PathLike) -> list[Path]:
    """Save ``fig`` as ``out_png`` (PNG) and as the PDF of the same stem, atomically.

    Metadata dates are left out so reruns give identical files. Returns ``[png, pdf]``.
    """
    png = Path(out_png)
    if png.suffix.lower() != ".png":
        raise DataError(f"figure output must end with .png, got {png}; the PDF is written beside it")
    pdf = png.with_suffix(".pdf")
    with _style():
        with io.atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
        with io.atomic_path(pdf) as tmp:
            fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Creator": None,
                                                      "Producer": None})
    return [png, pdf]


def _legend_columns(fig: Figure, labels: Sequence[str], fontsize: float = 9.0) -> int:
    """How many legend columns fit the figure's width: an entry is its handle (~0.5 in) plus its
    text (~0.6 x font size per character), so long model names get fewer columns, never clipped."""
    if not labels:
        return 1
    entry_in = 0.55 + 0.6 * fontsize / 72.0 * max(len(str(x)) for x in labels)
    return max(1, min(len(labels), int(0.95 * fig.get_figwidth() // entry_in)))


def _legend_below(fig: Figure, handles: list, labels: list[str], ncol: int | None = None) -> None:
    """A legend under the axes with as many columns as fit the figure's width (at most ``ncol``)."""
    if handles:
        fit = _legend_columns(fig, labels)
        fig.legend(handles, labels, loc="outside lower center",
                   ncol=min(ncol, fit) if ncol else fit, frameon=False)


def _save_and_close(fig: Figure, out_png: str | os.PathLike) -> list[Path]:
    try:
        return save_figure(fig, out_png)
    finally:
        fig.clear()
