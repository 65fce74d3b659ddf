"""Process-wide plumbing shared by the API, the worker and the CLI: settings, logging, Temporal client."""
