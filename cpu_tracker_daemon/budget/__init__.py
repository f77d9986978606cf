"""The privacy budget: the caps' arithmetic, the ledger that records every spend, readers'
requests for more, and a deliberate reset."""
