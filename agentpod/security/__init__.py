"""Secrets handling: password hashing, bearer tokens and the encryption keyring."""
