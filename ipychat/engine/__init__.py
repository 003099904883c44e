"""The request engine: `Engine` (settings, endpoint, client and cache, estimates, prepare,
request), the `Exchange` a request returns, the response cache, the ledger, the local model.
No threads, no events, no views (`ipychat.session` adds those)."""
