"""`%%chatmap`'s engine: plan, dispatch at the server's pace, write back; the Batch API."""
