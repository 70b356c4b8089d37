"""`cnmt demo`: the whole system on free local ports, a handful of real sentences through it.

Starts the cloud, the emulated link and the gateway of a serving config (the built-in default
unless told otherwise) on ports the kernel picks, so it never collides with anything already
running, sends each sentence to the gateway over HTTP, prints what the gateway decided, what
it predicted and what it measured, and shuts everything down.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from cnmt.config import Config, data_dir
from cnmt.errors import CnmtRuntimeError

# Used when no corpus is at hand: everyday sentences of increasing length, written for this
# demo (simplified Chinese, characters that the cn2en vocabulary knows).
BUILTIN_SENTENCES = (
    "我们走吧。",
    "今天天气很好。",
    "你明天有时间吗？",
    "我每天早上都喝一杯咖啡。",
    "这本书我已经看了三遍了，还是觉得很有意思。",
    "如果明天不下雨的话，我们就去公园散步，然后在外面吃晚饭。",
)
CORPUS = "corpora/tatoeba-en-zh/all.zh"


def pick_sentences(
    count: int, corpus: str | Path | None = None, seed: int = 0
) -> tuple[list[str], str]:
    """``count`` sentences spread over short to long, and where they came from: ``corpus``, else
    the Tatoeba ZH side in the data directory when there is one, else the built-in list."""
    path: Path | None = Path(corpus) if corpus else None
    if path is None:
        folder = data_dir()
        if folder is not None and (folder / CORPUS).is_file():
            path = folder / CORPUS
    if path is None:
        chosen = list(BUILTIN_SENTENCES)
        while len(chosen) < count:
            chosen += BUILTIN_SENTENCES
        return chosen[:count], "built-in sentences"
    from cnmt.serving.loadtest import read_sentences

    lines = read_sentences(path)
    sample = random.Random(seed).sample(lines, min(len(lines), max(count * 20, count)))
    sample.sort(key=len)
    if count == 1:
        return [sample[len(sample) // 2]], str(path)
    # Evenly spaced by length rank: from a short sentence to one of the longest in the sample.
    picks = [sample[round(i * (len(sample) - 1) / (count - 1))] for i in range(count)]
    return picks, str(path)


def _load(answer: dict[str, Any]) -> str:
    backlog, wait = answer.get("edge_backlog_ms") or 0.0, answer.get("cloud_wait_estimate_ms")
    if not backlog and not wait:
        return ""
    return f"; edge backlog {backlog:.2f} ms, cloud wait {wait or 0.0:.2f} ms"


def describe_models(models: dict[str, Any]) -> list[str]:
    """The latency models as the profiles gave them and as the gateway has them now."""
    lines = ["latency models, T = a_n*N + a_m*M + b (ms per token, ms):"]
    for side, model in models["latency"].items():
        for label, coefficients in (("profile", model["prior"]), ("now", model["current"])):
            a_n, a_m, b = (coefficients[k] * 1000.0 for k in ("a_n", "a_m", "b"))
            lines.append(
                f"  {side:5} {label:7} a_n {a_n:8.4f}  a_m {a_m:8.4f}  b {b:8.3f}"
                + (
                    f"   ({model['component']}, learnt from {model['observations']} requests)"
                    if label == "now"
                    else f"   ({model['device']})"
                )
            )
        error = model["median_abs_relative_error"]
        if error is not None:
            lines.append(
                f"  {side:5} median |predicted - measured| / measured over its last "
                f"{model['recent_requests']} requests: {error:.0%}"
            )
    clouds = models.get("clouds") or {}
    if len(clouds) > 1:
        for name, cloud in clouds.items():
            lines.append(
                f"cloud {name}: link RTT estimate {cloud['rtt_estimate_ms'] or 0.0:.2f} ms, "
                f"wait estimate {cloud['cloud_wait_estimate_ms'] or 0.0:.2f} ms"
                + ("" if cloud["healthy"] else " (unhealthy)")
            )
    length = models["length"]
    if "gamma" in length:
        lines.append(
            f"length model ({length['component']}): M = {length['gamma']:.3f} N "
            f"{length['delta']:+.2f}"
        )
    for warning in models.get("warnings", []):
        lines.append(f"warning: learnt latency model {warning}")
    return lines


def describe(index: int, text: str, answer: dict[str, Any]) -> str:
    predicted = answer["predicted_ms"]
    decided = answer["decided"]
    why = f"policy chose {decided}"
    if answer.get("fallback"):
        why += f"; ran on the {answer['device']} instead: {answer['fallback']}"
    rtt = answer["rtt_estimate_ms"]
    # The answer's one-cloud fields describe the cloud that ran it, else the one decided.
    clouds = [t for t in predicted if t != "edge"]
    cloud = next((t for t in (answer["device"], decided) if t in clouds), clouds[0])
    lines = [
        f"[{index}] {text}",
        f"    -> {answer['translation']}",
        f"    device {answer['device']} ({why}); N = {answer['n_tokens']} tokens, M estimated "
        f"{answer['m_estimated']:.1f}, actual {answer['m_actual']}",
        "    predicted: "
        + ", ".join(f"{target} {ms:.2f} ms" for target, ms in predicted.items())
        + f" (model + link RTT estimate, {rtt:.2f} ms to the {cloud})"
        + _load(answer),
        f"    measured:  {answer['latency_ms']:.2f} ms at the gateway, of which the model "
        f"{answer['exec_ms']:.2f} ms"
        + (
            f"; this exchange's RTT {answer['rtt_sample_ms']:.2f} ms"
            if answer.get("rtt_sample_ms") is not None
            else ""
        ),
    ]
    return "\n".join(lines)


async def run_demo(
    config: Config, sentences: Sequence[str], say: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Launch ``config`` on free ports, translate ``sentences`` through the gateway, stop."""
    from cnmt.serving.launch import System

    if config.get("gateway") is None:
        raise CnmtRuntimeError(f"{config.source}: the demo needs a config with a `gateway` section")
    system = System(config, gateway_port=0, cloud_port=0, link_port=0, say=lambda m: say(f"  {m}"))
    say("starting (free ports on 127.0.0.1):")
    endpoints = await system.start()
    answers = []
    try:
        assert endpoints.gateway is not None
        say("")
        async with aiohttp.ClientSession() as session:
            for index, text in enumerate(sentences, start=1):
                async with session.post(
                    f"{endpoints.gateway}/v1/translate", json={"text": text}
                ) as response:
                    answer = await response.json(content_type=None)
                    if response.status != 200:
                        say(f"[{index}] {text}\n    HTTP {response.status}: {answer.get('error')}")
                        continue
                answers.append(answer)
                say(describe(index, text, answer))
            async with session.get(f"{endpoints.gateway}/v1/models") as response:
                models = await response.json()
        say("")
        for line in describe_models(models):
            say(line)
    finally:
        say("")
        say("stopping")
        await system.stop()
    devices = [a["device"] for a in answers]
    targets = list(answers[0]["predicted_ms"]) if answers else ["edge", "cloud"]
    where = ", ".join(f"{devices.count(t)} on the {t}" for t in dict.fromkeys([*targets, *devices]))
    say(
        f"{len(answers)} of {len(sentences)} translated: {where} (timings measured just now on "
        "this machine)"
    )
    return answers
