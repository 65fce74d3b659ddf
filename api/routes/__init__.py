"""HTTP routes, one module per feature. ``ROUTERS`` is what the app mounts."""

from api.routes import (
    account,
    acp,
    activity,
    auth,
    catalog,
    chat,
    chat_restore,
    chat_sessions,
    chat_sync,
    health,
    opencode_config,
    preferences,
    providers,
    sandboxes,
    users,
)

ROUTERS = [
    health.router,
    auth.router,
    users.router,
    catalog.router,
    sandboxes.router,
    chat.router,
    chat_sessions.router,
    chat_sync.router,
    chat_restore.router,
    acp.router,
    preferences.router,
    activity.router,
    providers.router,
    opencode_config.router,
    account.router,
]
