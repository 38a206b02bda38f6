"""Shared by the fake OpenAI-compatible servers of test_interp_llm.py and test_llm_security.py."""

from __future__ import annotations

import json


def send_json(handler, code: int, body, headers: dict | None = None) -> None:
    """Answer ``handler``'s request with status ``code`` and ``body`` (bytes as they are, anything else as JSON);
    assign it as a handler method: ``_send = send_json``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(code)
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
