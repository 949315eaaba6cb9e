"""msgspool: a store-and-forward message spooler."""
