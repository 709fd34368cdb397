"""Local emulation of the providers' APIs and a hosted pay page, for demos, tests and benchmarks.

Entry points: :func:`providers.sandbox.app.create_sandbox_app` (mount at ``/sandbox``) and
:class:`providers.sandbox.state.SandboxConfig`.
"""
