"""settle: real-time money transfers with a double-entry ledger."""
