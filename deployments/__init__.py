"""seqrec deployments."""
