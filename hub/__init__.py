"""The HTTP edge of the hub: app factory, routers, auth, middleware and the `hub` CLI."""
