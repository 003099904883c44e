"""What every request shares: the response cache, the usage ledger, the embedded server."""
