"""The browser tests run the same environment as the lifecycle tests."""

from tests.lifecycle.conftest import lifecycle_env

__all__ = ["lifecycle_env"]
