"""Search jobs: the request's budget (spec), the SQL about a search and its candidates, and the
background step that wakes a search once its candidates have ended."""
