import re
from pathlib import Path

import pytest

from onnx_stage.config import ConfigError, StageConfig, load_config


def test_default_yaml_matches_the_model_defaults() -> None:
    assert load_config() == StageConfig()


def test_overrides_parse_yaml_values_and_keep_plain_strings() -> None:
    config = load_config(overrides=["validation.atol=1e-6", "benchmark.batch_sizes=[1, 8]",
                                    "benchmark.enabled=false", "registry.name_template={name}-fast-onnx"])
    assert config.validation.atol == 1e-6
    assert config.benchmark.batch_sizes == [1, 8]
    assert config.benchmark.enabled is False
    assert config.registry.name_template == "{name}-fast-onnx"


@pytest.mark.parametrize(("override", "message"), [
    ("validation.atol", "not of the form section.key=value"),
    ("validation.atol=-1", "validation.atol: Input should be greater than or equal to 0"),
    ("convert.opset=99", "convert.opset"),
    ("convert.routes=[magic]", "convert.routes.0"),
    ("validation.typo=1", "validation.typo: Extra inputs are not permitted"),
    ("registry.name_template=fixed", "registry.name_template"),
])
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")


def test_fingerprint_follows_what_changes_the_artifact() -> None:
    base = load_config()
    assert base.artifact_fingerprint() == load_config(overrides=["benchmark.timed_runs=7"]).artifact_fingerprint()
    assert base.artifact_fingerprint() != load_config(overrides=["convert.opset=18"]).artifact_fingerprint()


@pytest.mark.parametrize(("text", "where"), [
    ("validation:\n  batch_sizes: [1, 16\nbenchmark:\n  enabled: true\n",
     r"line 3, column 10: expected ',' or '\]', but got ':' \(while parsing a flow sequence that starts at line 2, "
     r"column 16\); fix the YAML"),
    ("validation:\n\tatol: 1.0e-4\n", r"line 2, column 1: found character a tab that cannot start any token"),
])
def test_malformed_yaml_is_named_with_file_line_and_column(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "stage.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(path))}, {where}") as raised:
        load_config(path)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("override", ["validation.batch_sizes=[1,0]", "validation.sequence_lengths=[-3]",
                                      "benchmark.batch_sizes=[0]", "validation.seed=-1"])
def test_every_count_and_size_is_at_least_one(override: str) -> None:
    with pytest.raises(ConfigError, match=r"greater than or equal to [01]"):
        load_config(overrides=[override])


def test_a_bad_value_names_the_set_or_the_file_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--set validation.batch_sizes=\[0\]: validation.batch_sizes.0"):
        load_config(overrides=["validation.batch_sizes=[0]"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("validation:\n  atol: -1\n")
    with pytest.raises(ConfigError, match=rf"{bad}: validation.atol"):
        load_config(bad)
