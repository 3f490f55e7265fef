"""The tenant id rule, one for every layer (payloads, the engine, the CRM store): 1-64 of
``A-Z a-z 0-9 _ . -``, and not ``.`` or ``..``, since a tenant id names folders under the
files directory (exports, reports, templates). And the user id rule (a user within a
tenant), one for notification payloads, crmqueue.notifications and CRM users: surrounding
whitespace is stripped everywhere, then 1-64 characters without whitespace or controls."""

from __future__ import annotations

import re

TENANT_ID_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,64}$"
TENANT_ID = re.compile(TENANT_ID_PATTERN)
TENANT_ID_RULE = "must be 1-64 of A-Z a-z 0-9 _ . -, and not '.' or '..' (a tenant id)"


def tenant_problem(tenant: object) -> str | None:
    """Why `tenant` is not a tenant id, or None when it is one."""
    if tenant is None:
        return "field required"
    if not isinstance(tenant, str):
        return f"must be text (a tenant id), not {type(tenant).__name__}"
    return None if TENANT_ID.match(tenant) else TENANT_ID_RULE


USER_ID_PATTERN = r"^[^\s\x00-\x1f\x7f]{1,64}$"
USER_ID = re.compile(USER_ID_PATTERN)
USER_ID_RULE = "must be 1-64 characters without spaces or control characters (a user id)"


def user_id_problem(user: object) -> str | None:
    """Why `user` (already stripped of surrounding whitespace) is not a user id, or None."""
    if user is None:
        return "field required"
    if not isinstance(user, str):
        return f"must be text (a user id), not {type(user).__name__}"
    return None if USER_ID.match(user) else USER_ID_RULE
