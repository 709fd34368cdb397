"""The gateway command: serve, token, sandbox, the routing-rules tools and the database schema."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.db_cli import add_db_commands, schema_gate
from gateway.routing.cli import add_rules_commands
from gateway.settings import Settings, SettingsError

if TYPE_CHECKING:
    from gateway.auth import Authenticator

__all__ = ["main"]

log = logging.getLogger("gateway.cli")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return
    uvloop.install()


def example_curl(settings: Settings, authenticator: Authenticator | None = None) -> str:
    """A ready-to-paste curl creating the seed's example session with a fresh token (minted by
    ``authenticator``, the serving app's, when given).

    In sandbox mode its ``redirectUrls`` are the session's result page on this gateway.
    """
    import uuid

    from gateway.auth import Authenticator
    from gateway.demo import DEMO_MERCHANT, result_link
    from gateway.examples import SEED_REQUEST_JSON, seed_request_json
    from gateway.idempotency import session_id_for

    token = (authenticator or Authenticator(settings)).issue(
        DEMO_MERCHANT, ["sessions:write", "sessions:read", "routing:read"], 24 * 3600
    )
    key = str(uuid.uuid4())
    body = SEED_REQUEST_JSON
    if settings.is_sandbox:  # the customer comes back to the session's result page
        back = result_link(settings, session_id_for(DEMO_MERCHANT, key))
        body = seed_request_json(success_url=back, failure_url=back)
    return (
        f"curl -sS -X POST '{settings.base_url}/api/v1/sessions' \\\n"
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -H 'Idempotency-Key: {key}' \\\n"
        f"  -H 'Authorization: Bearer {token}' \\\n"
        f"  -d '{body}'"
    )


def _serve_one(
    settings: Settings,
    reuse_port: bool,
    print_curl: bool = False,
    worker_state: Path | None = None,
) -> None:
    from gateway.app import create_app
    from gateway.logs import configure_logging
    from gateway.serving import run_server

    configure_logging(settings.log_level)
    _install_uvloop()
    app = create_app(settings)
    if worker_state is not None:
        from gateway.appkeys import WORKER_STATE

        app[WORKER_STATE] = worker_state

    def announce() -> None:
        print(
            f"gateway: listening on {settings.base_url} (env={settings.env}, "
            f"store={settings.store}, coordination={settings.coordination_backend}, "
            f"workers={settings.workers})",
            file=sys.stderr,
            flush=True,
        )
        if "redis" in (settings.store, settings.coordination_backend):
            from gateway.redis_startup import describe_redis

            print(f"gateway: redis {describe_redis(settings)}", file=sys.stderr, flush=True)
        if print_curl:
            if settings.is_sandbox:
                print(f"\nThe demo shop: {settings.base_url}/demo", flush=True)
            from gateway.appkeys import AUTH

            print(
                "\nCreate a checkout session (then open its checkoutUrl in a browser):\n\n"
                f"{example_curl(settings, app[AUTH])}\n",
                flush=True,
            )

    run_server(app, settings, reuse_port=reuse_port, announce=announce)


def _worker(overrides: dict[str, object], state_path: str) -> None:
    settings = Settings(**overrides)  # type: ignore[arg-type]
    _serve_one(settings, reuse_port=True, worker_state=Path(state_path))


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.workers is not None:
        overrides["workers"] = args.workers
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        from gateway.app import check_startup

        check_startup(settings)
    except (SettingsError, ValueError) as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    refused = schema_gate(settings)
    if refused is not None:
        return refused
    if settings.workers == 1:
        _serve_one(settings, reuse_port=False, print_curl=args.print_curl)
        return 0
    return _serve_many(settings, overrides)


def _metrics_dir() -> tuple[str, bool]:
    """The prometheus-client multiprocess directory for the workers, and whether it is ours.

    ``PROMETHEUS_MULTIPROC_DIR`` when set (emptied of a previous run's files, which would
    otherwise be summed in), else a fresh temporary directory removed when serving ends.
    """
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return configured, False
    return tempfile.mkdtemp(prefix="gateway-metrics-"), True


def _serve_many(settings: Settings, overrides: dict[str, object]) -> int:
    # set before the workers start: prometheus_client picks its value class at import time
    metrics_dir, owned = _metrics_dir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _run_workers(settings, overrides)
    finally:
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_workers(settings: Settings, overrides: dict[str, object]) -> int:
    from prometheus_client import multiprocess

    from gateway.logs import configure_logging
    from gateway.supervisor import Supervisor

    configure_logging(settings.log_level)
    ctx = multiprocessing.get_context("spawn")
    state_dir = Path(tempfile.mkdtemp(prefix="gateway-workers-"))
    state_path = state_dir / "workers.json"

    def spawn(index: int) -> multiprocessing.context.SpawnProcess:
        return ctx.Process(
            target=_worker, args=(overrides, str(state_path)), name=f"gateway-worker-{index}"
        )

    def exited(pid: int) -> None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

    try:
        return Supervisor(settings.workers, spawn, state_path, on_exit=exited).run()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.auth import SCOPES, Authenticator

    scopes = args.scope or ["sessions:write", "sessions:read"]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        print(
            f"gateway: unknown scope(s) {', '.join(unknown)}; known: {' '.join(SCOPES)}",
            file=sys.stderr,
        )
        return 2
    logging.disable(logging.WARNING)
    try:
        token = Authenticator(Settings()).issue(args.merchant, scopes, args.ttl)
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from aiohttp import web

    from gateway.logs import configure_logging
    from providers.sandbox.app import create_sandbox_app
    from providers.sandbox.state import SandboxConfig

    settings = Settings()
    configure_logging(settings.log_level)
    _install_uvloop()
    public = args.public_url or f"http://{args.host}:{args.port}"
    root = web.Application()
    root.add_subapp(
        "/sandbox",
        create_sandbox_app(SandboxConfig(public_url=public, gateway_base_url=args.gateway_url)),
    )
    print(
        f"sandbox: serving on {public}/sandbox (webhooks to {args.gateway_url})",
        file=sys.stderr,
        flush=True,
    )
    web.run_app(root, host=args.host, port=args.port, access_log=None, print=None)
    return 0


DESCRIPTION = (
    "Payment routing gateway: one checkout-session API in front of Stripe, Adyen and PayPal. "
    "Settings come from GATEWAY_* environment variables or .env (see the README's "
    "Configuration); the options below override them."
)


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    """The gateway command line: serve, token, sandbox, rules and db."""
    parser = argparse.ArgumentParser(prog="gateway", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = _command(sub, "serve", "run the HTTP gateway (SIGTERM drains, then exits)")
    serve.add_argument("--host", help="listen address (default: GATEWAY_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: GATEWAY_PORT, 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        help="processes sharing the port (default: GATEWAY_WORKERS, 1); more than one needs "
        "GATEWAY_STORE=redis or postgres and GATEWAY_COORDINATION=redis (its default with the "
        "Redis store)",
    )
    serve.add_argument(
        "--print-curl",
        action="store_true",
        help="once listening, print a ready-to-paste curl that creates a checkout session as "
        "the merchant demo-merchant (token valid 24 hours)",
    )
    serve.set_defaults(func=cmd_serve)

    token = _command(sub, "token", "print a JWT this gateway (same settings) accepts")
    token.add_argument(
        "--merchant", required=True, help="the merchant id, the token's subject (sub)"
    )
    token.add_argument(
        "--scope",
        action="append",
        help="a scope to grant, repeatable: sessions:write, sessions:read, routing:read, "
        "routing:admin (default: sessions:write and sessions:read)",
    )
    token.add_argument(
        "--ttl", type=int, default=3600, help="lifetime in seconds (default: %(default)s)"
    )
    token.set_defaults(func=cmd_token)

    sandbox = _command(sub, "sandbox", "run the sandbox providers alone")
    sandbox.add_argument(
        "--host", default="127.0.0.1", help="listen address (default: %(default)s)"
    )
    sandbox.add_argument(
        "--port", type=int, default=8090, help="listen port (default: %(default)s)"
    )
    sandbox.add_argument(
        "--public-url",
        help="where browsers reach the sandbox, in its checkout URLs (default: http://HOST:PORT)",
    )
    sandbox.add_argument(
        "--gateway-url",
        default="http://127.0.0.1:8080",
        help="the gateway the sandbox sends its webhooks to (default: %(default)s)",
    )
    sandbox.set_defaults(func=cmd_sandbox)

    add_rules_commands(sub)
    add_db_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return _reader_gone()
    return result


def _reader_gone() -> int:
    """The reader of stdout left (``gateway rules simulate ... | head``): stop quietly, with
    the status of a process ended by SIGPIPE, as Unix tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
    return 128 + signal.SIGPIPE
