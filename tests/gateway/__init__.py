"""Tests of the ACP gateway (``gateway/``)."""
