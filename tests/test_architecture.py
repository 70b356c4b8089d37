"""The layering holds at call time too: a gateway or cloud loads its config and model and serves
a translation without ever importing an exporter (or torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SERVE_ONE = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.modules["torch"] = None  # any `import torch` raises ImportError from here on
    from aiohttp.test_utils import TestClient, TestServer

    from cnmt.config import load_config
    from cnmt.serving.cloud import CloudServer
    from cnmt.serving.gateway import Gateway  # the gateway's module graph, too
    from cnmt.serving.launch import create_schedulers, load_translators, prepare_model

    config = load_config("serving/default")
    create_schedulers(config)
    settings = config["cloud"]
    prepare_model(settings.model)
    translators = load_translators(settings.model, settings.providers, settings.threads, 1)

    async def serve():
        async with TestClient(TestServer(CloudServer(translators, settings).app())) as client:
            response = await client.post("/v1/translate", json={"text": "我们走吧。"})
            return response.status, await response.json()

    status, answer = asyncio.run(serve())
    loaded = sorted(
        name for name, module in sys.modules.items()
        if module is not None and name.startswith(("cnmt.exporters", "torch", "transformers"))
    )
    print(json.dumps({"status": status, "translation": answer["translation"], "loaded": loaded}))
    """
)


@pytest.mark.export
def test_serving_a_translation_imports_no_exporter_module(tmp_path: Path) -> None:
    from cnmt.exporters.builtins import ensure_exported

    env = dict(os.environ, CNMT_CACHE=str(tmp_path / "cache"))
    os.environ["CNMT_CACHE"] = env["CNMT_CACHE"]
    try:
        ensure_exported("cn2en")  # the export happens here, in the test process
    finally:
        os.environ.pop("CNMT_CACHE")
    done = subprocess.run(
        [sys.executable, "-P", "-c", SERVE_ONE],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["status"] == 200 and result["translation"] == "let's go ."
    assert result["loaded"] == []
