"""YAML configs through the CLI: every bad config is a short message and exit code 2."""

from __future__ import annotations

import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

import cnmt
from cnmt import registry
from cnmt.cli import main
from cnmt.config import load_config
from cnmt.errors import ConfigError
from cnmt.schedulers import Device, DevicePolicy


class Threshold(DevicePolicy):
    """A policy with a typed schema that only these tests use."""

    name = "threshold"

    @dataclass(frozen=True)
    class Params:
        max_tokens: float
        side: Literal["edge", "cloud"] = "cloud"
        probes: int = 1

        def __post_init__(self) -> None:
            if self.max_tokens <= 0:
                raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")

    def choose(self, request, m_estimate, state):
        return Device.EDGE if m_estimate <= self.params.max_tokens else Device(self.params.side)


@pytest.fixture(autouse=True)
def threshold_plugin(monkeypatch, fresh_registry):
    module = types.ModuleType("threshold_test_plugin")

    @cnmt.hookimpl
    def cnmt_register_device_policies(register):
        register(Threshold)

    module.cnmt_register_device_policies = cnmt_register_device_policies
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(registry, "DEFAULT_PLUGINS", (*registry.DEFAULT_PLUGINS, module.__name__))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


VALID = """\
rtt_estimator:
  name: last
device_policy:
  name: threshold
  params: {max_tokens: 12.5, side: cloud}
"""


def test_valid_config_validates_with_exit_code_0(tmp_path, capsys):
    path = write(tmp_path, "ok.yaml", VALID)
    code, out, _ = run_cli(capsys, "config", "validate", str(path))
    assert code == 0
    assert "valid" in out and "device_policy" in out


def test_components_are_built_with_typed_params_and_defaults(tmp_path):
    config = load_config(write(tmp_path, "ok.yaml", VALID))
    policy = config.create("device_policy")
    assert isinstance(policy, Threshold)
    assert policy.params == Threshold.Params(max_tokens=12.5, side="cloud", probes=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "device_policy:\n  name: cnmtt\n",
            [
                "device_policy.name",
                "unknown device policy 'cnmtt'",
                "cloud, cnmt, cnmt_explore, cnmt_load, edge, naive, oracle, oracle_expected",
            ],
        ),
        (
            "device_policy:\n  name: threshold\n  params: {max_tokens: 3, max_token: 2}\n",
            [
                "device_policy.params.max_token",
                "unknown key",
                "valid keys: max_tokens, probes, side",
            ],
        ),
        (
            "device_policy:\n  name: threshold\n  params: {max_tokens: three}\n",
            ["device_policy.params.max_tokens", "expected a number, got 'three'"],
        ),
        (
            "device_policy:\n  name: threshold\n  params: {max_tokens: 3, probes: 1.5}\n",
            ["device_policy.params.probes", "expected an integer, got 1.5"],
        ),
        (
            "device_policy:\n  name: threshold\n  params: {max_tokens: 3, side: fog}\n",
            ["device_policy.params.side", "'fog' is not a valid choice; valid: 'edge', 'cloud'"],
        ),
        (
            "device_policy:\n  name: threshold\n  params: {side: edge}\n",
            ["device_policy.params.max_tokens", "missing required key"],
        ),
        (
            "device_policy:\n  name: threshold\n  params: {max_tokens: -3}\n",
            ["device_policy.params", "max_tokens must be positive"],
        ),
        ("devise_policy:\n  name: cnmt\n", ["devise_policy", "unknown section", "device_policy"]),
        ("device_policy: [cnmt]\n", ["device_policy", "expected a device policy ({name, params})"]),
        ("- just\n- a list\n", ["a config must be a mapping"]),
        (
            "device_policy:\n  name: cnmt\n  params: {}\n  parms: {}\n",
            ["device_policy.parms", "valid keys: name, params"],
        ),
        (
            "device_policy: {name: threshold, params: {max_tokens: '${dta}'}}\n",
            ["device_policy.params.max_tokens", "unknown variable ${dta}", "${data}"],
        ),
    ],
)
def test_bad_config_is_a_short_error_with_exit_code_2(tmp_path, capsys, text, expected):
    path = write(tmp_path, "bad.yaml", text)
    code, _, err = run_cli(capsys, "config", "validate", str(path))
    assert code == 2
    assert str(path) in err
    for fragment in expected:
        assert fragment in err
    assert "Traceback" not in err


