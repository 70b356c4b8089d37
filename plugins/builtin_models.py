"""Registers the built-in model families: runtime translators and torch-side exporters.

Exporter modules import torch only inside their methods, so this module (and the registry)
loads in the core environment without torch.
"""

from __future__ import annotations

from cnmt import hookimpl
from cnmt.exporters import marian as marian_exporters
from cnmt.exporters import rnn as rnn_exporters
from cnmt.hookspecs import Register
from cnmt.runtime import marian, rnn


@hookimpl
def cnmt_register_translators(register: Register) -> None:
    register(rnn.BiLstmTranslator)
    register(rnn.GruTranslator)
    register(rnn.Cn2enTranslator)
    register(marian.MarianTranslator)


@hookimpl
def cnmt_register_exporters(register: Register) -> None:
    register(rnn_exporters.BiLstmExporter)
    register(rnn_exporters.GruExporter)
    register(rnn_exporters.Cn2enExporter)
    register(marian_exporters.MarianExporter)
