"""The reference-based SR stage and its evaluation: SSEN trains through the stage table (with
resume, the offset log and its reference batches), and is evaluated per reference level, with a
random reference from another photo, against its no-reference control and bicubic."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sfsr.data.manifest import reference_groups
from sfsr.data.prepare import prepare_dataset
from sfsr.errors import ConfigError, DataError
from sfsr.models import load_generator
from sfsr.refsr import (gain_over_bicubic, paired_against_controls, reference_summary, reference_table, row_name,
                        summary_markdown)
from sfsr.training.data import RefPairDataset, load_reference_validation
from sfsr.training.loop import train

TINY = dict(num_features=8, num_blocks=1, extract_blocks=1, offset_features=8, base="bicubic")


@pytest.fixture(scope="module")
def groups(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refgroups")
    out = {}
    for name, photos in (("train", ["astronaut", "coffee"]), ("test", ["chelsea", "stereo_motorcycle"])):
        prepare_dataset(name, {"source": "builtin", "layout": "builtin_refgroups", "images": photos,
                               "hr_size": 48, "groups_per_image": 2}, None, root / name)
        out[name] = root / name / "HR"
    return out


def _cfg(**kw) -> dict:
    return dict(arch="ssen", scale=4, kwargs=dict(TINY, **kw), iterations=6, batch_size=2, lr_patch=8,
                lr=1e-3, log_every=2, val_every=3, checkpoint_every=3, num_workers=0, device="cpu")


def test_pairs_share_the_window_and_the_augmentation(groups):
    data = RefPairDataset([groups["train"]], 4, 8, length=8, seed=0, augment=False)
    item = data[0]
    assert item["hr"].shape == item["ref"].shape == (3, 32, 32) and item["hr"].dtype == torch.uint8
    assert torch.equal(data[3]["ref"], data[3]["ref"])  # deterministic per (seed, k)
    # the reference window is the same window of a similar view: much closer than another sample's
    same = np.mean([(data[k]["hr"].float() - data[k]["ref"].float()).abs().mean().item() for k in range(8)])
    other = np.mean([(data[k]["hr"].float() - data[(k + 3) % 8]["ref"].float()).abs().mean().item()
                     for k in range(8)])
    assert same < other
    valid = load_reference_validation([groups["test"]], 4)
    assert len(valid) == 4 and all(v.ref is not None and v.lr.shape[0] * 4 == v.hr.shape[0] for v in valid)


def test_the_refsr_stage_trains_logs_offsets_and_resumes(groups, tmp_path, caplog):
    kw = dict(train_hr_dirs=[groups["train"]], valid_hr_dirs=[groups["test"]], seed=0)
    train("refsr", _cfg(), out_dir=tmp_path / "a", max_iterations=3, **kw)
    with caplog.at_level(logging.INFO, logger="sfsr.training"):
        out = train("refsr", _cfg(), out_dir=tmp_path / "a", **kw)
    assert "resuming refsr training" in caplog.text
    log = pd.read_csv(tmp_path / "a" / "train_log.csv")
    assert log["iteration"].tolist() == [0, 2, 3, 4, 6] and "offset" in log.columns
    assert (log["offset"].dropna() >= 0).all() and log["offset"].dropna().iloc[-1] > 0
    train("refsr", _cfg(), out_dir=tmp_path / "b", **kw)  # uninterrupted
    a, b = (torch.load(p / "generator.pt", weights_only=True)["state_dict"] for p in (tmp_path / "a", tmp_path / "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    model, scale = load_generator(out)
    assert scale == 4 and model.use_reference and len(model.align) == 3
    # the no-reference control trains through the same stage, without an offset column
    train("refsr", _cfg(use_reference=False), out_dir=tmp_path / "c", **kw)
    assert "offset" not in pd.read_csv(tmp_path / "c" / "train_log.csv").columns


def test_evaluation_per_level_with_a_random_reference_and_the_controls(groups, tmp_path):
    kw = dict(train_hr_dirs=[groups["train"]], valid_hr_dirs=[groups["test"]], seed=0)
    ssen = train("refsr", _cfg(), out_dir=tmp_path / "ssen", **kw)
    noref = train("refsr", _cfg(use_reference=False), out_dir=tmp_path / "noref", **kw)
    tables = [reference_table(groups["test"], 4, model_name=name, dataset="test", checkpoint=ckpt)
              for name, ckpt in (("ssen", ssen), ("noref", noref), ("bicubic", None))]
    table = pd.concat(tables, ignore_index=True)
    n_groups = len(reference_groups(groups["test"]))
    counts = table.groupby(["model", "input"]).size()
    assert counts["ssen"].to_dict() == {"ref1": n_groups, "ref2": n_groups, "ref3": n_groups,
                                        "ref4": n_groups, "random": n_groups}
    assert counts["noref"].to_dict() == {"none": n_groups} and counts["bicubic"].to_dict() == {"bicubic": n_groups}
    assert np.isfinite(table["psnr_y"]).all()
    # an untrained-at-the-start residual model stays close to bicubic at this budget
    assert abs(table.loc[table.model == "ssen", "psnr_y"].mean()
               - table.loc[table.model == "bicubic", "psnr_y"].mean()) < 1.0
    gains = gain_over_bicubic(table)
    assert (gains.loc[gains.model == "bicubic", "psnr_y"] == 0).all()
    assert set(gains["model"]) == {"ssen", "ssen @ random", "noref", "bicubic"}
    summary = reference_summary(table, n_boot=50)
    assert list(summary.loc[summary.model == "ssen", "input"]) == ["ref1", "ref2", "ref3", "ref4", "random"]
    assert "| ssen |" in summary_markdown(summary)


def test_bad_references_get_clear_errors(groups, tmp_path):
    from sfsr.models.ssen import SSEN

    model = SSEN(4, **TINY)
    with pytest.raises(ValueError, match="needs a reference"):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"reference must be an RGB batch \(N, 3, H, W\)"):
        model(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="one reference per LR image"):
        model(torch.rand(2, 3, 8, 8), torch.rand(1, 3, 32, 32))
    # a reference file listed in the manifest but gone: the file is named
    folder = tmp_path / "broken"
    prepare_dataset("broken", {"source": "builtin", "layout": "builtin_refgroups", "images": ["coffee", "chelsea"],
                               "hr_size": 48, "groups_per_image": 1}, None, folder)
    (folder / "HR" / "coffee00_2.png").unlink()
    with pytest.raises(DataError, match="coffee00_2.png"):
        RefPairDataset([folder / "HR"], 4, 8, length=4)
    # a folder that is not a reference set
    plain = tmp_path / "plain"
    prepare_dataset("plain", {"source": "builtin", "images": ["coffee"]}, None, plain)
    with pytest.raises(DataError, match="not a prepared reference set"):
        reference_groups(plain / "HR")


def test_reference_levels_restrict_what_training_draws(groups):
    everything = RefPairDataset([groups["train"]], 4, 8, length=4, seed=0)
    similar = RefPairDataset([groups["train"]], 4, 8, length=4, seed=0, levels=[1])
    assert all(len(refs) == 4 for _, refs in everything.groups) and all(len(refs) == 1 for _, refs in similar.groups)
    from sfsr.errors import ConfigError
    from sfsr.training.settings import resolve_config
    assert resolve_config({**_cfg(), "reference_levels": [1, 2]})["reference_levels"] == [1, 2]
    with pytest.raises(ConfigError, match="reference_levels"):
        resolve_config({**_cfg(), "reference_levels": [0]})


def test_paired_comparison_with_the_control_by_hand():
    from sfsr.refsr import paired_against_controls, paired_markdown

    rows = []
    for g, (ref1, rnd, none) in enumerate([(31.0, 30.0, 30.5), (32.0, 31.0, 31.0), (30.0, 29.5, 30.5)]):
        for model, name, level, value in (("s", "ref1", 1.0, ref1), ("s", "random", np.nan, rnd),
                                          ("c", "none", np.nan, none)):
            rows.append({"model": model, "dataset": "d", "scale": 4, "group": f"g{g}", "input": name,
                         "level": level, "psnr_y": value})
    paired = paired_against_controls(pd.DataFrame(rows), n_boot=200).set_index("input")
    assert list(paired.index) == ["ref1", "random"] and set(paired["control"]) == {"c"}
    assert paired.loc["ref1", "diff_psnr_y"] == pytest.approx((0.5 + 1.0 - 0.5) / 3)
    assert paired.loc["ref1", "wins"] == 2 and paired.loc["random", "wins"] == 0
    assert paired.loc["random", "diff_low"] <= paired.loc["random", "diff_psnr_y"] <= paired.loc["random", "diff_high"]
    assert "| s | ref1 | c | +0.333 |" in paired_markdown(paired.reset_index())


def test_smoke_run_on_the_real_cufed_samples(shared_data, tmp_path, caplog):
    """CUFED's training pairs train the stage; the CUFED5 group (references 1..5 of another size than
    their target) is evaluated per level; with one group there is no random reference, said once."""
    refsr = shared_data / "refsr"
    prepare_dataset("cufed", {"source": "local", "layout": "refpairs"}, refsr / "CUFED_train_sample",
                    tmp_path / "cufed")
    prepare_dataset("cufed5", {"source": "local", "layout": "refgroups"}, refsr / "CUFED5_sample",
                    tmp_path / "cufed5")
    ckpt = train("refsr", _cfg(), train_hr_dirs=[tmp_path / "cufed" / "HR"],
                 valid_hr_dirs=[tmp_path / "cufed5" / "HR"], out_dir=tmp_path / "ssen", seed=0)
    with caplog.at_level(logging.WARNING, logger="sfsr.refsr"):
        table = reference_table(tmp_path / "cufed5" / "HR", 4, model_name="ssen", dataset="cufed5", checkpoint=ckpt)
    assert list(table["input"]) == ["ref1", "ref2", "ref3", "ref4", "ref5"]
    assert "no random reference" in caplog.text
    bicubic = reference_table(tmp_path / "cufed5" / "HR", 4, model_name="bicubic", dataset="cufed5")
    # the published bicubic PSNR of CUFED5 is about 24-25 dB; one group, x4, Y channel
    assert 18 < bicubic["psnr_y"].iloc[0] < 32 and abs(table["psnr_y"].mean() - bicubic["psnr_y"].iloc[0]) < 1.0


def _gan_cfg(**kw) -> dict:
    """refsr_gan settings as a model's section gives them: the preset's three terms (the perceptual
    one on the given feature network's layer '1'), the discriminator left to the stage's default."""
    return dict(_cfg(**kw), loss_preset="esrgan", lr=1e-4, perceptual={"layer": "1"},
                loss_weights={"pixel": 1.0, "perceptual": 0.1, "adversarial": 5e-3})


def test_refsr_gan_fine_tunes_the_refsr_generator_with_a_patchgan_under_bf16(groups, tmp_path, monkeypatch):
    """The adversarial stage starts from the refsr generator's weights, feeds the reference as refsr
    does (offsets logged), trains the stage's default PatchGAN and changes the generator; with
    bf16 'always' on this CPU (deform_conv2d in float32 inside the autocast) every loss is finite."""
    import sfsr.training.loop as loop
    from sfsr.models.discriminators import PatchDiscriminator

    kw = dict(train_hr_dirs=[groups["train"]], valid_hr_dirs=[groups["test"]], seed=0)
    init = train("refsr", _cfg(), out_dir=tmp_path / "refsr", **kw)
    built, build_parts = [], loop.build_parts

    def spy(st, cfg, weights, generator, *args, **kwargs):  # the parts, and the generator they start from
        start = {k: v.detach().clone() for k, v in generator.state_dict().items()}
        built.append((start, build_parts(st, cfg, weights, generator, *args, **kwargs)))
        return built[-1][1]

    monkeypatch.setattr(loop, "build_parts", spy)
    feature_net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    out = train("refsr_gan", dict(_gan_cfg(), bf16="always"), out_dir=tmp_path / "gan", init_checkpoint=init,
                feature_net=feature_net, **kw)
    (start, parts), = built
    assert isinstance(parts.disc, PatchDiscriminator)
    assert set(parts.weights) == {"pixel", "perceptual", "adversarial"}
    before = torch.load(init, weights_only=True)["state_dict"]
    assert all(torch.equal(start[k], before[k]) for k in before)  # started from the refsr generator
    after = torch.load(out, weights_only=True)
    assert after["stage"] == "refsr_gan"
    assert any(not torch.equal(after["state_dict"][k], before[k]) for k in before
               if before[k].is_floating_point())  # and trained it
    log = pd.read_csv(tmp_path / "gan" / "train_log.csv")
    assert {"pixel", "perceptual", "adversarial", "g_total", "d_loss", "offset"} <= set(log.columns)
    losses = log[["pixel", "perceptual", "adversarial", "g_total", "d_loss", "offset"]].dropna()
    assert len(losses) and np.isfinite(losses.to_numpy()).all()
    record = json.loads((tmp_path / "gan" / "provenance.json").read_text())
    assert record["speed_flags"]["bf16"] is True and record["config"]["discriminator"]["arch"] == "patchgan"
    model, scale = load_generator(out)
    assert scale == 4 and model.use_reference
    # without init: the stage refuses, naming the refsr generator it needs
    with pytest.raises(ConfigError, match="refsr_gan stage needs init_checkpoint"):
        train("refsr_gan", _gan_cfg(), out_dir=tmp_path / "none", feature_net=feature_net, **kw)


def test_refsr_gan_rows_per_level_paired_with_the_gan_control(groups, tmp_path):
    """The GAN generators are evaluated per reference level beside the refsr ones (rows
    '<model>_gan @ ref<k>'), and each reference-based run is paired with the control of its own
    stage when the workflow's pairing is given (every control otherwise)."""
    kw = dict(train_hr_dirs=[groups["train"]], valid_hr_dirs=[groups["test"]], seed=0)
    cfg = dict(_gan_cfg(), loss_weights={"pixel": 1.0, "perceptual": 0.0, "adversarial": 5e-3})
    ckpts = {"ssen": train("refsr", _cfg(), out_dir=tmp_path / "ssen", **kw),
             "noref": train("refsr", _cfg(use_reference=False), out_dir=tmp_path / "noref", **kw)}
    ckpts["ssen_gan"] = train("refsr_gan", cfg, out_dir=tmp_path / "ssen_gan", init_checkpoint=ckpts["ssen"], **kw)
    ckpts["noref_gan"] = train("refsr_gan", _gan_cfg(use_reference=False) | {"loss_weights": cfg["loss_weights"]},
                               out_dir=tmp_path / "noref_gan", init_checkpoint=ckpts["noref"], **kw)
    assert "offset" not in pd.read_csv(tmp_path / "noref_gan" / "train_log.csv").columns
    table = pd.concat([reference_table(groups["test"], 4, model_name=name, dataset="test", checkpoint=ckpt)
                       for name, ckpt in [*ckpts.items(), ("bicubic", None)]], ignore_index=True)
    n_groups = len(reference_groups(groups["test"]))
    counts = table.groupby(["model", "input"]).size()
    assert counts["ssen_gan"].to_dict() == {f"ref{k}": n_groups for k in range(1, 5)} | {"random": n_groups}
    assert counts["noref_gan"].to_dict() == {"none": n_groups}
    summary = reference_summary(table, n_boot=50)
    assert list(summary.loc[summary.model == "ssen_gan", "input"]) == ["ref1", "ref2", "ref3", "ref4", "random"]
    assert "| ssen_gan |" in summary_markdown(summary) and "| noref_gan |" in summary_markdown(summary)
    assert {"ssen_gan", "ssen_gan @ random", "noref_gan"} <= set(gain_over_bicubic(table)["model"])
    assert row_name("ssen_gan", "ref2") == "ssen_gan @ ref2" and row_name("noref_gan", "none") == "noref_gan"
    pairing = {"ssen": "refsr", "noref": "refsr", "ssen_gan": "refsr_gan", "noref_gan": "refsr_gan"}
    paired = paired_against_controls(table, n_boot=50, pairing=pairing)
    assert set(zip(paired["model"], paired["control"])) == {("ssen", "noref"), ("ssen_gan", "noref_gan")}
    assert len(paired) == 2 * 5 and (paired["n"] == n_groups).all()
    everyone = paired_against_controls(table, n_boot=50)  # no pairing: every run with every control
    assert set(zip(everyone["model"], everyone["control"])) == {(m, c) for m in ("ssen", "ssen_gan")
                                                                for c in ("noref", "noref_gan")}


def test_random_references_come_from_other_groups_at_the_asked_rate(groups):
    """random_references: 0 keeps every sample's own reference (and the draws of the samples as they
    were), 1 takes every reference from another group, 0.5 about half; the rate is a checked setting."""
    from sfsr.errors import ConfigError
    from sfsr.training.settings import resolve_config

    def own_reference(data, k):  # is item k's reference one of its own group's, at the same window?
        rng = np.random.default_rng([data.seed, k])
        target, refs = data.groups[int(rng.integers(len(data.groups)))]
        return any(torch.equal(data[k]["ref"], torch.from_numpy(np.ascontiguousarray(
            r[y:y + 32, x:x + 32].transpose(2, 0, 1)))) for r in refs
            for y in range(0, r.shape[0] - 31, 4) for x in range(0, r.shape[1] - 31, 4))

    base = RefPairDataset([groups["train"]], 4, 8, length=40, seed=0, augment=False)
    never = RefPairDataset([groups["train"]], 4, 8, length=40, seed=0, augment=False, random_references=0.0)
    always = RefPairDataset([groups["train"]], 4, 8, length=40, seed=0, augment=False, random_references=1.0)
    half = RefPairDataset([groups["train"]], 4, 8, length=40, seed=0, augment=False, random_references=0.5)
    assert all(torch.equal(base[k]["ref"], never[k]["ref"]) and own_reference(never, k) for k in range(40))
    assert not any(own_reference(always, k) for k in range(40))
    assert 10 <= sum(not own_reference(half, k) for k in range(40)) <= 30
    assert resolve_config({**_cfg(), "random_references": 0.25})["random_references"] == 0.25
    with pytest.raises(ConfigError, match="random_references"):
        resolve_config({**_cfg(), "random_references": 1.5})
