"""The plugin system: built-ins, entry points, autoload switch, hook validation, duplicates."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import pluggy
import pytest

import cnmt
from cnmt.cli import main
from cnmt.errors import ConfigError
from cnmt.registry import DEFAULT_PLUGINS, Components, get_components, get_plugin_manager
from cnmt.schedulers import Device, DevicePolicy, LatencyModel, LinkState, Request, SchedulerState


class QueueAware(DevicePolicy):
    """Test policy from a fake third-party distribution."""

    name = "queue_aware"

    @dataclass(frozen=True)
    class Params:
        depth: int = 4

    def choose(self, request, m_estimate, state):
        return Device.CLOUD


def make_plugin_module(name: str, policy: type) -> types.ModuleType:
    module = types.ModuleType(name)

    @cnmt.hookimpl
    def cnmt_register_device_policies(register):
        register(policy)

    module.cnmt_register_device_policies = cnmt_register_device_policies
    return module


class FakeDistribution:
    """Enough of importlib.metadata.Distribution for pluggy's entry point loader."""

    def __init__(self, module_name: str) -> None:
        self.metadata = {"name": "cnmt-queue-aware"}
        self.version = "1.2.3"
        self.entry_points = [
            importlib.metadata.EntryPoint(name="queue_aware", value=module_name, group="cnmt")
        ]


@pytest.fixture
def fake_entry_point(monkeypatch: pytest.MonkeyPatch) -> str:
    module_name = "cnmt_queue_aware_test_plugin"
    monkeypatch.setitem(sys.modules, module_name, make_plugin_module(module_name, QueueAware))
    monkeypatch.setattr(
        importlib.metadata, "distributions", lambda: [FakeDistribution(module_name)]
    )
    return module_name


def test_builtins_are_registered_from_default_plugins(fresh_registry):
    pm = get_plugin_manager()
    for module_name in DEFAULT_PLUGINS:
        assert pm.get_plugin(module_name) is not None
    components = get_components()
    assert {"cloud", "cnmt", "cnmt_load", "edge", "naive", "oracle"} <= set(
        components.names("device_policy")
    )
    assert {"linear", "naive", "oracle"} <= set(components.names("length_estimator"))
    assert "last" in components.names("rtt_estimator")


def test_plugins_command_lists_every_builtin_with_kind_and_plugin(capsys, fresh_registry):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    listed = {(r["kind"], r["name"]): r for r in rows}
    for kind, name in [
        ("device_policy", "cnmt"),
        ("length_estimator", "linear"),
        ("rtt_estimator", "last"),
    ]:
        assert listed[(kind, name)]["plugin"] == "cnmt.plugins.builtin_schedulers"
        assert listed[(kind, name)]["distribution"] == "built-in"
    initial = next(
        p for p in listed[("rtt_estimator", "last")]["params"] if p["name"] == "initial_s"
    )
    assert initial["type"] == "a number" and isinstance(initial["default"], float)


