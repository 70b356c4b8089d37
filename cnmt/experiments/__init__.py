"""Experiments: corpora and RTT trace loaders, token counting, length fitting, trace-driven
replay of the device policies, and the reproduction report (the paper's Table I).

Everything here runs on the light core (numpy, no torch); plots need matplotlib.
"""
