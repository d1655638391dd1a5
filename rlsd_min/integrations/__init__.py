"""Bridges from rlsd_min's methods to other training engines; outside the core's import graph.

    rlsd_min.integrations.trl    RLSD, SDPG, OPSD (and GRPO+OPSD) as trl.GRPOTrainer subclasses
    rlsd_min.integrations.tiny   a tiny subword (BPE) chat model and the arithmetic task as
                                 TRL-style dataset rows, built locally for tests and examples

Nothing in rlsd_min's core imports this package (tests/test_packaging.py checks it), and this
file imports nothing, so `pip install rlsd_min` without the `trl` extra works in full.
"""
