"""Every ranged config key: its range is in docs/configuration.md exactly as the schemas declare
it, and ``cnmt config validate`` refuses a value outside it (exit 2, naming the key, the value
and the range), as it refuses NaN and Infinity anywhere a number goes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cnmt import ranges
from cnmt.cli import main
from cnmt.schema import Range, range_rows, ranged

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "configuration.md"
BEGIN, END = "<!-- ranges:begin -->", "<!-- ranges:end -->"
# The built-in config each ranged key is tried on, by section, and the section that selects
# each kind of component (latency models: the edge's).
BASE = {
    "gateway": "serving/default",
    "cloud": "serving/default",
    "link": "serving/default",
    "device": "devices/edge-cpu-q25",
    "replay": "experiments/cn2en-zh-en",
    "model": "models/bilstm-de-en",
    "marian": "models/marian-en-zh-small",
}
SECTION_OF_KIND = {
    "latency_model": "edge_latency",
    "length_estimator": "length_estimator",
    "rtt_estimator": "rtt_estimator",
    "device_policy": "device_policy",
}
# Keys inside a mapping of named entries or a list: tried by their own component's tests.
NOT_DIRECT = ("connections.", "corpus.parts.", "drift.", "policies.")


def test_the_docs_list_every_ranged_key_as_the_schemas_declare_it() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{DOCS} has no generated ranges table"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip() + "\n"
    assert table == ranges.markdown(), "regenerate it with: python -P -m cnmt.ranges"


def parse_range(text: str) -> Range:
    low = high = None
    above = False
    parts = text.split("x")
    left, right = parts[0].strip(), parts[1].strip()
    if left:
        value, op = left.rsplit(" ", 1)
        low, above = float(value.replace(",", "")), op == "<"
    if right:
        high = float(right.removeprefix("<=").strip().replace(",", ""))
    return Range(low, high, above)


def out_of_range(limits: Range, integer: bool) -> list[Any]:
    values: list[Any] = []
    if limits.low is not None:
        values.append(limits.low if limits.above else limits.low - (1 if integer else 0.5))
    if limits.high is not None:
        values.append(limits.high * 10 + 1)
    values = [int(v) if integer else float(v) for v in values]
    if not integer:
        values += [".nan", ".inf"]
    return values


def cases() -> list[Any]:
    found = []
    for where, key, limits_text, _, integer in ranges.rows():
        limits = parse_range(limits_text)
        if where.startswith("`"):
            section = where.strip("`:")
            if section not in BASE or key.startswith(NOT_DIRECT):
                continue
            for value in out_of_range(limits, integer):
                found.append(pytest.param(section, None, key, value, id=f"{section}.{key}={value}"))
        else:
            kind, name = where.split(" ")
            if kind not in SECTION_OF_KIND:
                continue
            for value in out_of_range(limits, integer):
                label = f"{kind}:{name}.{key}={value}"
                found.append(
                    pytest.param(SECTION_OF_KIND[kind], name.strip("`"), key, value, id=label)
                )
    return found


def nested(key: str, value: str) -> str:
    """``a.b: v`` as a YAML flow mapping ``{a: {b: v}}``."""
    head, _, rest = key.partition(".")
    return f"{{{head}: {nested(rest, value) if rest else value}}}"


def yaml_value(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


@pytest.mark.parametrize(("section", "component", "key", "value"), cases())
def test_a_value_out_of_range_fails_validation_naming_key_value_and_range(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    section: str,
    component: str | None,
    key: str,
    value: Any,
) -> None:
    base = "serving/default"
    if component is None:
        base = "serving/cloud-ray" if key.startswith("ray.") else BASE[section]
        body = f"{section}: {nested(key, yaml_value(value))}\n"
    else:
        params = f"{key.removeprefix('params.')}: {yaml_value(value)}"
        if section == "length_estimator" and component == "features":
            params += ", model: fitted-features.json"  # refused by range before it is read
        elif section == "length_estimator" and (
            key == "params.mean_tokens" or component == "online_linear"
        ):
            pass  # naive: no line; online_linear: serving/default's, its fitted line merged in
        elif section == "length_estimator" and key not in ("params.gamma", "params.delta"):
            params += ", gamma: 1.0, delta: 1.0"
        elif section == "length_estimator":
            params += ", delta: 1.0" if key == "params.gamma" else ", gamma: 1.0"
        body = f"{section}:\n  name: {component}\n  params: {{{params}}}\n"
    path = tmp_path / "bad.yaml"
    path.write_text(f"extends: {base}\n" + body, encoding="utf-8")
    code = main(["config", "validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert key.split(".")[-1] in err
    assert ("out of range" in err) or ("finite" in err), err
    assert "Traceback" not in err


def test_every_ranged_field_has_a_default_inside_its_range() -> None:
    for where, key, limits_text, default, _ in ranges.rows():
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert parse_range(limits_text).contains(default), (where, key)


@dataclasses.dataclass(frozen=True)
class Inner:
    x: float = ranged(1.0, low=0, high=2)


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner | None = None


def test_range_rows_see_nested_dataclasses() -> None:
    assert range_rows(Outer) == [("inner.x", "0 <= x <= 2", 1.0, False)]
