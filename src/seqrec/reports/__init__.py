"""Report renderers: self-contained HTML pages and Markdown digests built from plain frames."""
