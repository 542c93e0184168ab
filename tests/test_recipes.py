"""The recipes of docs/architecture.md ("Adding things"), followed on toy entries: a metric, a dataset
layout, a generator and a figure are each one entry of one table, and everything else reads the table.
Each test adds a toy entry (monkeypatched, so the tables are restored) and checks that it shows up
where the recipe promises; the schema tests check that the schema's enums name the tables' entries.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sfsr import config as cfg
from sfsr import evaluation, figures, metrics, model_options
from sfsr.data import layouts, prepare
from sfsr.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _schema() -> dict:
    return cfg.load_schema()


# ------------------------------------------------------------------------------------------ metrics
TOY_METRIC = metrics.Metric("MAE-Y", "{:.3f}", False, lambda v: float(np.abs(v.hr - v.sr).mean()), unit="grey levels")


def test_schema_metric_enum_is_the_metrics_table():
    plot_metrics = _schema()["properties"]["plots"]["properties"]["metrics"]
    assert plot_metrics["items"]["enum"] == list(metrics.METRICS)
    assert set(plot_metrics["default"]) <= set(metrics.METRICS)


def test_metric_wildcard_is_built_from_the_table(monkeypatch):
    """rules/common.smk's ``metric`` wildcard constraint is the table's names, so a new metric's
    figure (metrics_<name>.png) matches it and nothing else does."""
    line = next(ln for ln in (REPO / "rules" / "common.smk").read_text().splitlines()
                if ln.strip().startswith("metric="))
    expression = line.strip()[len("metric="):].rstrip(",")
    monkeypatch.setitem(metrics.METRICS, "mae_y", TOY_METRIC)
    pattern = eval(expression, {"METRICS": metrics.METRICS})  # noqa: S307  the rule file's own text
    for name in metrics.METRICS:
        assert re.fullmatch(pattern, name)
    assert not re.fullmatch(pattern, "lpips") and not re.fullmatch(pattern, "psnr_y_ci_low")


def _folders(tmp_path: Path, photo_saver) -> tuple[Path, Path]:
    from sfsr.data.bicubic import imresize, modcrop
    from sfsr.data.images import read_image
    from sfsr.io import save_image

    hr = photo_saver(tmp_path / "hr", "astronaut", "camera")
    sr = tmp_path / "sr"
    for path in sorted(hr.glob("*.png")):
        image = modcrop(read_image(path), 2)
        save_image(sr / path.name, imresize(imresize(image, 0.5), 2))
    return hr, sr


def test_a_metric_is_one_line_of_the_table(monkeypatch, tmp_path, photo_saver, capsys):
    """A toy metric in METRICS is computed per image, averaged with its CI, titled in the Markdown
    summary and the plot's axis, kept by the summary table, printed by the CLI."""
    from sfsr import plots
    from sfsr.cli import main

    monkeypatch.setitem(metrics.METRICS, "mae_y", TOY_METRIC)
    hr, sr = _folders(tmp_path, photo_saver)
    table = evaluation.evaluate_folders(hr, sr, 2)
    assert list(table.columns[:5]) == ["image", "psnr_y", "ssim_y", "psnr_rgb", "mae_y"]
    assert (table["mae_y"] > 0).all()
    table["model"], table["dataset"], table["scale"] = "bicubic", "toy", 2
    summary = evaluation.summarize(table, n_boot=50)
    assert {"mae_y", "mae_y_ci_low", "mae_y_ci_high"} <= set(summary.columns)
    assert evaluation.mean_metrics(table)["mae_y"] == pytest.approx(table["mae_y"].mean())
    markdown = evaluation.summary_markdown(summary)
    assert "MAE-Y (grey levels)" in markdown and f"{summary['mae_y'].iloc[0]:.3f} [" in markdown
    fig = plots.make_metric_bars(summary, "mae_y")
    assert fig.axes[0].get_ylabel() == "MAE-Y (grey levels)"
    assert "mae_y" in plots.summary_table(summary).columns
    assert main(["evaluate", "--hr", str(hr), "--sr", str(sr), "--scale", "2"]) == 0
    assert re.search(r"MAE-Y \d+\.\d{3} grey levels", capsys.readouterr().out)


# ------------------------------------------------------------------------------------------ layouts
def test_schema_layout_enum_is_the_layouts_table():
    layout = _schema()["$defs"]["dataset"]["properties"]["layout"]
    assert layout["enum"] == list(layouts.LAYOUTS)
    assert layout["default"] in layouts.LAYOUTS
    for name, entry in layouts.LAYOUTS.items():
        assert entry.kind in layouts.KINDS and entry.sources in layouts.SOURCES, name
        assert entry.hr_size in (None, "resize", "crop"), name


