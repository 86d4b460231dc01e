"""The wire formats the model API speaks: base.py (the Wire protocol, SSE), openai.py, anthropic.py."""
