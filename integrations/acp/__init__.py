"""The control plane's side of a sandbox's ACP gateway: HTTP/SSE client, transcript folding, the mirror."""
