"""Reliability tests: bad input, fuzzing, a soak under injected faults and a bounded load test."""
