"""pytest plugin and helpers for integration tests against a mounted SMP (see docs/testing.md)."""
