"""Secure aggregation with distributed noise: the network's noisy sum, and nothing else, to a
semi-honest aggregator (docs/secure-aggregation.md)."""
