"""Characterization: device settings, device emulation, measuring profiles, their format and fit.

How a model runs on a device (:mod:`.devices`), a weaker device emulated by a cgroup CPU quota
(:mod:`.cpu_quota`), timing a model on a grid of (N, M) in a worker process (:mod:`.measure`),
the profile file and its linear fit ``T = a_n*N + a_m*M + b`` (:mod:`.profiles`), and its
summary and figures (:mod:`.plots`). May import the core, ``cnmt.runtime`` (the worker runs a
model), ``cnmt.schedulers`` (latency models) and ``cnmt.exporters`` (built-in models); never
serving or experiments.
"""