def test_layout_lists_come_from_the_table():
    assert prepare.CLASS_LAYOUTS == ("class_folders", "flowers102", "cub200", "builtin_classes")
    assert prepare.BUILTIN_LAYOUTS == ("flat", "builtin_classes", "builtin_refgroups")


def _toy_collect(name, spec, root, seed):
    """Two gray gradients per class, labelled by the toy layout (class = first letter of the file)."""
    items = []
    for class_id, letter in enumerate("ab"):
        for i in range(4):
            image = np.full((24, 20), 40 * class_id + 10 * i, dtype=np.uint8)
            items.append(layouts._Item(stem=f"{letter}{i}", source=str(root / f"{letter}{i}"),
                                       load=lambda image=image: image, class_id=class_id, class_name=letter,
                                       split="train"))
    return layouts.Collected(items)


def test_a_layout_is_its_collect_function_and_one_line(monkeypatch, tmp_path, repo_root):
    """A toy classification layout in LAYOUTS: prepare_dataset dispatches to its collect function and
    carves its splits; the config checks accept it as a classification set and refuse it for a
    builtin source."""
    monkeypatch.setitem(layouts.LAYOUTS, "toy_classes", layouts.Layout(_toy_collect, "classes"))
    source = tmp_path / "src"
    source.mkdir()
    frame = prepare.prepare_dataset("toy", {"source": "local", "layout": "toy_classes",
                                            "split": {"val_fraction": 0.25, "test_fraction": 0.25}},
                                    source, tmp_path / "out", min_size=8, max_scale=2)
    assert sorted(frame["stem"]) == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
    assert set(frame["split"]) == {"train", "val", "test"}  # a classes layout: splits carved per class
    assert (tmp_path / "out" / "HR" / "a0.png").is_file()
    with pytest.raises(ConfigError, match=r"source 'builtin' cannot use layout 'toy_classes'"):
        prepare.prepare_dataset("toy", {"source": "builtin", "layout": "toy_classes"}, None, tmp_path / "o2")

    config = yaml.safe_load((repo_root / "config.yaml").read_text())
    config = cfg.validate(copy.deepcopy(config))
    config["datasets"]["toy"] = {**config["datasets"][config["test"][0]], "source": "local", "path": "x",
                                 "layout": "toy_classes"}
    config["classification"] = ["toy"]
    cfg.check_references(config)  # a classes layout: a classification set
    monkeypatch.setitem(layouts.LAYOUTS, "toy_classes", layouts.Layout(_toy_collect, "flat"))
    with pytest.raises(ConfigError, match=r"classification sets need .*builtin_classes"):
        cfg.check_references(config)


def test_an_unknown_layout_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown layout 'nope'"):
        prepare.prepare_dataset("toy", {"source": "local", "layout": "nope"}, tmp_path, tmp_path / "out")


# ------------------------------------------------------------------------------------------ generators
def test_generator_defaults_are_the_class_signatures():
    """The torch-free defaults (read from the source with ast) are the classes' signatures (read by
    inspect, torch imported here) with each preset's own values; an option is a keyword with a literal
    default."""
    import inspect

    from sfsr import models

    for name, (module, cls_name, own) in model_options.GENERATORS.items():
        cls = models.GENERATORS[name][0]
        assert (cls.__module__, cls.__name__) == (module, cls_name)
        params = inspect.signature(cls.__init__).parameters
        signature = {k: p.default for k, p in params.items() if k not in ("self", "scale")
                     and isinstance(p.default, (bool, int, float, str))}
        assert model_options.GENERATOR_KWARGS[name] == {**signature, **own}, name
        assert set(own) <= set(signature), name
    assert "rgb_mean" not in model_options.GENERATOR_KWARGS["edsr"]  # a constant, not an option
    for name, (module, cls_name) in model_options.DISCRIMINATORS.items():
        params = inspect.signature(models.model_class(module, cls_name).__init__).parameters
        assert model_options.DISCRIMINATOR_KWARGS[name] == {k: p.default for k, p in params.items() if k != "self"}


