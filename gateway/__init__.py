"""The HTTP gateway: OpenAI-compatible endpoints in front of the per-model Redis queues.

Never imports torch or transformers (tests/unit/test_boundaries.py checks it).
"""

from gateway.app import create_app

__all__ = ["create_app"]
