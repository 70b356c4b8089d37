"""Test doubles and shared helpers for the test modules (no tests in here).

Import them as ``helpers.<module>`` (pytest's ``pythonpath`` puts ``tests/`` on ``sys.path``);
the ones a test asks for by name are fixtures in ``tests/conftest.py``.

- ``doubles``: scripted translators whose timing and failures a test controls, the latency
  models the serving tests assume, translator factories that fail as a broken model does.
- ``servers``: a scripted cloud in this event loop or in a child process a test can kill, a
  gateway with doubles on a free loopback port.
- ``live``: ``gateway_and_cloud``, the async context manager that starts a scripted cloud and a
  gateway in front of it, yields both with an HTTP session, and stops them after.
- ``client``: the HTTP side: post a translation, read JSON and ``/metrics``, a slow client.
- ``aio``: run an async test body under a deadline; wait for a condition.
- ``launched``: a ``cnmt launch`` subprocess whose output a test reads line by line.
"""
