"""Every table of the control plane, one module per feature. Import from here."""

from agentpod.store.tables.activity import ActivityLog, ActivityLogArchive
from agentpod.store.tables.catalog import ContainerAddon, ContainerFlavor, ResourceTier
from agentpod.store.tables.chat import AcpSyncState, ChatMessage, ChatSession, ChatSyncState
from agentpod.store.tables.opencode import UserOpencodeConfig, UserOpencodeFile
from agentpod.store.tables.preferences import UserPreferences
from agentpod.store.tables.preferences_history import UserPreferencesHistory
from agentpod.store.tables.providers import ProviderCredential
from agentpod.store.tables.sandboxes import Sandbox
from agentpod.store.tables.users import AuthSession, OAuthAccount, User

__all__ = [
    "AcpSyncState",
    "ActivityLog",
    "ActivityLogArchive",
    "AuthSession",
    "ChatMessage",
    "ChatSession",
    "ChatSyncState",
    "ContainerAddon",
    "ContainerFlavor",
    "OAuthAccount",
    "ProviderCredential",
    "ResourceTier",
    "Sandbox",
    "User",
    "UserOpencodeConfig",
    "UserOpencodeFile",
    "UserPreferences",
    "UserPreferencesHistory",
]