def test_missing_file_is_exit_code_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "config", "validate", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "nope.yaml: no such config file" in err


def test_unknown_builtin_name_lists_builtin_configs(capsys):
    code, _, err = run_cli(capsys, "config", "validate", "no-such-builtin")
    assert code == 2
    assert "built-in:" in err and "default" in err


def test_yaml_syntax_error_names_line_and_column(tmp_path, capsys):
    path = write(tmp_path, "broken.yaml", "device_policy:\n  name: cnmt\n  params: {a: 1\n")
    code, _, err = run_cli(capsys, "config", "validate", str(path))
    assert code == 2
    assert f"{path}:" in err and "invalid YAML" in err
    line = int(err.split(f"{path}:")[1].split(":")[0])
    assert line >= 3


def test_yaml_python_tags_are_not_constructed(tmp_path, capsys):
    path = write(tmp_path, "evil.yaml", "device_policy: !!python/object/apply:os.system ['true']\n")
    code, _, err = run_cli(capsys, "config", "validate", str(path))
    assert code == 2
    assert "invalid YAML" in err


def test_cycle_in_base_configs_is_reported_with_the_chain(tmp_path, capsys):
    write(tmp_path, "a.yaml", "extends: b.yaml\ndevice_policy: {name: edge}\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    code, _, err = run_cli(capsys, "config", "validate", str(tmp_path / "a.yaml"))
    assert code == 2
    assert "cycle" in err and "a.yaml -> " in err and "b.yaml" in err


def test_missing_base_config_is_reported(tmp_path):
    path = write(tmp_path, "child.yaml", "extends: base.yaml\n")
    with pytest.raises(ConfigError, match="extends: base.yaml: no such config file"):
        load_config(path)


def test_child_overrides_base_and_a_new_component_drops_the_base_params(tmp_path):
    write(
        tmp_path,
        "base.yaml",
        "device_policy: {name: threshold, params: {max_tokens: 2.0, side: edge}}\n"
        "rtt_estimator: {name: last, params: {initial_s: 0.5}}\n",
    )
    child = write(
        tmp_path,
        "child.yaml",
        "extends: base.yaml\n"
        "device_policy: {params: {max_tokens: 3.0}}\n"
        "rtt_estimator: {name: last}\n",
    )
    config = load_config(child)
    assert config["device_policy"].params == Threshold.Params(max_tokens=3.0, side="edge")
    assert config["rtt_estimator"].params.initial_s == 0.5

    renamed = write(tmp_path, "renamed.yaml", "extends: base.yaml\ndevice_policy: {name: cnmt}\n")
    assert load_config(renamed)["device_policy"].name == "cnmt"


def test_data_variable_comes_from_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNMT_DATA", "/srv/corpora")
    path = write(tmp_path, "vars.yaml", "description: '${data}/x and ${config_dir}'\n")
    code, out, _ = run_cli(capsys, "config", "show", str(path))
    assert code == 0
    assert f"/srv/corpora/x and {tmp_path.resolve()}" in out


def test_data_variable_without_a_data_directory_says_how_to_set_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CNMT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "vars.yaml", "description: '${data}/x'\n")
    with pytest.raises(ConfigError, match="CNMT_DATA=/path/to/data"):
        load_config(path)


def test_builtin_configs_are_all_valid():
    from cnmt.config import builtin_config_names

    names = builtin_config_names()
    assert "default" in names
    for name in names:
        load_config(name)


def test_usage_error_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cnmt", "config", "validate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "usage:" in result.stderr


