"""Who may call the runtime, over what, and how often: API keys from a mounted Secret directory,
TLS from a mounted ``kubernetes.io/tls`` Secret, per-key rate limits, and connection hardening.

Both protocol servers (OIP in protocol/rest.py, OpenAI in protocol/openai.py) are wrapped by the
same gate (``gate.py``); the protocol code itself knows nothing of keys. See docs/security.md.
"""