def test_a_generator_is_one_line_of_the_table(monkeypatch):
    """A toy generator: a line pointing at an existing class with its own values; its options are the
    class's, checked torch-free, and sfsr.models builds it through the table."""
    from sfsr import models

    monkeypatch.setitem(model_options.GENERATORS, "tiny_srresnet",
                        ("sfsr.models.srresnet", "SRResNet", {"num_blocks": 1, "num_features": 8}))
    defaults = model_options._generator_defaults("tiny_srresnet")
    monkeypatch.setitem(model_options.GENERATOR_KWARGS, "tiny_srresnet", defaults)
    assert defaults == {"num_features": 8, "num_blocks": 1, "use_bn": True, "base": "none"}
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['growth'\] for generator 'tiny_srresnet'"):
        model_options.generator_kwargs("tiny_srresnet", 2, {"growth": 4})
    monkeypatch.setitem(models.GENERATORS, "tiny_srresnet", (models.SRResNet, defaults))
    model = models.build_generator("tiny_srresnet", 2)
    assert isinstance(model, models.SRResNet) and model.num_features == 8
    assert models.generator_spec("tiny_srresnet", 2) == {"name": "tiny_srresnet", "scale": 2,
                                                         "kwargs": {"base": "none"}}


def test_signature_defaults_reads_literals_only(tmp_path, monkeypatch):
    assert model_options.signature_defaults("sfsr.models.edsr", "EDSR") == {
        "num_features": 64, "num_blocks": 16, "res_scale": 1.0, "base": "none"}
    with pytest.raises(LookupError, match="class Nope not found"):
        model_options.signature_defaults("sfsr.models.edsr", "Nope")


# ------------------------------------------------------------------------------------------ figures
def _rule_outputs() -> dict[str, str]:
    """Rule name -> the text of its output section, for every rule in rules/*.smk."""
    out = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", smk.read_text(), re.S | re.M):
            body = match.group(2)
            section = re.search(r"^    output:\n(.*?)(?=^    \w+:|\Z)", body, re.S | re.M)
            out[match.group(1)] = section.group(1) if section else ""
    return out


def _handlers() -> dict[str, set[str]]:
    """Rule name -> the sfsr.plots functions its workflow-script handler calls (plots.<f> or an
    imported f), for every run_rule dispatch in workflow_scripts/."""
    out = {}
    for script in sorted((REPO / "workflow_scripts").glob("*.py")):
        tree = ast.parse(script.read_text())
        functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
        for call in ast.walk(tree):
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "run_rule" \
                    and isinstance(call.args[1], ast.Dict):  # (train.py maps every stage in a comprehension)
                table = call.args[1]
                for key, value in zip(table.keys, table.values):
                    calls = set()
                    for node in ast.walk(functions[value.id]):
                        if isinstance(node, ast.Call):
                            func = node.func
                            calls.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
                    out[key.value] = calls
    return out


def test_every_figure_is_drawn_by_its_rule_and_listed_in_the_report():
    """Each figure of FIGURES: an output of its rule (PNG, and PDF where the table says), registered
    with report() under its caption and category, the caption file there; the rule's handler calls
    the table's sfsr.plots functions, which exist."""
    from sfsr import plots

    outputs, handlers = _rule_outputs(), _handlers()
    for name, figure in figures.FIGURES.items():
        assert figure.rule in outputs, name
        text = outputs[figure.rule]
        if f'report(figure_file("{name}", RESULTS), **report_args("{name}"))' not in text:
            # written out (rules/refsr.smk): the same file, caption and category
            written = 'f"{RESULTS}/figures/' + figure.file.replace("{", "{{").replace("}", "}}") + '.png"'
            assert f"report({written}" in text, (name, text)
            for value in figures.report_args(name).values():
                assert f'"{value}"' in text, (name, value)
        assert (f'figure_file("{name}", RESULTS, "pdf")' in text) == figure.pdf, name
        assert (REPO / "report" / figure.caption).is_file(), name
        for function in figure.draw:
            assert callable(getattr(plots, function)), (name, function)
            assert function in handlers[figure.rule], (name, function, figure.rule)


def test_figure_table_is_the_report_rules_files(monkeypatch):
    """rules/report.smk names no figure file of its own: every figures/ output there comes from the table."""
    text = (REPO / "rules" / "report.smk").read_text()
    assert "/figures/" not in text
    monkeypatch.setitem(figures.FIGURES, "toy", figures.Figure("plot_toy", ("plot_toy",), "toy_{dataset}",
                                                              "toy.rst", "9. Toys"))
    assert figures.figure_file("toy", "res") == "res/figures/toy_{dataset}.png"
    assert figures.report_args("toy") == {"caption": "../report/toy.rst", "category": "9. Toys"}
