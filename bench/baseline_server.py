"""The baseline: a bare aiohttp + uvloop handler answering a fixed JSON body."""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

BODY = b'{"sessionId":"00000000-0000-0000-0000-000000000000","status":"PENDING"}'


async def answer(request: web.Request) -> web.Response:
    if request.can_read_body:
        await request.read()
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.install()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
