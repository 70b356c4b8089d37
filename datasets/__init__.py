"""Datasets: the measured inputs C-NMT replays and emulates, and their readers.

Parallel corpora (:mod:`.corpora`), round-trip-time traces (:mod:`.traces`) and the one model of
the gateway-cloud link built on them (:mod:`.link`), shared by the replay and the live emulated
link. The lowest layer above the core: imports only the core (``cnmt.errors``, ``cnmt.files``,
``cnmt.config``) and numpy.
"""
