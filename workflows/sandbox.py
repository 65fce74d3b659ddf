"""``SandboxWorkflow``: one durable entity per sandbox that drives its container to the desired state.

Requests (updates from the API, signals from operators) only change the *desired* state; the run
loop reconciles the container towards it with idempotent activities. A worker killed half-way
through replays to the same point and the activities converge: never two containers, never a status
that lies. Between requests the loop checks for drift (container removed or stopped behind our back)
and repairs it from the database row.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.activity_options import ActivityOptions, execute

with workflow.unsafe.imports_passed_through():
    from agentpod.domain.activity import ActivityEvent, RecordActivityInput
    from agentpod.domain.chat import SyncTarget
    from agentpod.domain.contracts import (
        DOCKER_DELIVER_AGENT_CONFIG,
        DOCKER_ENSURE_CONTAINER,
        DOCKER_INSPECT_CONTAINER,
        DOCKER_REMOVE_CONTAINER,
        DOCKER_START_CONTAINER,
        DOCKER_STOP_CONTAINER,
        OPENCODE_RELOAD_WHEN_IDLE,
        RECORD_ACTIVITY,
        SANDBOX_DELETE_ROW,
        SANDBOX_ENDPOINTS,
        SANDBOX_LOAD_SPEC,
        SANDBOX_PUSH_AGENT_CREDENTIALS,
        SANDBOX_SET_CONFIG_PENDING,
        SANDBOX_SET_STATUS,
        SYNC_ENSURE_STARTED,
        SYNC_FINISH,
        WAIT_OPENCODE_HEALTHY,
    )
    from agentpod.domain.sandbox import (
        ConfigPendingInput,
        ContainerState,
        DeliverConfigInput,
        DesiredState,
        PushCredentialsInput,
        ReloadAgentInput,
        RemoveContainerInput,
        SandboxStatus,
        SandboxWorkflowInput,
        SandboxWorkflowState,
        SetStatusInput,
        TransitionRequest,
        WaitHealthyInput,
    )

STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodStatus")
ILLEGAL_TRANSITION = "IllegalTransition"

# Database writes retry until the database is back: the workflow is durable, the request waits.
_DB = ActivityOptions(timedelta(seconds=30), RetryPolicy(maximum_interval=timedelta(seconds=30)))
_DOCKER = ActivityOptions(
    timedelta(minutes=3),
    RetryPolicy(maximum_attempts=5, non_retryable_error_types=["ImageMissing"]),
    heartbeat=timedelta(seconds=30),
)
# Removal must eventually succeed: the row is only deleted after it, so no container is orphaned.
_DOCKER_REMOVE = ActivityOptions(
    timedelta(minutes=3), RetryPolicy(maximum_interval=timedelta(minutes=1)), timedelta(seconds=30)
)
_SYNC_FINISH = ActivityOptions(timedelta(minutes=4), RetryPolicy(maximum_attempts=2))
_HEALTH = ActivityOptions(timedelta(seconds=150), RetryPolicy(maximum_attempts=2), heartbeat=timedelta(seconds=15))
HEALTH_TIMEOUT_SECONDS = 120.0
# Waiting for a busy agent to be idle before reloading its config: ~20 s per attempt, heartbeating.
_RELOAD = ActivityOptions(timedelta(seconds=60), RetryPolicy(maximum_attempts=2), heartbeat=timedelta(seconds=10))
# A reload that found the agent busy (a turn in progress) is tried again after this long.
CONFIG_RETRY_SECONDS = 10.0
# A sandbox left in error is retried by the drift check this many times (Docker may have been down),
# then stays in error until the user or an operator asks again.
MAX_ERROR_RETRIES = 3


def _reason(error: BaseException) -> str:
    """The innermost message of an activity failure (what the user should read)."""
    while isinstance(error, ActivityError) and error.cause is not None:
        error = error.cause
    return str(error) or type(error).__name__


@workflow.defn
class SandboxWorkflow:
    """The life of one sandbox: start, stop, reconfigure, delete, and drift repair."""

    @workflow.init
    def __init__(self, data: SandboxWorkflowInput) -> None:
        self._input = data
        self.state = data.state or SandboxWorkflowState(sandbox_id=data.sandbox_id, user_id=data.user_id)
        self._requested = 0  # generation of the newest request
        self._completed = 0  # generation the container has been reconciled to
        self._reconfigure = False
        self._request: tuple[TransitionRequest, str] | None = None  # latest request + its audit action
        self._deleted = False
        self._error_retries = 0  # automatic retries of a start that ended in error
        self._pending_sync: SyncTarget | None = None
        self._config_retry_at: datetime | None = None  # a reload found the agent busy: not before then

    # ----------------------------------------------------------------- run loop

    @workflow.run
    async def run(self, data: SandboxWorkflowInput) -> SandboxWorkflowState:
        """Reconcile on every request; check for drift when idle; continue-as-new before history grows."""
        self._publish()
        while not self._deleted:
            try:
                await workflow.wait_condition(
                    lambda: (
                        self._requested > self._completed
                        or self._config_due()
                        or workflow.info().is_continue_as_new_suggested()
                    ),
                    # A reload waiting for a busy agent asks again sooner than the drift check.
                    timeout=timedelta(
                        seconds=min(data.drift_check_seconds, CONFIG_RETRY_SECONDS)
                        if self.state.config_pending
                        else data.drift_check_seconds
                    ),
                )
            except TimeoutError:
                await self._check_drift()
                await self._start_pending_sync()
                await self._apply_agent_config()
                continue
            if self._requested == self._completed and self._config_due():
                await self._apply_agent_config()
                continue
            if self._requested > self._completed:
                generation = self._requested
                await self._reconcile()
                self._completed = generation
                await self._start_pending_sync()
                continue
            # Continue-as-new only while idle, after in-flight handlers return their answers.
            await workflow.wait_condition(workflow.all_handlers_finished)
            if self._requested == self._completed and not self._deleted:
                workflow.continue_as_new(data.model_copy(update={"state": self.state}))
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

    # ----------------------------------------------------------------- requests

    @workflow.update
    async def start(self, request: TransitionRequest) -> SandboxWorkflowState:
        """Run the sandbox; returns once it is running (or in error, with the reason)."""
        return await self._ask(DesiredState.RUNNING, request, "sandbox.start")

    @start.validator
    def _validate_start(self, request: TransitionRequest) -> None:
        self._validate(DesiredState.RUNNING)

    @workflow.update
    async def stop(self, request: TransitionRequest) -> SandboxWorkflowState:
        """Stop the sandbox (volumes kept)."""
        return await self._ask(DesiredState.STOPPED, request, "sandbox.stop")

    @stop.validator
    def _validate_stop(self, request: TransitionRequest) -> None:
        self._validate(DesiredState.STOPPED)

    @workflow.update
    async def reconfigure(self, request: TransitionRequest) -> SandboxWorkflowState:
        """Apply a changed row (tier, flavor, add-ons): a running container is recreated, volumes kept."""
        self._reconfigure = True
        return await self._ask(self.state.desired, request, None)

    @reconfigure.validator
    def _validate_reconfigure(self, request: TransitionRequest) -> None:
        self._validate(self.state.desired)

    @workflow.update
    async def delete(self, request: TransitionRequest) -> SandboxWorkflowState:
        """Remove container, volumes and row; the workflow then completes."""
        return await self._ask(DesiredState.DELETED, request, "sandbox.delete")

    @workflow.signal
    async def operator_stop(self) -> None:
        """For operators in the Web UI: stop this sandbox (same as the stop update, no reply)."""
        if self.state.desired != DesiredState.DELETED:
            self._desire(DesiredState.STOPPED, TransitionRequest(), "sandbox.stop")

    @workflow.signal
    async def operator_start(self) -> None:
        """For operators in the Web UI: start this sandbox."""
        if self.state.desired != DesiredState.DELETED:
            self._desire(DesiredState.RUNNING, TransitionRequest(), "sandbox.start")

    @workflow.signal
    async def agent_config_changed(self) -> None:
        """The user's OpenCode config, files or provider keys changed: give them to the running agent
        (rewritten at once, OpenCode reloaded once idle). A stopped sandbox gets them at its next start."""
        if self.state.desired == DesiredState.RUNNING:
            self.state.config_pending = True
            self._config_retry_at = None
            self._publish()

    @workflow.query
    def describe(self) -> SandboxWorkflowState:
        """Desired and observed state."""
        return self.state

    def _validate(self, target: DesiredState) -> None:
        # Validators run before anything is written to history: a rejected request leaves no trace.
        if self.state.desired == DesiredState.DELETED:
            raise ApplicationError("sandbox is being deleted", type=ILLEGAL_TRANSITION)
        busy = self.state.in_progress or (self.state.desired if self._requested > self._completed else None)
        if busy is not None and busy != target:
            verb = {DesiredState.RUNNING: "starting", DesiredState.STOPPED: "stopping"}.get(busy, "busy")
            raise ApplicationError(
                f"sandbox is {verb}; wait until that finishes, then try again", type=ILLEGAL_TRANSITION
            )

    def _desire(self, target: DesiredState, request: TransitionRequest, action: str | None) -> int:
        self.state.desired = target
        self._error_retries = 0
        if action is not None:
            self._request = (request, action)
        self._requested += 1
        return self._requested

    async def _ask(self, target: DesiredState, request: TransitionRequest, action: str | None) -> SandboxWorkflowState:
        generation = self._desire(target, request, action)
        await workflow.wait_condition(lambda: self._completed >= generation)
        return self.state

    # ----------------------------------------------------------------- reconciling

    async def _reconcile(self) -> None:
        desired = self.state.desired
        self.state.in_progress = desired
        try:
            if desired == DesiredState.RUNNING:
                changed = await self._ensure_running()
            elif desired == DesiredState.STOPPED:
                changed = await self._ensure_stopped()
            else:
                changed = await self._ensure_deleted()
        finally:
            self.state.in_progress = None
            self._publish()
        if changed and self._request is not None:
            await self._record(*self._request)
        self._request = None

    async def _ensure_running(self) -> bool:
        reconfigure, self._reconfigure = self._reconfigure, False
        if self.state.status == SandboxStatus.RUNNING and not reconfigure:
            current = await self._inspect()
            if current is not None and current.running:
                return False
        await self._set_status(SandboxStatus.STARTING)
        sandbox_id = self.state.sandbox_id
        try:
            spec = await execute(SANDBOX_LOAD_SPEC, sandbox_id, options=_DB)
            await execute(DOCKER_ENSURE_CONTAINER, spec, options=_DOCKER)
            container = await execute(DOCKER_START_CONTAINER, sandbox_id, options=_DOCKER)
            delivery = DeliverConfigInput(sandbox_id=sandbox_id, user_id=self.state.user_id)
            await execute(DOCKER_DELIVER_AGENT_CONFIG, delivery, options=_DOCKER)
            endpoints = await execute(SANDBOX_ENDPOINTS, spec, container, options=_DB)
            health = WaitHealthyInput(
                base_url=endpoints.internal_opencode_url,
                timeout_seconds=HEALTH_TIMEOUT_SECONDS,
                sandbox_id=sandbox_id,
                # "running" promises both servers: the gateway starts beside OpenCode, not always as fast.
                gateway_url=endpoints.internal_acp_url,
            )
            await execute(WAIT_OPENCODE_HEALTHY, health, options=_HEALTH)
            credentials = PushCredentialsInput(
                user_id=self.state.user_id, opencode_url=endpoints.internal_opencode_url, sandbox_id=sandbox_id
            )
            await execute(SANDBOX_PUSH_AGENT_CREDENTIALS, credentials, options=_DB)
        except ActivityError as error:
            await self._set_status(SandboxStatus.ERROR, error_message=_reason(error))
            return False
        self.state.container_id = container.container_id
        self.state.urls = endpoints.urls
        self.state.internal_opencode_url = endpoints.internal_opencode_url
        self.state.internal_acp_url = endpoints.internal_acp_url
        await self._set_status(SandboxStatus.RUNNING)
        if self.state.config_pending:  # the start delivered the latest config
            await self._config_applied()
        # The chat mirror follows the (possibly new) OpenCode address; started right after the caller has
        # its answer, so the user does not wait for it.
        self._pending_sync = SyncTarget(
            sandbox_id=sandbox_id,
            user_id=self.state.user_id,
            opencode_url=endpoints.internal_opencode_url,
            acp_url=endpoints.internal_acp_url,
        )
        return True

    def _config_due(self) -> bool:
        if not self.state.config_pending or self.state.status != SandboxStatus.RUNNING or self.state.in_progress:
            return False
        return self._config_retry_at is None or workflow.now() >= self._config_retry_at

    async def _apply_agent_config(self) -> None:
        """Rewrite the agent's config files and keys in the running container, then reload OpenCode once
        no turn is in progress; a busy agent is asked again in ``CONFIG_RETRY_SECONDS``."""
        if not self._config_due():
            return
        sandbox_id, url = self.state.sandbox_id, self.state.internal_opencode_url
        pending = ConfigPendingInput(sandbox_id=sandbox_id, pending=True)
        try:
            await execute(SANDBOX_SET_CONFIG_PENDING, pending, options=_DB)
            delivery = DeliverConfigInput(sandbox_id=sandbox_id, user_id=self.state.user_id)
            await execute(DOCKER_DELIVER_AGENT_CONFIG, delivery, options=_DOCKER)
            if url is not None:
                credentials = PushCredentialsInput(user_id=self.state.user_id, opencode_url=url, sandbox_id=sandbox_id)
                await execute(SANDBOX_PUSH_AGENT_CREDENTIALS, credentials, options=_DB)
                reload = ReloadAgentInput(sandbox_id=sandbox_id, opencode_url=url)
                if not await execute(OPENCODE_RELOAD_WHEN_IDLE, reload, options=_RELOAD):
                    self._config_retry_at = workflow.now() + timedelta(seconds=CONFIG_RETRY_SECONDS)
                    return
        except ActivityError as error:
            # The container may be going away (drift repair delivers the config anyway): try again later.
            workflow.logger.warning("config for sandbox %s not applied yet: %s", sandbox_id, _reason(error))
            self._config_retry_at = workflow.now() + timedelta(seconds=CONFIG_RETRY_SECONDS)
            return
        await self._config_applied()

    async def _config_applied(self) -> None:
        self.state.config_pending = False
        self._config_retry_at = None
        await execute(
            SANDBOX_SET_CONFIG_PENDING, ConfigPendingInput(sandbox_id=self.state.sandbox_id, pending=False), options=_DB
        )
        self._publish()

    async def _ensure_stopped(self) -> bool:
        self._reconfigure = False  # the next start reads the row anyway
        if self.state.status in (SandboxStatus.CREATED, SandboxStatus.STOPPED):
            return False
        await self._set_status(SandboxStatus.STOPPING)
        await self._finish_sync()
        try:
            await execute(DOCKER_STOP_CONTAINER, self.state.sandbox_id, options=_DOCKER)
        except ActivityError as error:
            await self._set_status(SandboxStatus.ERROR, error_message=_reason(error))
            return False
        await self._set_status(SandboxStatus.STOPPED)
        return True

    async def _ensure_deleted(self) -> bool:
        await self._set_status(SandboxStatus.STOPPING)
        await self._finish_sync()
        # Retries until Docker answers: the row must not vanish while a container might remain.
        removal = RemoveContainerInput(sandbox_id=self.state.sandbox_id, remove_volumes=True)
        await execute(DOCKER_REMOVE_CONTAINER, removal, options=_DOCKER_REMOVE)
        await execute(SANDBOX_DELETE_ROW, self.state.sandbox_id, options=_DB)
        self._deleted = True
        return True

    async def _start_pending_sync(self) -> None:
        """Start (or re-target) the chat mirror for the OpenCode a start or repair just brought up."""
        target, self._pending_sync = self._pending_sync, None
        if target is not None and self.state.status == SandboxStatus.RUNNING:
            await execute(SYNC_ENSURE_STARTED, target, options=_DB)

    async def _finish_sync(self) -> None:
        """Let the chat mirror take a last look before the container goes away (best effort)."""
        try:
            await execute(SYNC_FINISH, self.state.sandbox_id, options=_SYNC_FINISH)
        except ActivityError as error:
            workflow.logger.warning("final chat sync of %s failed: %s", self.state.sandbox_id, _reason(error))

    async def _check_drift(self) -> None:
        """Repair a running sandbox whose container vanished or stopped; retry one left in error."""
        if self.state.desired != DesiredState.RUNNING:
            return
        if self.state.status == SandboxStatus.RUNNING:
            current = await self._inspect()
            if current is None or current.running:
                return  # Docker unreachable: look again next time rather than flap the status
            self.state.repairs += 1
            workflow.logger.warning(
                "sandbox %s drifted (container %s): repairing",
                self.state.sandbox_id,
                "stopped" if current.exists else "missing",
            )
        elif self.state.status != SandboxStatus.ERROR or self._error_retries >= MAX_ERROR_RETRIES:
            return
        else:
            self._error_retries += 1
        self.state.in_progress = DesiredState.RUNNING
        try:
            repaired = await self._ensure_running()
        finally:
            self.state.in_progress = None
            self._publish()
        if repaired:
            await self._record(TransitionRequest(), "sandbox.repair")

    async def _inspect(self) -> ContainerState | None:
        """The container as Docker sees it, or None if Docker cannot be asked right now."""
        try:
            return await execute(DOCKER_INSPECT_CONTAINER, self.state.sandbox_id, options=_DOCKER)
        except ActivityError:
            return None

    # ----------------------------------------------------------------- bookkeeping

    async def _set_status(self, status: SandboxStatus, *, error_message: str | None = None) -> None:
        running = status == SandboxStatus.RUNNING
        write = SetStatusInput(
            sandbox_id=self.state.sandbox_id,
            status=status,
            error_message=error_message,
            container_id=self.state.container_id if running else None,
            urls=self.state.urls if running else None,
            internal_opencode_url=self.state.internal_opencode_url if running else None,
            internal_acp_url=self.state.internal_acp_url if running else None,
        )
        await execute(SANDBOX_SET_STATUS, write, options=_DB)
        self.state.status = status
        self.state.error_message = error_message
        self.state.transitions += 1
        self._publish()

    async def _record(self, request: TransitionRequest, action: str) -> None:
        event = ActivityEvent(
            user_id=self.state.user_id,
            action=action,
            entity_type="sandbox",
            entity_id=self.state.sandbox_id,
            metadata={"actor": request.actor.kind, "status": self.state.status.value},
            ip_address=request.actor.ip_address,
            user_agent=request.actor.user_agent,
        )
        record = RecordActivityInput(event_id=str(workflow.uuid4()), event=event)
        await execute(RECORD_ACTIVITY, record, options=_DB)

    def _publish(self) -> None:
        """Make the state visible in the Web UI: a search attribute and the current-details text."""
        workflow.upsert_search_attributes([STATUS_ATTRIBUTE.value_set(self.state.status.value)])
        error = f"\n\n**Error:** {self.state.error_message}" if self.state.error_message else ""
        workflow.set_current_details(
            f"**Status:** {self.state.status.value} (desired: {self.state.desired.value})\n\n"
            f"**OpenCode:** {self.state.urls.opencode_url or '-'}\n\n"
            f"**Repairs:** {self.state.repairs}{error}"
        )
