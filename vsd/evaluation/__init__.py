"""Evaluation: prompt sets, AR-vs-speculative runs with peers, one metrics function, the cost model."""
