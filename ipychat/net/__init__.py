"""The one network boundary: build a request, send it, retry it, decode replies and failures."""
