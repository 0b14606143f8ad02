"""The HTTP routes, one module per concern; `service.api.create_app` includes them all."""

from . import catalog, events, ops, recommend, users

ROUTERS = [recommend.router, events.router, users.router, catalog.router, ops.router]
