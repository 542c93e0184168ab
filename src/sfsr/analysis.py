"""The pre-registered comparisons: one primary comparison tested alone at its alpha, a family of
secondary comparisons Holm-adjusted among themselves, nothing else confirmatory (numpy, scipy and
pandas only).

Inputs are the ``classify`` records (one per judge x input: ``input``, ``judge``, ``images``,
``correct_top1`` and, in newer records, ``label``, ``pred_top1``, ``prob_true``, ``logp_true``, all
in the same image order) and, for ``psnr_y``, the per-image metric tables. A generator trained with
several seeds has one evaluation name per seed; ``seed_names`` maps each to ``(first-seed name,
seed)``; names missing from it (``hr``, ``bicubic``) are seedless and pair with every seed.

* :func:`comparisons`: the table of the pre-registered comparisons.
* :func:`null_baseline`: the seed-to-seed noise floor of a control (its first two seeds).
* :func:`changed_confusions`: the most frequent prediction changes between two inputs.
* :func:`markdown`: the comparisons as Markdown, with the roles stated.

Statistics are :mod:`sfsr.stats`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from sfsr import stats
from sfsr.errors import ConfigError, DataError

#: metric -> the test of its p-value (``gap_closed`` has an interval only).
METRIC_TESTS = {"top1": "mcnemar_exact", "agreement": "mcnemar_exact", "logp_true": "wilcoxon",
                "psnr_y": "wilcoxon", "gap_closed": "fieller_interval"}
BINARY = ("top1", "agreement")
RERUN = "rerun the classify jobs (older records lack per-image labels, predictions and probabilities)"
COLUMNS = ["role", "model", "against", "judge", "metric", "test", "n_images", "n_seeds", "estimate", "low",
           "high", "p", "p_seeds", "per_seed", "p_holm", "alpha", "significant", "fixed", "broken", "status"]


def _judge(record: Mapping[str, Any]) -> str:
    return str(record.get("judge", "prior"))


def _index(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    if not records:
        raise DataError("analysis: no classification records")
    out = {(str(r["input"]), _judge(r)): r for r in records}
    images = {key: list(r.get("images", [])) for key, r in out.items()}
    first = next(iter(images.values()))
    other = sorted(f"{i} (judge {j})" for (i, j), im in images.items() if im != first)
    if other:
        raise DataError(f"classification records {other} list other test images than the rest; rerun the "
                        "classify jobs of this set")
    return out


def _field(index: Mapping[tuple[str, str], Mapping[str, Any]], name: str, judge: str, field: str) -> np.ndarray:
    record = index.get((name, judge))
    if record is None:
        raise DataError(f"no classification record of {name!r} under judge {judge!r}")
    if field not in record:
        raise DataError(f"classification record {name!r} (judge {judge!r}) has no {field!r}; {RERUN}")
    return np.asarray(record[field], dtype=float)


def _twins(name: str, seed_names: Mapping[str, tuple[str, int]]) -> dict[int, str] | None:
    """Seed -> evaluation name of the seeds of first-seed name ``name``; None for a seedless name."""
    twins = {int(seed): str(n) for n, (first, seed) in seed_names.items() if str(first) == name}
    return twins or None


def _pairs(model: str, against: str, seed_names: Mapping[str, tuple[str, int]]) -> dict[int | None, tuple[str, str]]:
    """Seed -> (model's name, against's name) for that seed; a seedless side pairs with every seed."""
    m, a = _twins(model, seed_names), _twins(against, seed_names)
    if m is None and a is None:
        return {None: (model, against)}
    if m is None or a is None:
        seeded = m if m is not None else a
        return {s: (seeded[s] if m is not None else model, seeded[s] if a is not None else against)
                for s in sorted(seeded)}
    common = sorted(set(m) & set(a))
    if not common:
        raise DataError(f"analysis: {model!r} (seeds {sorted(m)}) and {against!r} (seeds {sorted(a)}) share no "
                        "training seed")
    return {s: (m[s], a[s]) for s in common}


def _psnr(metrics: Mapping[str, pd.DataFrame], name: str, stems: Sequence[str]) -> np.ndarray:
    table = metrics[name].copy()
    table["image"] = table["image"].astype(str)
    table = table.drop_duplicates("image").set_index("image")
    missing = [s for s in stems if s not in table.index]
    if missing:
        raise DataError(f"per-image metrics of {name!r} lack {len(missing)} test images (e.g. {missing[:3]}); "
                        "rerun its image_metrics job")
    return table.loc[list(stems), "psnr_y"].to_numpy(dtype=float)


def _fmt(values: Sequence[float]) -> str:
    return ";".join("nan" if math.isnan(v) else f"{v:.6g}" for v in values)


def _check(where: str, item: Mapping[str, Any], index, metrics, seed_names) -> None:
    metric = item.get("metric")
    if metric not in METRIC_TESTS:
        raise ConfigError(f"analysis.{where}.metric: unknown metric {metric!r} (one of {sorted(METRIC_TESTS)})")
    test = item.get("test")
    if test is not None and test != METRIC_TESTS[metric]:
        raise ConfigError(f"analysis.{where}.test: {test!r} does not fit metric {metric!r}, whose test is "
                          f"{METRIC_TESTS[metric]!r}")
    if metric == "psnr_y":
        known = set(metrics or {})
        what = "per-image metrics"
    else:
        judges = sorted({j for _, j in index})
        if item.get("judge") not in judges:
            raise ConfigError(f"analysis.{where}.judge: unknown judge {item.get('judge')!r} (judges: {judges})")
        known = {i for i, j in index if j == item["judge"]}
        what = f"classification records under judge {item['judge']!r}"
    for key in ("model", "against"):
        name = item.get(key)
        names = [n for _, n in (_twins(str(name), seed_names) or {None: str(name)}).items()]
        absent = [n for n in names if n not in known]
        if absent:
            raise ConfigError(f"analysis.{where}.{key}: unknown {key} {name!r}: no {what} of {absent} "
                              f"(has {sorted(known)})")
    if metric in ("agreement", "gap_closed") and "hr" not in known:
        raise ConfigError(f"analysis.{where}: metric {metric!r} needs the 'hr' records under judge "
                          f"{item['judge']!r}")


def _compare(item: Mapping[str, Any], index, metrics, seed_names, stems, n_boot: int, seed: int,
             alpha: float) -> dict[str, Any]:
    metric, judge = item["metric"], item.get("judge")
    pairs = _pairs(str(item["model"]), str(item["against"]), seed_names)

    def values(name: str) -> np.ndarray:
        if metric == "top1" or metric == "gap_closed":
            return _field(index, name, judge, "correct_top1")
        if metric == "logp_true":
            return _field(index, name, judge, "logp_true")
        if metric == "agreement":
            return (_field(index, name, judge, "pred_top1") == _field(index, "hr", judge, "pred_top1")).astype(float)
        return _psnr(metrics, name, stems)

    model = {s: values(m) for s, (m, _) in pairs.items()}
    against = {s: values(a) for s, (_, a) in pairs.items()}
    keys = list(pairs)
    row: dict[str, Any] = {"model": item["model"], "against": item["against"],
                           "judge": judge if metric != "psnr_y" else "", "metric": metric,
                           "test": METRIC_TESTS[metric], "n_images": len(stems), "n_seeds": len(keys),
                           "fixed": np.nan, "broken": np.nan, "status": None, "p": np.nan, "p_seeds": np.nan}
    if metric == "gap_closed":
        hr = _field(index, "hr", judge, "correct_top1")
        per_seed = [stats.gap_closed(model[s], hr, against[s], alpha=alpha)["gap"] for s in keys]
        # per image: the mean over seeds of model - against over the mean over seeds of hr - against
        res = stats.gap_closed(np.mean([model[s] for s in keys], axis=0), hr,
                               np.mean([against[s] for s in keys], axis=0), alpha=alpha)
        row.update(estimate=res["gap"], low=res["low"], high=res["high"], status=res["status"],
                   per_seed=_fmt(per_seed))
        return row
    boot = stats.hierarchical_bootstrap(model, against, n_boot=n_boot, seed=seed, alpha=alpha)
    row.update(estimate=boot["estimate"], low=boot["low"], high=boot["high"], per_seed=_fmt(boot["per_seed"]),
               p_seeds=stats.seed_test(boot["per_seed"]))
    if metric in BINARY:
        counts = [stats.fixed_broken(model[s], against[s]) for s in keys]
        fixed, broken = sum(c[0] for c in counts), sum(c[1] for c in counts)
        row.update(fixed=fixed, broken=broken, p=stats.mcnemar_exact(fixed, broken))
        if len(keys) == 1:
            m, a = model[keys[0]].astype(bool), against[keys[0]].astype(bool)
            row["low"], row["high"] = stats.paired_diff_interval(fixed, broken, m.size,
                                                                 both_right=int(np.sum(m & a)), alpha=alpha)
    else:
        row["p"] = stats.paired_continuous_test(np.mean([model[s] for s in keys], axis=0),
                                                np.mean([against[s] for s in keys], axis=0))
    return row


def comparisons(spec: Mapping[str, Any], records: Sequence[Mapping[str, Any]], *,
                metrics: Mapping[str, pd.DataFrame] | None = None,
                seed_names: Mapping[str, tuple[str, int]] | None = None, n_boot: int = 2000,
                seed: int = 0, default_judge: str = "prior") -> pd.DataFrame:
    """The pre-registered comparisons of ``spec`` (``{"primary": {model, against, judge, metric,
    test, alpha}, "secondary": [{model, against, judge, metric}, ...]}``), one row each.

    ``model``/``against`` are first-seed evaluation names; each seed's twin comes from
    ``seed_names`` and the two are paired by seed (a seedless ``against`` such as ``bicubic`` or
    ``hr`` pairs with every seed). Metrics, per image:

    * ``top1``: top-1 correctness; ``estimate`` the top-1 difference; exact McNemar.
    * ``agreement``: the judge's ``pred_top1`` equals the same judge's ``pred_top1`` on ``hr`` (the
      manipulation check under the ``prior``); exact McNemar on the agreement indicators.
    * ``logp_true``: log-probability of the true class; Wilcoxon signed-rank.
    * ``psnr_y``: PSNR (Y) from ``metrics`` on the records' test images (judge ignored); Wilcoxon.
    * ``gap_closed``: share of the ``against``-to-HR top-1 gap closed, ``(model - against) / (hr -
      against)``, Fieller's interval (:func:`sfsr.stats.gap_closed`) of per-image values averaged
      over seeds (image sampling only); ``status`` says "no gap to close"; no p.

    Columns: ``role`` (primary | secondary), ``model, against, judge, metric, test, n_images,
    n_seeds``, ``estimate`` (mean over seeds of the per-seed mean difference), ``low, high`` (the
    hierarchical bootstrap over seeds then images, :func:`sfsr.stats.hierarchical_bootstrap`; with
    one seed the binary metrics use Newcombe's interval, :func:`sfsr.stats.paired_diff_interval`),
    ``p`` (with one seed the test on that seed; with several, McNemar on the discordant pairs pooled
    over seeds and Wilcoxon on the per-image mean over seeds: pooling treats seed x image pairs as
    independent and ignores seed-to-seed variation, so the hierarchical interval is the uncertainty
    to read), ``p_seeds`` (one-sample t-test of the per-seed estimates, :func:`sfsr.stats.seed_test`;
    NaN with one seed), ``per_seed`` (";"-joined per-seed estimates), ``p_holm`` (Holm across the
    secondary rows only; the primary row's is its ``p``, tested alone), ``alpha``, ``significant``
    (``p_holm < alpha`` for secondaries, ``p < alpha`` for the primary; None without a p),
    ``fixed, broken`` (pooled discordant images of the binary metrics; NaN elsewhere), ``status``.

    ``default_judge`` judges the comparisons that name no judge (the study's primary judge).

    Raises :class:`ConfigError` naming the key for an unknown model, judge, metric or a test that
    does not fit the metric, and :class:`DataError` naming the record when a record lacks the field
    a metric needs."""
    seed_names = dict(seed_names or {})
    index = _index(records)
    stems = [str(s) for s in next(iter(index.values())).get("images", [])]
    primary = spec.get("primary")
    secondary = list(spec.get("secondary") or [])
    base_alpha = float(primary.get("alpha", 0.05)) if primary else 0.05
    items = ([("primary", "primary", primary)] if primary else []) + [
        ("secondary", f"secondary[{i}]", item) for i, item in enumerate(secondary)]
    # a comparison without a judge is judged by the study's primary judge (config key primary_judge)
    items = [(role, where, item if item.get("judge") or item["metric"] == "psnr_y"
              else {**item, "judge": default_judge}) for role, where, item in items]
    for _, where, item in items:
        _check(where, item, index, metrics, seed_names)
    rows = []
    for role, _, item in items:
        alpha = float(item.get("alpha", base_alpha))
        row = _compare(item, index, metrics, seed_names, stems, n_boot, seed, alpha)
        row.update(role=role, alpha=alpha)
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    if table.empty:
        return table
    second = (table["role"] == "secondary").to_numpy()
    p_holm = table["p"].to_numpy(dtype=float).copy()
    p_holm[second] = stats.holm(p_holm[second])
    table["p_holm"] = p_holm
    table["significant"] = pd.Series([None if math.isnan(p) else bool(p < a) for p, a in zip(p_holm, table["alpha"])],
                                     index=table.index, dtype=object)
    return table


def null_baseline(records: Sequence[Mapping[str, Any]], control: str, judge: str,
                  seed_names: Mapping[str, tuple[str, int]]) -> dict[str, Any]:
    """The seed-to-seed noise floor: the control's second seed against its first under ``judge``.
    Returns ``{"control", "judge", "seeds", "names", "n", "fixed", "broken", "p"`` (exact McNemar),
    ``"diff", "low", "high"`` (top-1 difference with Newcombe's interval), ``"pred_differs"`` (share
    of images whose ``pred_top1`` differs)``}``."""
    index = _index(records)
    twins = _twins(control, seed_names or {})
    if twins is None or len(twins) < 2:
        raise DataError(f"null_baseline: {control!r} has fewer than two training seeds in seed_names")
    s0, s1 = sorted(twins)[:2]
    first, second = twins[s0], twins[s1]
    a = _field(index, first, judge, "correct_top1").astype(bool)
    b = _field(index, second, judge, "correct_top1").astype(bool)
    pa, pb = _field(index, first, judge, "pred_top1"), _field(index, second, judge, "pred_top1")
    fixed, broken = stats.fixed_broken(b, a)
    low, high = stats.paired_diff_interval(fixed, broken, a.size, both_right=int(np.sum(a & b)))
    return {"control": control, "judge": judge, "seeds": (s0, s1), "names": (first, second), "n": int(a.size),
            "fixed": fixed, "broken": broken, "p": stats.mcnemar_exact(fixed, broken),
            "diff": float(b.mean() - a.mean()), "low": low, "high": high,
            "pred_differs": float(np.mean(pa != pb))}


def changed_confusions(records: Sequence[Mapping[str, Any]], model: str, against: str, judge: str,
                       top: int = 10) -> pd.DataFrame:
    """The images whose top-1 prediction under ``judge`` differs between ``against`` and ``model``
    (first-seed names), grouped: ``true_class, against_pred, model_pred, count``, most frequent
    first (ties by class indices), at most ``top`` rows."""
    index = _index(records)
    label = _field(index, model, judge, "label").astype(int)
    pm = _field(index, model, judge, "pred_top1").astype(int)
    pa = _field(index, against, judge, "pred_top1").astype(int)
    changed = pm != pa
    frame = pd.DataFrame({"true_class": label[changed], "against_pred": pa[changed], "model_pred": pm[changed]})
    counts = frame.groupby(["true_class", "against_pred", "model_pred"]).size().reset_index(name="count")
    counts = counts.sort_values(["count", "true_class", "against_pred", "model_pred"],
                                ascending=[False, True, True, True])
    return counts.head(int(top)).reset_index(drop=True)


def markdown(table: pd.DataFrame) -> str:
    """The comparisons table as compact Markdown, preceded by the roles: the primary comparison is
    tested alone at its alpha, the secondaries are Holm-adjusted among themselves, nothing else is
    confirmatory."""
    def num(v: Any, digits: int = 4) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"

    lines = ["The primary comparison is tested alone at its alpha; the secondary comparisons are "
             "Holm-adjusted among themselves (p_holm); nothing else is confirmatory. Intervals: "
             "bootstrap over seeds then images (Newcombe with one seed for top-1 and agreement; Fieller "
             "for gap_closed).", "",
             "| role | model | against | judge | metric | test | images | seeds | estimate [low, high] "
             "| p | p (Holm) | p (seeds) | significant |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        estimate = f"{num(r['estimate'])} [{num(r['low'])}, {num(r['high'])}]"
        if r.get("status") not in (None, "ok") and not pd.isna(r.get("status")):
            estimate += f" ({r['status']})"
        sig = "—" if r["significant"] is None or pd.isna(r["significant"]) else ("yes" if r["significant"] else "no")
        lines.append(f"| {r['role']} | {r['model']} | {r['against']} | {r['judge'] or '—'} | {r['metric']} | "
                     f"{r['test']} | {r['n_images']} | {r['n_seeds']} | {estimate} | {num(r['p'], 3)} | "
                     f"{num(r['p_holm'], 3)} | {num(r['p_seeds'], 3)} | {sig} |")
    return "\n".join(lines) + "\n"


def primary_context(records: Sequence[Mapping[str, Any]], primary: Mapping[str, Any],
                    seed_names: Mapping[str, tuple[str, int]] | None, judge: str, top: int = 10) -> str:
    """Markdown beside the comparisons table, for reading the primary comparison: the seed-to-seed
    noise floor of its reference (:func:`null_baseline`, when the reference has two training seeds)
    and the changed confusions between model and reference under ``judge`` (first seeds,
    :func:`changed_confusions`; classes are the classifier's indices)."""
    model, against = str(primary["model"]), str(primary["against"])
    judge = str(primary.get("judge") or judge)
    lines = []
    twins = _twins(against, seed_names or {})
    if twins is not None and len(twins) >= 2:
        b = null_baseline(records, against, judge, seed_names or {})
        lines += [f"**Null baseline** (judge {judge}): {b['names'][1]} against {b['names'][0]}, the same "
                  f"recipe with another training seed, disagree on the top-1 prediction of "
                  f"{b['pred_differs']:.1%} of {b['n']} images; top-1 difference {b['diff']:+.4f} "
                  f"[{b['low']:+.4f}, {b['high']:+.4f}], {b['fixed']} fixed / {b['broken']} broken, exact "
                  f"McNemar p = {b['p']:.3g}.", ""]
    confusions = changed_confusions(records, model, against, judge, top=top)
    lines += [f"**Changed confusions** (judge {judge}, first seeds): the most frequent (true class, "
              f"prediction on {against}, prediction on {model}) of the images whose prediction changed.", ""]
    if confusions.empty:
        lines.append("(no image changed its prediction)")
    else:
        lines += ["| true class | " + against + " | " + model + " | images |", "|---:|---:|---:|---:|"]
        lines += [f"| {r.true_class} | {r.against_pred} | {r.model_pred} | {r['count']} |"
                  for _, r in confusions.iterrows()]
    return "\n".join(lines) + "\n"
