"""seqrec flows."""
