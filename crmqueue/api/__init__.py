"""The admin HTTP API (issue #15): jobs, queues, notifications, webhook endpoints,
``/metrics`` and ``/healthz``, behind bearer tokens with roles.

Modules: ``app`` (create_app), ``auth`` (tokens, roles, failure limit), ``deps`` (what
routes share), ``views`` (response models, masking), one module per route group
(``jobs``, ``notifications``, ``webhooks``), ``metrics`` (Prometheus), ``server``
(uvicorn, and the separate process `crmqueue run` starts).
"""
