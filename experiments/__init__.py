"""Experiments: token counting, length fitting, ground truth from device profiles, the
trace-driven replay of the device policies, and the reproduction report (the paper's Table I).

Everything here runs on the light core (numpy, no torch); plots need matplotlib. May import the
core, ``cnmt.datasets``, ``cnmt.runtime``, ``cnmt.schedulers``, ``cnmt.profiling`` and
``cnmt.exporters`` (to run a built-in model over a corpus); never serving.
"""
