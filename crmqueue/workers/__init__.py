"""Job bodies, one module per queue. Each module is listed here explicitly (a frozen
executable cannot discover modules at run time); a queue without a module has no
bodies yet and its jobs wait."""

BODY_MODULES: tuple[str, ...] = (
    "crmqueue.workers.email",
    "crmqueue.workers.import_export",
    "crmqueue.workers.notification",
    "crmqueue.workers.push",  # the notification queue's push channel
    "crmqueue.workers.report",
    "crmqueue.workers.webhook",
)
