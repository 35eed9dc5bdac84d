"""Connector framework and built-in connectors.

- ``connectors.sdk``: what a connector plugin imports (base class, HTTP client, records).
- ``connectors.spec``: the pluggy hook specifications.
- ``connectors.registry``: ``ConnectorRegistry``, the only way the hub calls the hooks.
- ``connectors.testing``: the pytest plugin and conformance suite for connector authors.
- one package per built-in provider (``connectors.salesforce``).

Importing this package imports nothing else, so the pytest plugin stays cheap to load.
"""
