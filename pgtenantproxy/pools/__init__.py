"""Tenant connection pools: raw protocol connections of the proxy's own.

``connection`` opens and authenticates one connection as a shop's role;
``pool`` keeps them per shop under a global cap. Borrowers (the router) lend a
connection to one Sync-delimited client batch at a time.
"""
