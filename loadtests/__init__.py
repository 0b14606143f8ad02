"""Load tests, reliability scenarios and the local service they run against (127.0.0.1 only)."""
