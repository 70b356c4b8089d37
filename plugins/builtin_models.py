"""Registers the built-in model families: runtime translators, torch-side exporters, and the
config sections that describe a model to build.

Each hook imports its modules when called: the registry is built per kind, so opening a model
(the translator hook) never imports an exporter, and a gateway runs without torch.
"""

from __future__ import annotations

from cnmt import hookimpl
from cnmt.hookspecs import Register


@hookimpl
def cnmt_register_translators(register: Register) -> None:
    from cnmt.runtime import bergamot, marian, rnn

    register(rnn.BiLstmTranslator)
    register(rnn.GruTranslator)
    register(rnn.Cn2enTranslator)
    register(marian.MarianTranslator)
    register(bergamot.BergamotTranslator)


@hookimpl
def cnmt_register_exporters(register: Register) -> None:
    from cnmt.exporters import bergamot, marian, rnn

    register(rnn.BiLstmExporter)
    register(rnn.GruExporter)
    register(rnn.Cn2enExporter)
    register(marian.MarianExporter)
    register(bergamot.BergamotExporter)


def _model_config() -> type:
    from cnmt.exporters.model_config import ModelConfig

    return ModelConfig


def _marian_config() -> type:
    from cnmt.exporters.marian import MarianModelConfig

    return MarianModelConfig


@hookimpl
def cnmt_register_config_sections(register: Register) -> None:
    register("model", _model_config)
    register("marian", _marian_config)
