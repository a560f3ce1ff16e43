"""The HTTP service: JSON API, SSE streams and the web UI."""
