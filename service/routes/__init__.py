"""The HTTP routes, one module per concern; `service.api.create_app` includes them all."""

from . import catalog, events, ops, recommend

ROUTERS = [recommend.router, events.router, catalog.router, ops.router]
