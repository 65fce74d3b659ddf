"""HTTP routes, one module per feature. ``ROUTERS`` is what the app mounts."""

from api.routes import auth, catalog, health, preferences, sandboxes, users

ROUTERS = [health.router, auth.router, users.router, catalog.router, sandboxes.router, preferences.router]
