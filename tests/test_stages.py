"""The stage table (sfsr.training.stages) and the torch-free settings it feeds: every place that
lists stages reads the table, and parsing the workflow imports no torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sfsr.config import load_schema
from sfsr.errors import ConfigError
from sfsr.training import settings, stages
from sfsr.training.settings import TRAINING_DEFAULTS, resolve_config, stage_weights

REPO = Path(__file__).resolve().parents[1]


def _cfg(**overrides):
    return resolve_config({"arch": "srresnet", "scale": 4, **overrides})


def test_table_constants_follow_the_table():
    assert tuple(stages.STAGES) == ("warmup", "gan", "semantic", "shared", "refsr", "refsr_gan",
                                    "semantic_control", "shared_control")
    assert [s for s, st in stages.STAGES.items() if st.init] == ["gan", "semantic", "shared", "refsr_gan",
                                                                 "semantic_control", "shared_control"]
    assert [s for s, st in stages.STAGES.items() if st.classifier] == ["semantic", "shared", "semantic_control",
                                                                       "shared_control"]
    for name, st in stages.STAGES.items():
        assert st.name == name
        assert st.init is None or st.init in stages.STAGES
        assert set(st.default_weights) <= set(st.terms) <= set(stages.LOSS_TERMS)
        assert st.family in ("psnr", "gan", "semantic", "shared", "refsr")
        assert st.data in ("sr", "classification", "refsr")
        assert st.models == ("refsr_models" if st.data == "refsr" else "sr_models")


def test_schema_has_one_section_per_stage():
    """A model's stage sections in config.schema.yaml are the table's stages: the from-scratch
    stage defaults to {} (always trained), the others to null (optional)."""
    model = load_schema()["$defs"]["sr_model"]["properties"]
    stage_keys = [k for k in model if k not in ("arch", "scale", "kwargs")]
    trained = {n: st for n, st in stages.STAGES.items() if st.control_of is None}  # controls reuse
    assert stage_keys == list(trained)
    for name, st in trained.items():
        assert model[name]["default"] == ({} if st.init is None else None), name


def test_evaluation_names_follow_the_table():
    cfg = {"loss_preset": "srgan"}
    names = {s: stages.evaluation_name(s, "m", cfg) for s in stages.STAGES}
    assert names == {"warmup": "m", "gan": "m_srgan", "semantic": "m_semantic", "shared": "m_shared",
                     "refsr": "m", "refsr_gan": "m_gan", "semantic_control": "m_semantic_control",
                     "shared_control": "m_shared_control"}


def test_stage_weights_per_stage():
    cfg = _cfg(loss_preset="esrgan")
    assert stage_weights("warmup", cfg) == {"pixel": 1.0}
    assert stage_weights("gan", cfg) == {"pixel": 0.01, "perceptual": 1.0, "adversarial": 0.005}
    assert stage_weights("semantic", cfg) == {"pixel": 0.01, "perceptual": 1.0, "adversarial": 0.005,
                                              "semantic_kl": 0.1}
    assert list(stage_weights("shared", cfg)) == ["pixel", "shared_cls"]
    # the warm-up ignores the fine-tuning terms of training.loss_weights; gan refuses foreign ones
    mixed = _cfg(loss_weights={"perceptual": 0.5, "semantic_kl": 0.2})
    assert stage_weights("warmup", mixed) == {"pixel": 1.0}
    with pytest.raises(ConfigError, match=r"\['semantic_kl'\] do not belong to the gan stage"):
        stage_weights("gan", mixed)
    assert stage_weights("semantic", mixed)["semantic_kl"] == 0.2


def test_semantic_feat_needs_layers_and_weight():
    on = _cfg(semantic={"feature_layers": ["layer2"], "feature_weight": 0.5})
    assert stage_weights("semantic", on)["semantic_feat"] == 1.0
    assert "semantic_feat" not in stage_weights("semantic", _cfg())


def test_settings_defaults_cover_the_run_neutral_keys():
    assert set(settings.RUN_NEUTRAL_KEYS) <= set(TRAINING_DEFAULTS)


def test_workflow_modules_import_no_torch():
    """What the Snakefile and rules/*.smk import (and the config check they run) stays torch-free,
    so `snakemake -n` does not pay for importing torch."""
    snakefile = (REPO / "Snakefile").read_text()
    imports = [line.strip() for line in snakefile.splitlines() if re.match(r"(import|from) sfsr", line)]
    for smk in sorted((REPO / "rules").glob("*.smk")):
        imports += [line.strip() for line in smk.read_text().splitlines()
                    if re.match(r"\s*(import|from) ", line)]
    assert any("sfsr.training.settings" in line for line in imports)  # the check reads the Snakefile
    code = "\n".join(["import sys", f"sys.path.insert(0, {str(REPO / 'src')!r})", *imports,
                      f"sfsr.config.load({str(REPO / 'config.yaml')!r})",
                      "heavy = [m for m in ('torch', 'torchvision', 'sklearn', 'matplotlib') if m in sys.modules]",
                      "print(heavy)"])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_experiment_files_name_only_known_stages():
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        for name, model in (cfg.get("models") or {}).items():
            extra = set(model) - {"arch", "scale", "kwargs"} - set(stages.STAGES)
            assert not extra, f"{path.name}: models.{name} has {extra}"


def test_a_control_differs_from_its_stage_only_in_the_zeroed_weights():
    """The budget-matched controls: the controlled stage's section, initialisation and data, its
    prior / head weight 0, and nothing else."""
    from sfsr.training.settings import stage_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    model = config["sr_models"][0]
    for control, stage in (("semantic_control", "semantic"), ("shared_control", "shared")):
        st, ct = stages.STAGES[stage], stages.STAGES[control]
        assert (ct.init, ct.data, ct.classifier, ct.family) == (st.init, st.data, st.classifier, st.family)
        a, b = stage_config(config, model, stage), stage_config(config, model, control)
        assert {k for k in a if a[k] != b[k]} == {"loss_weights"}
        assert {t: w for t, w in b["loss_weights"].items() if a["loss_weights"].get(t) != w} == \
            {t: 0.0 for t in ct.zero_terms}
        weights = stage_weights(control, resolve_config(b))
        assert not set(weights) & set(ct.zero_terms)
        assert {t: w for t, w in stage_weights(stage, resolve_config(a)).items()
                if t not in ct.zero_terms} == weights
    assert not stages.STAGES["shared_control"].lr_head and stages.STAGES["shared"].lr_head


def test_refsr_gan_fine_tunes_the_refsr_generator_with_a_patchgan_by_default():
    """refsr_gan: from the refsr generator, on the reference groups, the preset's terms, a
    discriminator always; its PatchGAN is the stage's own default (over 'training', whose
    discriminator kwargs belong to the other stages' VGG discriminator), and a model's section still
    overrides it."""
    from sfsr.training.settings import stage_config

    st = stages.STAGES["refsr_gan"]
    assert (st.init, st.data, st.models, st.family, st.preset, st.discriminator, st.pixel_only) == \
        ("refsr", "refsr", "refsr_models", "refsr", True, True, False)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert config["training"]["discriminator"]["kwargs"]["dense_features"]  # a VGG option
    for model in config["refsr_models"]:  # SSEN and its no-reference control, budget-matched
        cfg = resolve_config(stage_config(config, model, "refsr_gan"), "refsr_gan")
        assert cfg["discriminator"]["arch"] == "patchgan" and "dense_features" not in cfg["discriminator"]["kwargs"]
        assert set(stage_weights("refsr_gan", cfg)) <= set(stages.SR_TERMS) and "adversarial" in stage_weights(
            "refsr_gan", cfg)
        assert not stages.needs_classifier("refsr_gan", cfg)  # the offline demo needs no classifier
    assert stage_config(config, "srresnet_x4", "gan")["discriminator"]["arch"] == "vgg"  # other stages keep it
    a, b = (stage_config(config, m, "refsr_gan") for m in config["refsr_models"])
    assert {k for k in a if a[k] != b[k]} == {"kwargs"}  # the control: same settings, no reference branch
    config["models"]["ssen_x4"]["refsr_gan"]["discriminator"] = {"arch": "vgg"}
    assert stage_config(config, "ssen_x4", "refsr_gan")["discriminator"]["arch"] == "vgg"
    # a direct call of the loop's resolve_config (no stage_config) gets the stage's default too
    assert resolve_config({"arch": "ssen", "scale": 4}, "refsr_gan")["discriminator"]["arch"] == "patchgan"
    assert resolve_config({"arch": "ssen", "scale": 4}, "gan")["discriminator"]["arch"] == "vgg"
