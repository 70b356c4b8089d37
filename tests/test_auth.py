"""Who may talk to whom: TLS on the gateway-cloud link with certificates made at test time
(trustme), the cloud's bearer token, the gateway's API keys, servers that refuse to listen
beyond loopback unguarded, and secrets that never show (docs/hardening.md, "Who may talk to
whom")."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from helpers import servers
from helpers.aio import run

from cnmt.cli import main
from cnmt.errors import ConfigError
from cnmt.serving.auth import read_keys, read_secret
from cnmt.serving.settings import CloudSettings, GatewaySettings

TOKEN = "s3cret-cloud-token-0123456789"
KEY = "device-key-abcdef"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    """A CA, the cloud's certificate from it for 127.0.0.1, and a second, untrusted CA."""
    ca, other = trustme.CA(), trustme.CA()
    paths = {
        "ca": tmp_path / "ca.pem",
        "other_ca": tmp_path / "other-ca.pem",
        "cert": tmp_path / "cloud.pem",
        "token": tmp_path / "token",
        "wrong_token": tmp_path / "wrong-token",
        "keys": tmp_path / "api-keys",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other.cert_pem.write_to_path(str(paths["other_ca"]))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(paths["cert"])
    )
    paths["token"].write_text(TOKEN + "\n")
    paths["wrong_token"].write_text("not-the-token")
    paths["keys"].write_text(f"# end devices\n{KEY}\nanother-key\n")
    return {key: str(path) for key, path in paths.items()}


async def secure_cloud(pki: dict[str, str]) -> tuple[Any, str]:
    return await servers.start_cloud(
        tls_cert_file=pki["cert"], tls_key_file=pki["cert"], token_file=pki["token"]
    )


async def status_of(url: str, ca: str, headers: dict[str, str] | None = None) -> int:
    context = ssl.create_default_context(cafile=ca)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/v1/translate", json={"text": "ni hao"}, headers=headers, ssl=context) as r,
    ):
        return r.status


def test_the_cloud_over_tls_answers_401_without_the_right_token(pki: dict[str, str]) -> None:
    async def body() -> list[int]:
        runner, url = await secure_cloud(pki)
        try:
            assert url.startswith("https://")
            return [
                await status_of(url, pki["ca"]),
                await status_of(url, pki["ca"], {"Authorization": "Bearer wrong"}),
                await status_of(url, pki["ca"], {"Authorization": f"Bearer {TOKEN}"}),
            ]
        finally:
            await runner.cleanup()

    assert run(body()) == [401, 401, 200]


def run_with_cloud(pki: dict[str, str], **settings: Any) -> tuple[dict[str, Any], str, str]:
    """One request through a gateway with ``settings`` to the TLS-and-token cloud: the answer,
    ``/v1/models`` and ``/metrics``."""

    async def body() -> tuple[dict[str, Any], str, str]:
        runner, cloud_url = await secure_cloud(pki)
        gw = await servers.start_gateway(cloud_url, policy="cloud", **settings)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{gw.url}/v1/translate", json={"text": "ni hao"}) as r:
                    assert r.status == 200, await r.text()
                    answer = await r.json()
                async with s.get(f"{gw.url}/v1/models") as r:
                    models = await r.text()
                async with s.get(f"{gw.url}/metrics") as r:
                    metrics = await r.text()
        finally:
            await gw.close()
            await runner.cleanup()
        return answer, models, metrics

    return run(body())


def test_a_gateway_with_the_ca_and_the_token_offloads_over_tls(
    pki: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        answer, models, metrics = run_with_cloud(
            pki, cloud_ca_file=pki["ca"], cloud_token_file=pki["token"]
        )
    assert (answer["device"], answer["fallback"]) == ("cloud", None)
    for shown in (models, metrics, caplog.text, str(answer)):
        assert TOKEN not in shown  # the secret never shows


def test_a_cloud_with_an_untrusted_certificate_is_refused_and_the_edge_serves(
    pki: dict[str, str],
) -> None:
    answer, _, _ = run_with_cloud(pki, cloud_ca_file=pki["other_ca"], cloud_token_file=pki["token"])
    assert (answer["device"], answer["decided"]) == ("edge", "cloud")
    assert answer["fallback"] in ("connection", "cloud_unhealthy")
    assert answer["translation"] == "NI HAO . [edge]"


def test_a_gateway_with_a_wrong_token_gets_401_and_the_edge_serves(pki: dict[str, str]) -> None:
    answer, _, _ = run_with_cloud(pki, cloud_ca_file=pki["ca"], cloud_token_file=pki["wrong_token"])
    assert (answer["device"], answer["decided"]) == ("edge", "cloud")
    assert answer["fallback"] in ("status", "cloud_unhealthy")


def test_a_gateway_with_api_keys_answers_401_without_one(pki: dict[str, str]) -> None:
    async def body() -> list[int]:
        gw = await servers.start_gateway(None, policy="edge", api_keys_file=pki["keys"])
        statuses = []
        try:
            async with aiohttp.ClientSession() as s:
                for headers in (
                    {},
                    {"Authorization": "Bearer nope"},
                    {"Authorization": f"Bearer {KEY}"},
                ):
                    async with s.post(
                        f"{gw.url}/v1/translate", json={"text": "ni hao"}, headers=headers
                    ) as r:
                        statuses.append(r.status)
                        if r.status == 401:
                            assert r.headers["WWW-Authenticate"].startswith("Bearer")
                async with s.get(f"{gw.url}/health") as r:
                    statuses.append(r.status)  # probes need no key
        finally:
            await gw.close()
        return statuses

    assert run(body()) == [401, 401, 200, 200]


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "cloud.example.org"])
def test_a_server_beyond_loopback_without_auth_refuses_to_start(host: str) -> None:
    with pytest.raises(ValueError, match="without authentication"):
        CloudSettings(host=host)
    with pytest.raises(ValueError, match="without authentication"):
        GatewaySettings(edge_profile="e", cloud_profile="c", host=host)
    CloudSettings(host=host, allow_unauthenticated=True)
    CloudSettings(host=host, token_env="CNMT_CLOUD_TOKEN")
    GatewaySettings(edge_profile="e", cloud_profile="c", host=host, api_keys_env="K")


def test_launching_a_public_cloud_without_auth_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "open.yaml"
    path.write_text("cloud:\n  host: 0.0.0.0\n")
    assert main(["config", "validate", str(path)]) == 2
    assert "allow_unauthenticated: true" in capsys.readouterr().err


def test_secrets_come_from_files_or_the_environment_and_errors_never_show_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNMT_TEST_TOKEN", f"  {TOKEN}  ")
    assert read_secret(None, "CNMT_TEST_TOKEN", "cloud.token") == TOKEN
    monkeypatch.setenv("CNMT_TEST_KEYS", "a, b,,c")
    assert read_keys(None, "CNMT_TEST_KEYS", "gateway.api_keys") == {"a", "b", "c"}
    with pytest.raises(ConfigError, match="CNMT_NOT_SET is not set"):
        read_secret(None, "CNMT_NOT_SET", "cloud.token")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(str(empty), None, "cloud.token")
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret(str(tmp_path / "missing"), None, "cloud.token")
    # the schema has no field for a secret's value: a token in the YAML is an unknown key
    with pytest.raises(TypeError):
        CloudSettings(token=TOKEN)  # type: ignore[call-arg]
