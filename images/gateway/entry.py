"""Entry script PyInstaller freezes into ``agentpod-gateway`` (same as ``python -m agentpod_gateway``)."""

from agentpod_gateway.__main__ import main

if __name__ == "__main__":
    main()
