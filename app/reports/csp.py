"""The report page's Content-Security-Policy: nothing may load (no script, font, image file or
request), only its inline styles and inline SVG. Sent as a header by the API and written into
the page by the worker that renders it; its own module, so the API needs no page renderer."""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
