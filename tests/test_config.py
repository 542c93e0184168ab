"""Config validation: schema errors name the key and location, cross-checks catch undefined names."""

import copy

import pytest
import yaml

from sfsr import config as cfg
from sfsr.data.catalogue import with_catalogue
from sfsr.errors import ConfigError


@pytest.fixture()
def base(repo_root):
    """config.yaml with the package's dataset catalogue written out in it, so a test can change any
    data set's keys the way a config file does."""
    with open(repo_root / "config.yaml", encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    config["datasets"] = with_catalogue(config.get("datasets"))
    return config


def test_default_config_is_valid_and_defaults_are_filled(base):
    config = cfg.validate(copy.deepcopy(base))
    assert config["min_image_size"] == 16
    spec = config["datasets"]["builtin_train"]
    assert spec["layout"] == "flat" and spec["root"] == ""
    assert spec["split"]["val_fraction"] == 0.1


def test_unknown_key_is_named_with_its_location(base):
    base["datasets"]["builtin_train"]["sorce"] = "builtin"
    with pytest.raises(ConfigError) as err:
        cfg.validate(base)
    msg = str(err.value)
    assert "'sorce'" in msg and "datasets.builtin_train" in msg and "Allowed keys" in msg


def test_unknown_top_level_key(base):
    base["scale"] = [4]
    with pytest.raises(ConfigError, match=r"unknown key 'scale' at '<top level>'"):
        cfg.validate(base)


def test_wrong_type_names_the_key(base):
    base["seed"] = "zero"
    with pytest.raises(ConfigError, match=r"'seed' must be of type integer"):
        cfg.validate(base)


def test_bad_scale_value(base):
    base["scales"] = [5]
    with pytest.raises(ConfigError, match=r"scales\[0\]"):
        cfg.validate(base)


def test_undefined_dataset_is_named(base):
    base["test"] = ["builtin_test", "set55"]
    with pytest.raises(ConfigError, match=r"'test\[1\]' names dataset 'set55'.*not defined"):
        cfg.validate(base)


def test_url_dataset_needs_files(base):
    base["datasets"]["x"] = {"source": "url"}
    with pytest.raises(ConfigError, match=r"datasets\.x.*files"):
        cfg.validate(base)


def test_bad_checksum_format(base):
    base["datasets"]["x"] = {"source": "url", "files": [{"url": "https://e.org/a.zip", "sha256": "abc"}]}
    with pytest.raises(ConfigError, match=r"datasets\.x\.files\[0\]\.sha256"):
        cfg.validate(base)


def test_unknown_builtin_photo(base):
    base["datasets"]["builtin_test"]["images"].append("lena")
    with pytest.raises(ConfigError, match=r"'lena'"):
        cfg.validate(base)


def test_classification_set_must_have_labels(base):
    base["classification"] = ["builtin_test"]
    with pytest.raises(ConfigError, match=r"classification.*builtin_test.*layout"):
        cfg.validate(base)


def test_load_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        cfg.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        cfg.load(bad)


def test_prepare_defaults_mirror_the_schema(repo_root):
    """sfsr.data.prepare works without the schema (library use); its defaults must not drift."""
    from sfsr.data import prepare

    schema = cfg.load_schema(repo_root / "config.schema.yaml")
    dataset = schema["$defs"]["dataset"]["properties"]
    for key, value in prepare._SPEC_DEFAULTS.items():
        if key == "split":
            continue
        assert dataset[key]["default"] == value, key
    split = schema["$defs"]["split"]["properties"]
    assert {k: v["default"] for k, v in split.items()} == prepare._SPLIT_DEFAULTS


def test_sr_models_must_be_defined(base):
    base["sr_models"] = ["srresnet_x4", "vdsr"]
    with pytest.raises(ConfigError, match=r"'sr_models\[1\]' names model 'vdsr'"):
        cfg.validate(base)


def test_model_scale_must_be_built(base):
    base["scales"] = [2]
    with pytest.raises(ConfigError, match=r"models\.srresnet_x4\.scale"):
        cfg.validate(base)


def test_per_stage_override_is_checked(base):
    base["models"]["srresnet_x4"]["warmup"]["itertions"] = 5
    with pytest.raises(ConfigError, match=r"'itertions'.*models\.srresnet_x4\.warmup"):
        cfg.validate(base)


def test_semantic_stage_needs_a_classification_set(base):
    base["classification"] = []
    with pytest.raises(ConfigError, match=r"models\.srresnet_x4\.semantic.*classification"):
        cfg.validate(base)


def test_generator_options_are_checked_before_any_job(base):
    base["models"]["srresnet_x4"]["kwargs"]["num_blockz"] = 4
    with pytest.raises(ConfigError, match=r"models\.srresnet_x4\.kwargs.*'num_blockz'.*valid: \['base'"):
        cfg.validate(base)


def test_residual_base_value_is_checked(base):
    base["models"]["edsr_baseline_x4"]["kwargs"]["base"] = "lanczos"
    with pytest.raises(ConfigError, match=r"models\.edsr_baseline_x4\.kwargs.*base 'lanczos'"):
        cfg.validate(base)


def test_builtin_classes_needs_hr_size(base):
    base["datasets"]["builtin_demo_cls"]["hr_size"] = None
    with pytest.raises(ConfigError, match=r"datasets\.builtin_demo_cls\.hr_size.*positive integer"):
        cfg.validate(base)


def test_training_values_a_job_would_reject_stop_the_parse(base):
    base["models"]["srresnet_x4"]["warmup"]["milestones"] = [1.5]
    with pytest.raises(ConfigError, match=r"models\.srresnet_x4\.warmup.*milestones"):
        cfg.validate(base)


def test_non_utf8_config_file_is_named(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("experiment: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml is not UTF-8 text"):
        cfg.load(bad)


def test_semantic_train_split_moves_the_classification_stages_only(base):
    """semantic_train_split: sr_train puts the semantic and shared stages (and their controls) on
    the images the classifier never saw; the warm-up keeps training.train_split. It needs the
    classification set to carve sr_train, and refuses val/test (used by selection / evaluation)."""
    from sfsr.training.settings import stage_config

    config = copy.deepcopy(base)
    config["semantic_train_split"] = "sr_train"
    with pytest.raises(ConfigError, match=r"carve_sr_from: train"):
        cfg.validate(copy.deepcopy(config))
    config["datasets"]["builtin_demo_cls"]["split"] = {"carve_sr_from": "train"}
    config = cfg.validate(config)
    model = config["sr_models"][0]
    for stage in ("semantic", "shared", "semantic_control", "shared_control"):
        assert stage_config(config, model, stage)["train_split"] == "sr_train", stage
    assert stage_config(config, model, "warmup")["train_split"] == "train"
    for bad in ("test", "val"):
        with pytest.raises(ConfigError, match="semantic_train_split"):
            cfg.validate({**copy.deepcopy(base), "semantic_train_split": bad})


def test_judges_default_to_the_classifier_recipe_with_their_own_seed(base):
    config = copy.deepcopy(base)
    config["judges"] = [{"name": "seed7", "seed": 7}, {"name": "r50", "arch": "resnet50"}]
    config = cfg.validate(config)
    judges = cfg.judge_settings(config)
    assert list(judges) == ["prior", "seed7", "r50"]
    assert judges["prior"] == {"cfg": config["classifier"], "seed": config["seed"]}
    assert judges["seed7"]["cfg"] == config["classifier"] and judges["seed7"]["seed"] == 7
    assert judges["r50"]["cfg"] == {**config["classifier"], "arch": "resnet50"}
    assert judges["r50"]["seed"] == config["seed"] + 2  # a seed of its own by default
    for bad, match in (([{"name": "a"}, {"name": "a"}], "another judge has"), ([{"name": "prior"}], "prior"),
                       ([{"name": "x", "batch_size": 4}], "batch_size")):
        with pytest.raises(ConfigError, match=match):
            cfg.validate({**copy.deepcopy(base), "judges": bad})


def test_seeds_copy_every_sr_model_once_per_extra_seed(base):
    config = cfg.validate({**copy.deepcopy(base), "seeds": [3, 5, 7]})
    names = list(config["sr_models"])
    seeds = cfg.expand_seeds(config)
    assert config["sr_models"] == names + [f"{n}_seed{s}" for n in names for s in (5, 7)]
    for name in names:
        assert seeds[name] == (name, 3)  # the original trains with the first seed
        for s in (5, 7):
            assert seeds[f"{name}_seed{s}"] == (name, s)
            assert config["models"][f"{name}_seed{s}"] == config["models"][name]
    plain = cfg.validate(copy.deepcopy(base))
    assert set(cfg.expand_seeds(plain).values()) == {(n, plain["seed"]) for n in plain["models"]}
    clash = copy.deepcopy(base)
    clash["seeds"] = [0, 1]
    clash["models"][f"{names[0]}_seed1"] = copy.deepcopy(clash["models"][names[0]])
    with pytest.raises(ConfigError, match="already has one of that name"):
        cfg.expand_seeds(cfg.validate(clash))


def test_a_config_changes_or_adds_catalogue_entries_key_by_key(base):
    """The dataset catalogue ships with the package; a config's `datasets:` is merged over it key by
    key (as Snakemake merges config files), a new name is added, the catalogue's order kept."""
    from sfsr.data import catalogue

    shipped = catalogue.load()
    config = {k: v for k, v in base.items() if k != "datasets"}
    config["datasets"] = {"set5": {"source": "local", "path": "/data/Set5", "root": ""},
                          "mine": {"source": "local", "path": "/data/mine"}}
    out = cfg.validate(copy.deepcopy(config))["datasets"]
    assert list(out)[:len(shipped)] == list(shipped) and list(out)[-1] == "mine"
    assert out["set5"]["source"] == "local" and out["set5"]["path"] == "/data/Set5" and out["set5"]["root"] == ""
    assert out["set5"]["description"] == shipped["set5"]["description"]  # a key not set keeps its value
    assert out["set14"] == cfg.validate(copy.deepcopy(base))["datasets"]["set14"]  # others as shipped
    assert catalogue.load() == shipped  # nothing written back into the catalogue
    config["datasets"] = {"set5": None}
    with pytest.raises(ConfigError, match=r"datasets\.set5"):
        cfg.validate(copy.deepcopy(config))
