"""seqrec expectations."""
