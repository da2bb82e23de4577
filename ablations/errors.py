"""Re-export of the project's single user-error type, so harness modules import it from one place."""

from senet_core.errors import SenetError

__all__ = ["SenetError"]
