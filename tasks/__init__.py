"""seqrec tasks."""
