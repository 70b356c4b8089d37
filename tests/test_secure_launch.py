"""`cnmt launch` of the built-in TLS-and-token config (serving/secure) serves the demo end to
end over TLS, with certificates made at test time (trustme) where the config points: the real
cn2en on both sides, the gateway offloading over HTTPS with the token; the cloud answers 401
to a request without it, and so does a gateway given API keys."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import trustme
from helpers.aio import run

pytestmark = [pytest.mark.export, pytest.mark.slow]

TOKEN = "cloud-token-for-the-test"
KEY = "an-end-device-key"
CONFIG = """\
extends: serving/secure
gateway:
  port: 0
  allow_unthrottled: true       # no writable cgroup needed for the test
  api_keys_env: CNMT_TEST_GATEWAY_KEYS
cloud:
  port: 0
link:
  port: 0
device_policy: cloud            # every request crosses the TLS link
"""


def make_certificates(folder: Path) -> None:
    """What docs/hardening.md tells a user to make, with trustme instead of openssl."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder.mkdir()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cloud.pem"))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(folder / "cloud.pem"), append=True)
    cert.private_key_pem.write_to_path(str(folder / "cloud-key.pem"))


def test_launch_serves_the_demo_over_tls_with_a_token(tmp_path: Path) -> None:
    make_certificates(tmp_path / "cnmt-tls")
    (tmp_path / "secure-test.yaml").write_text(CONFIG)
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        CNMT_CLOUD_TOKEN=TOKEN,
        CNMT_TEST_GATEWAY_KEYS=KEY,
    )
    process = subprocess.Popen(
        [sys.executable, "-P", "-m", "cnmt", "launch", "secure-test.yaml"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 240
        for line in process.stdout:
            output.append(line)
            if "ready" in line or time.monotonic() > deadline:
                break
        text = "".join(output)
        assert "ready" in text, text
        cloud_url = re.search(r"cloud:\s+(https://127.0.0.1:\d+)", text).group(1)
        gateway_url = re.search(r"gateway:\s+(http://127.0.0.1:\d+)", text).group(1)
        context = ssl.create_default_context(cafile=str(tmp_path / "cnmt-tls" / "ca.pem"))

        async def requests() -> dict[str, object]:
            results: dict[str, object] = {}
            async with aiohttp.ClientSession() as s:
                body = {"text": "我们走吧。"}
                async with s.post(f"{cloud_url}/v1/translate", json=body, ssl=context) as r:
                    results["cloud_without_token"] = r.status
                async with s.post(f"{gateway_url}/v1/translate", json=body) as r:
                    results["gateway_without_key"] = r.status
                headers = {"Authorization": f"Bearer {KEY}"}
                async with s.post(f"{gateway_url}/v1/translate", json=body, headers=headers) as r:
                    results["gateway_with_key"] = r.status
                    results["answer"] = await r.json()
            return results

        results = run(requests())
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        output.extend(process.stdout.readlines())
    finally:
        if process.poll() is None:
            process.kill()
    text = "".join(output)
    assert results["cloud_without_token"] == 401
    assert results["gateway_without_key"] == 401
    assert results["gateway_with_key"] == 200
    answer = results["answer"]
    assert isinstance(answer, dict)
    assert (answer["device"], answer["fallback"]) == ("cloud", None), answer
    assert answer["translation"].strip()
    assert code == 0, text
    assert TOKEN not in text and KEY not in text  # no secret in the log
