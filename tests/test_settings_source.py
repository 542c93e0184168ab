"""One source of settings: config.schema.yaml is the only place a default lives.

The library's default tables are read from it (sfsr.schema.defaults), no Python module writes one
out again, the per-stage override definitions are generated from the ``training`` section
(sfsr.schema.overrides), config.yaml lists only what the default study changes, and one torch-free
function decides which stages need the frozen classifier."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import yaml

from sfsr import schema
from sfsr.config import load_schema
from sfsr.data import prepare
from sfsr.data.images import DEFAULT_EXTENSIONS
from sfsr.training.settings import TRAINING_DEFAULTS, stage_config
from sfsr.training.stages import STAGES, needs_classifier

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "sfsr"


@pytest.fixture()
def base():
    return yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))


def _sections(node, path="#"):
    """Every object of the schema with properties that have defaults: (pointer, {key: default})."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            table = {k: v["default"] for k, v in props.items() if isinstance(v, dict) and "default" in v}
            if table:
                yield path, table
        for key, value in node.items():
            yield from _sections(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _sections(value, f"{path}/{i}")


def test_the_library_reads_its_default_tables_from_the_schema():
    own = load_schema()
    assert TRAINING_DEFAULTS == schema.defaults("#/properties/training", own)
    assert prepare._SPLIT_DEFAULTS == schema.defaults("#/$defs/split", own)
    assert prepare._SPEC_DEFAULTS == {**schema.defaults("#/$defs/dataset", own), "split": {}}
    assert list(DEFAULT_EXTENSIONS) == own["$defs"]["dataset"]["properties"]["extensions"]["default"]
    from sfsr.training.classifier import CLASSIFIER_DEFAULTS, CLASSIFIER_RESOURCES

    section = schema.defaults("#/properties/classifier", own)
    assert CLASSIFIER_DEFAULTS == {k: v for k, v in section.items() if k not in CLASSIFIER_RESOURCES}
    assert set(CLASSIFIER_RESOURCES) <= set(section)


def test_defaults_are_fresh_copies():
    first = schema.defaults("#/properties/training")
    first["betas"].append(0.5)
    assert schema.defaults("#/properties/training")["betas"] == [0.9, 0.99]


def test_no_module_restates_a_schema_default_table():
    """A dict literal in src/sfsr holding 4 or more key/value pairs of one schema section's defaults
    is a copy that can drift: read the section with sfsr.schema.defaults instead."""
    tables = list(_sections(yaml.safe_load((SRC / "config.schema.yaml").read_text(encoding="utf-8"))))
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Dict):
                continue
            pairs = {}
            for key, value in zip(node.keys, node.values):
                try:
                    pairs[ast.literal_eval(key)] = ast.literal_eval(value)
                except (ValueError, TypeError, SyntaxError):  # **spread, names, calls
                    continue
            for pointer, table in tables:
                same = [k for k, v in pairs.items() if isinstance(k, str) and k in table and table[k] == v
                        and type(table[k]) is type(v)]
                if len(same) >= 4:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} repeats {pointer}: {same}")
    assert not found, "\n".join(found)


def test_the_schema_file_does_not_list_the_overrides():
    text = (SRC / "config.schema.yaml").read_text(encoding="utf-8")
    assert "$ref: '#/properties/training/properties/" not in text
    assert "x-overrides-of: '#/properties/training'" in text


def test_generated_overrides_take_every_training_key_without_defaults():
    own = load_schema()
    training = own["properties"]["training"]["properties"]
    over = own["$defs"]["training_overrides"]
    assert over["additionalProperties"] is False and over["type"] == "object"
    assert list(over["properties"]) == list(training)
    for key, prop in over["properties"].items():
        assert "default" not in prop, key
        if isinstance(training[key].get("default"), dict) and training[key]["default"]:  # merged one level deep
            assert prop["additionalProperties"] is False
            assert prop["properties"] == {k: {"$ref": f"#/properties/training/properties/{key}/properties/{k}"}
                                          for k in training[key]["properties"]}
        else:
            assert prop == {"$ref": f"#/properties/training/properties/{key}"}
    assert "x-overrides-of" not in str(own)


def test_a_stage_section_is_checked_by_the_generated_overrides(base):
    from sfsr.config import ConfigError, validate

    base["models"]["srresnet_x4"]["gan"]["perceptual"] = {"net": "classifier", "layr": "layer3"}
    with pytest.raises(ConfigError, match=r"unknown key 'layr' at 'models\.srresnet_x4\.gan\.perceptual'"):
        validate(base)


