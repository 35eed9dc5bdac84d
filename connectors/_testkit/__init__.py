"""Implementation of ``connectors.testing`` (imported lazily so the pytest plugin stays cheap)."""
