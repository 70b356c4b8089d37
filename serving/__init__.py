"""Live collaborative serving: a cloud translation server, an edge gateway that decides per
request where to translate, an emulated gateway-cloud link, and a load generator.

Needs aiohttp (``pip install 'cnmt[serve]'``); importing this package imports neither it nor
onnxruntime: each module imports what it serves with. May import the core, ``cnmt.datasets``,
``cnmt.runtime``, ``cnmt.schedulers`` and ``cnmt.profiling`` (device profiles and quotas), and
``cnmt.exporters`` only to export a built-in model missing from the cache; never experiments.
"""
