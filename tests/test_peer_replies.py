"""What a lying cloud can do to the gateway's learning, one reply or one saved state at a time:
each reply that breaks the protocol's physics is refused before anything learns from it, the
learners refuse observations outside the physical range, and the state loader refuses a file
that no run of the gateway could have written (docs/hardening.md, "A cloud that lies")."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from cnmt.cli import main
from cnmt.errors import ConfigError
from cnmt.registry import get_components
from cnmt.schedulers import LatencyModel
from cnmt.schema import build
from cnmt.serving import strict_json
from cnmt.serving.cloud_client import CloudFailure, parse_reply
from cnmt.serving.learned_state import Part, lock, restore, save

HONEST = {
    "translation": "hi .",
    "n_tokens": 2,
    "m_tokens": 2,
    "exec_s": 0.01,
    "received_at": 100.0,
    "sent_at": 100.02,
    "wait_s": 0.004,
    "pending": 0,
    "batch_size": 1,
}
PRIOR = LatencyModel(a_n=0.001, a_m=0.010, b=0.005)


def body(**fields: Any) -> bytes:
    return json.dumps({**HONEST, **fields}).encode()


def test_an_honest_reply_is_accepted() -> None:
    reply = parse_reply(body(), round_trip_s=0.05)
    assert (reply.m_tokens, reply.exec_s, reply.wait_s) == (2, 0.01, 0.004)


LIES = [
    pytest.param(body(m_tokens=10**200), "integer of 201 digits", id="m_tokens=10**200"),
    pytest.param(body(m_tokens=10**400), "integer of 401 digits", id="m_tokens=10**400"),
    pytest.param(body(m_tokens=10**6), "`m_tokens` is 1000000", id="m_tokens=10**6"),
    pytest.param(body(m_tokens=51), "`m_tokens` is 51", id="m_tokens-over-the-models-limit"),
    pytest.param(
        body().replace(b'"n_tokens": 2', b'"n_tokens": ' + b"9" * 5000),
        "integer of 5000 digits",
        id="5000-digits",
    ),
    pytest.param(b"[" * 5000, "nested 5000 levels", id="5000-brackets"),
    pytest.param(body().replace(b"0.01,", b"NaN,", 1), "`NaN` is not JSON", id="NaN"),
    pytest.param(body().replace(b"0.01,", b"1e400,", 1), "overflows", id="1e400"),
    pytest.param(body(exec_s=-1e9), "`exec_s` is -1e+09", id="exec_s=-1e9"),
    pytest.param(body(exec_s=1e9), "`exec_s` is 1e+09 s, longer", id="exec_s=+1e9"),
    pytest.param(body(sent_at=100.0 + 1e9), "`sent_at - received_at`", id="server_s=1e9"),
    pytest.param(body(sent_at=99.0), "earlier than", id="sent-before-received"),
    pytest.param(body(wait_s=0.045), "`wait_s + exec_s`", id="wait+exec-over-round-trip"),
    pytest.param(body(pending=10**9), "`pending` is 1000000000", id="pending=10**9"),
    pytest.param(b"\x00\xff garbage", "not UTF-8", id="garbage"),
]


@pytest.mark.parametrize(("payload", "detail"), LIES)
def test_a_reply_that_breaks_the_protocols_physics_is_a_bad_response(
    payload: bytes, detail: str
) -> None:
    with pytest.raises(CloudFailure) as caught:
        parse_reply(payload, round_trip_s=0.05, max_output_tokens=50)
    assert caught.value.reason == "bad_response"
    assert detail in caught.value.detail
    assert len(caught.value.detail) < 300  # a log line, not the body


def test_strict_json_refuses_what_python_accepts_and_json_does_not() -> None:
    for text in (b"NaN", b"-Infinity", b'{"a": Infinity}', b"1e999"):
        with pytest.raises(strict_json.StrictJsonError):
            strict_json.loads(text)
    assert strict_json.loads(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    assert strict_json.loads(b"1" * strict_json.MAX_INT_DIGITS) == int("1" * 18)


def online_latency() -> Any:
    cls = get_components().get("latency_model", "online").cls
    return cls(build(cls.Params, None), prior=PRIOR)


def online_length() -> Any:
    return get_components().create(
        "length_estimator", "online_linear", build_params("online_linear")
    )


def build_params(name: str) -> Any:
    cls = get_components().get("length_estimator", name).cls
    return build(cls.Params, {"gamma": 1.0, "delta": 1.0})


@pytest.mark.parametrize(
    ("n", "m", "seconds"),
    [(10, 10, -1e9), (10, 10, 1e9), (10, 10**6, 0.05), (-1, 10, 0.05), (10, 10, math.nan)],
    ids=["negative-time", "huge-time", "huge-m", "negative-n", "nan-time"],
)
def test_an_online_latency_model_drops_an_unphysical_observation(
    n: float, m: float, seconds: float
) -> None:
    model = online_latency()
    model.observe(n, m, seconds)
    assert model.current() == PRIOR
    assert (model.observations, model.dropped) == (0, 1)


def test_a_hundred_lies_within_the_physical_range_leave_the_latency_model_physical() -> None:
    """The biggest lie a reply can still tell after validation: the longest output (4,096
    tokens) done in no time, 100 times. The model moves, but never predicts a negative time
    where the profile measured, and its coefficients stay finite."""
    model = online_latency()
    for _ in range(100):
        model.observe(4, 4096, 0.0)
    current = model.current()
    assert all(math.isfinite(v) for v in (current.a_n, current.a_m, current.b))
    assert all(current.predict(n, m) >= 0 for n in (4, 16, 48) for m in (4, 16, 48))


def test_the_online_length_estimator_drops_unphysical_pairs_and_stays_physical() -> None:
    length = online_length()
    length.observe(10, 10**6)
    length.observe(-3, 5)
    assert length.dropped == 2 and length.rls.observations == 0
    for _ in range(100):
        length.observe(48, 0)  # the longest inputs translated to nothing: still a line >= 0
    assert all(length.gamma * n + length.delta >= 0 for n in (4, 16, 48))


def saved_state(tmp_path: Path) -> tuple[Path, dict[str, Any], list[Part]]:
    model = online_latency()
    for n in range(2, 30):
        model.observe(n, n, PRIOR.predict(n, n))
    parts = [Part("cloud_latency", model, "m", "cloud")]
    path = tmp_path / "state.json"
    save(path, parts)
    return path, json.loads(path.read_text()), [Part("cloud_latency", online_latency(), "m", "c")]


def write_with(path: Path, data: dict[str, Any], **state: Any) -> None:
    data["parts"]["cloud_latency"]["state"].update(state)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("state", "named"),
    [
        ({"observations": -5}, "observations is -5"),
        ({"observations": 10**30}, "observations is"),
        ({"observations": 2.5}, "observations is 2.5"),
        ({"b": [1.6e300, 0.0, 0.0]}, "b holds 1.6e+300"),
        ({"A": [[-1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]]}, "A is not a symmetric positive"),
        ({"A": [[1.0, 5.0, 0], [0, 1.0, 0], [0, 0, 1.0]]}, "A is not a symmetric positive"),
        ({"scale": -1.0}, "scale is -1"),
        ({"b": [0.0, 0.0, -1000.0]}, "outside the physical range"),
    ],
    ids=[
        "negative-count",
        "huge-count",
        "fractional",
        "b=1.6e300",
        "neg-definite",
        "asymmetric",
        "negative-scale",
        "negative-times",
    ],
)
def test_the_state_loader_refuses_absurd_values_naming_the_field(
    tmp_path: Path, state: dict[str, Any], named: str
) -> None:
    path, data, parts = saved_state(tmp_path)
    parts = [Part("cloud_latency", parts[0].learner, "m", "cloud")]
    write_with(path, data, **state)
    with pytest.raises(ConfigError, match="parts.cloud_latency.state") as caught:
        restore(path, parts)
    assert named in str(caught.value)


def test_a_state_file_with_a_5000_digit_integer_is_a_config_error(tmp_path: Path) -> None:
    path, data, parts = saved_state(tmp_path)
    text = json.dumps(data).replace('"observations": 28', '"observations": ' + "7" * 5000)
    path.write_text(text)
    with pytest.raises(ConfigError, match="state file"):
        restore(path, [Part("cloud_latency", parts[0].learner, "m", "cloud")])


def test_the_online_length_state_refuses_gamma_minus_1000(tmp_path: Path) -> None:
    length = online_length()
    path = tmp_path / "state.json"
    save(path, [Part("length_estimator", length, "m")])
    data = json.loads(path.read_text())
    # A and b whose solution is gamma = -1000, delta = 0.
    data["parts"]["length_estimator"]["state"]["A"] = [[1.0, 0.0], [0.0, 1.0]]
    data["parts"]["length_estimator"]["state"]["b"] = [-1000.0, 0.0]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="outside the physical range"):
        restore(path, [Part("length_estimator", online_length(), "m")])


def test_a_state_is_never_written_with_nan(tmp_path: Path) -> None:
    model = online_latency()
    model.rls.scale = math.nan  # what a bug upstream would leave
    with pytest.raises(ConfigError, match="not written"):
        save(tmp_path / "state.json", [Part("cloud_latency", model, "m", "cloud")])
    assert not (tmp_path / "state.json").exists()


def test_a_second_gateway_on_a_state_file_in_use_gets_a_clear_lock_error(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    held = lock(path)
    try:
        with pytest.raises(ConfigError, match="in use by another gateway"):
            lock(path)
    finally:
        held.release()
    lock(path).release()  # released: the next gateway may take it


def test_a_state_file_under_a_regular_file_fails_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plain").write_text("not a folder")
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"extends: serving/default\ngateway:\n  state_file: {tmp_path}/plain/state.json\n"
    )
    assert main(["config", "validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err


def test_a_failed_periodic_save_is_logged_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    model = online_latency()
    with pytest.raises(ConfigError, match="cannot write it"):
        save(tmp_path / "plain" / "state.json", [Part("cloud_latency", model, "m", "cloud")])


def test_a_json_file_with_a_5000_digit_integer_is_a_config_error(tmp_path: Path) -> None:
    """manifest.json, profiles, the state file: every reader of the project's JSON files."""
    from cnmt.files import read_json

    path = tmp_path / "manifest.json"
    path.write_text('{"format": "x", "max_source_tokens": ' + "9" * 5000 + "}")
    with pytest.raises(ConfigError, match="not a model manifest"):
        read_json(path, what="model manifest", fix="export the model again")
