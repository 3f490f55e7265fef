"""crmqueue: the background-job system of a CRM."""

__version__ = "0.1.0"
