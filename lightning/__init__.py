"""Lightning payments: wallet backends, the ledger's settlement rules, the write gate."""
