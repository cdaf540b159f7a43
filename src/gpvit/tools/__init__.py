"""User tools: FLOP counting, benchmarks."""
