"""JSON, Markdown and HTML reports with plots."""
from .writer import plot_png, to_html, to_markdown, write_reports

__all__ = ["plot_png", "to_html", "to_markdown", "write_reports"]
