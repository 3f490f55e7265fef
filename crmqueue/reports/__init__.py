"""Reports (issue #13): SQL aggregates over the CRM store (`queries`), one chart
description (`model.Chart`) drawn three ways (`charts`), and HTML, PDF and XLSX
documents (`render`)."""

from __future__ import annotations
