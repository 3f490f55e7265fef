"""Importing the job bodies a process serves: the built-in body modules of
``crmqueue.workers.BODY_MODULES`` and the modules named in ``[runner] imports``.

The command line (``run``, ``worker``, ``config check``) and ``crmqueue doctor`` both load
bodies this way; it lives below both of them.
"""

from __future__ import annotations

import importlib
import os
import sys

from crmqueue.config import Settings
from crmqueue.errors import ConfigError
from crmqueue.workers import BODY_MODULES


def load_bodies(settings: Settings) -> None:
    """Import every built-in body module, then each module of ``settings.runner.imports``
    (resolved from the working directory too, like uvicorn's ``--app-dir``).

    Raises ConfigError naming ``runner.imports`` and the module that does not import.
    """
    if settings.runner.imports and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in (*BODY_MODULES, *settings.runner.imports):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"runner.imports: cannot import {module!r}: {exc}") from exc
