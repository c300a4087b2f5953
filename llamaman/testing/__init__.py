"""Helpers for tests and benchmarks that need real model files and a real llama-server."""
