"""Helpers that make realistic inputs for tests, the demo and the benchmark."""
