"""Live collaborative serving: a cloud translation server, an edge gateway that decides per
request where to translate, an emulated gateway-cloud link, and a load generator.

Needs aiohttp (``pip install 'cnmt[serve]'``); importing this package does not import it, nor
onnxruntime: each module imports what it serves with.
"""

from __future__ import annotations
