"""What `make run` prints: one line when listening, the development-secret warning once."""

from __future__ import annotations

import pytest

from tests.gateway_processes import free_port, start_gateway, stop_process, wait_ready


@pytest.mark.timeout(60)
async def test_serve_announces_itself_once() -> None:
    port = free_port()
    proc = start_gateway(port, {"PRINT": "1"})  # no GATEWAY_JWT_SECRET: the development one
    try:
        await wait_ready(port, proc)
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert err.count("DEVELOPMENT secret") == 1, err
    listening = [line for line in err.splitlines() if line.startswith("gateway: ")]
    assert listening == [
        f"gateway: listening on http://127.0.0.1:{port} "
        "(env=sandbox, store=memory, coordination=memory, workers=1)"
    ]
    assert "curl -sS -X POST" in out
