"""AgentPod ACP gateway: runs ACP agents (``opencode acp`` first) over stdio inside a sandbox and
exposes them over HTTP + SSE on port 4097. See ``gateway/README.md`` for the API and the contract
a consumer of the event stream relies on; ``python -m agentpod_gateway --help`` for the options."""

__version__ = "0.1.0"
