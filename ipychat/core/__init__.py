"""The pure core: errors, types, settings, text, tokens, prices, keys and hygiene.

Nothing here opens a socket, starts a thread that outlives a call, or imports a layer above."""
