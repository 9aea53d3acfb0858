"""tollway-reports: spend reports as HTML and PDF, with charts drawn by matplotlib.

Registers two report renderers through ``tollway_register_exporters``, under the names
``report-html`` and ``report-pdf`` (see :mod:`tollway.analytics.report` for how ``tollway
report`` finds them). Nothing here imports matplotlib: each factory imports its module when a
report is first rendered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tollway import hookimpl


def _html(options: Mapping[str, Any] | None = None) -> Any:
    from tollway_reports.html import HtmlRenderer

    return HtmlRenderer(**dict(options or {}))


def _pdf(options: Mapping[str, Any] | None = None) -> Any:
    from tollway_reports.pdf import PdfRenderer

    return PdfRenderer(**dict(options or {}))


@hookimpl
def tollway_register_exporters(register: Callable[..., None]) -> None:
    register("report-html", _html, description="Spend report as one self-contained HTML page.")
    register("report-pdf", _pdf, description="Spend report as a PDF with charts.")
