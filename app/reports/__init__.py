"""Reports: the HTML page and cross-job comparison, rendered from report.json (no torch)."""
