"""The caller's OpenCode config (``/api/users/me/opencode``): settings + AGENTS.md, and agent/command files.

Sandboxes receive the config (secrets decrypted, in the container's tmpfs) on their next start.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response, status

from agentpod.security.encryption import DecryptionError
from agentpod.store import opencode_config
from agentpod.store.tables import UserOpencodeConfig, UserOpencodeFile
from api.audit import AuditEntry, audit
from api.deps import AgentConfigPushDep, Context, CurrentUser, DbSession, OwnedFile
from api.errors import ERROR_RESPONSES, Conflict
from api.schemas.opencode_config import (
    OpencodeConfigIn,
    OpencodeConfigOut,
    OpencodeFileIn,
    OpencodeFileList,
    OpencodeFileOut,
    OpencodeFileSummary,
    OpencodeFileUpdate,
)

router = APIRouter(prefix="/api/users/me/opencode", tags=["opencode"], responses=ERROR_RESPONSES)


def _summary(row: UserOpencodeFile) -> OpencodeFileSummary:
    return OpencodeFileSummary(
        id=row.id,
        type=row.type,
        name=row.name,
        extension=row.extension,
        size=len(row.content),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _file_out(row: UserOpencodeFile) -> OpencodeFileOut:
    return OpencodeFileOut(**_summary(row).model_dump(), content=row.content)


def _config_out(row: UserOpencodeConfig) -> OpencodeConfigOut:
    return OpencodeConfigOut(settings=row.settings, agents_md=row.agents_md, updated_at=row.updated_at)


@router.get("/config")
async def get_config(user: CurrentUser, db: DbSession) -> OpencodeConfigOut:
    """The caller's settings (secrets masked) and AGENTS.md; empty until first saved."""
    row = await opencode_config.get_config(db, user.id)
    if row is None:
        return OpencodeConfigOut(settings={}, agents_md=None, updated_at=None)
    return _config_out(row)


@router.put("/config")
async def put_config(
    body: OpencodeConfigIn,
    user: CurrentUser,
    db: DbSession,
    ctx: Context,
    entry: Annotated[AuditEntry, audit("opencode.config_update", entity="user")],
    push: AgentConfigPushDep,
) -> OpencodeConfigOut:
    """Replace settings and AGENTS.md. MCP environment values and headers are encrypted at rest. Running
    sandboxes get the change within seconds (``config_pending`` until their agent has reloaded it)."""
    try:
        row = await opencode_config.put_config(db, ctx.keyring, user.id, body.settings, body.agents_md)
    except DecryptionError:
        raise Conflict(
            "the stored MCP secrets cannot be decrypted; send every secret in full instead of its mask",
            code="secrets_unreadable",
        ) from None
    await entry.record(db, mcp_servers=len(body.settings.get("mcp", {})), agents_md=body.agents_md is not None)
    await push.flag(db)
    await db.commit()
    await push.push()
    return _config_out(row)


@router.get("/files")
async def list_files(user: CurrentUser, db: DbSession) -> OpencodeFileList:
    """The caller's custom agents and commands (without their content)."""
    rows = await opencode_config.list_files(db, user.id)
    return OpencodeFileList(files=[_summary(row) for row in rows])


@router.post("/files", status_code=status.HTTP_201_CREATED)
async def create_file(
    body: OpencodeFileIn,
    user: CurrentUser,
    db: DbSession,
    entry: Annotated[AuditEntry, audit("opencode.file_create", entity="opencode_file")],
    push: AgentConfigPushDep,
) -> OpencodeFileOut:
    """Add a custom agent or command."""
    try:
        row = await opencode_config.create_file(db, user.id, type=body.type, name=body.name, content=body.content)
    except opencode_config.DuplicateFileError as error:
        raise Conflict(str(error), code="duplicate_file") from None
    except opencode_config.FileLimitError:
        raise Conflict(f"at most {opencode_config.MAX_FILES} files per user", code="file_limit_reached") from None
    await entry.record(db, entity_id=row.id, type=row.type, name=row.name)
    await push.flag(db)
    await db.commit()
    await push.push()
    return _file_out(row)


@router.get("/files/{file_id}")
async def get_file(row: OwnedFile) -> OpencodeFileOut:
    """One file with its content."""
    return _file_out(row)


@router.put("/files/{file_id}")
async def update_file(
    body: OpencodeFileUpdate,
    row: OwnedFile,
    db: DbSession,
    entry: Annotated[AuditEntry, audit("opencode.file_update", entity="opencode_file", id_param="file_id")],
    push: AgentConfigPushDep,
) -> OpencodeFileOut:
    """Rename and/or rewrite a file."""
    try:
        changed = await opencode_config.update_file(db, row, name=body.name, content=body.content)
    except opencode_config.DuplicateFileError as error:
        raise Conflict(str(error), code="duplicate_file") from None
    if changed:
        await entry.record(db, type=row.type, name=row.name)
        await push.flag(db)
        await db.commit()
        await push.push()
    else:
        entry.skip()
    return _file_out(row)


@router.delete("/files/{file_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(
    row: OwnedFile,
    db: DbSession,
    entry: Annotated[AuditEntry, audit("opencode.file_delete", entity="opencode_file", id_param="file_id")],
    push: AgentConfigPushDep,
) -> Response:
    """Delete a file."""
    await entry.record(db, type=row.type, name=row.name)
    await opencode_config.delete_file(db, row)
    await push.flag(db)
    await db.commit()
    await push.push()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
