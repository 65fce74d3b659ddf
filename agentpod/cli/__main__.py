"""``python -m agentpod.cli``: the ``agentpod`` command, for when the console script is not on PATH."""

from agentpod.cli import main

if __name__ == "__main__":
    main()
