"""Device settings: how a model runs on one real or emulated device (the ``device`` section).

A setting names the ONNX Runtime execution providers and threads, and, to emulate a weaker
device on this machine, a CPU quota enforced by a cgroup (:mod:`cnmt.profiling.cpu_quota`).
Built-in settings are ``configs/devices/*.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from cnmt.config import builtin_config_names, load_config
from cnmt.errors import ConfigError
from cnmt.schema import ranged

CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class DeviceSetting:
    """How a model runs on one (real or emulated) device: the ``device`` section of a config.

    ``providers`` are ONNX Runtime execution providers by preference (later ones are fallbacks),
    ``threads`` the intra-op threads (0 = ONNX Runtime's default), ``cpu_quota`` the fraction
    of one CPU core the model may use (0.25 = a quarter; above 1 = several cores; null =
    unthrottled), enforced by a cgroup in windows of ``cpu_period_us`` microseconds.
    """

    name: str
    providers: tuple[str, ...] = (CPU_PROVIDER,)
    threads: int = ranged(1, low=0, high=256)
    cpu_quota: float | None = ranged(None, low=0, high=1024, above=True)
    cpu_period_us: int = ranged(10_000, low=1000, high=1000000)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name: give the device a name (it labels profiles and plots)")
        if not self.providers:
            raise ValueError("providers: give at least one execution provider")
        if self.threads < 0:
            raise ValueError(f"threads: {self.threads} must be 0 (ONNX Runtime default) or more")
        if self.cpu_quota is not None and not self.cpu_quota > 0:
            raise ValueError(
                f"cpu_quota: {self.cpu_quota} must be a positive fraction of a core "
                "(e.g. 0.25), or null for no quota"
            )
        if not 1_000 <= self.cpu_period_us <= 1_000_000:
            raise ValueError(
                f"cpu_period_us: {self.cpu_period_us} out of the kernel's range 1000..1000000"
            )

    @property
    def provider(self) -> str:
        """The preferred execution provider."""
        return self.providers[0]


def builtin_device_names() -> list[str]:
    """The device settings shipped in the package (``configs/devices/*.yaml``)."""
    return [Path(name).name for name in builtin_config_names("devices")]


def load_device(name_or_path: str | Path) -> DeviceSetting:
    """A device setting from a config file with a ``device`` section, or a built-in one by name
    (``edge-cpu-q25``); ConfigError naming the file, key and the built-in choices."""
    path = Path(name_or_path)
    if not path.is_file() and str(name_or_path) in builtin_device_names():
        name_or_path = f"devices/{name_or_path}"
    elif not path.is_file():
        raise ConfigError(
            f"{name_or_path}: no such device file or built-in device; built-in: "
            + ", ".join(builtin_device_names())
        )
    config = load_config(name_or_path)
    setting = config["device"]
    assert isinstance(setting, DeviceSetting)
    if not setting.description and config.description:
        setting = dataclasses.replace(setting, description=config.description.strip())
    return setting
