"""One log line per request: what the gateway decided, why, and what it then measured.

The line is written at INFO on the logger ``cnmt.serving.decisions`` (`cnmt launch` shows it
unless ``--quiet``), from the same fields the HTTP answer carries, so the log, the answer and
`cnmt loadtest --requests-out` tell one story. As text::

    request 7f3a9c2e01 N=12 M~10.3 predicted edge 45.1 ms, cloud 30.2 ms -> cloud (policy);
    took 33.0 ms, cloud exec 10.1 ms, wait 0.2 ms

(one line; ``(fallback cloud_unhealthy, policy chose cloud)`` when the device that ran it is not
the one the policy chose). As JSON lines (``--log-format json``) every field is a key of its
own: ``request_id``, ``n_tokens``, ``m_estimated``, ``predicted_ms``, ``decided``, ``device``,
``why``, ``fallback``, ``latency_ms``, ``exec_ms``, ``wait_ms``, ``m_actual``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("cnmt.serving.decisions")

LOGGED_FIELDS = (
    "request_id",
    "n_tokens",
    "m_estimated",
    "predicted_ms",
    "decided",
    "device",
    "fallback",
    "latency_ms",
    "exec_ms",
    "wait_ms",
    "m_actual",
)


def _ms(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.1f} ms"


def decision_line(answer: dict[str, Any]) -> str:
    """The text form of one request's decision (see the module doc)."""
    predicted = answer.get("predicted_ms") or {}
    options = ", ".join(f"{device} {_ms(ms)}" for device, ms in predicted.items())
    device, decided, fallback = answer.get("device"), answer.get("decided"), answer.get("fallback")
    why = "policy" if fallback is None else f"fallback {fallback}, policy chose {decided}"
    m_estimated = answer.get("m_estimated")
    m_text = f"{m_estimated:.1f}" if isinstance(m_estimated, int | float) else "-"
    return (
        f"request {answer.get('request_id')} N={answer.get('n_tokens')} M~{m_text} "
        f"predicted {options or '-'} -> {device} ({why}); took {_ms(answer.get('latency_ms'))}, "
        f"{device} exec {_ms(answer.get('exec_ms'))}, wait {_ms(answer.get('wait_ms'))}"
    )


def log_decision(answer: dict[str, Any]) -> None:
    """Log one answered request's decision at INFO (nothing is formatted when INFO is off)."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields = {key: answer.get(key) for key in LOGGED_FIELDS}
    fields["why"] = "policy" if answer.get("fallback") is None else "fallback"
    log.info("%s", decision_line(answer), extra={"fields": fields})
