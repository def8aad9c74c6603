import pytest

from medmm.config.core import ConfigError, build_config, flatten
from medmm.workflows.contrastive.config import PretrainConfig
from tests.conftest import REPO, TINY_CONFIG


def test_default_yaml_is_valid_and_overrides_apply():
    cfg = build_config(PretrainConfig, REPO / "configs/pretrain/default.yaml",
                       ["trainer.max_epochs=3", "loss.pairs=[[xray, report]]", "model.text.lora_layers=null"])
    assert cfg.trainer.max_epochs == 3
    assert cfg.loss.pairs == [("xray", "report")]
    assert cfg.model.text.lora_layers is None


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown config key 'trainer.max_epoch'"):
        build_config(PretrainConfig, TINY_CONFIG, ["trainer.max_epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        build_config(PretrainConfig, None, ["modle.embed_dim=3"])


def test_type_errors_and_bad_values_are_named():
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        build_config(PretrainConfig, None, ["trainer.max_epochs=many"])
    with pytest.raises(ConfigError, match="unknown modality 'mri'"):
        build_config(PretrainConfig, None, ["loss.pairs=[[xray, mri]]"])
    with pytest.raises(ConfigError, match="key=value"):
        build_config(PretrainConfig, None, ["trainer.max_epochs"])


def test_yaml_values_are_never_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(PretrainConfig, bad)


def test_flatten_gives_dotted_params():
    flat = flatten(build_config(PretrainConfig, TINY_CONFIG))
    assert flat["model.text.lora_r"] == 4
    assert flat["trainer.max_epochs"] == 2
    assert all(not isinstance(v, (dict, list)) for v in flat.values())


def test_base_config_is_merged_section_by_section(tmp_path):
    (tmp_path / "a.yaml").write_text("seed: 1\nmodel:\n  embed_dim: 16\n  proj_hidden: 8\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel:\n  embed_dim: 32\n")
    cfg = build_config(PretrainConfig, tmp_path / "b.yaml")
    assert (cfg.seed, cfg.model.embed_dim, cfg.model.proj_hidden) == (1, 32, 8)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        build_config(PretrainConfig, tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="not found"):
        build_config(PretrainConfig, tmp_path / "e.yaml")


def test_same_label_modalities_must_be_contrasted():
    with pytest.raises(ConfigError, match=r"same_label_modalities \['labs'\]"):
        build_config(PretrainConfig, TINY_CONFIG, ["loss.same_label_modalities=[labs]"])
