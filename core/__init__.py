"""The hub's domain: settings, persistence, and one service module per concept.

`core` knows nothing of HTTP, arq or any provider; callers hand it what it needs.
"""
