"""Every table of the control plane, one module per feature. Import from here."""

from store.tables.activity import ActivityLog, ActivityLogArchive
from store.tables.catalog import ContainerAddon, ContainerFlavor, ResourceTier
from store.tables.chat import AcpSyncState, ChatMessage, ChatSession, ChatSyncState
from store.tables.opencode import UserOpencodeConfig, UserOpencodeFile
from store.tables.preferences import UserPreferences
from store.tables.preferences_history import UserPreferencesHistory
from store.tables.providers import ProviderCredential
from store.tables.sandboxes import Sandbox
from store.tables.users import AuthSession, OAuthAccount, User

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
