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
# The section of serving/default that selects each kind of component (latency models: the
# edge's; replays are configured in experiments' configs, not validated here).
SECTION_OF_KIND = {
    "latency_model": "edge_latency",
    "length_estimator": "length_estimator",
    "rtt_estimator": "rtt_estimator",
}


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
            if section not in ("gateway", "cloud", "link"):
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
    if component is None:
        body = f"{section}:\n  {key.split('.')[-1]}: {yaml_value(value)}\n"
    else:
        params = f"{key.removeprefix('params.')}: {yaml_value(value)}"
        if section == "length_estimator":
            params += ", gamma: 1.0, delta: 1.0"
        body = f"{section}:\n  name: {component}\n  params: {{{params}}}\n"
    path = tmp_path / "bad.yaml"
    path.write_text("extends: serving/default\n" + body, encoding="utf-8")
    code = main(["config", "validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{section}." in err and key.split(".")[-1] in err
    assert ("out of range" in err) or ("finite" in err)
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