def test_entry_point_plugin_is_loaded_and_listed_with_its_distribution(
    fake_entry_point, capsys, monkeypatch, fresh_registry
):
    monkeypatch.delenv("CNMT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if " queue_aware " in line)
    assert line.split()[:3] == ["device_policy", "queue_aware", "queue_aware"]
    assert line.endswith("cnmt-queue-aware 1.2.3")


def test_third_party_component_is_selected_from_yaml(
    fake_entry_point, tmp_path, monkeypatch, fresh_registry
):
    from cnmt.config import load_config

    monkeypatch.delenv("CNMT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text("device_policy: {name: queue_aware, params: {depth: 8}}\n")
    policy = load_config(path).create("device_policy")
    assert isinstance(policy, QueueAware) and policy.params.depth == 8


def test_autoload_can_be_disabled_by_environment(fake_entry_point, monkeypatch, fresh_registry):
    monkeypatch.setenv("CNMT_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "queue_aware" not in get_components().names("device_policy")
    monkeypatch.setenv("CNMT_DISABLE_PLUGIN_AUTOLOAD", "0")
    get_components.cache_clear()
    assert "queue_aware" in get_components().names("device_policy")


def test_misspelled_hook_is_caught_by_check_pending():
    pm = get_plugin_manager()
    module = types.ModuleType("typo_plugin")

    @cnmt.hookimpl
    def cnmt_register_device_policys(register):  # the typo is the point
        pass

    module.cnmt_register_device_policys = cnmt_register_device_policys
    pm.register(module)
    with pytest.raises(pluggy.PluginValidationError, match="cnmt_register_device_policys"):
        pm.check_pending()


def test_two_components_with_one_name_fail_naming_both_modules():
    class Impostor(QueueAware):
        """Claims a built-in's name."""

        name = "cnmt"

    pm = get_plugin_manager()
    pm.register(make_plugin_module("impostor_plugin", Impostor), name="impostor_plugin")
    with pytest.raises(ConfigError) as error:
        Components(pm).names("device_policy")
    message = str(error.value)
    assert "cnmt.schedulers.device_policies.CnmtPolicy" in message
    assert f"{__name__}" in message and "Impostor" in message
    assert "plugin impostor_plugin" in message


def test_component_without_frozen_params_is_rejected():
    class Loose(QueueAware):
        name = "loose"

        @dataclass
        class Params:
            depth: int = 1

    pm = get_plugin_manager()
    pm.register(make_plugin_module("loose_plugin", Loose), name="loose_plugin")
    with pytest.raises(ConfigError, match="Params must be a frozen dataclass"):
        Components(pm).names("device_policy")


def test_device_policy_hook_registers_a_usable_policy():
    """cnmt_register_device_policies: a registered policy decides through the public types."""
    pm = get_plugin_manager()
    pm.register(make_plugin_module("qa", QueueAware), name="qa")
    policy = Components(pm).create("device_policy", "queue_aware")
    state = SchedulerState(LatencyModel(0, 0, 1), LatencyModel(0, 0, 0), LinkState(rtt_s=0.1))
    assert policy.choose(Request(n_tokens=5), 5.0, state) is Device.CLOUD


def test_length_estimator_hook_registers_builtins_that_estimate():
    """cnmt_register_length_estimators: built-ins are registered and estimate from the request."""
    components = get_components()
    assert {"linear", "naive", "oracle"} <= set(components.names("length_estimator"))
    oracle = components.create("length_estimator", "oracle")
    assert oracle.estimate(Request(n_tokens=10, m_true=13)) == 13.0


def test_rtt_estimator_hook_registers_the_last_sample_estimator():
    """cnmt_register_rtt_estimators: `last` reports the latest observed round trip."""
    estimator = get_components().create("rtt_estimator", "last")
    assert estimator.estimate(now=0.0) == estimator.params.initial_s
    estimator.observe(0.042, at=1.0)
    assert estimator.estimate(now=5.0) == 0.042


@dataclass(frozen=True)
class ToySection:
    """A third-party config section."""

    replicas: int
    address: str | None = None


def test_config_section_hook_adds_a_validated_top_level_section(tmp_path, fresh_registry):
    """cnmt_register_config_sections: a plugin's section is loaded and checked like a built-in."""
    from cnmt.config import load_config

    class Plugin:
        @cnmt.hookimpl
        def cnmt_register_config_sections(self, register):
            register("toy_cloud", lambda: ToySection)

    get_components.cache_clear()
    components = get_components()
    components.pm.register(Plugin(), name="toy-sections")
    path = tmp_path / "c.yaml"
    path.write_text("toy_cloud: {replicas: 2}\n")
    assert load_config(path)["toy_cloud"] == ToySection(replicas=2)
    path.write_text("toy_cloud: {replica: 2}\n")
    with pytest.raises(
        ConfigError, match=r"toy_cloud.replica: unknown key; valid keys: address, replicas"
    ):
        load_config(path)


def test_a_config_section_declared_twice_names_both_plugins(fresh_registry):
    class Plugin:
        @cnmt.hookimpl
        def cnmt_register_config_sections(self, register):
            register("gateway", lambda: ToySection)

    pm = get_plugin_manager()
    pm.register(Plugin(), name="impostor-sections")
    with pytest.raises(
        ConfigError, match="config section 'gateway'.*builtin_sections and impostor-sections"
    ):
        Components(pm).sections()


def test_plugins_params_tell_required_from_optional_null(capsys, fresh_registry):
    assert main(["plugins", "--json"]) == 0
    rows = {(r["kind"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    linear = {p["name"]: p for p in rows[("length_estimator", "linear")]["params"]}
    assert linear["model"] == {
        "name": "model",
        "type": "a string or null",
        "required": False,
        "default": None,
    }
    assert rows[("config_section", "gateway")]["plugin"] == "cnmt.plugins.builtin_sections"
    assert main(["plugins", "--params"]) == 0
    out = capsys.readouterr().out
    assert "- model: a string or null (default None)" in out
    assert "required" not in out.split("length_estimator  linear")[1].split("length_estimator")[0]


def _install_fake_distribution(site: Path, name: str, module_source: str) -> None:
    """An installed distribution, as pip leaves one: its module and a ``.dist-info`` folder
    whose ``entry_points.txt`` names the module in the ``cnmt`` group."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{name.replace('-', '_')}.py").write_text(textwrap.dedent(module_source))
    info = site / f"{name.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(
        f"[cnmt]\ntypo = {name.replace('-', '_')}\n", encoding="utf-8"
    )


def _cnmt(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(site)}
    environment.pop("CNMT_DISABLE_PLUGIN_AUTOLOAD", None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-P", "-m", "cnmt", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


TYPO_PLUGIN = """
    import cnmt

    @cnmt.hookimpl
    def cnmt_register_device_polices(register):
        pass
"""


def test_an_installed_plugin_with_a_misspelled_hook_fails_every_command_with_one_message(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    _install_fake_distribution(site, "cnmt-typo", TYPO_PLUGIN)
    for command in (["plugins"], ["demo", "--sentences", "1"]):
        done = _cnmt(site, *command)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        message = done.stderr.strip()
        assert message.count("\n") == 0  # one line
        assert "distribution cnmt-typo 0.3" in message
        assert "entry point `typo = cnmt_typo`" in message
        assert "unknown hook(s) 'cnmt_register_device_polices'" in message
        assert "did you mean 'cnmt_register_device_policies'?" in message
        assert "CNMT_DISABLE_PLUGIN_AUTOLOAD=1" in message
    assert "Traceback" in _cnmt(site, "--debug", "plugins").stderr
    around = _cnmt(site, "plugins", "--json", CNMT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert around.returncode == 0 and '"name": "cnmt"' in around.stdout


def test_an_installed_plugin_that_cannot_be_imported_is_named_with_the_import_error(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    _install_fake_distribution(site, "cnmt-broken", "import cnmt_no_such_dependency\n")
    done = _cnmt(site, "plugins")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "distribution cnmt-broken 0.3" in done.stderr
    assert "cannot be imported: ModuleNotFoundError: No module named 'cnmt_no_such_dependency'" in (
        done.stderr
    )


def test_a_plugin_whose_hook_raises_is_named_instead_of_a_traceback(fresh_registry) -> None:
    module = types.ModuleType("raising_plugin")

    @cnmt.hookimpl
    def cnmt_register_device_policies(register):
        raise AttributeError("'NoneType' object has no attribute 'name'")

    module.cnmt_register_device_policies = cnmt_register_device_policies
    pm = get_plugin_manager()
    pm.register(module, name="raising_plugin")
    with pytest.raises(ConfigError, match="the plugin 'raising_plugin' .* failed in its "):
        Components(pm).names("device_policy")