def test_config_yaml_lists_what_the_default_study_changes():
    """config.yaml restates no schema default, except the keys it lists to keep the order of a
    section that a rule passes whole as a parameter (classifier, evaluation): Snakemake compares a
    parameter's repr, so a new key order would rerun those jobs; and 'scales', which a reader of the
    study needs to see (every model's scale must be one of them)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    own = load_schema()
    kept = {("classifier", "weight_decay"), ("evaluation", "save_sr"), ("evaluation", "n_examples"),
            ("evaluation", "bootstrap")}
    same = []
    for key, value in config.items():
        prop = own["properties"][key]
        if "default" in prop and prop["default"] == value and not isinstance(value, dict) and key != "scales":
            same.append(key)
        if isinstance(value, dict) and "properties" in prop:
            same += [f"{key}.{k}" for k, v in value.items() if (key, k) not in kept
                     and "default" in prop["properties"][k] and prop["properties"][k]["default"] == v]
    assert not same


def test_every_loss_preset_weights_the_perceptual_term():
    """needs_classifier takes a preset stage's perceptual weight as > 0 without importing torch."""
    from sfsr.losses import LOSS_PRESETS

    assert all(preset["perceptual"] > 0 for preset in LOSS_PRESETS.values())


#: Whether each stage needs the classifier with a VGG perceptual net / the classifier's features with
#: the stage's default weight / perceptual weight 0.5 / perceptual weight 0, written out by hand: the
#: prior's stages (and their controls, which run the same machinery at weight 0) always do, the GAN
#: only through a weighted classifier-feature perceptual term, the pixel-only stages never.
NEEDS_CLASSIFIER = {
    "warmup": (False, False, False, False), "refsr": (False, False, False, False),
    "gan": (False, True, True, False), "refsr_gan": (False, True, True, False),
    "semantic": (True, True, True, True), "shared": (True, True, True, True),
    "semantic_control": (True, True, True, True), "shared_control": (True, True, True, True),
}


def test_needs_classifier_follows_the_table():
    assert set(NEEDS_CLASSIFIER) == set(STAGES)  # a new stage gets its row here
    vgg = {"perceptual": {"net": "vgg19"}, "loss_weights": {}}
    own = {"perceptual": {"net": "classifier"}, "loss_weights": {}}
    cases = (vgg, own, {**own, "loss_weights": {"perceptual": 0.5}}, {**own, "loss_weights": {"perceptual": 0.0}})
    for stage, expected in NEEDS_CLASSIFIER.items():
        assert tuple(needs_classifier(stage, c) for c in cases) == expected, stage
        assert tuple(needs_classifier(STAGES[stage], c) for c in cases) == expected, stage


def test_the_default_gan_needs_the_classifier_and_is_checked_for_it(base):
    """The offline GAN's perceptual term uses the classifier: without a classification set the
    config check names that stage (no special case for the stage named gan)."""
    from sfsr.config import ConfigError, validate

    assert needs_classifier("gan", stage_config(validate(copy.deepcopy(base)), "srresnet_x4", "gan"))
    for stage in ("semantic", "shared"):
        base["models"]["srresnet_x4"][stage] = None
    base["classification"] = []
    with pytest.raises(ConfigError, match=r"'models\.srresnet_x4\.gan' needs a classification set"):
        validate(base)
    base["models"]["srresnet_x4"]["gan"]["perceptual"]["net"] = "vgg19"
    validate(base)  # the GAN on VGG19 features needs no classifier


def test_merged_settings_are_checked_against_the_schema():
    """resolve_config / resolve_classifier_config check with the schema (the one statement of each
    setting's type and range): the message names the setting, the value and the rule."""
    from sfsr.config import ConfigError
    from sfsr.models.classifier import CLASSIFIER_NAMES
    from sfsr.training.classifier import resolve_classifier_config
    from sfsr.training.settings import CHECKED_WHEN_APPLIED, resolve_config
    from sfsr.training.speed import SPEED_FLAGS

    assert CHECKED_WHEN_APPLIED == SPEED_FLAGS
    assert load_schema()["properties"]["classifier"]["properties"]["arch"]["enum"] == list(CLASSIFIER_NAMES)
    model = {"arch": "srresnet", "scale": 4}
    with pytest.raises(ConfigError, match=r"training setting 'lr' must be a number, got '2e-4' \(YAML 1\.1"):
        resolve_config({**model, "lr": "2e-4"})
    with pytest.raises(ConfigError, match=r"'milestones\[0\]' must be < 1, got 1\.5 \(multistep: fractions"):
        resolve_config({**model, "milestones": [1.5]})
    with pytest.raises(ConfigError, match=r"'reference_levels' must hold at least 1 item"):
        resolve_config({**model, "reference_levels": []})
    with pytest.raises(ConfigError, match=r"unknown training setting\(s\) \['lr_rate'\]; valid: augment, "):
        resolve_config({**model, "lr_rate": 1})
    with pytest.raises(ConfigError, match=r"classifier setting 'label_smoothing' must be < 1, got 1"):
        resolve_classifier_config({"label_smoothing": 1})
    with pytest.raises(ConfigError, match=r"classifier setting 'arch' is 'resnet9'; allowed: resnet18"):
        resolve_classifier_config({"arch": "resnet9"})