def test_bad_config_from_a_real_process_has_no_traceback(tmp_path):
    path = write(tmp_path, "bad.yaml", "device_policy: {name: nope}\n")
    result = subprocess.run(
        [sys.executable, "-m", "cnmt", "config", "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("cnmt: error:") and "Traceback" not in result.stderr


def test_every_command_has_help(capsys):
    from cnmt.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps no public accessor
    assert {"config", "plugins"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: cnmt " + name in capsys.readouterr().out


def test_extends_takes_a_builtin_config_name(tmp_path):
    path = write(tmp_path, "mine.yaml", "extends: serving/cloud-only\ngateway: {port: 9999}\n")
    config = load_config(path)
    assert config["device_policy"].name == "cloud"  # from serving/cloud-only
    assert config["gateway"].port == 9999 and config["gateway"].model == "cn2en"  # the default's


def test_a_null_section_removes_what_the_base_defines(tmp_path):
    path = write(tmp_path, "alone.yaml", "extends: serving/default\nlink: null\ncloud: null\n")
    assert {"gateway", "device_policy"} <= set(load_config(path).sections)
    assert "link" not in load_config(path) and "cloud" not in load_config(path)


def test_a_typo_in_a_replayed_policys_own_estimator_fails_validation(tmp_path, capsys):
    text = (
        "extends: experiments/bilstm-de-en\n"
        "replay:\n"
        "  policies:\n"
        "    - edge\n"
        "    - {name: cnmt, label: cnmt-ewma, rtt_estimator: {name: ewma, params: {alpah: 0.2}}}\n"
    )
    code, _, err = run_cli(capsys, "config", "validate", str(write(tmp_path, "c.yaml", text)))
    assert code == 2
    assert "replay.policies[1].rtt_estimator.params.alpah: unknown key; valid keys:" in err


# --- reading limits and files that are not configs (issue 12) --------------------------------

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_a_billion_laughs_config_exits_2_within_a_second_with_bounded_memory(tmp_path, capsys):
    """Before: `cnmt config validate` of these 500 bytes grew past 5 GB and ran past 60 s
    (nine levels of nine aliases: 9**9 strings once expanded)."""
    import time
    import tracemalloc

    path = write(tmp_path, "laughs.yaml", LAUGHS)
    tracemalloc.start()
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "config", "validate", str(path))
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 2
    assert "expands to more than 100,000 values (YAML aliases)" in err
    assert elapsed < 1.0 and peak < 50e6, (elapsed, peak)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &a [*a]\n", "a YAML alias refers to a node that contains it"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nests deeper than 64 levels"),
        ("a: " + "[" * 65 + "]" * 65 + "\n", "nests deeper than 64 levels"),
        ("description: '" + "x" * 300_000 + "'\n", "a config file is at most 256 KiB"),
    ],
)
def test_configs_over_the_reading_limits_exit_2_naming_the_limit(tmp_path, capsys, text, expected):
    code, _, err = run_cli(capsys, "config", "validate", str(write(tmp_path, "c.yaml", text)))
    assert code == 2 and expected in err and "Traceback" not in err


def test_extends_pointing_at_a_file_that_is_not_a_config_never_shows_its_content(tmp_path, capsys):
    """Before: `extends: /etc/shadow` printed the password hash line as an unknown section."""
    secret = "root:$6$s4lt$H4SHH4SHH4SH:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n"
    shadow = write(tmp_path, "shadow", secret)
    config = write(tmp_path, "c.yaml", f"extends: {shadow}\n")
    code, out, err = run_cli(capsys, "config", "validate", str(config))
    assert code == 2 and "not a config file" in err
    assert "H4SH" not in out + err and "19000" not in out + err
    code, out, err = run_cli(capsys, "config", "validate", str(shadow))
    assert code == 2 and "H4SH" not in out + err


def test_anchors_and_aliases_within_the_limits_still_work(tmp_path, capsys):
    text = VALID + "description: &d shared text\nextra_description_for_aliases: *d\n"
    code, _, err = run_cli(capsys, "config", "validate", str(write(tmp_path, "c.yaml", text)))
    assert code == 2 and "extra_description_for_aliases: unknown section" in err  # parsed
    text = VALID.replace("params: {max_tokens: 12.5, side: cloud}", "params: &p {max_tokens: 3}")
    code, _, _ = run_cli(capsys, "config", "validate", str(write(tmp_path, "d.yaml", text)))
    assert code == 0
