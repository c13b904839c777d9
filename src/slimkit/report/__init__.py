"""JSON, Markdown and HTML reports (the HTML with interactive, offline plots)."""
from .writer import check_report, md_tables, to_html, to_markdown, write_reports

__all__ = ["check_report", "md_tables", "to_html", "to_markdown", "write_reports"]
